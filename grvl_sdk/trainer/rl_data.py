"""The RL dataset: what GRPO reads (spec sections 4.3–4.5), as JSON lines plus image files.

An :class:`RLSample` is one prompt of the RL stage with its gold labels and where it came from:

- ``transcript``: the user message in the SDK's form (``Human user:\\n<image>…\\n{request}\\n\\nAI
  assistant:\\n{response or None}\\n\\n``), one ``<image>`` per image right after ``Human user:\\n``. A
  concatenated sample (:mod:`grvl_sdk.trainer.augment`) holds two transcripts joined with one space;
- ``images`` (0 or more; text-only samples stay text-only: no placeholder image), gold
  ``request_label`` / ``response_label`` (``None``: no response), ``origin`` (``"original"`` or
  ``"augmented"``), ``source_ids`` (the sample, or the two joined samples), ``modality``;
- :attr:`RLSample.reference`: the reference answer's verdict block, built from the sample's own labels
  (for a concatenation, the OR-merged ones: the authors' reward read the first sample's, spec 6.3 bug 1).

:meth:`RLSample.prompt` is the GRPO prompt in the **inference layout**: the guard's system message
(:data:`~grvl_sdk.protocol.prompt.SYSTEM_PROMPT`) and the transcript as the user turn, image blocks at
the ``<image>`` position — what ``Guard`` and ``grvl eval`` send, not the authors' RL layout (instruction
folded into the user turn after the default system message, spec 6.3). User text is made unable to
produce special tokens or output tags, as the remote backend does for a server that parses special
tokens: ``<|`` gets a zero-width space, ``<think>``/``<result>`` tags are broken.

Files (:func:`write_rl_data`, :func:`load_rl_data`)::

    train.jsonl / validation.jsonl   one record per line, each with "version" (format rl-record)
    images/                          every image as an RGB PNG (EXIF applied), paths relative to the file

:func:`rl_dataset` gives a ``datasets.Dataset`` with the columns GRPO reads: ``prompt``, ``images``,
``request_label``, ``response_label`` (the reward's gold labels), ``reference``, ``origin``,
``source_ids``, ``modality``, ``id``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.backends._wire import neutralise
from grvl_sdk.data.readers import iter_json_lines
from grvl_sdk.data.samples import Modality, TrainingSample
from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import DataError, GRVLError
from grvl_sdk.images import load_image
from grvl_sdk.protocol.fast import FAST_PREFIX
from grvl_sdk.protocol.parsing import Label
from grvl_sdk.protocol.prompt import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, build_transcript, neutralize_tags
from grvl_sdk.trainer import _formats  # noqa: F401  (registers the rl-* formats)
from grvl_sdk.trainer.rewards import read_verdict

__all__ = [
    "IMAGES_DIR",
    "RECORD_FORMAT",
    "Origin",
    "RLSample",
    "load_rl_data",
    "reference_answer",
    "rl_dataset",
    "write_rl_data",
]

Origin = Literal["original", "augmented"]
RECORD_FORMAT = "rl-record"
IMAGES_DIR = "images"
_HEAD = "Human user:\n"
_LABELS = ("harmful", "unharmful")


def reference_answer(request_label: str, response_label: str | None) -> str:
    """The reference verdict block for gold labels: ``<result>\\nRequest: …\\nResponse: …\\n</result>``."""
    return f"<result>\nRequest: {request_label}\nResponse: {response_label or 'None'}\n</result>"


def _safe(text: str) -> str:
    """User text that cannot become special tokens or output tags (see the module docstring)."""
    return neutralize_tags(neutralise(text) or "")


@dataclass(frozen=True)
class RLSample:
    """One RL prompt with its gold labels and provenance (see the module docstring)."""

    id: str
    transcript: str
    request_label: Label
    response_label: Label | None = None
    images: tuple[Any, ...] = ()
    origin: Origin = "original"
    source_ids: tuple[str, ...] = ()
    modality: Modality = "text"
    #: Where the record was read from (``file:line``), or the original sample's source.
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError("an RL sample needs a non-empty string id", field="id")
        if self.request_label not in _LABELS:
            raise DataError(f"must be 'harmful' or 'unharmful', got {self.request_label!r}", field="request_label")
        if self.response_label not in (None, *_LABELS):
            raise DataError(
                f"must be 'harmful', 'unharmful' or null, got {self.response_label!r}", field="response_label"
            )
        if self.origin not in ("original", "augmented"):
            raise DataError(f"must be 'original' or 'augmented', got {self.origin!r}", field="origin")
        if self.modality not in ("text", "image", "text-image"):
            raise DataError(f"unknown modality {self.modality!r}", field="modality")
        if (self.modality == "text") != (not self.images):
            raise DataError(f"modality {self.modality!r} does not match {len(self.images)} image(s)", field="modality")
        slots = _HEAD + IMAGE_PLACEHOLDER * len(self.images)
        if not isinstance(self.transcript, str) or not self.transcript.startswith(slots):
            raise DataError(
                f"the transcript must start with {slots!r} (one <image> per image right after 'Human user:')",
                field="transcript",
            )
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "source_ids", tuple(self.source_ids))

    @property
    def reference(self) -> str:
        """The reference answer's verdict block, from this sample's own (for a concatenation: OR-merged) labels."""
        return reference_answer(self.request_label, self.response_label)

    def prompt(self, prefill: str | None = None) -> list[dict[str, Any]]:
        """The GRPO prompt: system message and user transcript as content parts (images at ``<image>``).

        Every part has ``type`` and ``text`` (``None`` for image parts), so a ``datasets`` column of prompts
        has one schema; the system message renders exactly as the guard's string system message.
        ``prefill``: the start of the assistant turn (the fast tier's forced prefix), added as a last
        ``assistant`` message the answer continues.
        """
        count = len(self.images)
        user: list[dict[str, Any]]
        if count:
            rest = self.transcript[len(_HEAD) + count * len(IMAGE_PLACEHOLDER) :]
            user = [
                {"type": "text", "text": _HEAD},
                *({"type": "image", "text": None} for _ in range(count)),
                {"type": "text", "text": _safe(rest)},
            ]
        else:
            user = [{"type": "text", "text": _HEAD + _safe(self.transcript[len(_HEAD) :])}]
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": user},
        ]
        if prefill:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": prefill}]})
        return messages

    @classmethod
    def from_training_sample(cls, sample: TrainingSample) -> RLSample:
        """The RL form of a labelled sample (its ``key()`` as id). Raises :class:`DataError` without a request
        label, or with a response but no response label."""
        if sample.request_label is None:
            raise DataError("an RL sample needs a gold request label", field="request_label", file=sample.source)
        if sample.response is not None and sample.response_label is None:
            raise DataError("the response has no gold label", field="response_label", file=sample.source)
        key = sample.key()
        return cls(
            id=key,
            transcript=build_transcript(sample.request, sample.response, num_images=len(sample.images)),
            request_label=sample.request_label,
            response_label=sample.response_label,
            images=sample.images,
            origin="original",
            source_ids=(key,),
            modality=sample.modality,
            source=sample.source,
        )


# -- files ------------------------------------------------------------------------------------------
def _image_path(image: Any, directory: Path, name: str) -> str:
    """Save ``image`` as an RGB PNG under ``directory/images`` (EXIF applied) and return its relative path."""
    target = directory / IMAGES_DIR / f"{name}.png"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            picture = load_image(image)
        except GRVLError as exc:
            raise DataError(f"cannot read image: {exc.message}", field="images") from exc
        partial = target.with_suffix(".tmp")
        picture.save(partial, format="PNG")
        partial.replace(target)
    return f"{IMAGES_DIR}/{target.name}"


def _file_name(sample_id: str, index: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)[:80]
    return f"{safe}-{index}"


def write_rl_data(samples: Iterable[RLSample], path: str | os.PathLike[str]) -> Path:
    """Write ``samples`` to the JSON-lines file ``path`` (replaced atomically) and their images to
    ``images/`` beside it; returns the path. Every record carries ``version`` (format ``rl-record``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for sample in samples:
            images = [
                _image_path(image, path.parent, _file_name(sample.id, i)) for i, image in enumerate(sample.images)
            ]
            record = {
                "id": sample.id,
                "origin": sample.origin,
                "source_ids": list(sample.source_ids),
                "modality": sample.modality,
                "transcript": sample.transcript,
                "images": images,
                "request_label": sample.request_label,
                "response_label": sample.response_label,
                "reference": sample.reference,
                "source": sample.source,
            }
            handle.write(json.dumps(stamp(RECORD_FORMAT, record), ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def _record_sample(record: Any, base: Path) -> RLSample:
    if not isinstance(record, dict):
        raise DataError(f"an RL record must be a JSON object, got {type(record).__name__}")
    check_version(RECORD_FORMAT, record)
    images = record.get("images") or []
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise DataError("must be a list of image paths", field="images")
    resolved = []
    for index, value in enumerate(images):
        image = Path(value) if os.path.isabs(value) else base / value
        if not image.is_file():
            raise DataError(f"image file not found: {image}", field=f"images[{index}]")
        resolved.append(str(image))
    try:
        sample = RLSample(
            id=record.get("id"),  # type: ignore[arg-type]
            transcript=record.get("transcript"),  # type: ignore[arg-type]
            request_label=record.get("request_label"),  # type: ignore[arg-type]
            response_label=record.get("response_label"),
            images=tuple(resolved),
            origin=record.get("origin", "original"),
            source_ids=tuple(record.get("source_ids") or ()),
            modality=record.get("modality", "text-image" if resolved else "text"),
            source=record.get("source"),
        )
    except TypeError as exc:
        raise DataError(f"malformed RL record: {exc}") from exc
    reference = record.get("reference")
    if reference is not None:
        ok, request, response = read_verdict(f"<think>\n</think>\n{reference}")
        if not ok or (request, response) != (sample.request_label, sample.response_label):
            raise DataError(
                f"the reference answer's labels ({request}, {response}) differ from the gold labels "
                f"({sample.request_label}, {sample.response_label})",
                field="reference",
            )
    return sample


def load_rl_data(path: str | os.PathLike[str]) -> list[RLSample]:
    """Read RL data written by :func:`write_rl_data` (a ``.jsonl`` file, or a folder: its ``train.jsonl``).

    Raises :class:`DataError` naming the file and line for a malformed record, a missing image, a
    reference answer that disagrees with the gold labels, or a record of a newer format version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "train.jsonl"
    if not path.is_file():
        raise DataError("RL data file not found", file=str(path))
    samples = []
    for line, record in iter_json_lines(path):
        try:
            sample = _record_sample(record, path.parent)
        except DataError as exc:
            raise DataError(exc.problem, file=str(path), line=line, field=exc.field) from None
        samples.append(sample if sample.source else _with_source(sample, f"{path}:{line}"))
    return samples


def _with_source(sample: RLSample, source: str) -> RLSample:
    object.__setattr__(sample, "source", source)
    return sample


def rl_dataset(samples: Sequence[RLSample] | str | os.PathLike[str], *, fast: Collection[int] = ()) -> Any:
    """A ``datasets.Dataset`` of RL samples (or of the RL data file ``samples`` names) for GRPO.

    Columns: ``prompt`` (:meth:`RLSample.prompt`), ``images`` (a list per row; empty for text-only rows;
    decoded to PIL images on access), ``request_label``, ``response_label``, ``reference``, ``origin``,
    ``source_ids``, ``modality``, ``id``. The rows at the positions ``fast`` get the fast tier's forced
    prefix (:data:`grvl_sdk.protocol.fast.FAST_PREFIX`) as the start of the assistant turn (the RL
    stage's ``fast_fraction``). Needs ``pip install 'grvl-sdk[train]'``.
    """
    from grvl_sdk._lazy import require

    datasets = require("datasets", extra="train")
    if isinstance(samples, (str, os.PathLike)):
        samples = load_rl_data(samples)
    rows = list(samples)
    paths_only = all(isinstance(image, str) for sample in rows for image in sample.images)
    data = {
        "prompt": [s.prompt(FAST_PREFIX if i in fast else None) for i, s in enumerate(rows)],
        "images": [[image if paths_only else load_image(image) for image in s.images] for s in rows],
        "request_label": [s.request_label for s in rows],
        "response_label": [s.response_label for s in rows],
        "reference": [s.reference for s in rows],
        "origin": [s.origin for s in rows],
        "source_ids": [list(s.source_ids) for s in rows],
        "modality": [s.modality for s in rows],
        "id": [s.id for s in rows],
    }
    dataset = datasets.Dataset.from_dict(data)
    return dataset.cast_column("images", datasets.List(datasets.Image()))
