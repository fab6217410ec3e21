"""Training data: the typed sample, loaders for the supported formats, validation and a summary.

Formats:

* **GuardReasoner-VLTrain records** (:func:`load_vltrain`): chat ``messages`` (system, user transcript
  with ``<image>``, assistant ``<think>…</think><result>…</result>``) and ``images`` (paths relative to
  the file), from a JSON/JSONL file, a folder of them, or a ``datasets`` dataset. LLaMA-Factory's
  ``conversations`` (``from``/``value``) layout is accepted too.
* **GuardReasoner text benchmarks** (:func:`load_benchmark`): a JSON list of ``instruction`` /
  ``input`` (transcript) / ``output`` (a bare label, or ``Request: …`` / ``Response: …`` lines).
* **Plain tables** (:func:`load_table`): JSONL or CSV with the columns named by a :class:`ColumnMap`.

Every problem raises :class:`~grvl_sdk.errors.DataError` naming the file, line and field (or, with
``on_error="skip"``, is collected and the record skipped). Transcripts are parsed back into request,
response and image count and must re-render byte-exactly through :func:`grvl_sdk.prompt.build_transcript`,
so the prompt a model is trained on is the prompt the ``Guard`` builds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from grvl_sdk.errors import DataError
from grvl_sdk.protocol.parsing import Label
from grvl_sdk.protocol.prompt import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, build_transcript, parse_transcript

__all__ = [
    "ColumnMap",
    "DataSummary",
    "Modality",
    "TrainingSample",
    "detect_format",
    "load_benchmark",
    "load_data",
    "load_table",
    "load_vltrain",
    "normalize_label",
    "parse_transcript",
    "render_completion",
    "sample_to_record",
    "summarize",
]

logger = logging.getLogger("grvl_sdk")

Modality = Literal["text", "image", "text-image"]
OnError = Literal["raise", "skip"]
DataFormat = Literal["vltrain", "benchmark", "jsonl", "csv"]

_NO_RESPONSE = "None"
_LABELS = ("harmful", "unharmful")

#: Label spellings accepted by the loaders (case-insensitive); empty / ``none`` / ``null`` mean "no label".
LABEL_ALIASES: dict[str, Label] = {
    "harmful": "harmful",
    "unharmful": "unharmful",
    "unsafe": "harmful",
    "safe": "unharmful",
    "1": "harmful",
    "0": "unharmful",
    "true": "harmful",
    "false": "unharmful",
}
_NO_LABEL = frozenset({"", "none", "null", "nan", "n/a"})


# ----------------------------------------------------------------------------------------------
# The sample
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingSample:
    """One training sample.

    ``images`` are anything :func:`grvl_sdk.images.load_image` takes (paths, bytes, PIL images).
    ``response_label`` is ``None`` when there is no response, or when a response is given but not
    labelled. ``reasoning`` is the text inside ``<think>``; ``completion`` is the assistant turn
    verbatim when a record carried one (otherwise it is rendered from reasoning and labels, see
    :meth:`target`). ``source`` says where the sample came from (``file:line``).
    """

    request: str | None
    response: str | None = None
    images: tuple[Any, ...] = ()
    request_label: Label | None = None
    response_label: Label | None = None
    reasoning: str | None = None
    completion: str | None = None
    source: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        for name in ("request", "response", "reasoning", "completion", "source", "id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise DataError(f"must be a string or null, got {type(value).__name__}", field=name)
        if not isinstance(self.images, tuple):
            object.__setattr__(self, "images", tuple(self.images))
        if not self.request and not self.images:
            raise DataError("a sample needs a request text, an image, or both", field="request")
        for name in ("request_label", "response_label"):
            value = getattr(self, name)
            if value is not None and value not in _LABELS:
                raise DataError(f"label must be 'harmful', 'unharmful' or null, got {value!r}", field=name)
        if self.response is None and self.response_label is not None:
            raise DataError("a response label was given but there is no response", field="response_label")

    @property
    def modality(self) -> Modality:
        """``"text"``, ``"image"`` (images and no request text) or ``"text-image"``."""
        if not self.images:
            return "text"
        return "text-image" if self.request else "image"

    @property
    def has_target(self) -> bool:
        """Whether :meth:`target` can build the assistant turn (R-SFT needs it)."""
        if self.completion is not None:
            return True
        return bool(self.reasoning) and self.request_label is not None and self._response_known

    @property
    def _response_known(self) -> bool:
        return self.response is None or self.response_label is not None

    def target(self) -> str:
        """The assistant turn to train on: ``completion`` verbatim, else rendered by :func:`render_completion`."""
        if self.completion is not None:
            return self.completion
        if not self.reasoning:
            raise DataError("no reasoning: run `grvl train synthesize` to add it", field="reasoning")
        if self.request_label is None:
            raise DataError("no request label to train on", field="request_label")
        if not self._response_known:
            raise DataError("the response has no label to train on", field="response_label")
        return render_completion(self.reasoning, self.request_label, self.response_label)

    def transcript(self) -> str:
        """The user message of the training record (``Human user:\\n<image>…``)."""
        return build_transcript(self.request, self.response, num_images=len(self.images))

    def key(self) -> str:
        """A stable identity: ``id`` when given, else a hash of the content (text, images, labels)."""
        if self.id:
            return self.id
        digest = hashlib.sha256()
        for part in (self.request, self.response, self.request_label, self.response_label):
            digest.update(repr(part).encode("utf-8"))
        for image in self.images:
            digest.update(_image_fingerprint(image))
        return digest.hexdigest()[:24]

    def with_reasoning(self, reasoning: str, request_label: Label, response_label: Label | None) -> TrainingSample:
        """A copy with reasoning and labels set and any verbatim completion dropped."""
        return replace(
            self, reasoning=reasoning, request_label=request_label, response_label=response_label, completion=None
        )


def _image_fingerprint(image: Any) -> bytes:
    if isinstance(image, (str, os.PathLike)):
        return b"path:" + os.fsencode(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return b"bytes:" + hashlib.sha256(bytes(image)).digest()
    if isinstance(image, Image.Image):
        return b"pil:" + hashlib.sha256(image.tobytes()).digest() + repr(image.size).encode()
    return b"other:" + repr(image).encode()


def render_completion(reasoning: str, request_label: Label, response_label: Label | None) -> str:
    """The canonical assistant turn: ``<think>\\n…\\n</think>\\n<result>\\nRequest: …\\nResponse: …\\n</result>``."""
    return (
        f"<think>\n{reasoning.strip()}\n</think>\n"
        f"<result>\nRequest: {request_label}\nResponse: {response_label or _NO_RESPONSE}\n</result>"
    )


def normalize_label(value: Any) -> Label | None:
    """Map a label spelling (see :data:`LABEL_ALIASES`) to ``"harmful"``/``"unharmful"``/``None``.

    Raises ``ValueError`` for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "harmful" if value else "unharmful"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return "harmful" if value == 1 else "unharmful"
        raise ValueError(f"unknown label {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"a label must be a string, got {type(value).__name__}")
    text = value.strip().lower()
    if text in _NO_LABEL:
        return None
    if text in LABEL_ALIASES:
        return LABEL_ALIASES[text]
    raise ValueError(f"unknown label {value!r} (expected harmful/unharmful, safe/unsafe, 1/0, true/false or empty)")


# ----------------------------------------------------------------------------------------------
# Error handling shared by the loaders
# ----------------------------------------------------------------------------------------------
class _Errors:
    def __init__(self, on_error: OnError, sink: list[DataError] | None) -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}", field="on_error")
        self.on_error = on_error
        self.sink = sink
        self.skipped = 0

    def handle(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped += 1
        if self.sink is not None:
            self.sink.append(error)
        if self.skipped <= 5:
            logger.warning("skipping a bad training record: %s", error)


def _locate(error: DataError, file: str, line: int | None, field_prefix: str = "") -> DataError:
    """Re-raise a sample-level DataError with the record's location."""
    name = error.field
    if name and field_prefix:
        name = f"{field_prefix}{name}"
    return DataError(error.problem, file=file, line=line, field=name)


# ----------------------------------------------------------------------------------------------
# Reading records with line numbers
# ----------------------------------------------------------------------------------------------
def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", file=str(path), line=number) from exc


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Items of a JSON list with the line each starts on."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    position = _skip_ws(text, 0)
    if position >= len(text) or text[position] != "[":
        # A single JSON object, or JSON lines saved as .json.
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            yield from _iter_jsonl(path)
            return
        yield 1, value
        return
    position = _skip_ws(text, position + 1)
    line = text.count("\n", 0, position) + 1
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno) from exc
        yield line, value
        line += text.count("\n", position, end)
        position = _skip_ws(text, end)
        if position < len(text) and text[position] == ",":
            line += text.count("\n", end, position)
            start = _skip_ws(text, position + 1)
            line += text.count("\n", position, start)
            position = start
            continue
        if position < len(text) and text[position] == "]":
            return
        bad_line = text.count("\n", 0, position) + 1
        raise DataError("not valid JSON: expected ',' or ']' between list items", file=str(path), line=bad_line)


def _skip_ws(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _iter_json_file(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix.lower() == ".jsonl":
        return _iter_jsonl(path)
    return _iter_json_array(path)


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise DataError(f"no {'/'.join(suffixes)} files in the folder", file=str(path))
        return found
    if not path.is_file():
        raise DataError("no such file or folder", file=str(path))
    return [path]


# ----------------------------------------------------------------------------------------------
# GuardReasoner-VLTrain records
# ----------------------------------------------------------------------------------------------
_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _record_messages(record: Mapping[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
    """(field name, [(role, content)]) of a chat record."""
    if "messages" in record:
        key, role_key, content_key = "messages", "role", "content"
    elif "conversations" in record:
        key, role_key, content_key = "conversations", "from", "value"
    else:
        raise DataError("a chat record needs 'messages' (or 'conversations')", field="messages")
    messages = record[key]
    if not isinstance(messages, list) or not messages:
        raise DataError("must be a non-empty list of chat messages", field=key)
    out: list[tuple[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"must be an object, got {type(message).__name__}", field=f"{key}[{index}]")
        role = _ROLE_ALIASES.get(str(message.get(role_key, "")).lower())
        if role is None:
            raise DataError(f"unknown role {message.get(role_key)!r}", field=f"{key}[{index}].{role_key}")
        out.append((role, message.get(content_key)))
    return key, out


def _content_text(content: Any, where: str) -> str:
    """A message's text; content-part lists are joined, image parts written as ``<image>``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                pieces.append(str(part.get("text", "")))
            elif isinstance(part, Mapping) and part.get("type") in ("image", "image_url"):
                pieces.append(IMAGE_PLACEHOLDER)
            else:
                raise DataError(f"unsupported content part {part!r:.60}", field=where)
        return "".join(pieces)
    raise DataError(f"must be a string or a list of content parts, got {type(content).__name__}", field=where)


def _resolve_image(value: Any, base: Path | None, where: str) -> Any:
    if isinstance(value, Mapping):  # a `datasets` Image feature not decoded: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, Image.Image)):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise DataError(f"image file not found: {path}", field=where)
        return str(path)
    raise DataError(f"an image must be a path, bytes or a PIL image, got {type(value).__name__}", field=where)


def _record_images(record: Mapping[str, Any], base: Path | None) -> tuple[Any, ...]:
    if "images" in record and record["images"] is not None:
        raw = record["images"]
        key = "images"
    elif "image" in record and record["image"] is not None:
        raw = record["image"]
        key = "image"
    else:
        return ()
    if isinstance(raw, (str, bytes, Image.Image, Mapping)):
        raw = [raw]
    if not isinstance(raw, list):
        raise DataError(f"must be a list of image paths, got {type(raw).__name__}", field=key)
    return tuple(_resolve_image(item, base, f"{key}[{index}]") for index, item in enumerate(raw))


def vltrain_sample(
    record: Mapping[str, Any], *, image_root: Path | None = None, source: str | None = None
) -> TrainingSample:
    """One GuardReasoner-VLTrain record as a sample (raises :class:`DataError` without a location)."""
    if not isinstance(record, Mapping):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    key, messages = _record_messages(record)
    roles = [role for role, _ in messages]
    if roles and roles[0] == "system":
        messages = messages[1:]
        offset = 1
    else:
        offset = 0
    if [role for role, _ in messages] not in (["user"], ["user", "assistant"]):
        raise DataError(f"expected [system,] user[, assistant] messages, got {roles}", field=key)
    images = _record_images(record, image_root)
    user_field = f"{key}[{offset}].{'content' if key == 'messages' else 'value'}"
    transcript = _content_text(messages[0][1], user_field)
    try:
        request, response, _ = parse_transcript(transcript, num_images=len(images))
    except ValueError as exc:
        raise DataError(str(exc), field=user_field) from exc
    completion = reasoning = None
    request_label = response_label = None
    if len(messages) == 2:
        answer_field = f"{key}[{offset + 1}].{'content' if key == 'messages' else 'value'}"
        completion = _content_text(messages[1][1], answer_field)
        from grvl_sdk.errors import ParseError
        from grvl_sdk.protocol.parsing import parse_output

        try:
            parsed = parse_output(completion)
        except ParseError as exc:
            raise DataError(f"the assistant answer has no verdict: {exc.message}", field=answer_field) from exc
        if parsed.source != "result":
            raise DataError("the assistant answer has no closed <result>…</result> block", field=answer_field)
        request_label, response_label, reasoning = parsed.request_label, parsed.response_label, parsed.reasoning
        if response is None and response_label is not None:
            raise DataError("the answer labels a response but the transcript has none", field=answer_field)
        if response is not None and response_label is None:
            raise DataError("the transcript has a response but the answer does not label it", field=answer_field)
    else:
        request_label = normalize_label(record.get("request_label"))
        response_label = normalize_label(record.get("response_label"))
    record_id = record.get("id")
    return TrainingSample(
        request=request,
        response=response,
        images=images,
        request_label=request_label,
        response_label=response_label,
        reasoning=reasoning,
        completion=completion,
        source=source,
        id=str(record_id) if record_id is not None else None,
    )


def load_vltrain(
    source: str | os.PathLike[str] | Any,
    *,
    image_root: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    errors: list[DataError] | None = None,
    limit: int | None = None,
) -> list[TrainingSample]:
    """Load GuardReasoner-VLTrain chat records.

    ``source``: a ``.json``/``.jsonl`` file, a folder of them (or a ``datasets.save_to_disk`` folder),
    or a ``datasets.Dataset``. Image paths are relative to ``image_root`` (default: the file's folder).
    The system message is ignored: training always uses :data:`grvl_sdk.prompt.SYSTEM_PROMPT`.
    """
    handler = _Errors(on_error, errors)
    root = Path(image_root) if image_root is not None else None
    samples: list[TrainingSample] = []
    system_mismatch = 0

    def add(record: Any, file: str, line: int | None, base: Path | None) -> None:
        nonlocal system_mismatch
        try:
            samples.append(vltrain_sample(record, image_root=base, source=f"{file}:{line}" if line else file))
        except DataError as exc:
            handler.handle(_locate(exc, file, line))
            return
        system = _system_text(record)
        if system is not None and system != SYSTEM_PROMPT:
            system_mismatch += 1

    if not isinstance(source, (str, os.PathLike)):
        name = getattr(getattr(source, "info", None), "dataset_name", None) or "dataset"
        for index, record in enumerate(source):
            if limit is not None and len(samples) >= limit:
                break
            add(record, str(name), index + 1, root)
    else:
        path = Path(source)
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
            datasets = _require_datasets()
            return load_vltrain(
                datasets.load_from_disk(str(path)),
                image_root=root or path,
                on_error=on_error,
                errors=errors,
                limit=limit,
            )
        for file in _files(path, (".json", ".jsonl")):
            for line, record in _iter_json_file(file):
                if limit is not None and len(samples) >= limit:
                    break
                add(record, str(file), line, root or file.parent)
    if system_mismatch:
        logger.warning(
            "%d record(s) have a system message other than the GuardReasoner-VL instruction; it is replaced by "
            "grvl_sdk.prompt.SYSTEM_PROMPT (the prompt the Guard uses)",
            system_mismatch,
        )
    return samples


def _system_text(record: Any) -> str | None:
    for key, role_key, content_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        messages = record.get(key) if isinstance(record, Mapping) else None
        if (
            isinstance(messages, list)
            and messages
            and isinstance(messages[0], Mapping)
            and messages[0].get(role_key) == "system"
            and isinstance(messages[0].get(content_key), str)
        ):
            return messages[0][content_key]
    return None


def _require_datasets() -> Any:
    from grvl_sdk._lazy import require

    return require("datasets", extra="train")


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
            request_label = normalize_label(lines.get("request"))
            response_label = normalize_label(lines.get("response"))
        else:
            label = normalize_label(output)
            target = task if task != "auto" else ("request" if response is None else "response")
            request_label, response_label = (label, None) if target == "request" else (None, label)
    except ValueError as exc:
        raise DataError(f"{exc} — not a harm label", field="output") from exc
    if response is None and response_label is not None:
        raise DataError("a response label was given but the transcript has no response", field="output")
    if request_label is None and response_label is None:
        raise DataError("no harm label in the output", field="output")
    return request_label, response_label


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
    handler = _Errors(on_error, errors)
    samples: list[TrainingSample] = []
    for file in _files(Path(path), (".json", ".jsonl")):
        for line, record in _iter_json_file(file):
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
                handler.handle(_locate(exc, str(file), line))
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
        yield from _iter_json_file(path)


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
    handler = _Errors(on_error, errors)
    samples: list[TrainingSample] = []
    for file in _files(Path(path), (".jsonl", ".json", ".csv")):
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
                handler.handle(_locate(exc, str(file), line))
    return samples


def _table_sample(row: Any, cols: ColumnMap, base: Path, source: str) -> TrainingSample:
    if not isinstance(row, Mapping):
        raise DataError(f"a record must be a JSON object, got {type(row).__name__}")
    labels: dict[str, Label | None] = {}
    for role in ("request_label", "response_label"):
        column = getattr(cols, role)
        try:
            labels[role] = normalize_label(_cell(row, column))
        except ValueError as exc:
            raise DataError(str(exc), field=column) from exc
    try:
        raw_images = _table_images(_cell(row, cols.images))
    except DataError as exc:
        raise DataError(exc.problem, field=cols.images) from exc
    images = tuple(_resolve_image(v, base, f"{cols.images}[{i}]") for i, v in enumerate(raw_images))
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
    files = _files(target, (".json", ".jsonl", ".csv"))
    first = files[0]
    if first.suffix.lower() == ".csv":
        return "csv"
    for _, record in _iter_json_file(first):
        if isinstance(record, Mapping):
            if "messages" in record or "conversations" in record:
                return "vltrain"
            if {"instruction", "input", "output"} <= set(record):
                return "benchmark"
        return "jsonl"
    return "jsonl"


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


# ----------------------------------------------------------------------------------------------
# Records out (synthesis writes these; load_vltrain reads them back)
# ----------------------------------------------------------------------------------------------
def sample_to_record(sample: TrainingSample, images: Sequence[str]) -> dict[str, Any]:
    """A GuardReasoner-VLTrain record (``messages`` + ``images``) for a sample with a target.

    ``images`` are the paths to write for the sample's images (relative to the record file or absolute).
    """
    record: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": sample.transcript()},
            {"role": "assistant", "content": sample.target()},
        ],
        "images": list(images),
    }
    if sample.id:
        record["id"] = sample.id
    return record


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------
@dataclass
class DataSummary:
    """Counts of a data set: samples per modality, labels per modality, and what can be trained on."""

    total: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)
    request_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    response_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    with_response: int = 0
    with_reasoning: int = 0
    trainable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        modalities = [m for m in ("text", "image", "text-image") if self.by_modality.get(m)]
        rows = [f"{'modality':<11} {'samples':>8} {'req harm':>9} {'req safe':>9} {'req ?':>6} "
                f"{'resp harm':>10} {'resp safe':>10} {'resp ?':>7} {'no resp':>8}"]  # fmt: skip
        for modality in [*modalities, "all"]:
            req = self._counts(self.request_labels, modality)
            resp = self._counts(self.response_labels, modality)
            count = self.total if modality == "all" else self.by_modality.get(modality, 0)
            rows.append(
                f"{modality:<11} {count:>8} {req['harmful']:>9} {req['unharmful']:>9} {req['unknown']:>6} "
                f"{resp['harmful']:>10} {resp['unharmful']:>10} {resp['unknown']:>7} {resp['no response']:>8}"
            )
        rows.append(
            f"with a response: {self.with_response} · with reasoning: {self.with_reasoning} · "
            f"ready for R-SFT: {self.trainable}"
        )
        return "\n".join(rows)

    @staticmethod
    def _counts(table: dict[str, dict[str, int]], modality: str) -> Counter[str]:
        if modality == "all":
            total: Counter[str] = Counter()
            for counts in table.values():
                total.update(counts)
            return total
        return Counter(table.get(modality, {}))


def summarize(samples: Iterable[TrainingSample]) -> DataSummary:
    """Count samples per modality and label (``unknown`` = not labelled, ``no response`` = none to judge)."""
    summary = DataSummary()
    by_modality: Counter[str] = Counter()
    request: dict[str, Counter[str]] = {}
    response: dict[str, Counter[str]] = {}
    for sample in samples:
        summary.total += 1
        modality = sample.modality
        by_modality[modality] += 1
        request.setdefault(modality, Counter())[sample.request_label or "unknown"] += 1
        if sample.response is None:
            response_key = "no response"
        else:
            response_key = sample.response_label or "unknown"
            summary.with_response += 1
        response.setdefault(modality, Counter())[response_key] += 1
        summary.with_reasoning += bool(sample.reasoning)
        summary.trainable += sample.has_target
    summary.by_modality = dict(by_modality)
    summary.request_labels = {k: dict(v) for k, v in request.items()}
    summary.response_labels = {k: dict(v) for k, v in response.items()}
    return summary
