"""Google Gemini ``Content`` (``{"role": "user" | "model", "parts": [...]}``) and ``candidates``.

Shapes (Gemini API reference, ``generateContent``; snake_case as in the ``google-genai`` SDK, camelCase
as in the REST API): parts ``text`` (``thought: true`` parts are reasoning text), ``inline_data``
(``mime_type`` ``image/*`` + base64 ``data`` or raw bytes), ``function_call`` (``name``, ``args``),
``function_response`` (``name``, ``response``: a ``tool`` turn); ``file_data``, other MIME types,
``executable_code`` and the like are refused. A response has ``candidates[].content``.
"""

from __future__ import annotations

from typing import Any

from grvl_sdk.messages._base import (
    Context,
    Delta,
    Loc,
    Message,
    Role,
    compact_json,
    get,
    is_list,
    is_record,
    role_of,
    text_field,
    type_name,
)
from grvl_sdk.messages._images import base64_image
from grvl_sdk.messages._openai import ordered, role_name
from grvl_sdk.messages._parts import Builder


def _field(value: Any, snake: str, camel: str) -> Any:
    found = get(value, snake)
    return found if found is not None else get(value, camel)


def is_content(value: Any) -> bool:
    """A Gemini ``Content``: ``parts`` and no ``content``."""
    return get(value, "parts") is not None and get(value, "content") is None


def _part(b: Builder, part: Any, loc: Loc) -> None:
    if not is_record(part):
        loc.fail(f"a part must be an object, got {type_name(part)}")
    if get(part, "text") is not None:
        b.text(text_field(part, "text", loc) or "")
        return
    inline = _field(part, "inline_data", "inlineData")
    call = _field(part, "function_call", "functionCall")
    response = _field(part, "function_response", "functionResponse")
    if inline is not None:
        mime = _field(inline, "mime_type", "mimeType")
        if not isinstance(mime, str) or not mime.lower().startswith("image/"):
            loc.fail(f"inline data of MIME type {str(mime)[:40]!r} cannot be judged by the guard")
        data = get(inline, "data")
        b.image(data if isinstance(data, (bytes, bytearray)) else base64_image(data, mime, loc.at("inline_data")))
    elif call is not None:
        b.call(get(call, "name"), compact_json(get(call, "args") or {}, loc.at("function_call.args")), None, loc)
    elif response is not None:
        name = get(response, "name")
        if not isinstance(name, str):
            loc.at("function_response.name").fail(f"must be a string, got {type_name(name)}")
        text = compact_json(get(response, "response"), loc.at("function_response.response"))
        b.result(Message(role="tool", text=text, name=name))
    else:
        loc.fail("a part that is not text, an image, a function call or response cannot be judged by the guard")


def content_messages(content: Any, loc: Loc, ctx: Context, role: Role | None = None) -> list[Message]:
    """One ``Content`` as messages (``function_response`` parts become ``tool`` messages)."""
    if role is None:
        role = role_of(role_name(content), loc.at("role"))
    b = Builder(role, ctx)
    parts = get(content, "parts")
    if not is_list(parts):
        loc.at("parts").fail(f"must be a list, got {type_name(parts)}")
    for i, part in enumerate(parts):
        _part(b, part, loc.at("parts").at(i))
    return b.messages()


def candidate_messages(candidates: Any, *, stream: bool = False) -> list[Any]:
    """``candidates``: one assistant :class:`Message` (or :class:`Delta` when ``stream``) per candidate."""
    out: list[Any] = []
    for index, candidate in ordered(candidates, "candidate"):
        loc = Loc("candidate", index, "content")
        content = get(candidate, "content")
        if content is None:  # e.g. blocked by the provider's own safety filter: nothing was said
            message = Message(role="assistant", text="")
        else:
            messages = content_messages(content, loc, Context(), "assistant")
            if len(messages) != 1:
                loc.fail("a function response cannot appear in a candidate")
            message = messages[0]
        if stream:
            if message.images:
                loc.fail("images in a stream chunk cannot be judged")
            out.append(Delta(index=index, text=message.text))
        else:
            out.append(message)
    return out
