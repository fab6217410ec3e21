"""OpenAI Responses API: input items, the ``Response`` object, and stream events.

Shapes (OpenAI API reference, Responses): input items ``ResponseInputItemParam`` — messages
(``EasyInputMessage`` ``{"role", "content"}``, ``{"type": "message", ...}``), ``function_call``
(``name``, ``arguments``, ``call_id``), ``function_call_output`` (``call_id``, ``output``: a string or
``input_text`` / ``input_image`` / ``input_file`` parts), ``custom_tool_call`` (``name``, ``input``),
``custom_tool_call_output``, ``reasoning`` (``summary[].text``, ``content[].text``,
``encrypted_content``), ``item_reference`` (refused: the item is not here); ``Response.output`` items
(``message`` with ``output_text`` / ``refusal`` parts, ``function_call``, ``custom_tool_call``,
``reasoning``); ``ResponseStreamEvent`` types ``response.*``.
"""

from __future__ import annotations

from typing import Any

from grvl_sdk.messages._base import (
    Context,
    Delta,
    Loc,
    Message,
    arguments_text,
    call_fragment,
    get,
    is_list,
    is_record,
    role_of,
    text_field,
    type_name,
)
from grvl_sdk.messages._openai import role_name
from grvl_sdk.messages._parts import Builder, add_content, reasoning_texts

ITEM_TYPES = frozenset(
    {"function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output", "reasoning"}
)
# Items that refer to, or stand for, content that is not in the input: refused.
_OPAQUE = {"item_reference": "an item_reference (the referenced item is not in the input)"}

_TEXT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)


def is_item(value: Any) -> bool:
    """A Responses input item that is not a message (``function_call``, ``reasoning``...)."""
    kind = get(value, "type")
    return isinstance(kind, str) and (kind in ITEM_TYPES or kind in _OPAQUE)


def _call(b: Builder, item: Any, loc: Loc) -> None:
    kind = get(item, "type")
    key = "arguments" if kind == "function_call" else "input"
    b.call(get(item, "name"), arguments_text(get(item, key), loc.at(key)), get(item, "call_id"), loc)


def item_messages(item: Any, loc: Loc, ctx: Context) -> list[Message]:
    """One Responses input item (not a message) as messages."""
    kind = get(item, "type")
    if kind in _OPAQUE:
        loc.fail(f"{_OPAQUE[kind]} cannot be judged by the guard")
    if kind in ("function_call", "custom_tool_call"):
        b = Builder("assistant", ctx)
        _call(b, item, loc)
        return b.messages()
    if kind == "reasoning":
        texts = reasoning_texts(item, loc)
        # Encrypted-only reasoning carries nothing readable (the provider's opaque state).
        return [Message(role="assistant", text="\n".join(texts))] if texts else []
    # function_call_output / custom_tool_call_output
    name = text_field(item, "name", loc, required=False)
    call_id = get(item, "call_id")
    if name is None and isinstance(call_id, str):
        name = ctx.tool_names.get(call_id)
    b = Builder("tool", ctx, name)
    add_content(b, get(item, "output"), loc.at("output"))
    return b.messages()


def is_response(value: Any) -> bool:
    """A Responses API ``Response`` (``object == "response"``, or a record with an ``output`` list)."""
    if get(value, "object") == "response":
        return True
    return is_list(get(value, "output")) and get(value, "choices") is None and get(value, "content") is None


def response_message(response: Any) -> Message:
    """All of a ``Response``'s output items as one assistant message."""
    loc = Loc("response", 0, "output")
    output = get(response, "output")
    if not is_list(output):
        loc.fail(f"must be a list of output items, got {type_name(output)}")
    b = Builder("assistant", Context())
    for i, item in enumerate(output):
        here = loc.at(i)
        if not is_record(item):
            here.fail(f"an output item must be an object, got {type_name(item)}")
        kind = get(item, "type")
        if kind == "message" or (kind is None and get(item, "role") is not None):
            if role_of(role_name(item), here.at("role")) != "assistant":
                here.at("role").fail("a response's output message must be the assistant's")
            add_content(b, get(item, "content"), here.at("content"))
        elif kind in ("function_call", "custom_tool_call"):
            _call(b, item, here)
        elif kind == "reasoning":
            for text in reasoning_texts(item, here):
                b.text(text)
        else:
            here.at("type").fail(f"output item type {str(kind)[:40]!r} cannot be judged by the guard")
    return b.single(loc)


def is_event(value: Any) -> bool:
    kind = get(value, "type")
    return isinstance(kind, str) and (kind.startswith("response.") or kind == "error")


def event_deltas(event: Any) -> list[Delta]:
    """A Responses stream event: text-carrying events give one :class:`Delta`, other events none.

    ``response.output_item.added`` of a ``function_call`` / ``custom_tool_call`` gives ``[tool call] name``
    (its arguments follow in ``response.function_call_arguments.delta`` events); audio is refused.
    """
    kind = get(event, "type")
    loc = Loc("event", 0)
    if kind in _TEXT_EVENTS:
        delta = get(event, "delta")
        if not isinstance(delta, str):
            loc.at("delta").fail(f"must be a string, got {type_name(delta)}")
        return [Delta(text=delta)]
    if kind == "response.audio.delta":
        loc.fail("audio cannot be judged by the guard")
    if kind == "response.output_item.added":
        item = get(event, "item")
        if get(item, "type") in ("function_call", "custom_tool_call"):
            key = "arguments" if get(item, "type") == "function_call" else "input"
            text = call_fragment(get(item, "name"), get(item, key), loc.at("item"))
            return [Delta(text=text)] if text else []
    return []
