"""Reading a Responses API event stream so that nothing an event delivers goes unjudged.

:class:`ResponsesEventReader` is the ``get_chunk_text`` of a guarded Responses stream (used by the OpenAI
adapter, :mod:`grvl_sdk.integrations.openai`, and the server's proxy, :mod:`grvl_sdk.server.streams`):
delta events add their text; events repeating content (``*.done``, content parts, output items, the
``Response`` of ``response.created`` / ``response.completed``...) add what they hold when it is more than
what was streamed for their output item; any other event type raises
:class:`~grvl_sdk.errors.InputError` (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grvl_sdk.errors import InputError
from grvl_sdk.messages import _responses

__all__ = ["ResponsesEventReader"]

#: Responses stream events whose text the guard reads (:func:`grvl_sdk.messages.chunk_deltas`).
_READ_EVENTS = frozenset({
    "response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta", "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta", "response.output_item.added",
})  # fmt: skip
#: Events without content of their own.
_QUIET_EVENTS = frozenset({"error", "response.output_text.annotation.added"})
#: Events repeating content the delta events streamed, field holding it: what they hold is compared with
#: what was streamed for their output item, and judged when it is more (a server may send only these).
_REPEATS = {
    "response.output_text.done": "text", "response.refusal.done": "refusal",
    "response.function_call_arguments.done": "arguments", "response.custom_tool_call_input.done": "input",
    "response.reasoning_summary_text.done": "text", "response.reasoning_text.done": "text",
}  # fmt: skip
#: Content parts holding text only (the fast path of ``_item``); others are read in full.
_TEXT_PARTS = frozenset({"output_text", "refusal", "text"})
_PART_EVENTS = frozenset({
    "response.content_part.added", "response.content_part.done", "response.reasoning_summary_part.added",
    "response.reasoning_summary_part.done",
})  # fmt: skip
#: Events carrying a whole ``Response`` (its ``output`` is compared like the repeats above).
_RESPONSE_EVENTS = frozenset({
    "response.created", "response.in_progress", "response.queued", "response.completed", "response.incomplete",
    "response.failed",
})  # fmt: skip


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _letters(text: str) -> str:
    """``text``'s letters and digits only: how streamed fragments and a rendered whole are compared."""
    return "".join(char for char in text if char.isalnum())


class ResponsesEventReader:
    """``get_chunk_text`` for Responses stream events: the text they add, ``""`` for events without
    new content, ``InputError`` for events carrying content the guard cannot read.

    Delta events add their text. Events that repeat content (``*.done``, content parts, output items, the
    ``Response`` of ``response.completed``...) add what they hold only when it is more than what was
    streamed for their output item — so a server sending whole items without deltas (or different text
    in them) is judged too, and nothing an event delivers goes unjudged."""

    def __init__(self) -> None:
        self.sequence = -1
        self.streamed: dict[Any, list[str]] = {}  # output index -> the texts judged for it so far

    def _seen(self, index: Any) -> str:
        parts = self.streamed.get(index)
        if not parts:
            return ""
        if len(parts) > 1:  # joined lazily: only the (few) repeating events compare
            parts[:] = ["".join(parts)]
        return _letters(parts[0])

    def _unseen(self, index: Any, text: str) -> str:
        letters = _letters(text)
        if not letters or letters in self._seen(index):
            return ""
        self.streamed.setdefault(index, []).append(text)
        return "\n" + text

    def _item(self, index: Any, item: Any) -> str:
        if item is None:
            return ""
        kind, content = _get(item, "type"), _get(item, "content")
        if (  # fast path: text parts only, each one's text already judged
            kind == "message"
            and isinstance(content, list)
            and all(_get(part, "type") in _TEXT_PARTS for part in content)
        ):
            texts = [_get(part, "text") or _get(part, "refusal") or "" for part in content]
            if all(isinstance(text, str) for text in texts) and not any(
                text and _letters(text) not in self._seen(index) for text in texts
            ):
                return ""
        message = _responses.response_message({"output": [item]})
        if message.images:  # a stream is judged by its text: an image in it would pass unjudged
            raise InputError("a Responses stream event carries an image, which a streamed answer cannot have judged")
        return self._unseen(index, message.text)

    def __call__(self, event: Any) -> str:
        number = _get(event, "sequence_number")
        if isinstance(number, int):
            self.sequence = max(self.sequence, number)
        kind = _get(event, "type")
        index = _get(event, "output_index")
        if kind in _READ_EVENTS:  # what grvl_sdk.messages.chunk_deltas reads, without probing other shapes
            text = "".join(delta.text for delta in _responses.event_deltas(event))
            if kind == "response.output_item.added" and not text:  # an item that may already hold content
                return self._item(index, _get(event, "item"))
            if text:
                self.streamed.setdefault(index, []).append(text)
            return text
        if kind in _QUIET_EVENTS:
            return ""
        if kind in _REPEATS:
            value = _get(event, _REPEATS[kind])
            return self._unseen(index, value) if isinstance(value, str) else ""
        if kind in _PART_EVENTS:
            part = _get(event, "part")
            if part is None:
                return ""
            if kind.startswith("response.reasoning_summary_part"):
                return self._item(index, {"type": "reasoning", "summary": [part]})
            if _get(part, "type") == "reasoning_text":
                return self._item(index, {"type": "reasoning", "content": [part]})
            return self._item(index, {"type": "message", "role": "assistant", "content": [part]})
        if kind == "response.output_item.done":
            return self._item(index, _get(event, "item"))
        if kind in _RESPONSE_EVENTS:
            output = _get(_get(event, "response"), "output") or []
            return "".join(self._item(i, item) for i, item in enumerate(output))
        raise InputError(f"Responses stream event {str(kind)[:80]!r} carries content the guard cannot judge")
