"""An append-only JSONL audit log: one line per verdict, and a reader that tolerates a torn last line.

Guarantees, and their limits:

* Each record is at most ``max_record_bytes`` (default :data:`MAX_RECORD_BYTES`, 16 KiB) and is handed
  to the operating system by exactly **one** ``write`` on a file opened with ``O_APPEND``, before the
  check returns. Long strings (raw content, ``fail_reason``, ids...) are cut with a marker holding
  their length and SHA-256 (see :func:`encode_audit_record`), so a record is never split across lines.
* One ``write`` is *not* atomic: POSIX allows a short write, a full disk (``ENOSPC``) can leave part
  of a record, and Linux can stop a write at a page boundary when the process is killed. A record cut
  this way is always the *last* line of the file: after a failed or short write, and when opening a
  file whose last byte is not a newline, the next record starts with ``"\\n"``, so it is never glued
  to the torn one. :func:`read_audit_log` skips torn lines and reports their line numbers.
* Several processes may append to one file; a torn line left by one of them may be followed on the
  same line by another process's next record (both are then reported as one torn line).
* ``fsync=True`` also survives power loss, at a cost per line.
* A failed write is never silently dropped: ``on_error="log"`` (default) logs it at CRITICAL level on
  the ``grvl_sdk`` logger and counts it in :attr:`AuditLog.failed_writes`; ``on_error="raise"`` raises
  :class:`~grvl_sdk.errors.AuditLogError` (through ``Guard.check`` too).

A record holds: ``version`` (:data:`AUDIT_RECORD_VERSION`, the first key; absent in files written
before it), ``ts`` (UTC, ISO 8601), ``id``, ``call_id``, ``stage``, ``model``, ``decision``, ``mode``,
``fail_mode``, ``fail_reason`` (only the error code unless ``include_content=True``: messages can quote
content), ``error_type``, ``harmful``, labels, scores, ``error_code``, ``cached``, timings, token
counts and SHA-256 ``hashes`` of the request text, the response and each image's pixels, plus
``truncated`` (the names of the cut fields) when a field was cut. Raw text is written only with
``include_content=True`` (images never: use the hashes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.cache import ContentHashes, content_hashes
from grvl_sdk.errors import AuditLogError, InputError
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Verdict

__all__ = [
    "AUDIT_RECORD_VERSION",
    "MAX_RECORD_BYTES",
    "MIN_RECORD_BYTES",
    "TRUNCATION_MARKER",
    "AuditLog",
    "AuditLogContents",
    "AuditOnError",
    "audit_record",
    "encode_audit_record",
    "read_audit_log",
]

logger = logging.getLogger("grvl_sdk")

#: The format version written as every record's first key (``"version": 1``).
AUDIT_RECORD_VERSION = 1
#: Default upper bound of one record, in bytes, its newline included.
MAX_RECORD_BYTES = 16 * 1024
#: The smallest ``max_record_bytes`` accepted (every field cut to its marker still fits).
MIN_RECORD_BYTES = 4096
#: Start of the text that replaces the end of a cut string:
#: ``"…[truncated: <n> chars, sha256=<hex of the full UTF-8 text>]"``.
TRUNCATION_MARKER = "…[truncated: "

#: What a failed write does: ``"log"`` (CRITICAL log line, counted) or ``"raise"`` (:class:`AuditLogError`).
AuditOnError = Literal["log", "raise"]

_NEVER_CUT = frozenset({("version",), ("ts",), ("truncated",)})


def _finite(value: float | None, digits: int | None = None) -> float | None:
    """``None`` for NaN/infinity (not valid JSON), else the value (rounded to ``digits``)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def _reason_code(verdict: Verdict) -> str | None:
    return None if verdict.fail_reason is None else verdict.fail_reason.split(":", 1)[0]


def audit_record(
    verdict: Verdict, item: GuardInput | None, hashes: ContentHashes | None = None, *, include_content: bool = False
) -> dict[str, Any]:
    """The JSON-ready audit record of one verdict (not yet bounded: see :func:`encode_audit_record`)."""
    if hashes is None and item is not None:
        hashes = content_hashes(item)
    record: dict[str, Any] = {
        "version": AUDIT_RECORD_VERSION,
        "ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
        "id": verdict.id,
        "call_id": verdict.call_id,
        "stage": verdict.stage,
        "model": verdict.model,
        "decision": verdict.decision,
        "mode": verdict.mode,
        "fail_mode": verdict.fail_mode,
        # An error message can quote content (a server echoing the prompt in a 400, a backend exception):
        # without include_content only its code and type are kept.
        "fail_reason": verdict.fail_reason if include_content else _reason_code(verdict),
        "error_type": verdict.error.type if verdict.error else None,
        "harmful": verdict.harmful,
        "request_label": verdict.request_label,
        "response_label": verdict.response_label,
        "request_score": _finite(verdict.request_score),
        "response_score": _finite(verdict.response_score),
        "error_code": verdict.error.code if verdict.error else None,
        "cached": verdict.cached,
        "latency_ms": _finite(verdict.usage.latency_ms, 3),
        "total_ms": _finite(verdict.usage.total_ms, 3),
        "prompt_tokens": verdict.usage.prompt_tokens,
        "completion_tokens": verdict.usage.completion_tokens,
        "hashes": None
        if hashes is None
        else {"text": hashes.text, "response": hashes.response, "images": list(hashes.images)},
    }
    if include_content and item is not None:
        record["content"] = {"text": item.text, "response": item.response, "num_images": len(item.images)}
    return record


# -- bounding a record --------------------------------------------------------------------------
def _dumps(value: Any) -> bytes:
    # Lone surrogates become JSON "\udXXX" escapes (lossless, valid UTF-8); unknown types become str.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.encode("utf-8", "backslashreplace")


def _marker(original: str) -> str:
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{TRUNCATION_MARKER}{len(original)} chars, sha256={digest}]"


def _cut(original: str, marker: str, max_bytes: int) -> str:
    """The longest ``head + marker`` (head: a prefix of ``original``) whose JSON form fits ``max_bytes``."""
    low, high = 0, min(len(original), max(0, max_bytes))  # a char takes >= 1 byte in JSON
    while low < high:
        middle = (low + high + 1) // 2
        if len(_dumps(original[:middle] + marker)) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return original[:low] + marker


def _copy_cut(value: Any, cap: int, cut: dict[tuple[str, ...], str], path: tuple[str, ...] = ()) -> Any:
    """A copy of ``value`` whose strings longer than ``cap`` chars are cut (their originals go to ``cut``)."""
    if isinstance(value, dict):
        return {str(key): _copy_cut(item, cap, cut, (*path, str(key))) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return list(value)  # only lists of short hashes in audit records; trimmed whole if too long
    if isinstance(value, str) and len(value) > cap and path not in _NEVER_CUT:
        cut[path] = value
        return value[:cap] + _marker(value)
    return value


def _string_leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, str):
        return [] if path in _NEVER_CUT else [path]
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _string_leaves(item, (*path, str(key)))]
    return []


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        record = record[key]
    return record


def _set(record: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        record = record[key]
    record[path[-1]] = value


def _line(record: dict[str, Any], cut: dict[tuple[str, ...], str]) -> bytes:
    if cut:
        record["truncated"] = sorted(".".join(path) for path in cut)
    return _dumps(record) + b"\n"


def encode_audit_record(record: dict[str, Any], *, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """One UTF-8 JSON line (newline included) of at most ``max_bytes`` bytes.

    Strings that do not fit are cut, longest first: the kept head is followed by
    ``"…[truncated: <n> chars, sha256=<hex>]"`` (``n``: the original length in characters; the digest
    is of the full text's UTF-8 bytes, like :func:`grvl_sdk.cache.content_hashes`) and the dotted
    names of the cut fields are listed in ``record["truncated"]``. A too long ``hashes.images`` list
    keeps its first entries and is named there too. ``record`` itself is not changed.

    Raises:
        InputError: ``max_bytes`` is below :data:`MIN_RECORD_BYTES`.
    """
    if max_bytes < MIN_RECORD_BYTES:
        raise InputError(f"max_bytes must be >= {MIN_RECORD_BYTES}, got {max_bytes}")
    cut: dict[tuple[str, ...], str] = {}
    # No string longer (in chars) than the whole record can fit: cut those before serializing anything big.
    record = _copy_cut(record, max_bytes, cut)
    data = _line(record, cut)
    leaves = _string_leaves(record)
    while len(data) > max_bytes:
        sizes = {path: len(_dumps(_get(record, path))) for path in leaves}
        floors = {path: len(_dumps(_marker(cut.get(path, _get(record, path))))) for path in leaves}
        path = max(leaves, key=lambda p: sizes[p] - floors[p], default=None)
        if path is None or sizes[path] <= floors[path]:
            break  # every string is already as short as its marker
        excess = len(data) - max_bytes
        if path not in cut:
            cut[path] = _get(record, path)
            excess += len(".".join(path)) + 8  # its name joins the "truncated" list
        original = cut[path]
        _set(record, path, _cut(original, _marker(original), sizes[path] - excess))
        data = _line(record, cut)
    images = (record.get("hashes") or {}).get("images") or []
    while images and len(data) > max_bytes:
        del images[len(images) // 2 :]
        cut[("hashes", "images")] = ""
        data = _line(record, cut)
    if len(data) <= max_bytes:
        return data
    # Unreachable for audit_record()'s keys with max_bytes >= MIN_RECORD_BYTES; never write an unbounded line.
    return _dumps({"version": record.get("version"), "ts": record.get("ts"), "truncated": ["record"]}) + b"\n"


# -- writing ------------------------------------------------------------------------------------
def _ends_torn(fd: int, path: Path) -> bool:
    """True when the open file is a non-empty regular file whose last byte is not a newline.

    When it cannot tell, True: a spare newline only makes an empty line, which readers skip.
    """
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return False
        reader = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        return os.pread(reader, 1, os.fstat(reader).st_size - 1) != b"\n"
    except OSError:
        return True
    finally:
        os.close(reader)


class AuditLog:
    """Appends one bounded JSON line per verdict to ``path`` (created, with its folders, if missing;
    never truncated). See the module documentation for what is guaranteed after a kill or a full disk.

    Use it as a ``Guard(audit_log=...)`` argument (a path works too) or call :meth:`write` yourself.
    Thread-safe; several processes may append to the same file.

    Args:
        path: the JSONL file.
        include_content: also record the raw request and response text (cut to fit the record).
        fsync: ``fsync`` after every line (survives power loss; costs a disk flush per line).
        on_error: ``"log"`` (default): a failed write is logged at CRITICAL level and counted in
            :attr:`failed_writes`; ``"raise"``: it raises :class:`~grvl_sdk.errors.AuditLogError`.
        max_record_bytes: the bound of one record in bytes, newline included (at least
            :data:`MIN_RECORD_BYTES`).

    Raises:
        AuditLogError: the file cannot be opened (a folder, no permission...); ``details["path"]``.
        InputError: a bad ``on_error`` or ``max_record_bytes``, or ``path`` is not a path.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        include_content: bool = False,
        fsync: bool = False,
        on_error: AuditOnError = "log",
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"the audit log path must be a str or os.PathLike, got {type(path).__name__}")
        if on_error not in ("log", "raise"):
            raise InputError(f"on_error must be 'log' or 'raise', got {on_error!r}")
        if not isinstance(max_record_bytes, int) or max_record_bytes < MIN_RECORD_BYTES:
            raise InputError(f"max_record_bytes must be an int >= {MIN_RECORD_BYTES}, got {max_record_bytes!r}")
        self.path = Path(path)
        self.include_content = include_content
        self.fsync = fsync
        self.on_error: AuditOnError = on_error
        self.max_record_bytes = max_record_bytes
        #: Writes that failed (disk full, short write, closed log...) since the log was opened.
        self.failed_writes = 0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NONBLOCK: a FIFO without a reader fails at once (ENXIO) instead of blocking the open
            # forever; the flag is cleared again so writes to what did open block as usual.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
            self._fd: int | None = os.open(self.path, flags, 0o640)
            os.set_blocking(self._fd, True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            raise AuditLogError(f"cannot open the audit log {self.path}: {exc}", path=str(self.path)) from exc
        # True when the file may end in a torn record: the next record then starts with "\n".
        self._torn_tail = _ends_torn(self._fd, self.path)

    def write(self, verdict: Verdict, item: GuardInput | None = None, hashes: ContentHashes | None = None) -> bool:
        """Append the verdict's record with one ``write``; True when it was written (and fsynced).

        A write that fails or is short leaves a torn last line; the next record starts on a new line.

        Raises:
            AuditLogError: the log is closed; or the write failed and ``on_error="raise"``
                (``details``: ``path``, ``verdict_id``, and ``errno`` or ``written``/``expected``).
        """
        record = audit_record(verdict, item, hashes, include_content=self.include_content)
        data = encode_audit_record(record, max_bytes=self.max_record_bytes)
        error: AuditLogError | None = None
        with self._lock:
            if self._fd is None:
                self.failed_writes += 1
                raise AuditLogError(f"audit log {self.path} is closed", path=str(self.path), verdict_id=verdict.id)
            if self._torn_tail:
                data = b"\n" + data
            try:
                written = os.write(self._fd, data)  # one write per record, never a loop
            except OSError as exc:
                self._torn_tail = True  # part of the record may have reached the file
                error = self._error(verdict, f"{exc}", errno=exc.errno)
                error.__cause__ = exc
            else:
                if written != len(data):
                    self._torn_tail = True
                    error = self._error(verdict, f"short write ({written} of {len(data)} bytes)", written=written)
                    error.details["expected"] = len(data)
                else:
                    self._torn_tail = False
                    if self.fsync:
                        try:
                            os.fsync(self._fd)
                        except OSError as exc:
                            error = self._error(verdict, f"fsync failed: {exc}", errno=exc.errno)
                            error.__cause__ = exc
            if error is not None:
                self.failed_writes += 1
        if error is None:
            return True
        if self.on_error == "raise":
            raise error
        logger.critical(
            "could not write the audit log line of verdict %s: %s",
            verdict.id[:200],
            error.message,
            extra={"grvl_id": verdict.id[:200], "grvl_error_code": error.code},
        )
        return False

    def _error(self, verdict: Verdict, problem: str, **details: Any) -> AuditLogError:
        return AuditLogError(
            f"audit log {self.path}: {problem}", path=str(self.path), verdict_id=verdict.id[:200], **details
        )

    def close(self) -> None:
        """Close the file (idempotent); later writes raise :class:`~grvl_sdk.errors.AuditLogError`."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._fd is None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, on_error={self.on_error!r}, failed_writes={self.failed_writes})"


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditLogContents:
    """What :func:`read_audit_log` found: the records in file order, and the 1-based line numbers of
    ``torn`` lines (not a JSON object: cut by a kill or a full disk, or glued to a cut one)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    torn: list[int] = field(default_factory=list)


def read_audit_log(path: str | os.PathLike[str]) -> AuditLogContents:
    """Read an audit log line by line (split on ``b"\\n"`` only), skipping and reporting torn lines.

    Empty lines are skipped silently (a writer may start a record with a spare newline); a last line
    without a newline is read like the others. Records without ``version`` (older files) are kept.

    Raises:
        AuditLogError: the file cannot be opened or read (``details["path"]``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"the audit log path must be a str or a path, got {type(path).__name__}")
    records: list[dict[str, Any]] = []
    torn: list[int] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once, then is refused
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{os.fspath(path)!r} is not a regular file")
        os.set_blocking(fd, True)
        with open(fd, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    record = None
                if isinstance(record, dict):
                    records.append(record)
                else:
                    torn.append(number)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise AuditLogError(f"cannot read the audit log {path}: {exc}", path=str(path)) from exc
    return AuditLogContents(records, torn)
