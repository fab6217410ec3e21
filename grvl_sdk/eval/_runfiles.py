"""Plumbing of a results folder: atomic JSON, the resumable predictions files, progress and log muting."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grvl_sdk.data.errors import as_eval_error
from grvl_sdk.data.readers import iter_json_lines
from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import DataError, EvalError, GRVLError
from grvl_sdk.eval.predictions import PREDICTION_FORMAT, PredictionRecord

__all__ = ["Progress", "chunks", "finished_records", "quiet_verdict_logs", "read_json", "write_json"]


def read_json(path: Path, kind: str | None = None) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`EvalError` when unreadable or not an object. With ``kind`` (a
    format of :mod:`grvl_sdk.data.versions`), a ``version`` newer than this code reads raises
    :class:`~grvl_sdk.data.errors.EvalDataError` (an ``EvalError``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalError(f"{path} is not a JSON object")
    if kind is not None:
        try:
            check_version(kind, data, file=str(path))
        except DataError as exc:
            raise as_eval_error(exc) from None
    return data


def write_json(path: Path, data: Any, kind: str | None = None) -> None:
    """Write ``data`` as JSON atomically (a temporary file, then a rename); with ``kind``, stamped with
    that format's ``version``."""
    if kind is not None:
        data = stamp(kind, data)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finished_records(path: Path) -> list[PredictionRecord]:
    """Records of an earlier run worth keeping (labelled or unparseable); rewrites the file without the
    rest (failed checks, a line cut by an interruption). A record of a newer format version raises
    :class:`~grvl_sdk.data.errors.EvalDataError` (the file is left as it is)."""
    if not path.exists():
        return []
    keep: list[PredictionRecord] = []
    bad: list[int] = []
    dropped = 0
    try:
        rows = list(iter_json_lines(path, bad_lines="skip", skipped=bad))
        for line, value in rows:
            if isinstance(value, dict):
                check_version(PREDICTION_FORMAT, value, file=str(path), line=line)
    except DataError as exc:
        raise as_eval_error(exc) from None
    for _, value in rows:
        try:
            record = PredictionRecord.from_dict(value)
        except (GRVLError, TypeError, AttributeError):
            dropped += 1
            continue
        if record.status in ("ok", "unparseable"):
            keep.append(record)
        else:
            dropped += 1
    if dropped or bad:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, path)
    return keep


class Progress:
    """A tqdm bar with ETA over all samples of the run, or nothing."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self._bar: Any = None
        if enabled and total > initial:
            from grvl_sdk._lazy import require

            tqdm = require("tqdm", extra="eval").tqdm
            self._bar = tqdm(total=total, initial=initial, unit="sample", dynamic_ncols=True, file=sys.stderr)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def update(self, n: int, failed: int) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if failed:
                self._bar.set_postfix(failed=failed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _DropVerdictRecords(logging.Filter):
    """Drops the guard's per-verdict log lines (they carry ``grvl_decision``); the predictions file has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "grvl_decision")


@contextlib.contextmanager
def quiet_verdict_logs() -> Iterator[None]:
    """Mute the guard's per-verdict log lines for the duration."""
    logger = logging.getLogger("grvl_sdk")
    dropper = _DropVerdictRecords()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
