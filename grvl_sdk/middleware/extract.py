"""Finding the request in a wrapped call's arguments, and the text of its result or stream chunks.

Defaults (override each with a callable):

- **request**: an argument named ``messages`` or ``input`` holding chat messages (any shape
  :func:`grvl_sdk.messages.to_messages` reads: OpenAI chat or Responses items, Anthropic blocks,
  LangChain messages, tuples or prompt values); else **every** text argument named ``text``,
  ``prompt``, ``query``, ``question``, ``request``, ``message``, ``input``, ``instruction`` or
  ``system`` or ``content`` (joined with blank lines) with ``image`` / ``images`` arguments; else
  messages as the first positional argument; else the call's only string argument (several unnamed
  string arguments are ambiguous: ``InputError``, pass ``get_request``).
- **response**: anything :func:`grvl_sdk.messages.response_messages` reads — a string, an OpenAI chat
  completion (every choice, tool calls and refusals included) or Responses object, an Anthropic
  message, a LangChain ``AIMessage``, a dict or object with ``content``/``text``.
- **stream chunk**: anything :func:`grvl_sdk.messages.chunk_deltas` reads.

Anything else raises :class:`~grvl_sdk.errors.InputError`: the guard never skips what it cannot read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grvl_sdk.errors import InputError

__all__ = ["RequestSpec", "chunk_text", "request_getter", "response_text"]

_TEXT_NAMES = (
    "system", "instruction", "text", "prompt", "query", "question", "request", "message", "content", "input",
)  # fmt: skip
_MESSAGE_NAMES = ("messages", "input")


@dataclass(frozen=True)
class RequestSpec:
    """The request of a wrapped call: chat ``messages``, or a ``text`` with ``images``."""

    text: str | None = None
    images: list[Any] = field(default_factory=list)
    messages: Any = None


def _is_messages(value: Any) -> bool:
    """Chat messages of any shape (a non-empty list of messages, a prompt value, a single message object)."""
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        return False
    if hasattr(value, "to_messages") or (hasattr(value, "content") and hasattr(value, "type")):
        return True  # a LangChain prompt value or message
    if not isinstance(value, Sequence) or not value:
        return False
    return all(
        (isinstance(m, Mapping) and ("role" in m or "type" in m))
        or (isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str))
        or hasattr(m, "content")
        for m in value
    )


def to_spec(value: Any) -> RequestSpec:
    """Normalise what a ``get_request`` callable returned (a spec, a string, a dict or messages)."""
    if isinstance(value, RequestSpec):
        return value
    if isinstance(value, str):
        return RequestSpec(text=value)
    if _is_messages(value):
        return RequestSpec(messages=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"text", "image", "images", "messages"}
        if unknown:
            raise InputError(f"get_request returned unknown keys {sorted(unknown)}")
        if value.get("messages") is not None:
            return RequestSpec(messages=value["messages"])
        images = [value["image"]] if value.get("image") is not None else []
        extra = value.get("images")
        if extra is not None:
            if isinstance(extra, (str, bytes)) or not isinstance(extra, Sequence):
                raise InputError(f"get_request returned images= of type {type(extra).__name__}; pass a list")
            images.extend(extra)
        text = value.get("text")
        if text is not None and not isinstance(text, str):
            raise InputError(f"get_request returned text= of type {type(text).__name__}; pass a string")
        return RequestSpec(text=text, images=images)
    raise InputError(f"get_request must return a RequestSpec, str, dict or messages, got {type(value).__name__}")


def request_getter(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], RequestSpec]:
    """The default request extractor for ``fn``, based on its parameter names."""
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None

    def get(args: tuple[Any, ...], kwargs: dict[str, Any]) -> RequestSpec:
        named: dict[str, Any] = dict(kwargs)
        if signature is not None:
            try:
                bound = signature.bind_partial(*args, **kwargs)
            except TypeError as exc:
                raise InputError(f"cannot bind the wrapped call's arguments: {exc}") from exc
            named = {}
            for name, value in bound.arguments.items():
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    named[name] = value
        for name in _MESSAGE_NAMES:
            if named.get(name) is not None and _is_messages(named[name]):
                return RequestSpec(messages=named[name])
        texts = [named[n] for n in _TEXT_NAMES if isinstance(named.get(n), str)]
        images = [named["image"]] if named.get("image") is not None else []
        extra = named.get("images")
        if extra is not None:
            if isinstance(extra, (str, bytes)) or not isinstance(extra, Sequence):
                raise InputError("the wrapped call's images= argument must be a list")
            images.extend(extra)
        if texts or images:
            return RequestSpec(text="\n\n".join(texts) or None, images=images)
        if args and _is_messages(args[0]):
            return RequestSpec(messages=args[0])
        strings = [v for v in (*named.values(), *args) if isinstance(v, str)] if signature is None else [
            v for v in named.values() if isinstance(v, str)
        ]  # fmt: skip
        if len(dict.fromkeys(strings)) == 1:
            return RequestSpec(text=strings[0])
        if len(strings) > 1:
            raise InputError(
                "cannot tell which of the wrapped call's text arguments is the request "
                f"({len(strings)} string arguments, none named like a prompt); pass get_request=... to wrap()"
            )
        raise InputError(
            "cannot find the request in the wrapped call's arguments (no messages=, text=/prompt=..., image=); "
            "pass get_request=lambda *args, **kwargs: {'text': ..., 'image': ...} to wrap()"
        )

    return get


def response_text(value: Any) -> str:
    """The text of a wrapped call's result: every choice's text (content, refusal, tool calls), joined
    with blank lines. Raises :class:`InputError` when unreadable."""
    from grvl_sdk.messages import response_messages

    return "\n\n".join(message.text for message in response_messages(value))


def chunk_text(chunk: Any) -> str:
    """The text a stream chunk adds, all choices together (see :func:`grvl_sdk.messages.chunk_deltas`);
    bytes are decoded as UTF-8 (use a guarded stream to decode split characters correctly)."""
    if isinstance(chunk, (bytes, bytearray)):
        return bytes(chunk).decode("utf-8", "replace")
    from grvl_sdk.messages import chunk_deltas

    return "".join(delta.text for delta in chunk_deltas(chunk))
