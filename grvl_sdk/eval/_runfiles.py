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

from grvl_sdk.errors import EvalError, GRVLError
from grvl_sdk.eval.formats import PredictionRecord

__all__ = ["Progress", "chunks", "finished_records", "quiet_verdict_logs", "read_json", "write_json"]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`EvalError` when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalError(f"{path} is not a JSON object")
    return data


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finished_records(path: Path) -> list[PredictionRecord]:
    """Records of an earlier run worth keeping (labelled or unparseable); rewrites the file without the
    rest (failed checks, a line cut by an interruption)."""
    if not path.exists():
        return []
    keep: list[PredictionRecord] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            record = PredictionRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, GRVLError, TypeError, AttributeError):
            dropped += 1
            continue
        if record.status in ("ok", "unparseable"):
            keep.append(record)
        else:
            dropped += 1
    if dropped:
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
