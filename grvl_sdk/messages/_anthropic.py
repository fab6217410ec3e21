"""Anthropic Messages API stream events (``RawMessageStreamEvent``).

Messages themselves (``MessageParam`` ``{"role", "content"}`` and the response ``Message``) are chat
messages with content blocks, read by :mod:`grvl_sdk.messages._openai` and
:mod:`grvl_sdk.messages._parts`. Stream events (Anthropic API reference, Streaming Messages):

- ``content_block_delta`` with ``delta.type`` ``text_delta`` (``text``), ``input_json_delta``
  (``partial_json``), ``thinking_delta`` (``thinking``): one :class:`Delta`; ``signature_delta`` and
  ``citations_delta`` carry no new text: none; any other delta type is refused.
- ``content_block_start``: a ``tool_use`` / ``server_tool_use`` block gives ``[tool call] name``; a
  ``text`` / ``thinking`` block its initial text (usually empty: none); ``redacted_thinking`` nothing;
  any other block (server tool results...) is refused.
- ``message_start``: the text of its (normally empty) message; ``message_delta``, ``message_stop``,
  ``content_block_stop``, ``ping``, ``error``: none.
"""

from __future__ import annotations

from typing import Any

from grvl_sdk.messages._base import Context, Delta, Loc, call_fragment, get, kind_of, text_field, type_name
from grvl_sdk.messages._openai import message_builder

EVENT_TYPES = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "ping",
        "error",
    }
)
_DELTA_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}
_NO_TEXT_DELTAS = frozenset({"signature_delta", "citations_delta"})


def is_event(value: Any) -> bool:
    return kind_of(value) in EVENT_TYPES


def _one(text: str) -> list[Delta]:
    return [Delta(text=text)] if text else []


def event_deltas(event: Any) -> list[Delta]:
    """The text an Anthropic stream event adds (see the module docstring)."""
    kind = get(event, "type")
    loc = Loc("event", 0)
    if kind == "content_block_delta":
        delta = get(event, "delta")
        delta_kind = kind_of(delta)
        if delta_kind in _DELTA_FIELDS:
            return [Delta(text=text_field(delta, _DELTA_FIELDS[delta_kind], loc.at("delta")) or "")]
        if delta_kind in _NO_TEXT_DELTAS:
            return []
        loc.at("delta.type").fail(f"unsupported delta type {str(delta_kind)[:40]!r}")
    if kind == "content_block_start":
        block = get(event, "content_block")
        block_kind = kind_of(block)
        here = loc.at("content_block")
        if block_kind in ("tool_use", "server_tool_use"):
            return _one(call_fragment(get(block, "name"), None, here))
        if block_kind in ("text", "thinking"):
            return _one(text_field(block, block_kind, here) or "")
        if block_kind == "redacted_thinking":
            return []
        here.at("type").fail(f"a {str(block_kind)[:40]!r} block cannot be judged by the guard")
    if kind == "message_start":
        message = get(event, "message")
        if message is None:
            loc.at("message").fail(f"must be a message, got {type_name(message)}")
        return _one(message_builder(message, loc.at("message"), Context(), "assistant").single(loc).text)
    return []
