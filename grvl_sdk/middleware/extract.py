"""Finding the request in a wrapped call's arguments, and the text in its result or stream chunks.

Defaults (override each with a callable):

- **request**: an argument named ``messages`` (OpenAI-style chat, see :mod:`grvl_sdk.conversation`);
  else a text argument named ``text``, ``prompt``, ``query``, ``question``, ``request``, ``message``
  or ``input`` with ``image`` / ``images`` arguments; else a first positional string (text) or list
  of chat messages.
- **response**: a string; an OpenAI chat completion (``choices[0].message.content``, dict or object);
  an object or dict with ``content`` or ``text`` (e.g. a LangChain message).
- **stream chunk**: a string; an OpenAI chunk (``choices[0].delta.content``; no choices is ``""``);
  an object or dict with ``content`` or ``text``.

Anything else raises :class:`~grvl_sdk.errors.InputError`: the guard never skips what it cannot read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grvl_sdk.errors import InputError

__all__ = ["RequestSpec", "chunk_text", "request_getter", "response_text"]

_TEXT_NAMES = ("text", "prompt", "query", "question", "request", "message", "input")


@dataclass(frozen=True)
class RequestSpec:
    """The request of a wrapped call: chat ``messages``, or a ``text`` with ``images``."""

    text: str | None = None
    images: list[Any] = field(default_factory=list)
    messages: Sequence[Any] | None = None


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m for m in value)
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
        return RequestSpec(text=value.get("text"), images=images)
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
        if named.get("messages") is not None:
            return RequestSpec(messages=named["messages"])
        text = next((named[n] for n in _TEXT_NAMES if isinstance(named.get(n), str)), None)
        images = [named["image"]] if named.get("image") is not None else []
        extra = named.get("images")
        if extra is not None:
            if isinstance(extra, (str, bytes)) or not isinstance(extra, Sequence):
                raise InputError("the wrapped call's images= argument must be a list")
            images.extend(extra)
        if text is not None or images:
            return RequestSpec(text=text, images=images)
        if args and isinstance(args[0], str):
            return RequestSpec(text=args[0])
        if args and _is_messages(args[0]):
            return RequestSpec(messages=args[0])
        raise InputError(
            "cannot find the request in the wrapped call's arguments (no messages=, text=/prompt=..., image=); "
            "pass get_request=lambda *args, **kwargs: {'text': ..., 'image': ...} to wrap()"
        )

    return get


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif _field(part, "text") is not None:
                texts.append(str(_field(part, "text")))
        return "".join(texts)
    return None


def _choice_text(value: Any, attr: str) -> str | None:
    choices = _field(value, "choices")
    if choices is None or isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        return None
    if not choices:
        return ""
    holder = _field(choices[0], attr)
    if holder is None:
        return ""
    return _content_text(_field(holder, "content")) or ""


def response_text(value: Any) -> str:
    """The text of a wrapped call's result (see the module docstring)."""
    if isinstance(value, str):
        return value
    for candidate in (_choice_text(value, "message"), _content_text(_field(value, "content")), _field(value, "text")):
        if isinstance(candidate, str):
            return candidate
    raise InputError(
        f"cannot read the response text from a {type(value).__name__}; pass get_response=callable to wrap()"
    )


def chunk_text(chunk: Any) -> str:
    """The text of one stream chunk (see the module docstring)."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, (bytes, bytearray)):
        return bytes(chunk).decode("utf-8", "replace")
    for candidate in (_choice_text(chunk, "delta"), _content_text(_field(chunk, "content")), _field(chunk, "text")):
        if isinstance(candidate, str):
            return candidate
    raise InputError(
        f"cannot read the text of a stream chunk of type {type(chunk).__name__}; pass get_chunk_text=callable to wrap()"
    )
