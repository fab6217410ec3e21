"""An append-only JSONL audit log: one line per verdict.

Each line is written with a single ``write`` to a file opened with ``O_APPEND`` and reaches the
operating system before the check returns, so a process that is killed loses no line already written
and never leaves half a line behind (``fsync=True`` also survives power loss, at a cost per line).

A line holds: ``ts`` (UTC, ISO 8601), ``id``, ``call_id``, ``stage``, ``model``, ``decision``, ``mode``,
``fail_mode``, ``fail_reason``, ``harmful``, labels, scores, ``error_code``, ``cached``, timings, token
counts and SHA-256 ``hashes`` of the request text, the response and each image's pixels. Raw text is
written only with ``include_content=True`` (images never: use the hashes).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from grvl_sdk.backends.base import GuardInput
from grvl_sdk.cache import ContentHashes, content_hashes
from grvl_sdk.verdict import Verdict

__all__ = ["AuditLog", "audit_record"]


def audit_record(
    verdict: Verdict, item: GuardInput | None, hashes: ContentHashes | None = None, *, include_content: bool = False
) -> dict[str, Any]:
    """The JSON-ready audit line for one verdict."""
    if hashes is None and item is not None:
        hashes = content_hashes(item)
    record: dict[str, Any] = {
        "ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
        "id": verdict.id,
        "call_id": verdict.call_id,
        "stage": verdict.stage,
        "model": verdict.model,
        "decision": verdict.decision,
        "mode": verdict.mode,
        "fail_mode": verdict.fail_mode,
        "fail_reason": verdict.fail_reason,
        "harmful": verdict.harmful,
        "request_label": verdict.request_label,
        "response_label": verdict.response_label,
        "request_score": verdict.request_score,
        "response_score": verdict.response_score,
        "error_code": verdict.error.code if verdict.error else None,
        "cached": verdict.cached,
        "latency_ms": round(verdict.usage.latency_ms, 3),
        "total_ms": round(verdict.usage.total_ms, 3),
        "prompt_tokens": verdict.usage.prompt_tokens,
        "completion_tokens": verdict.usage.completion_tokens,
        "hashes": None
        if hashes is None
        else {"text": hashes.text, "response": hashes.response, "images": list(hashes.images)},
    }
    if include_content and item is not None:
        record["content"] = {"text": item.text, "response": item.response, "num_images": len(item.images)}
    return record


class AuditLog:
    """Appends one JSON line per verdict to ``path`` (created if missing; never truncated).

    Use it as a ``Guard(audit_log=...)`` argument (a path works too) or call :meth:`write` yourself.
    Thread-safe; several processes may append to the same file (each line is one ``O_APPEND`` write).
    """

    def __init__(self, path: str | os.PathLike[str], *, include_content: bool = False, fsync: bool = False) -> None:
        self.path = Path(path)
        self.include_content = include_content
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    def write(self, verdict: Verdict, item: GuardInput | None = None, hashes: ContentHashes | None = None) -> None:
        """Append the verdict's line (raises ``OSError`` if the disk refuses it)."""
        record = audit_record(verdict, item, hashes, include_content=self.include_content)
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"audit log {self.path} is closed")
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
