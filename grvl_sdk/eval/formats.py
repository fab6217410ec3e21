"""Readers for benchmark files and prediction files.

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
  benchmark's task; an optional ``id``. Labels are ``harmful``/``unharmful`` strings or booleans
  (true = harmful); ``null``/``"None"`` means no label.

Relative image paths are resolved against the file's folder (or ``image_root``).

Prediction files (:func:`load_predictions`): the ``predictions/*.jsonl`` written by
:func:`grvl_sdk.eval.run_eval`, the text GuardReasoner's ``{"prompt", "label", "predict"}`` JSON lines
(``predict`` = the raw output), or the VL harness's ``generated_predictions.jsonl``
(``text_output`` = the raw output, ``predict`` = the label it extracted; :mod:`grvl_sdk.eval.vl`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.errors import DataFormatError
from grvl_sdk.eval.registry import TASK_LABELS, Benchmark, Task
from grvl_sdk.protocol.prompt import parse_transcript as split_transcript

__all__ = [
    "PredictionRecord",
    "Sample",
    "Status",
    "chat_turns",
    "detect_format",
    "gold_labels",
    "load_benchmark",
    "load_predictions",
    "parse_label_text",
    "parse_transcript",
    "read_records",
]

Status = Literal["ok", "unparseable", "failed"]
BenchmarkFormat = Literal["guardreasoner-text", "chat", "generic"]

_HUMAN = "Human user:"
_MARKER = "\n\nHuman user:"
_IMAGE = "<image>"
_LABEL_LINE = re.compile(r"\b(request|completion|response)\s*:\s*([a-z]+)", re.IGNORECASE)
_LINE_TASK = {"request": "request", "completion": "refusal", "response": "response"}


@dataclass(frozen=True)
class Sample:
    """One benchmark item: the guard's input and the gold label(s) by task."""

    id: str
    text: str | None
    response: str | None = None
    #: Image paths (absolute or relative to the working directory once loaded).
    images: tuple[str, ...] = ()
    #: Gold label per task (``"request"``, ``"response"``, ``"refusal"``); a missing task has no gold.
    labels: dict[str, str] = field(default_factory=dict)

    def gold(self, task: Task) -> str | None:
        return self.labels.get(task)

    def check_input(self) -> dict[str, Any]:
        """Keyword arguments for ``Guard.check`` / one item of ``Guard.check_batch``."""
        spec: dict[str, Any] = {"text": self.text, "response": self.response}
        if self.images:
            spec["images"] = list(self.images)
        return spec


@dataclass
class PredictionRecord:
    """One scored (or to-be-scored) guard output. A line of ``predictions/<benchmark>.jsonl``.

    ``status``: ``"ok"`` (``predicted`` is a label), ``"unparseable"`` (the output holds no label for the
    task) or ``"failed"`` (no output: the check raised); ``None`` until parsed. The last two count as
    wrong predictions. ``defaulted``: the output held no label and the parse mode's rule supplied one
    (only ``official-vl`` on a text-image response set: ``unharmful``, the authors' quirk).
    """

    id: str
    gold: str
    raw_output: str = ""
    predicted: str | None = None
    status: Status | None = None
    benchmark: str = ""
    task: str = ""
    index: int | None = None
    error: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The verdict's latency (for a batched local check: the whole batch's generate time).
    latency_ms: float | None = None
    batch_size: int | None = None
    defaulted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictionRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            record = cls(**known)
        except TypeError as exc:
            raise DataFormatError(f"not a prediction record: {exc}") from exc
        record.id = str(record.id)
        return record


# -- generic helpers --------------------------------------------------------------------------


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list, or JSON lines (blank lines skipped), as a list of dicts."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc}", path=str(path)) from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path} is not valid JSON: {exc}", path=str(path)) from exc
        records = data
    else:
        records = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{lineno} is not a JSON object: {exc}", path=str(path)) from exc
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataFormatError(f"{path}: item {bad} is not a JSON object", path=str(path))
    return records


def _label(value: Any, task: str, where: str) -> str | None:
    """Normalise a gold label for ``task``; ``None`` for "no label"."""
    positive, negative = TASK_LABELS[task]
    if value is None:
        return None
    if isinstance(value, bool):
        return positive if value else negative
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("", "none", "null"):
            return None
        if low in (positive, negative):
            return low
    raise DataFormatError(f"{where}: {value!r} is not a {task} label ({positive}/{negative}/None)")


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
        raise DataFormatError(f"{where}: {exc}") from exc


def _image_paths(value: Any, root: Path, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise DataFormatError(f"{where}: images must be a path or a list of paths, got {value!r}")
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


def _from_guardreasoner(record: dict[str, Any], index: int, task: str, root: Path, where: str) -> Sample:
    if not isinstance(record.get("input"), str):
        raise DataFormatError(f"{where}: 'input' must be a transcript string")
    request, response, _ = parse_transcript(record["input"], where)
    images = _image_paths(record.get("images", record.get("image")), root, where)
    return Sample(_sample_id(record, index), request, response, images, gold_labels(record.get("output"), task, where))


def chat_turns(record: dict[str, Any], where: str) -> Iterator[tuple[str, str]]:
    """``(role, text)`` of a chat record's turns (``messages`` or ShareGPT ``conversations``); image parts
    of a content list become ``<image>``; ShareGPT roles are mapped to ``user``/``assistant``."""
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list):
        raise DataFormatError(f"{where}: 'messages' must be a list of chat turns")
    for turn in turns:
        if not isinstance(turn, dict):
            raise DataFormatError(f"{where}: a chat turn is not an object")
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


def _from_chat(record: dict[str, Any], index: int, task: str, root: Path, where: str) -> Sample:
    user = assistant = None
    for role, content in chat_turns(record, where):
        if role == "user" and user is None:
            user = content
        elif role == "assistant" and assistant is None:
            assistant = content
    if user is None:
        raise DataFormatError(f"{where}: no user turn")
    if not user.startswith(_HUMAN) and _MARKER in user:  # an instruction before the transcript
        user = user[user.find(_MARKER) + 2 :]
    request, response, n_markers = parse_transcript(user, where)
    images = _image_paths(record.get("images", record.get("image")), root, where)
    if n_markers and len(images) != n_markers:
        raise DataFormatError(f"{where}: {n_markers} <image> markers but {len(images)} images")
    gold = (
        parse_label_text(assistant, where) if assistant is not None else gold_labels(record.get("label"), task, where)
    )
    return Sample(_sample_id(record, index), request, response, images, gold)


def _from_generic(record: dict[str, Any], index: int, task: str, root: Path, where: str) -> Sample:
    text = next((record[k] for k in ("text", "prompt", "request") if k in record), None)
    response = record.get("response")
    for name, value in (("text", text), ("response", response)):
        if value is not None and not isinstance(value, str):
            raise DataFormatError(f"{where}: {name} must be a string or null")
    images = _image_paths(record.get("images", record.get("image")), root, where)
    labels: dict[str, str] = {}
    for key, label_task in (("request_label", "request"), ("response_label", "response"), ("refusal_label", "refusal")):
        label = _label(record.get(key), label_task, where)
        if label is not None:
            labels[label_task] = label
    if "label" in record and task not in labels:
        labels.update(gold_labels(record["label"], task, where))
    return Sample(_sample_id(record, index), text or None, response, images, labels)


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
    folder); see :func:`grvl_sdk.eval.vl.load_vl_test`. Raises :class:`DataFormatError`.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records = read_records(path)
    if benchmark.vl_label is not None and records:
        from grvl_sdk.eval.vl import is_vl_test_record, load_vl_test

        if image_folder is not None or is_vl_test_record(records[0]):
            return load_vl_test(path, benchmark, image_folder)
    samples: list[Sample] = []
    for index, record in enumerate(records):
        where = f"{path.name} item {index}"
        samples.append(_READERS[detect_format(record)](record, index, benchmark.task, root, where))
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise DataFormatError(f"{path}: duplicate sample id {sample.id!r}", path=str(path))
        seen.add(sample.id)
    return samples


# -- prediction files -------------------------------------------------------------------------


def load_predictions(path: str | Path, benchmark: Benchmark) -> list[PredictionRecord]:
    """Read a predictions file: grvl-sdk's own JSON lines, GuardReasoner's ``prompt/label/predict`` or the
    VL harness's ``generated_predictions.jsonl`` (``text_output``; see :func:`grvl_sdk.eval.vl.vl_prediction`).

    Records without a gold label for ``benchmark.task`` are left out (VL image sets: a gold ``None`` is
    ``unharmful`` and kept). Raises :class:`DataFormatError` (file and position).
    """
    path = Path(path)
    records: list[PredictionRecord] = []
    for index, data in enumerate(read_records(path)):
        where = f"{path.name} item {index}"
        if "text_output" in data:  # the VL harness: text_output is the raw output, predict a label
            from grvl_sdk.eval.vl import vl_prediction

            record = vl_prediction(data, index, benchmark, where)
            if record is not None:
                records.append(record)
        elif "predict" in data and "label" in data:  # the text GuardReasoner: predict is the raw output
            gold = gold_labels(data["label"], benchmark.task, where).get(benchmark.task)
            if gold is None:
                continue
            records.append(
                PredictionRecord(
                    id=_sample_id(data, index),
                    gold=gold,
                    raw_output=str(data["predict"] or ""),
                    benchmark=benchmark.name,
                    task=benchmark.task,
                    index=index,
                )
            )
        elif "gold" in data and "raw_output" in data:
            record = PredictionRecord.from_dict(data)
            record.gold = _label(record.gold, benchmark.task, where) or ""
            if record.gold:
                records.append(record)
        else:
            raise DataFormatError(
                f"{where}: not a prediction record (expected grvl-sdk's 'gold'/'raw_output', GuardReasoner's "
                "'prompt'/'label'/'predict' or the VL harness's 'text_output'/'label'/'predict')",
                path=str(path),
            )
    return records
