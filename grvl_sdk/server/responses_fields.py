"""The fields of Responses API answers and stream events that the proxy passes on.

The guard reads a ``Response``'s output items (messages, function / custom tool calls, reasoning) and the
text of stream events (:class:`~grvl_sdk.messages._response_events.ResponsesEventReader`); a field outside
those shapes (an extra ``text`` on a delta event, an undeclared field of an output item or of the
``Response``) could carry text the guard never read, so :func:`drop_unjudged_fields` removes it — the
caller only receives what was judged. Field names follow the OpenAI Responses API reference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["drop_unjudged_fields"]

_RESPONSE = frozenset({
    "id", "object", "created_at", "completed_at", "status", "error", "incomplete_details", "instructions",
    "max_output_tokens", "max_tool_calls", "metadata", "model", "output", "parallel_tool_calls",
    "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_retention", "reasoning",
    "safety_identifier", "service_tier", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "usage", "user", "background", "conversation", "moderation",
})  # fmt: skip
_ITEMS = {
    "message": frozenset({"id", "type", "role", "status", "content", "phase"}),
    "function_call": frozenset({"id", "type", "call_id", "name", "arguments", "status", "namespace"}),
    "custom_tool_call": frozenset({"id", "type", "call_id", "name", "input", "status", "namespace"}),
    "reasoning": frozenset({"id", "type", "summary", "content", "encrypted_content", "status"}),
}
_PARTS = {
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
    "summary_text": frozenset({"type", "text"}),
    "reasoning_text": frozenset({"type", "text"}),
}
_EVENT_COMMON = frozenset(
    {"type", "sequence_number", "item_id", "output_index", "content_index", "summary_index", "obfuscation"}
)
#: Event type -> its fields besides the common ones (events of other types are left as they are: the
#: event reader refuses the ones carrying content it cannot judge).
_EVENTS = {
    **dict.fromkeys(("response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
                     "response.custom_tool_call_input.delta", "response.reasoning_summary_text.delta",
                     "response.reasoning_text.delta"), frozenset({"delta", "logprobs"})),
    "response.output_text.done": frozenset({"text", "logprobs"}),
    "response.refusal.done": frozenset({"refusal"}),
    "response.function_call_arguments.done": frozenset({"arguments", "name"}),
    "response.custom_tool_call_input.done": frozenset({"input"}),
    "response.reasoning_summary_text.done": frozenset({"text"}),
    "response.reasoning_text.done": frozenset({"text"}),
    **dict.fromkeys(("response.content_part.added", "response.content_part.done",
                     "response.reasoning_summary_part.added", "response.reasoning_summary_part.done"),
                    frozenset({"part"})),
    **dict.fromkeys(("response.output_item.added", "response.output_item.done"), frozenset({"item"})),
    **dict.fromkeys(("response.created", "response.in_progress", "response.queued", "response.completed",
                     "response.incomplete", "response.failed"), frozenset({"response"})),
}  # fmt: skip


def _keep(holder: dict[str, Any], kept: frozenset[str]) -> int:
    extra = [key for key in holder if key not in kept]
    for key in extra:
        del holder[key]
    return len(extra)


def _part(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    kept = _PARTS.get(part.get("type"))  # type: ignore[arg-type]
    return 0 if kept is None else _keep(part, kept)


def _item(item: Any) -> int:
    if not isinstance(item, dict):
        return 0
    kept = _ITEMS.get(item.get("type"))  # type: ignore[arg-type]
    if kept is None:
        return 0  # an item type the guard cannot read is refused when it is judged
    dropped = _keep(item, kept)
    for key in ("content", "summary"):
        if isinstance(item.get(key), list):
            dropped += sum(_part(part) for part in item[key])
    return dropped


def _response(response: dict[str, Any]) -> int:
    dropped = _keep(response, _RESPONSE)
    if isinstance(response.get("output"), list):
        dropped += sum(_item(item) for item in response["output"])
    return dropped


def drop_unjudged_fields(value: Any) -> int:
    """Remove, in place, the fields of a Responses answer or stream event the guard does not read (see the
    module docstring); returns how many were removed."""
    if not isinstance(value, dict):
        return 0
    kind = value.get("type")
    if kind is None and (value.get("object") == "response" or isinstance(value.get("output"), list)):
        return _response(value)
    kept = _EVENTS.get(kind) if isinstance(kind, str) else None
    if kept is None:
        return 0
    dropped = _keep(value, _EVENT_COMMON | kept)
    if isinstance(value.get("response"), dict):
        dropped += _response(value["response"])
    dropped += _item(value.get("item")) + _part(value.get("part"))
    return dropped
