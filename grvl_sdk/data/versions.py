"""Format versions of the records grvl-sdk writes, so the formats can evolve.

Every record this code writes carries ``"version": "MAJOR.MINOR"`` (:func:`stamp`). A minor version
adds optional fields: older readers ignore them. A major version changes the meaning of a field:
readers refuse a record of a newer major version with a clear error (:func:`check_version`). A record
without a version was written before versions existed and is read as version ``1.0``.

=======================  =========  =========================================================
format                   version    files
=======================  =========  =========================================================
``eval-prediction``      1.1        ``predictions/<benchmark>.jsonl`` lines (``run_eval``); 1.1 adds
                                    ``score``, ``tier`` and ``escalation``
``eval-run``             1.0        ``run.json`` of a results folder
``eval-results``         1.1        ``results.json`` of a results folder; 1.1 adds ``mode``
``synthesis-record``     1.0        ``records.jsonl`` lines (``synthesize``; R-SFT data)
``synthesis-dropped``    1.0        ``dropped.jsonl`` lines (``synthesize``)
``training-run``         1.1        ``rsft_config.yaml`` and ``data_summary.json`` of a run folder; 1.1
                                    adds ``fast_fraction`` and ``fast_prompts``
``training-metrics``     1.0        ``metrics.jsonl`` lines of a run folder
``rl-record``            1.0        ``train.jsonl`` / ``validation.jsonl`` lines of RL data
``rl-attempt``           1.0        ``attempts.jsonl`` lines of rejection sampling (read on resume)
``rl-summary``           1.0        ``sampling_summary.json`` / ``augment_summary.json``
``pipeline-state``       1.0        ``pipeline_state.json`` of a training pipeline run folder
=======================  =========  =========================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from grvl_sdk.errors import DataError

__all__ = ["FORMATS", "VERSION_FIELD", "check_version", "parse_version", "stamp"]

#: The field every written record carries.
VERSION_FIELD = "version"
#: The version this code writes, per format.
FORMATS: dict[str, str] = {
    "eval-prediction": "1.1",
    "eval-run": "1.0",
    "eval-results": "1.1",
    "synthesis-record": "1.0",
    "synthesis-dropped": "1.0",
    "training-run": "1.1",
    "training-metrics": "1.0",
    "rl-record": "1.0",
    "rl-attempt": "1.0",
    "rl-summary": "1.0",
    "pipeline-state": "1.0",
}
_VERSION = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*$")


def _current(kind: str) -> str:
    try:
        return FORMATS[kind]
    except KeyError:
        raise DataError(f"unknown record format {kind!r}; known: {sorted(FORMATS)}", field="format") from None


def parse_version(value: Any) -> tuple[int, int]:
    """``(major, minor)`` of ``"2"``, ``"1.3"`` or the number ``1``; :class:`DataError` for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, 0
    match = _VERSION.match(value) if isinstance(value, str) else None
    if match is None:
        raise DataError(f"not a format version (expected 'MAJOR.MINOR'): {value!r}", field=VERSION_FIELD)
    return int(match.group(1)), int(match.group(2) or 0)


def stamp(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with the current ``version`` of format ``kind`` as its first field."""
    fields = {k: v for k, v in record.items() if k != VERSION_FIELD}
    return {VERSION_FIELD: _current(kind), **fields}


def check_version(
    kind: str, record: Mapping[str, Any], *, file: str | None = None, line: int | None = None
) -> tuple[int, int]:
    """The ``(major, minor)`` version of a record of format ``kind`` (``(1, 0)`` when it has none).

    Raises :class:`DataError` (naming ``file`` and ``line``) for a newer major version than this code
    reads, or a version that is not ``MAJOR.MINOR``.
    """
    current = parse_version(_current(kind))
    if VERSION_FIELD not in record:
        return 1, 0
    try:
        version = parse_version(record[VERSION_FIELD])
    except DataError as exc:
        raise DataError(exc.problem, file=file, line=line, field=VERSION_FIELD) from None
    if version[0] > current[0]:
        raise DataError(
            f"this {kind} record has format version {record[VERSION_FIELD]}, newer than this grvl-sdk reads "
            f"({current[0]}.x): upgrade grvl-sdk to read it",
            file=file,
            line=line,
            field=VERSION_FIELD,
        )
    return version
