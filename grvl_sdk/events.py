"""Where every verdict goes once decided: the ``grvl_sdk`` logger, the audit log, ``on_verdict`` hooks.

Log records carry structured fields as ``extra`` attributes prefixed ``grvl_`` (``grvl_decision``,
``grvl_stage``, ``grvl_fail_mode``...), usable in formatters and by JSON log handlers. Levels:
``allow`` at DEBUG, ``block`` at INFO, ``error-blocked`` / ``error-allowed`` at WARNING (a guard that
could not judge must show in the logs). A failing hook or audit write is logged and never breaks
the check.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from grvl_sdk.audit import AuditLog
from grvl_sdk.backends.base import GuardInput
from grvl_sdk.cache import ContentHashes
from grvl_sdk.verdict import Verdict

__all__ = ["VerdictHook", "VerdictSink"]

logger = logging.getLogger("grvl_sdk")
# A library logs, the application decides where logs go (no "last resort" printing to stderr).
logger.addHandler(logging.NullHandler())

#: A callback given every decided verdict (for metrics, alerts...).
VerdictHook = Callable[[Verdict], Any]

_LEVELS = {"allow": logging.DEBUG, "block": logging.INFO, "error-allowed": logging.WARNING}


def log_fields(verdict: Verdict) -> dict[str, Any]:
    """The structured ``extra`` fields of a verdict's log record."""
    return {
        "grvl_id": verdict.id,
        "grvl_call_id": verdict.call_id,
        "grvl_stage": verdict.stage,
        "grvl_decision": verdict.decision,
        "grvl_mode": verdict.mode,
        "grvl_fail_mode": verdict.fail_mode,
        "grvl_fail_reason": verdict.fail_reason,
        "grvl_request_label": verdict.request_label,
        "grvl_response_label": verdict.response_label,
        "grvl_request_score": verdict.request_score,
        "grvl_response_score": verdict.response_score,
        "grvl_error_code": verdict.error.code if verdict.error else None,
        "grvl_cached": verdict.cached,
        "grvl_latency_ms": verdict.usage.total_ms,
        "grvl_model": verdict.model,
    }


class VerdictSink:
    """Sends decided verdicts to the logger, the optional audit log and the hooks."""

    def __init__(
        self, audit_log: AuditLog | str | os.PathLike[str] | None = None, hooks: Iterable[VerdictHook] = ()
    ) -> None:
        self._owns_audit_log = not isinstance(audit_log, AuditLog) and audit_log is not None
        self.audit_log = AuditLog(audit_log) if self._owns_audit_log else audit_log  # type: ignore[arg-type]
        self.hooks: list[VerdictHook] = list(hooks)

    def emit(self, verdict: Verdict, item: GuardInput | None, hashes: ContentHashes | None = None) -> None:
        level = _LEVELS.get(verdict.decision or "", logging.WARNING)
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "guard verdict: decision=%s mode=%s stage=%s fail_mode=%s reason=%s request=%s response=%s",
                verdict.decision,
                verdict.mode,
                verdict.stage,
                verdict.fail_mode,
                verdict.fail_reason,
                verdict.request_label,
                verdict.response_label,
                extra=log_fields(verdict),
            )
        if self.audit_log is not None:
            try:
                self.audit_log.write(verdict, item, hashes)
            except Exception:
                logger.exception("could not write the audit log line of verdict %s", verdict.id)
        for hook in self.hooks:
            try:
                hook(verdict)
            except Exception:
                logger.exception("on_verdict hook %r failed", hook)

    def close(self) -> None:
        """Close the audit log if this sink opened it (one passed in as an ``AuditLog`` stays open)."""
        if self.audit_log is not None and self._owns_audit_log:
            self.audit_log.close()
