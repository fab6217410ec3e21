"""Safety-aware data concatenation (spec section 4.4): harder RL samples made by joining two samples.

:func:`concatenate` joins two :class:`~grvl_sdk.trainer.rl_data.RLSample` objects:

- **text**: the two transcripts, stripped, joined with one space; the second sample's ``<image>`` is
  dropped so one image slot remains, right after the first ``Human user:\\n`` (where the guard's prompt
  has it). When only the second sample has an image, the slot is added to the first transcript. The
  joined transcript ends with the SDK's usual ``\\n\\n`` (the authors' stripped join had none);
- **image**: the two images side by side, top-aligned, on a white canvas of ``(w1 + w2) × max(h1, h2)``,
  then shrunk (never enlarged), aspect ratio kept, to fit ``bound × bound`` (1024) — :func:`join_images`. A
  text-only side takes the other side's image (the authors' text-only samples carried a placeholder that
  was replaced so); two text-only samples give a text-only sample. A side with more than one image is
  refused (:class:`~grvl_sdk.errors.DataError`);
- **labels**: the OR rule — the request is harmful if either request is, the response if either response
  is; a response missing on both sides stays missing (``None``), one missing side counts as unharmful.
  The reference answer carries these merged labels (spec 6.3 bug 1: the authors' reward read the first
  sample's labels).

:func:`augment_samples` draws the pairs with a seeded generator so that augmented samples make up ``share`` of
the RL training set (default 20%: 9,600 original + 2,400 augmented); :func:`augment_data` does it for an
RL data folder (``train.jsonl`` + ``validation.jsonl``; validation is copied, never augmented).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from grvl_sdk.data.samples import Modality
from grvl_sdk.data.versions import stamp
from grvl_sdk.errors import DataError, TrainingConfigError
from grvl_sdk.images import load_image
from grvl_sdk.protocol.parsing import Label
from grvl_sdk.protocol.prompt import IMAGE_PLACEHOLDER
from grvl_sdk.trainer.rl_data import RLSample, load_rl_data, write_rl_data

__all__ = [
    "CANVAS_BOUND",
    "AugmentReport",
    "augment_data",
    "augment_samples",
    "augmented_count",
    "concatenate",
    "join_images",
    "or_labels",
]

#: The joined image is shrunk to fit this square (pixels), spec 4.4.
CANVAS_BOUND = 1024
_HEAD = "Human user:\n"
_WHITE = (255, 255, 255)


def join_images(left: Any, right: Any, *, bound: int = CANVAS_BOUND) -> Image.Image:
    """``left`` and ``right`` side by side, top-aligned, on a white ``(w1 + w2) × max(h1, h2)`` canvas,
    shrunk to fit ``bound × bound`` (never enlarged; each side rounded, at least 1 pixel).

    Inputs are anything :func:`grvl_sdk.images.load_image` reads (RGB, EXIF applied). Returns an RGB image.
    """
    if bound < 1:
        raise ValueError(f"bound must be >= 1, got {bound}")
    first, second = load_image(left), load_image(right)
    width, height = first.width + second.width, max(first.height, second.height)
    canvas = Image.new("RGB", (width, height), _WHITE)
    canvas.paste(first, (0, 0))
    canvas.paste(second, (first.width, 0))
    scale = min(1.0, bound / width, bound / height)
    if scale < 1.0:
        size = (max(1, min(bound, round(width * scale))), max(1, min(bound, round(height * scale))))
        canvas = canvas.resize(size, Image.Resampling.BICUBIC)
    return canvas


def or_labels(first: tuple[Label, Label | None], second: tuple[Label, Label | None]) -> tuple[Label, Label | None]:
    """The OR rule on ``(request, response)`` labels; a response missing on both sides stays ``None``."""
    request: Label = "harmful" if "harmful" in (first[0], second[0]) else "unharmful"
    if first[1] is None and second[1] is None:
        return request, None
    response: Label = "harmful" if "harmful" in (first[1], second[1]) else "unharmful"
    return request, response


def _one_image(sample: RLSample) -> Any | None:
    if len(sample.images) > 1:
        raise DataError(
            f"concatenation joins samples with at most one image; {sample.id} has {len(sample.images)}",
            field="images",
        )
    return sample.images[0] if sample.images else None


def concatenate(first: RLSample, second: RLSample, *, bound: int = CANVAS_BOUND) -> RLSample:
    """Join two RL samples into one harder sample (see the module docstring)."""
    left, right = _one_image(first), _one_image(second)
    image = None
    if left is not None or right is not None:
        image = join_images(left if left is not None else right, right if right is not None else left, bound=bound)
    head = first.transcript
    if image is not None and left is None:  # the first side is text-only: give it the one image slot
        head = f"{_HEAD}{IMAGE_PLACEHOLDER}\n{head[len(_HEAD) :]}"
    tail = _HEAD + second.transcript[len(_HEAD) + len(second.images) * len(IMAGE_PLACEHOLDER) :]
    transcript = f"{head.strip()} {tail.strip()}\n\n"
    request, response = or_labels(
        (first.request_label, first.response_label), (second.request_label, second.response_label)
    )
    has_text = any(side.modality != "image" for side in (first, second))
    modality: Modality = "text" if image is None else ("text-image" if has_text else "image")
    digest = hashlib.sha256(f"{first.id}\x00{second.id}".encode()).hexdigest()[:20]
    return RLSample(
        id=f"aug-{digest}",
        transcript=transcript,
        request_label=request,
        response_label=response,
        images=() if image is None else (image,),
        origin="augmented",
        source_ids=(first.id, second.id),
        modality=modality,
        source=None,
    )


def augmented_count(originals: int, share: float) -> int:
    """How many augmented samples make them ``share`` of the training set: ``round(share/(1-share)·n)``."""
    if not 0.0 <= share < 1.0:
        raise TrainingConfigError(f"share must be in [0, 1), got {share}", field="share")
    return round(share / (1.0 - share) * originals)


def augment_samples(
    samples: Sequence[RLSample],
    *,
    share: float = 0.2,
    seed: int = 42,
    count: int | None = None,
    bound: int = CANVAS_BOUND,
) -> list[RLSample]:
    """Concatenated samples drawn from ``samples`` (original ones with at most one image).

    ``count`` defaults to :func:`augmented_count` of the eligible samples for ``share``. Pairs are ordered
    and distinct (no sample joined with itself, no pair twice), drawn with ``random.Random(seed)`` from the
    samples sorted by id, so the result depends on the samples and the seed only. Fewer are returned when
    there are not enough distinct pairs.
    """
    pool = sorted((s for s in samples if s.origin == "original" and len(s.images) <= 1), key=lambda s: s.id)
    wanted = augmented_count(len(pool), share) if count is None else count
    if wanted < 0:
        raise TrainingConfigError(f"count must be >= 0, got {count}", field="count")
    wanted = min(wanted, len(pool) * (len(pool) - 1))
    rng = random.Random(seed)
    chosen: set[tuple[int, int]] = set()
    out: list[RLSample] = []
    while len(out) < wanted:
        i, j = rng.sample(range(len(pool)), 2)
        if (i, j) in chosen:
            continue
        chosen.add((i, j))
        out.append(concatenate(pool[i], pool[j], bound=bound))
    return out


@dataclass
class AugmentReport:
    """What :func:`augment_data` wrote."""

    originals: int
    augmented: int
    validation: int
    by_modality: dict[str, int] = field(default_factory=dict)
    train_path: Path | None = None
    validation_path: Path | None = None

    def __str__(self) -> str:
        total = self.originals + self.augmented
        share = self.augmented / total if total else 0.0
        modalities = ", ".join(f"{k} {v}" for k, v in sorted(self.by_modality.items()))
        return (
            f"RL train set: {total} samples = {self.originals} original + {self.augmented} augmented "
            f"({share:.1%}); augmented by modality: {modalities or 'none'}; validation: {self.validation}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "originals": self.originals,
            "augmented": self.augmented,
            "validation": self.validation,
            "augmented_by_modality": dict(self.by_modality),
        }


def augment_data(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    share: float = 0.2,
    seed: int = 42,
    bound: int = CANVAS_BOUND,
) -> AugmentReport:
    """Add concatenated samples to an RL data folder: writes ``output_dir/train.jsonl`` (the originals, then
    the augmented samples), ``validation.jsonl`` (copied) and ``augment_summary.json``.

    ``source`` is a folder with ``train.jsonl`` (and optionally ``validation.jsonl``), as ``grvl train
    sample`` writes, or a ``train.jsonl`` file. Raises :class:`DataError` for unreadable data.
    """
    source = Path(source)
    train_file = source / "train.jsonl" if source.is_dir() else source
    originals = [s for s in load_rl_data(train_file) if s.origin == "original"]
    extra = augment_samples(originals, share=share, seed=seed, bound=bound)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = AugmentReport(len(originals), len(extra), 0, dict(Counter(s.modality for s in extra)))
    report.train_path = write_rl_data([*originals, *extra], out / "train.jsonl")
    validation_file = train_file.with_name("validation.jsonl")
    if validation_file.is_file():
        validation = load_rl_data(validation_file)
        report.validation = len(validation)
        report.validation_path = write_rl_data(validation, out / "validation.jsonl")
    summary = stamp("rl-summary", {**report.to_dict(), "share": share, "seed": seed, "bound": bound})
    (out / "augment_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return report
