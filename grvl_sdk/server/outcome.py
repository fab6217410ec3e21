"""What the guard did to a request, for response headers, block messages and logs."""

from __future__ import annotations

from collections.abc import Iterable

from grvl_sdk.verdict import Verdict

__all__ = ["block_reason", "headers_for", "worst_decision"]

_SEVERITY = {"allow": 0, "error-allowed": 1, "error-blocked": 2, "block": 3}


def worst_decision(verdicts: Iterable[Verdict]) -> str:
    """The most severe decision among ``verdicts`` (``none`` when nothing was checked)."""
    decisions = [v.decision for v in verdicts if v.decision]
    return max(decisions, key=lambda d: _SEVERITY.get(d, 0)) if decisions else "none"


def headers_for(verdicts: list[Verdict], **extra: float | str) -> dict[str, str]:
    """``x-grvl-decision`` (the most severe), ``x-grvl-guard-ms`` (total check time), ``x-grvl-call-id``,
    ``x-grvl-blocked-stage`` when blocked, and ``x-grvl-<name>`` for each ``extra`` value."""
    headers = {
        "x-grvl-decision": worst_decision(verdicts),
        "x-grvl-guard-ms": f"{sum(v.usage.total_ms for v in verdicts):.1f}",
    }
    call_id = next((v.call_id for v in verdicts if v.call_id), None)
    if call_id:
        headers["x-grvl-call-id"] = call_id
    blocked = next((v for v in verdicts if v.blocked), None)
    if blocked is not None:
        headers["x-grvl-blocked-stage"] = blocked.stage or "request"
    for name, value in extra.items():
        headers[f"x-grvl-{name.replace('_', '-')}"] = f"{value:.1f}" if isinstance(value, float) else value
    return headers


def block_reason(verdict: Verdict) -> str:
    """A short, content-free sentence saying why ``verdict`` blocked."""
    stage = verdict.stage or "request"
    if verdict.decision == "error-blocked":
        code = verdict.error.code if verdict.error else "error"
        return f"blocked at the {stage} check: the guard could not judge ({code}) and fails closed"
    parts = [name for name, label in (("request", verdict.request_label), ("response", verdict.response_label))
             if label == "harmful"]  # fmt: skip
    return f"blocked at the {stage} check: the guard judged the {' and '.join(parts) or 'content'} harmful"
