"""GuardReasoner-VLTrain records: chat ``messages`` (or LLaMA-Factory ``conversations``) plus ``images``.

A record holds the system message, the user transcript (``Human user:\n<image>…``) and, for training,
the assistant answer ``<think>…</think><result>…</result>``; ``images`` are paths relative to the file
(or ``image_root``). :func:`load_vltrain` reads a JSON/JSONL file, a folder of them, a ``datasets``
dataset or a ``save_to_disk`` folder; :func:`sample_to_record` writes a record back (synthesis). A
record with a ``version`` newer than this code reads (``synthesis-record``, see
:mod:`grvl_sdk.data.versions`) is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from grvl_sdk.data.errors import ErrorPolicy, OnError, locate
from grvl_sdk.data.labels import normalize_label
from grvl_sdk.data.readers import data_files, iter_records
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.data.versions import check_version
from grvl_sdk.errors import DataError, ParseError
from grvl_sdk.protocol.parsing import parse_output
from grvl_sdk.protocol.prompt import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, parse_transcript

__all__ = ["load_vltrain", "resolve_image", "sample_to_record", "training_files", "vltrain_sample"]

#: The files of a synthesis output folder (``grvl train synthesize --out``): the records, and the list of
#: samples the teacher could not explain (not training data).
SYNTHESIS_RECORDS = "records.jsonl"
SYNTHESIS_DROPPED = "dropped.jsonl"

logger = logging.getLogger("grvl_sdk")

_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def training_files(path: str | os.PathLike[str], suffixes: tuple[str, ...]) -> list[Path]:
    """:func:`~grvl_sdk.data.readers.data_files`, less the files grvl writes beside training data that are not
    samples: a synthesis folder's ``dropped.jsonl`` (when ``records.jsonl`` is beside it). A folder can be
    passed as written by one command to the next."""
    files = data_files(path, suffixes)
    if Path(path).is_dir() and (Path(path) / SYNTHESIS_RECORDS).is_file():
        kept = [f for f in files if f.name != SYNTHESIS_DROPPED]
        if len(kept) < len(files):
            logger.info("%s: %s skipped (samples the teacher could not explain)", path, SYNTHESIS_DROPPED)
        files = kept
    return files


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


def resolve_image(value: Any, base: Path | None, where: str) -> Any:
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
    return tuple(resolve_image(item, base, f"{key}[{index}]") for index, item in enumerate(raw))


def vltrain_sample(
    record: Mapping[str, Any], *, image_root: Path | None = None, source: str | None = None
) -> TrainingSample:
    """One GuardReasoner-VLTrain record as a sample (raises :class:`DataError` without a location)."""
    if not isinstance(record, Mapping):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    check_version("synthesis-record", record)
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
        labels: list = []
        for name in ("request_label", "response_label"):
            try:
                labels.append(normalize_label(record.get(name)))
            except DataError as exc:
                raise DataError(exc.problem, field=name) from exc
        request_label, response_label = labels
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
    handler = ErrorPolicy(on_error, errors, what="training record")
    root = Path(image_root) if image_root is not None else None
    samples: list[TrainingSample] = []
    system_mismatch = 0

    def add(record: Any, file: str, line: int | None, base: Path | None) -> None:
        nonlocal system_mismatch
        try:
            samples.append(vltrain_sample(record, image_root=base, source=f"{file}:{line}" if line else file))
        except DataError as exc:
            handler.handle(locate(exc, file, line))
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
        for file in training_files(path, (".json", ".jsonl")):
            for line, record in iter_records(file):
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
