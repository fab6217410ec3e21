"""Loaders of labelled data other than chat records, and the dispatch over every format.

* **GuardReasoner text benchmarks** (:func:`load_benchmark`): a JSON list of ``instruction`` /
  ``input`` (transcript) / ``output`` (a bare label, or ``Request: …`` / ``Response: …`` lines).
* **Plain tables** (:func:`load_table`): JSONL or CSV with the columns named by a :class:`ColumnMap`.
* :func:`load_data` detects the format of a path (:func:`detect_format`) and calls the loader, chat
  records included (:func:`grvl_sdk.trainer.vltrain.load_vltrain`).

Labels are read by :func:`grvl_sdk.data.labels.normalize_label` (the alias table shared with
evaluation). Every problem raises :class:`~grvl_sdk.errors.DataError` naming the file, line and field
(or, with ``on_error="skip"``, is collected and the record skipped).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.data.errors import ErrorPolicy, OnError, locate
from grvl_sdk.data.labels import Label, normalize_label
from grvl_sdk.data.readers import iter_records
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.errors import DataError
from grvl_sdk.protocol.prompt import parse_transcript
from grvl_sdk.trainer.vltrain import SYNTHESIS_DROPPED, load_vltrain, resolve_image, training_files

__all__ = ["BenchmarkTask", "ColumnMap", "DataFormat", "detect_format", "load_benchmark", "load_data", "load_table"]

DataFormat = Literal["vltrain", "benchmark", "jsonl", "csv"]
_NO_RESPONSE = "None"

# ----------------------------------------------------------------------------------------------
# GuardReasoner text benchmark files
# ----------------------------------------------------------------------------------------------
_LABEL_LINE = re.compile(r"^\s*(request|response)\s*:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
BenchmarkTask = Literal["auto", "request", "response"]


def _benchmark_labels(output: Any, response: str | None, task: BenchmarkTask) -> tuple[Label | None, Label | None]:
    if not isinstance(output, str):
        raise DataError(f"must be a string, got {type(output).__name__}", field="output")
    lines = dict((m.group(1).lower(), m.group(2)) for m in _LABEL_LINE.finditer(output))
    try:
        if lines:
            request_label = normalize_label(lines.get("request"), "request")
            response_label = normalize_label(lines.get("response"), "response")
        else:
            target = task if task != "auto" else ("request" if response is None else "response")
            label = normalize_label(output, target)
            request_label, response_label = (label, None) if target == "request" else (None, label)
    except DataError as exc:
        raise DataError(exc.problem, field="output") from exc
    if response is None and response_label is not None:
        raise DataError("a response label was given but the transcript has no response", field="output")
    if request_label is None and response_label is None:
        raise DataError("no harm label in the output", field="output")
    return request_label, response_label  # type: ignore[return-value]


def load_benchmark(
    path: str | os.PathLike[str],
    *,
    task: BenchmarkTask = "auto",
    on_error: OnError = "raise",
    errors: list[DataError] | None = None,
    limit: int | None = None,
) -> list[TrainingSample]:
    """Load GuardReasoner text benchmark files (a JSON list of ``instruction``/``input``/``output``).

    ``path`` is a file or a folder of ``.json`` files. A bare ``output`` label is the request's label
    when the transcript has no response and the response's label otherwise (``task="auto"``); force
    one with ``task``. ``Request: None`` means "not labelled". No reasoning: synthesize it first.
    """
    if task not in ("auto", "request", "response"):
        raise DataError(f"task must be 'auto', 'request' or 'response', got {task!r}", field="task")
    handler = ErrorPolicy(on_error, errors, what="training record")
    samples: list[TrainingSample] = []
    for file in training_files(Path(path), (".json", ".jsonl")):
        for line, record in iter_records(file):
            if limit is not None and len(samples) >= limit:
                break
            try:
                if not isinstance(record, Mapping):
                    raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
                if "input" not in record:
                    raise DataError("missing", field="input")
                try:
                    request, response, count = parse_transcript(record["input"])
                except ValueError as exc:
                    raise DataError(str(exc), field="input") from exc
                if count:
                    raise DataError("a text benchmark record has <image> markers but no images", field="input")
                request_label, response_label = _benchmark_labels(record.get("output"), response, task)
                samples.append(
                    TrainingSample(
                        request=request,
                        response=response,
                        request_label=request_label,
                        response_label=response_label,
                        source=f"{file}:{line}",
                    )
                )
            except DataError as exc:
                handler.handle(locate(exc, str(file), line))
    return samples


# ----------------------------------------------------------------------------------------------
# Plain JSONL / CSV tables
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnMap:
    """Which column holds what, for :func:`load_table`. ``None`` means "no such column"."""

    request: str | None = "request"
    response: str | None = "response"
    images: str | None = "images"
    request_label: str | None = "request_label"
    response_label: str | None = "response_label"
    reasoning: str | None = "reasoning"
    id: str | None = "id"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | ColumnMap | None) -> ColumnMap:
        """Build from a dict (unknown keys raise :class:`DataError`)."""
        if mapping is None:
            return cls()
        if isinstance(mapping, ColumnMap):
            return mapping
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise DataError(f"unknown column role(s) {unknown}; known: {sorted(known)}", field="columns")
        return cls(**{k: (None if v in (None, "") else str(v)) for k, v in mapping.items()})


def _cell(row: Mapping[str, Any], column: str | None) -> Any:
    if column is None:
        return None
    value = row.get(column)
    if isinstance(value, str) and value == "" and column:
        return None
    return value


def _table_images(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"looks like a JSON list but is not valid JSON: {exc.msg}") from exc
            return list(parsed)
        return [text]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _table_rows(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "csv":
        with path.open("r", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield reader.line_num, row
    else:
        yield from iter_records(path)


def load_table(
    path: str | os.PathLike[str],
    columns: ColumnMap | Mapping[str, Any] | None = None,
    *,
    format: Literal["jsonl", "csv"] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    errors: list[DataError] | None = None,
    limit: int | None = None,
) -> list[TrainingSample]:
    """Load a JSONL (or JSON list) or CSV file whose columns are named by ``columns``.

    Labels may be spelled as in :data:`LABEL_ALIASES`. An images cell holds a path, a JSON list of
    paths (CSV) or a list (JSON); relative paths are resolved against ``image_root`` (default: the
    file's folder). A mapped request column absent from a CSV header is an error.
    """
    cols = ColumnMap.from_mapping(columns)
    handler = ErrorPolicy(on_error, errors, what="training record")
    samples: list[TrainingSample] = []
    for file in training_files(Path(path), (".jsonl", ".json", ".csv")):
        fmt = format or ("csv" if file.suffix.lower() == ".csv" else "jsonl")
        base = Path(image_root) if image_root is not None else file.parent
        if fmt == "csv":
            with file.open("r", encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle), [])
            mapped = [c for c in (cols.request, cols.images) if c]
            if not any(c in header for c in mapped):
                raise DataError(
                    f"none of the request/image columns {mapped} is in the header {header}",
                    file=str(file),
                    line=1,
                    field=cols.request or cols.images,
                )
        for line, row in _table_rows(file, fmt):
            if limit is not None and len(samples) >= limit:
                break
            try:
                samples.append(_table_sample(row, cols, base, f"{file}:{line}"))
            except DataError as exc:
                handler.handle(locate(exc, str(file), line))
    return samples


def _table_sample(row: Any, cols: ColumnMap, base: Path, source: str) -> TrainingSample:
    if not isinstance(row, Mapping):
        raise DataError(f"a record must be a JSON object, got {type(row).__name__}")
    labels: dict[str, Label | None] = {}
    for role in ("request_label", "response_label"):
        column = getattr(cols, role)
        try:
            labels[role] = normalize_label(_cell(row, column), role.split("_")[0])  # type: ignore[assignment]
        except DataError as exc:
            raise DataError(exc.problem, field=column) from exc
    try:
        raw_images = _table_images(_cell(row, cols.images))
    except DataError as exc:
        raise DataError(exc.problem, field=cols.images) from exc
    images = tuple(resolve_image(v, base, f"{cols.images}[{i}]") for i, v in enumerate(raw_images))
    response = _cell(row, cols.response)
    if isinstance(response, str) and response == _NO_RESPONSE:
        response = None
    texts: dict[str, Any] = {}
    for role in ("request", "reasoning", "id"):
        value = _cell(row, getattr(cols, role))
        if value is not None and not isinstance(value, str):
            if role == "id" and isinstance(value, int):
                value = str(value)
            else:
                raise DataError(f"must be a string, got {type(value).__name__}", field=getattr(cols, role))
        texts[role] = value
    try:
        return TrainingSample(
            request=texts["request"],
            response=response,
            images=images,
            request_label=labels["request_label"],
            response_label=labels["response_label"],
            reasoning=texts["reasoning"],
            source=source,
            id=texts["id"],
        )
    except DataError as exc:
        mapped = getattr(cols, exc.field, None) if exc.field else None
        raise DataError(exc.problem, field=mapped or exc.field) from exc


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike[str]) -> DataFormat:
    """Guess a file's format from its first record: chat records, benchmark items, or a plain table."""
    target = Path(path)
    files = training_files(target, (".json", ".jsonl", ".csv"))
    first = files[0]
    if first.suffix.lower() == ".csv":
        return "csv"
    for _, record in iter_records(first):
        if isinstance(record, Mapping):
            if "messages" in record or "conversations" in record:
                return "vltrain"
            if {"instruction", "input", "output"} <= set(record):
                return "benchmark"
        return "jsonl"
    return "jsonl"


def _refuse_dropped_list(path: Any) -> None:
    """A synthesis ``dropped.jsonl`` given as data: say what it is rather than fail on its first record."""
    if not isinstance(path, (str, os.PathLike)) or Path(path).name != SYNTHESIS_DROPPED or not Path(path).is_file():
        return
    for _, record in iter_records(Path(path)):
        if isinstance(record, Mapping) and "reason" in record and "last_answer" in record:
            raise DataError(
                "this is the list of samples synthesis dropped (id, reason, the teacher's last answer), not "
                f"training data: use {Path(path).with_name('records.jsonl')} (or the folder)",
                file=str(path),
            )
        return


def load_data(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    *,
    on_error: OnError = "raise",
    errors: list[DataError] | None = None,
) -> list[TrainingSample]:
    """Load one data source given as a path (format detected) or a dict.

    Dict keys: ``path`` (required), ``format`` (``vltrain``/``benchmark``/``jsonl``/``csv``), ``columns``
    (a :class:`ColumnMap` dict), ``image_root``, ``task`` (benchmarks), ``limit``.
    """
    if isinstance(spec, (str, os.PathLike)):
        spec = {"path": os.fspath(spec)}
    if not isinstance(spec, Mapping) or "path" not in spec:
        raise DataError("a data source is a path or a dict with a 'path'", field="path")
    allowed = {"path", "format", "columns", "image_root", "task", "limit"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise DataError(f"unknown data source key(s) {unknown}; known: {sorted(allowed)}", field=unknown[0])
    path = spec["path"]
    _refuse_dropped_list(path)
    fmt = spec.get("format") or detect_format(path)
    limit = spec.get("limit")
    if fmt == "vltrain":
        return load_vltrain(path, image_root=spec.get("image_root"), on_error=on_error, errors=errors, limit=limit)
    if fmt == "benchmark":
        return load_benchmark(path, task=spec.get("task", "auto"), on_error=on_error, errors=errors, limit=limit)
    if fmt in ("jsonl", "csv"):
        return load_table(
            path,
            spec.get("columns"),
            format=fmt,
            image_root=spec.get("image_root"),
            on_error=on_error,
            errors=errors,
            limit=limit,
        )
    raise DataError(f"unknown format {fmt!r}; use vltrain, benchmark, jsonl or csv", field="format")
