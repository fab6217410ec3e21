"""Refusals in the caller's own shape.

A blocked call under ``on_block="refuse"`` answers what the caller expects, not a bare string:

=====================================  ==============================================================
the call returns                       the refusal
=====================================  ==============================================================
``str`` / ``bytes``                    the refusal text (encoded for bytes)
OpenAI chat completion (object/dict)   the same type, every choice's ``message.content`` the refusal
                                       and ``finish_reason="content_filter"``
OpenAI chat completion chunk           a chunk with the refusal as ``delta.content``, ``content_filter``
OpenAI Responses ``Response``          the same type, ``status="incomplete"``,
                                       ``incomplete_details.reason="content_filter"``, one message
LangChain ``AIMessage`` / chunk        the same class, ``content`` the refusal,
                                       ``response_metadata["grvl"]`` the decision
Anthropic ``Message``                  the same type, one text block, ``stop_reason="refusal"``
anything else                          the refusal text
=====================================  ==============================================================

Every shape that can carry extra data carries ``grvl``: ``{"blocked": true, "stage", "decision",
"verdict_id", "reason"}``. When nothing was returned yet (a request blocked before the call),
:func:`expected_kind` infers the shape from the function being guarded (an OpenAI or LangChain
method) and its arguments (``stream=True``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from grvl_sdk.verdict import Verdict

__all__ = ["Kind", "expected_kind", "kind_of", "refusal"]

Kind = Literal[
    "text", "bytes", "openai.chat", "openai.chat.chunk", "openai.responses", "langchain.message", "anthropic.message"
]


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def kind_of(value: Any) -> Kind:
    """The shape of a value a guarded call returned (or streamed)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    obj = _get(value, "object")
    if obj == "chat.completion":
        return "openai.chat"
    if obj == "chat.completion.chunk":
        return "openai.chat.chunk"
    if obj == "response":
        return "openai.responses"
    if type(value).__module__.startswith("langchain_core") and hasattr(value, "content"):
        return "langchain.message"
    if _get(value, "type") == "message" and _get(value, "role") == "assistant" and _get(value, "content") is not None:
        return "anthropic.message"
    return "text"


def expected_kind(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Kind:
    """The shape a call of ``fn`` would return, for a refusal made before calling it."""
    owner = type(getattr(fn, "__self__", None))
    module = f"{owner.__module__}.{owner.__name__}"
    streaming = bool(kwargs.get("stream"))
    if module.startswith("openai.resources.chat"):
        return "openai.chat.chunk" if streaming else "openai.chat"
    if module.startswith("openai.resources.responses"):
        return "openai.responses"
    if any(c.__module__.startswith("langchain_core") for c in owner.__mro__):
        return "langchain.message"
    if module.startswith("anthropic.resources.messages"):
        return "anthropic.message"
    return "text"


def _grvl(verdict: Verdict, stage: str) -> dict[str, Any]:
    return {
        "blocked": True,
        "stage": stage,
        "decision": verdict.decision,
        "verdict_id": verdict.id,
        "reason": verdict.fail_reason or f"request {verdict.request_label}, response {verdict.response_label}",
    }


def _dump(template: Any) -> dict[str, Any]:
    if isinstance(template, Mapping):
        return copy.deepcopy(dict(template))
    dump = getattr(template, "model_dump", None)
    return dump() if callable(dump) else {}


def _rebuild(template: Any, data: dict[str, Any], fallback: str) -> Any:
    """``data`` as ``template``'s type (a dict stays a dict; a pydantic object is validated again)."""
    if template is None or isinstance(template, Mapping):
        return data
    validate = getattr(type(template), "model_validate", None)
    if validate is None:
        return fallback
    try:
        return validate(data)
    except Exception:  # a type we could not rebuild: the text is still a refusal
        return fallback


def _openai_class(path: str) -> Any:
    try:
        module, _, name = path.rpartition(".")
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def refusal(kind: Kind, text: str, verdict: Verdict, *, stage: str, template: Any = None, model: str = "") -> Any:
    """The refusal ``text`` in the shape ``kind``, like ``template`` (the blocked value, when there is one).

    Without a template, OpenAI shapes are built as the ``openai`` package's types when it is installed
    (dicts otherwise) and LangChain's as ``AIMessage``."""
    info = _grvl(verdict, stage)
    if kind == "bytes":
        return text.encode("utf-8")
    if kind == "openai.chat":
        data = _dump(template) or {"id": f"chatcmpl-grvl-{verdict.id}", "object": "chat.completion",
                                   "created": int(time.time()), "model": model}  # fmt: skip
        count = max(1, len(data.get("choices") or []))
        data["choices"] = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "content_filter",
             "logprobs": None}
            for i in range(count)
        ]  # fmt: skip
        data["grvl"] = info
        return _build(template, data, text, "openai.types.chat.ChatCompletion")
    if kind == "openai.chat.chunk":
        data = _dump(template) or {"id": f"chatcmpl-grvl-{verdict.id}", "object": "chat.completion.chunk",
                                   "created": int(time.time()), "model": model}  # fmt: skip
        data["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": text},
                            "finish_reason": "content_filter", "logprobs": None}]  # fmt: skip
        data["grvl"] = info
        return _build(template, data, text, "openai.types.chat.ChatCompletionChunk")
    if kind == "openai.responses":
        data = _dump(template) or {"id": f"resp_grvl_{verdict.id}", "object": "response",
                                   "created_at": time.time(), "model": model, "parallel_tool_calls": False,
                                   "tool_choice": "auto", "tools": []}  # fmt: skip
        data.update(
            status="incomplete",
            incomplete_details={"reason": "content_filter"},
            output=[{"type": "message", "id": f"msg_grvl_{verdict.id}", "role": "assistant", "status": "incomplete",
                     "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            grvl=info,
        )  # fmt: skip
        return _build(template, data, text, "openai.types.responses.Response")
    if kind == "langchain.message":
        cls = type(template) if template is not None else _openai_class("langchain_core.messages.AIMessage")
        if cls is None:
            return text
        metadata = {**dict(getattr(template, "response_metadata", None) or {}), "grvl": info,
                    "finish_reason": "content_filter"}  # fmt: skip
        try:
            return cls(content=text, response_metadata=metadata, id=getattr(template, "id", None))
        except Exception:
            return text
    if kind == "anthropic.message":
        data = _dump(template) or {"id": f"msg_grvl_{verdict.id}", "type": "message", "role": "assistant",
                                   "model": model, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
        data.update(content=[{"type": "text", "text": text}], stop_reason="refusal", stop_sequence=None)
        return _build(template, data, text, "anthropic.types.Message")
    return text


def _build(template: Any, data: dict[str, Any], text: str, openai_type: str) -> Any:
    if template is not None:
        return _rebuild(template, data, text)
    cls = _openai_class(openai_type)
    if cls is None:
        return data
    try:
        return cls.model_validate(data)
    except Exception:
        return data
