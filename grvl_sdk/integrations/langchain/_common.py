"""Shared by the LangChain adapters: the verdict record a message carries, and message conversions.

A guarded message carries its call's verdicts in ``response_metadata["grvl"]``::

    {"blocked": bool, "call_id": str, "stage": "request" | "response" | "stream" | None,
     "decision": "allow" | "block" | "error-allowed" | "error-blocked" | None, "verdict_id": str | None,
     "verdicts": [Verdict.model_dump(mode="json"), ...]}

(``stage``/``decision``/``verdict_id`` are the blocking verdict's, else the last one's), plus
``"reason"`` when blocked. It is plain JSON, so it survives checkpoints and tracing;
:func:`verdicts_of` turns it back into :class:`~grvl_sdk.verdict.Verdict` objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableConfig

from grvl_sdk.calls import GuardedCall
from grvl_sdk.verdict import Verdict

__all__ = ["INNER_CONFIG", "annotate", "as_chunk", "refusal_message", "verdict_record", "verdicts_of"]

#: The config a guarded model's inner model runs with: none of the caller's callbacks, so nothing it
#: produces reaches a callback handler, an event stream or an agent's message stream before it is judged
#: (the guarded model's own run reports the judged output).
INNER_CONFIG: RunnableConfig = {"callbacks": [], "run_name": "grvl-inner-model"}


def verdict_record(call: GuardedCall) -> dict[str, Any]:
    """The JSON record of ``call``'s verdicts (see the module docstring)."""
    deciding = call.blocked or (call.verdicts[-1] if call.verdicts else None)
    record: dict[str, Any] = {
        "blocked": call.blocked is not None,
        "call_id": call.call_id,
        "stage": deciding.stage if deciding else None,
        "decision": deciding.decision if deciding else None,
        "verdict_id": deciding.id if deciding else None,
        "verdicts": [verdict.model_dump(mode="json") for verdict in call.verdicts],
    }
    if call.blocked is not None:
        verdict = call.blocked
        record["reason"] = verdict.fail_reason or (
            f"request {verdict.request_label}, response {verdict.response_label}"
        )
    return record


def annotate(message: BaseMessage, call: GuardedCall) -> Any:
    """A copy of ``message`` whose ``response_metadata["grvl"]`` is ``call``'s verdict record."""
    metadata = {**message.response_metadata, "grvl": verdict_record(call)}
    if call.blocked is not None:
        metadata["finish_reason"] = "content_filter"
    return message.model_copy(update={"response_metadata": metadata})


def as_chunk(message: Any) -> AIMessageChunk:
    """``message`` (a chunk, an ``AIMessage`` or a refusal string) as an ``AIMessageChunk``."""
    if isinstance(message, AIMessageChunk):
        return message
    if isinstance(message, BaseMessage):
        return AIMessageChunk(content=message.content, response_metadata=dict(message.response_metadata),
                              id=message.id)  # fmt: skip
    return AIMessageChunk(content=str(message))


def refusal_message(call: GuardedCall, *, chunk: bool = False) -> Any:
    """The refusal a blocked ``call`` answers, as an ``AIMessage`` (or chunk) carrying the verdicts."""
    refusal = call.refusal(kind="langchain.message")
    message = refusal if isinstance(refusal, BaseMessage) else AIMessage(content=str(refusal))
    message = annotate(message, call)
    return as_chunk(message) if chunk else message


def verdicts_of(message: Any) -> list[Verdict]:
    """The verdicts a guarded message carries (``response_metadata["grvl"]["verdicts"]``), in order;
    ``[]`` for a message the guard did not annotate."""
    metadata = getattr(message, "response_metadata", None)
    record = metadata.get("grvl") if isinstance(metadata, Mapping) else None
    if not isinstance(record, Mapping):
        return []
    return [Verdict.model_validate(item) for item in record.get("verdicts") or []]
