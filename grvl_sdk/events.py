"""Where every verdict goes once decided: the ``grvl_sdk`` logger, the audit log, ``on_verdict`` hooks.

Log records carry structured fields as ``extra`` attributes prefixed ``grvl_`` (``grvl_decision``,
``grvl_stage``, ``grvl_fail_mode``...), usable in formatters and by JSON log handlers. Levels:
``allow`` at DEBUG, ``block`` at INFO, ``error-blocked`` / ``error-allowed`` at WARNING (a guard that
could not judge must show in the logs). String fields that come from outside (ids, model, the
fail reason) are cut to :data:`MAX_LOG_FIELD_CHARS` characters in log records.

A failing hook is logged and never breaks the check. A failing audit write is never dropped silently:
with the audit log's ``on_error="log"`` (default) it is logged at CRITICAL level and counted; with
``on_error="raise"`` the :class:`~grvl_sdk.errors.AuditLogError` reaches the caller of the check
(after the hooks have run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from grvl_sdk.audit import AuditLog
from grvl_sdk.cache import ContentHashes
from grvl_sdk.errors import AuditLogError
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Verdict

__all__ = ["MAX_LOG_FIELD_CHARS", "VerdictHook", "VerdictSink", "log_fields"]

logger = logging.getLogger("grvl_sdk")
# A library logs, the application decides where logs go (no "last resort" printing to stderr).
logger.addHandler(logging.NullHandler())

#: A callback given every decided verdict (for metrics, alerts...).
VerdictHook = Callable[[Verdict], Any]

_LEVELS = {"allow": logging.DEBUG, "block": logging.INFO, "error-allowed": logging.WARNING}

#: The longest string (in characters) a verdict field puts into a log record; longer ones are cut.
MAX_LOG_FIELD_CHARS = 1024


def _clip(value: Any) -> Any:
    """``value``, or a string cut to :data:`MAX_LOG_FIELD_CHARS` characters with a marker of its length."""
    if isinstance(value, str) and len(value) > MAX_LOG_FIELD_CHARS:
        return f"{value[:MAX_LOG_FIELD_CHARS]}…[truncated: {len(value)} chars]"
    return value


def log_fields(verdict: Verdict) -> dict[str, Any]:
    """The structured ``extra`` fields of a verdict's log record (strings cut to ``MAX_LOG_FIELD_CHARS``)."""
    fields = {
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
    return {key: _clip(value) for key, value in fields.items()}


class VerdictSink:
    """Sends decided verdicts to the logger, the optional audit log and the hooks.

    ``audit_log`` is an :class:`AuditLog` (left open by :meth:`close`) or a path, opened here with the
    defaults (raises :class:`~grvl_sdk.errors.AuditLogError` if it cannot be opened).
    """

    def __init__(
        self, audit_log: AuditLog | str | os.PathLike[str] | None = None, hooks: Iterable[VerdictHook] = ()
    ) -> None:
        self._owns_audit_log = not isinstance(audit_log, AuditLog) and audit_log is not None
        self.audit_log: AuditLog | None = AuditLog(audit_log) if self._owns_audit_log else audit_log  # type: ignore[arg-type,assignment]
        self.hooks: list[VerdictHook] = list(hooks)

    def emit(self, verdict: Verdict, item: GuardInput | None, hashes: ContentHashes | None = None) -> None:
        """Log the verdict, write its audit record, call the hooks.

        Raises:
            AuditLogError: the audit write failed and the log has ``on_error="raise"`` (hooks still ran).
        """
        level = _LEVELS.get(verdict.decision or "", logging.WARNING)
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "guard verdict: decision=%s mode=%s stage=%s fail_mode=%s reason=%s request=%s response=%s",
                verdict.decision,
                verdict.mode,
                verdict.stage,
                verdict.fail_mode,
                _clip(verdict.fail_reason),
                verdict.request_label,
                verdict.response_label,
                extra=log_fields(verdict),
            )
        audit_error: AuditLogError | None = None
        if self.audit_log is not None:
            try:
                self.audit_log.write(verdict, item, hashes)
            except Exception as exc:  # AuditLog.write logs its own failures in "log" mode; this is the rest
                if isinstance(exc, AuditLogError) and getattr(self.audit_log, "on_error", "log") == "raise":
                    audit_error = exc
                else:
                    logger.critical(
                        "could not write the audit log line of verdict %s", _clip(verdict.id), exc_info=True
                    )
        for hook in self.hooks:
            try:
                hook(verdict)
            except Exception:
                logger.exception("on_verdict hook %r failed", hook)
        if audit_error is not None:
            raise audit_error

    def close(self) -> None:
        """Close the audit log if this sink opened it (one passed in as an ``AuditLog`` stays open)."""
        if self.audit_log is not None and self._owns_audit_log:
            self.audit_log.close()
