"""Readers for benchmark files, built on the shared data layer (:mod:`grvl_sdk.data`).

Benchmark files (:func:`load_benchmark`, layout detected from the content):

- **GuardReasoner text JSON**: a list of ``{"instruction", "input", "output"}``. ``input`` is a transcript
  ``"Human user:\\n{request}\\n\\nAI assistant:\\n{response}\\n\\n"`` (response ``None`` = no response);
  ``output`` is a bare label (``harmful``/``unharmful``, for the benchmark's task) or text with lines
  ``Request: …``, ``Completion: …``, ``Response: …`` where ``None`` means "no label".
- **Chat records**: ``{"messages": [system?, user, assistant?], "images": [...]}`` (or ShareGPT
  ``conversations`` with ``from``/``value``). The user turn is the transcript with one ``<image>`` per
  image (text before a ``\n\nHuman user:`` marker, e.g. the instruction, is cut off); the assistant turn
  holds the gold ``Request:``/``Response:`` lines.
- **The authors' VL test files** (``HarmImageTest.json``, ``SPA_VL_Eval.json``): chat records whose first
  message is the instruction then the transcript; their images come from the ``GuardReasoner-VLTest``
  image folder by position, not from the JSON (:mod:`grvl_sdk.eval.vl`). Used for the registered image
  sets when the records have that form or an ``image_folder`` is given.
- **Generic JSON lines** (or a JSON list): ``text`` (or ``prompt``/``request``), ``image`` or ``images``
  (paths), ``response``, and labels ``request_label``/``response_label`` or a bare ``label`` for the
  benchmark's task; an optional ``id``.

Labels are read by :func:`grvl_sdk.data.labels.normalize_label` for the task they belong to, with the
one alias table the trainer uses too (``harmful``/``unharmful``, ``unsafe``/``safe``, ``1``/``0``,
``true``/``false``; ``null``/``"None"``/empty: no label); the refusal task takes only
``refusal``/``compliance`` (or a boolean). Relative image paths are resolved against the file's folder
(or ``image_root``). Files are read record by record with line numbers (:mod:`grvl_sdk.data.readers`);
every problem raises :class:`~grvl_sdk.data.errors.EvalDataError` (a ``DataError`` and a
``EvalDataError``).

Prediction files are read by :mod:`grvl_sdk.eval.predictions` (``PredictionRecord``,
``load_predictions`` are importable from here too).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.data.errors import EvalDataError, as_eval_error
from grvl_sdk.data.labels import normalize_label
from grvl_sdk.data.readers import iter_records
from grvl_sdk.data.samples import Sample
from grvl_sdk.errors import DataError
from grvl_sdk.eval.registry import Benchmark
from grvl_sdk.protocol.prompt import parse_transcript as split_transcript

__all__ = [
    "PredictionRecord",  # noqa: F822 (from grvl_sdk.eval.predictions, see __getattr__)
    "Sample",
    "Status",  # noqa: F822
    "chat_turns",
    "detect_format",
    "gold_labels",
    "load_benchmark",
    "load_predictions",  # noqa: F822
    "parse_label_text",
    "parse_transcript",
    "read_numbered_records",
    "read_records",
]

BenchmarkFormat = Literal["guardreasoner-text", "chat", "generic"]

_HUMAN = "Human user:"
_MARKER = "\n\nHuman user:"
_IMAGE = "<image>"
_LABEL_LINE = re.compile(r"\b(request|completion|response)\s*:\s*([a-z]+)", re.IGNORECASE)
_LINE_TASK = {"request": "request", "completion": "refusal", "response": "response"}


# -- generic helpers --------------------------------------------------------------------------


def read_numbered_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of a JSON list, one JSON object, or JSON lines (blank lines skipped).

    Read by :func:`grvl_sdk.data.readers.iter_records` (lines split on ``\\n`` only); errors name the
    file and line.
    """
    path = Path(path)
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        for line, record in iter_records(path):
            if not isinstance(record, dict):
                message = f"item {len(records)} is not a JSON object"
                raise EvalDataError(message, file=str(path), line=line, path=str(path))
            records.append((line, record))
    except DataError as exc:
        raise as_eval_error(exc) from exc
    return records


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of :func:`read_numbered_records`, without their line numbers."""
    return [record for _, record in read_numbered_records(path)]


def _label(value: Any, task: str, where: str) -> str | None:
    """The canonical gold label for ``task`` (:func:`grvl_sdk.data.labels.normalize_label`); ``None`` for no label."""
    try:
        return normalize_label(value, task)
    except DataError as exc:
        raise EvalDataError(f"{where}: {exc.problem}") from exc


def parse_label_text(text: str, where: str = "label") -> dict[str, str]:
    """Gold labels from ``Request: …``/``Completion: …``/``Response: …`` lines (``None`` = no label)."""
    labels: dict[str, str] = {}
    for key, value in _LABEL_LINE.findall(text):
        task = _LINE_TASK[key.lower()]
        if task in labels:
            continue
        label = _label(value, task, f"{where} ({key})")
        if label is not None:
            labels[task] = label
    return labels


def gold_labels(output: Any, task: str, where: str) -> dict[str, str]:
    """Gold labels of a bare label (for ``task``) or of label-line text (``None`` = no label)."""
    if isinstance(output, str) and _LABEL_LINE.search(output):
        return parse_label_text(output, where)
    label = _label(output, task, where)
    return {task: label} if label is not None else {}


def parse_transcript(transcript: str, where: str = "transcript") -> tuple[str | None, str | None, int]:
    """``(request, response, number of <image> markers)`` of a ``Human user:/AI assistant:`` transcript.

    Transcripts are split by :func:`grvl_sdk.prompt.parse_transcript` (the exact inverse of the prompt
    code); text that is not a transcript at all is taken as the request itself.
    """
    if not transcript.lstrip().startswith(_HUMAN):
        return (transcript or None), None, 0
    try:
        return split_transcript(transcript)
    except ValueError as exc:
        raise EvalDataError(f"{where}: {exc}") from exc


def _image_paths(value: Any, root: Path, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise EvalDataError(f"{where}: images must be a path or a list of paths, got {value!r}")
    return tuple(v if Path(v).is_absolute() or "://" in v else str(root / v) for v in items)


# -- benchmark files --------------------------------------------------------------------------


def detect_format(record: dict[str, Any]) -> BenchmarkFormat:
    """The layout of one benchmark record."""
    if "messages" in record or "conversations" in record:
        return "chat"
    if "input" in record and "output" in record:
        return "guardreasoner-text"
    return "generic"


def _sample_id(record: dict[str, Any], index: int) -> str:
    value = record.get("id", record.get("prompt_id"))
    return str(value) if value is not None else str(index)


def _from_guardreasoner(record: dict[str, Any], index: int, task: str, root: Path, where: str, source: str) -> Sample:
    if not isinstance(record.get("input"), str):
        raise EvalDataError(f"{where}: 'input' must be a transcript string")
    request, response, _ = parse_transcript(record["input"], where)
    images = _image_paths(record.get("images", record.get("image")), root, where)
    labels = gold_labels(record.get("output"), task, where)
    return Sample(_sample_id(record, index), request, response, images, labels, source=source)


def chat_turns(record: dict[str, Any], where: str) -> Iterator[tuple[str, str]]:
    """``(role, text)`` of a chat record's turns (``messages`` or ShareGPT ``conversations``); image parts
    of a content list become ``<image>``; ShareGPT roles are mapped to ``user``/``assistant``."""
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list):
        raise EvalDataError(f"{where}: 'messages' must be a list of chat turns")
    for turn in turns:
        if not isinstance(turn, dict):
            raise EvalDataError(f"{where}: a chat turn is not an object")
        role = str(turn.get("role", turn.get("from", ""))).lower()
        content = turn.get("content", turn.get("value", ""))
        if isinstance(content, list):  # content parts: keep the text, mark images
            content = "".join(
                part.get("text", "") if part.get("type") == "text" else _IMAGE
                for part in content
                if isinstance(part, dict)
            )
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        yield role, str(content)


def _from_chat(record: dict[str, Any], index: int, task: str, root: Path, where: str, source: str) -> Sample:
    user = assistant = None
    for role, content in chat_turns(record, where):
        if role == "user" and user is None:
            user = content
        elif role == "assistant" and assistant is None:
            assistant = content
    if user is None:
        raise EvalDataError(f"{where}: no user turn")
    if not user.startswith(_HUMAN) and _MARKER in user:  # an instruction before the transcript
        user = user[user.find(_MARKER) + 2 :]
    request, response, n_markers = parse_transcript(user, where)
    images = _image_paths(record.get("images", record.get("image")), root, where)
    if n_markers and len(images) != n_markers:
        raise EvalDataError(f"{where}: {n_markers} <image> markers but {len(images)} images")
    gold = (
        parse_label_text(assistant, where) if assistant is not None else gold_labels(record.get("label"), task, where)
    )
    return Sample(_sample_id(record, index), request, response, images, gold, source=source)


def _from_generic(record: dict[str, Any], index: int, task: str, root: Path, where: str, source: str) -> Sample:
    text = next((record[k] for k in ("text", "prompt", "request") if k in record), None)
    response = record.get("response")
    for name, value in (("text", text), ("response", response)):
        if value is not None and not isinstance(value, str):
            raise EvalDataError(f"{where}: {name} must be a string or null")
    images = _image_paths(record.get("images", record.get("image")), root, where)
    labels: dict[str, str] = {}
    for key, label_task in (("request_label", "request"), ("response_label", "response"), ("refusal_label", "refusal")):
        label = _label(record.get(key), label_task, where)
        if label is not None:
            labels[label_task] = label
    if "label" in record and task not in labels:
        labels.update(gold_labels(record["label"], task, where))
    return Sample(_sample_id(record, index), text or None, response, images, labels, source=source)


_READERS = {"guardreasoner-text": _from_guardreasoner, "chat": _from_chat, "generic": _from_generic}


def load_benchmark(
    path: str | Path,
    benchmark: Benchmark,
    *,
    image_root: str | Path | None = None,
    image_folder: str | Path | None = None,
) -> list[Sample]:
    """Read a benchmark file (any supported layout) into samples, in file order.

    A bare label is the gold label of ``benchmark.task``. Ids come from an ``id`` field, else the
    position in the file; they must be unique. ``image_root`` resolves relative image paths (default:
    the file's folder). The authors' VL test files (a registered image set whose records carry the
    instruction before ``\n\nHuman user:``, or any file of such a set when ``image_folder`` is given)
    take their images from the GuardReasoner-VLTest ``image_folder`` by position (default: the file's
    folder); see :func:`grvl_sdk.eval.vl.load_vl_test`. Raises :class:`EvalDataError`.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records = read_numbered_records(path)
    if benchmark.vl_label is not None and records:
        from grvl_sdk.eval.vl import is_vl_test_record, load_vl_test

        if image_folder is not None or is_vl_test_record(records[0][1]):
            return load_vl_test(path, benchmark, image_folder)
    samples: list[Sample] = []
    for index, (line, record) in enumerate(records):
        where = f"{path.name} item {index}"
        read = _READERS[detect_format(record)]
        samples.append(read(record, index, benchmark.task, root, where, f"{path}:{line}"))
    seen: set[str | None] = set()
    for sample in samples:
        if sample.id in seen:
            raise EvalDataError(f"{path}: duplicate sample id {sample.id!r}", path=str(path))
        seen.add(sample.id)
    return samples


# -- prediction files -------------------------------------------------------------------------


_MOVED = {"PredictionRecord", "Status", "load_predictions"}


def __getattr__(name: str) -> Any:
    # Prediction files moved to grvl_sdk.eval.predictions (imported lazily: it imports this module).
    if name in _MOVED:
        from grvl_sdk.eval import predictions

        return getattr(predictions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
