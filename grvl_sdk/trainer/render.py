"""Turning samples into training tensors with the *inference* prompt code.

The prompt of every sample is tokenised by :class:`grvl_sdk.protocol.encoding.PromptEncoder`, the
same object the local backend uses to build a ``Guard``'s prompts: same system message, same
image-block position, same injection-proof tokenisation (user text never becomes special tokens). The
assistant turn (:meth:`TrainingSample.target`) follows, then ``<|im_end|>``; the loss covers only that
part. Samples longer than the cutoff are dropped (never cut through image tokens), and counted.
"""

from __future__ import annotations

import io
import logging
import os
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from grvl_sdk._constants import DEFAULT_MIN_PIXELS, RSFT_MAX_PIXELS
from grvl_sdk._lazy import require
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.errors import DataError, ImageError
from grvl_sdk.images import load_image, resize_to_grid, smart_resize
from grvl_sdk.types import GuardInput

__all__ = [
    "EncodedExample",
    "RSFTCollator",
    "encode_samples",
    "fast_rows",
    "image_token_count",
    "prompt_encoder",
    "training_prompt",
]

logger = logging.getLogger("grvl_sdk")

#: Label value ignored by the loss.
IGNORE_INDEX = -100
_PLACEHOLDER = Image.new("RGB", (28, 28))


def prompt_encoder(processor: Any, *, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = RSFT_MAX_PIXELS) -> Any:
    """The local backend's prompt encoder for ``processor`` (the object ``Guard`` prompts go through)."""
    from grvl_sdk.protocol.encoding import PromptEncoder

    return PromptEncoder(processor, min_pixels=min_pixels, max_pixels=max_pixels)


def _guard_input(sample: TrainingSample, images: Sequence[Image.Image] | None = None) -> GuardInput:
    pictures = tuple(images) if images is not None else (_PLACEHOLDER,) * len(sample.images)
    return GuardInput(text=sample.request or None, response=sample.response, images=pictures)


def training_prompt(sample: TrainingSample, processor: Any) -> str:
    """The prompt string a sample is trained on; equals ``Guard.format_prompt`` for the same input."""
    return prompt_encoder(processor).format_prompt(_guard_input(sample))


def _image_size(image: Any) -> tuple[int, int]:
    """(width, height) without decoding the pixels where possible."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(image))) as opened:
            return opened.size
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        with Image.open(image) as opened:
            return opened.size
    return load_image(image).size


def image_token_count(image: Any, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int) -> int:
    """Vision tokens the Qwen2.5-VL processor gives ``image`` (orientation does not change the count).

    The grid is :func:`grvl_sdk.images.smart_resize`, the one resize rule the SDK uses everywhere (the
    guard's inputs, the remote backend, evaluation). Raises :class:`ImageError` for an unreadable image or
    one the rule refuses (an aspect ratio over 200:1).
    """
    try:
        width, height = _image_size(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image: {type(exc).__name__}: {exc}") from exc
    factor = patch_size * merge_size
    h_bar, w_bar = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h_bar // patch_size) * (w_bar // patch_size) // (merge_size**2)


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one sample: prompt (no loss) then completion (loss), and its images."""

    prompt_ids: array
    completion_ids: array
    images: tuple[Any, ...]
    image_tokens: tuple[int, ...]
    source: str | None
    modality: str

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def encode_samples(
    samples: Sequence[TrainingSample],
    processor: Any,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = RSFT_MAX_PIXELS,
    max_length: int | None = 2048,
    progress: bool = False,
    fast_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[list[EncodedExample], list[tuple[str | None, int]]]:
    """Tokenise samples for R-SFT. Returns (examples, dropped) where ``dropped`` lists the
    ``(source, length)`` of samples longer than ``max_length``.

    ``fast_fraction``: the share of samples (chosen with ``seed``; ``round(fraction * len(samples))``
    of them) whose answer is rendered with an empty reasoning block (:func:`fast_target`), so the
    guard also learns the fast tier (``mode="fast"``) on the same prompt.

    Raises :class:`DataError` (with the sample's source) for a sample without a target or with an
    unreadable image.
    """
    encoder = prompt_encoder(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    tokenizer = encoder.tokenizer
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    image_processor = encoder.image_processor
    patch = int(getattr(image_processor, "patch_size", 14) or 14)
    merge = encoder.merge_size
    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    examples: list[EncodedExample] = []
    dropped: list[tuple[str | None, int]] = []
    iterator: Any = samples
    if progress:
        tqdm = require("tqdm", extra="train")
        iterator = tqdm.tqdm(samples, desc="tokenising", unit="sample")
    fast = fast_rows(len(samples), fast_fraction, seed)
    for position, sample in enumerate(iterator):
        file, line = _split_source(sample.source)
        try:
            target = sample.target()
            if position in fast:
                target = fast_target(target)
        except DataError as exc:
            raise DataError(exc.problem, file=file, line=line, field=exc.field) from exc
        counts: list[int] = []
        for index, image in enumerate(sample.images):
            try:
                counts.append(image_token_count(image, patch_size=patch, merge_size=merge, **pixels))
            except ImageError as exc:
                raise DataError(exc.message, file=file, line=line, field=f"images[{index}]") from exc
        prompt = encoder.token_ids(_guard_input(sample), counts)
        completion = tokenizer(target, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [end_id]
        length = len(prompt) + len(completion)
        if max_length is not None and length > max_length:
            dropped.append((sample.source, length))
            continue
        examples.append(
            EncodedExample(
                prompt_ids=array("l", prompt),
                completion_ids=array("l", completion),
                images=sample.images,
                image_tokens=tuple(counts),
                source=sample.source,
                modality=sample.modality,
            )
        )
    return examples, dropped


def fast_rows(count: int, fraction: float, seed: int) -> frozenset[int]:
    """The positions (of ``count`` samples) trained in the fast tier: ``round(fraction * count)`` of them,
    drawn with ``seed`` — the one draw of R-SFT's and the RL stage's ``fast_fraction``. Raises
    ``ValueError`` for a ``fraction`` outside [0, 1] (NaN included)."""
    if not 0.0 <= fraction <= 1.0:  # NaN fails too
        raise ValueError(f"fast_fraction must be in [0, 1], got {fraction!r}")
    return frozenset(random.Random(seed).sample(range(count), round(fraction * count)))


def fast_target(target: str) -> str:
    """A training answer in the fast tier's form: an empty reasoning block and the same labels
    (``<think>\n\n</think>\n<result>\nRequest: …\nResponse: …\n</result>``, the text
    :mod:`grvl_sdk.protocol.fast` forces and reads). Raises :class:`DataError` when ``target`` has no
    readable labels."""
    from grvl_sdk.errors import ParseError
    from grvl_sdk.protocol.fast import FAST_PREFIX, RESPONSE_CUE
    from grvl_sdk.protocol.parsing import parse_output

    try:
        parsed = parse_output(target)
    except ParseError as exc:
        raise DataError(f"the answer has no readable verdict for a fast rendering: {exc.message}") from exc
    if parsed.request_label is None:
        raise DataError("the answer has no request label for a fast rendering")
    response = parsed.response_label or "None"
    return f"{FAST_PREFIX} {parsed.request_label}{RESPONSE_CUE} {response}\n</result>"


def _split_source(source: str | None) -> tuple[str | None, int | None]:
    if not source:
        return None, None
    head, _, tail = source.rpartition(":")
    if head and tail.isdigit():
        return head, int(tail)
    return source, None


class RSFTCollator:
    """Pads a batch of :class:`EncodedExample` (right padding) and preprocesses its images.

    Batches may mix text-only and image samples. Rows handed in by the trainer are ``{"index": i}``.
    """

    def __init__(
        self,
        examples: Sequence[EncodedExample],
        processor: Any,
        *,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = RSFT_MAX_PIXELS,
    ) -> None:
        self.examples = examples
        encoder = prompt_encoder(processor, min_pixels=min_pixels, max_pixels=max_pixels)
        self.image_processor = encoder.image_processor
        self.pad_token_id = encoder.pad_token_id
        self.image_token_id = encoder.image_token_id
        self.merge_size = encoder.merge_size
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def __call__(self, rows: Sequence[Any]) -> dict[str, Any]:
        import torch

        batch = [self.examples[int(row["index"] if isinstance(row, dict) else row)] for row in rows]
        width = max(len(example) for example in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        images: list[Image.Image] = []
        expected: list[int] = []
        for row, example in enumerate(batch):
            prompt = torch.tensor(example.prompt_ids, dtype=torch.long)
            completion = torch.tensor(example.completion_ids, dtype=torch.long)
            length = len(prompt) + len(completion)
            input_ids[row, : len(prompt)] = prompt
            input_ids[row, len(prompt) : length] = completion
            attention[row, :length] = 1
            labels[row, len(prompt) : length] = completion
            for index, image in enumerate(example.images):
                try:
                    # The one resize to the grid, as the guard's own encoder does: training sees the pixels
                    # inference sees (the image processor then has nothing left to change).
                    loaded = load_image(image)
                    images.append(resize_to_grid(loaded, min_pixels=self.min_pixels, max_pixels=self.max_pixels))
                except ImageError as exc:
                    raise ImageError(f"{example.source}: images[{index}]: {exc.message}") from exc
            expected.extend(example.image_tokens)
        out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if self.image_token_id is not None:
            out["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        if images:
            processed = self.image_processor(
                images=images,
                size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                return_tensors="pt",
            )
            grid = processed["image_grid_thw"]
            counts = (grid.prod(-1) // (self.merge_size**2)).tolist()
            if counts != expected:
                raise DataError(
                    f"image token counts changed between tokenising and batching ({expected} vs {counts})",
                    field="images",
                )
            out["pixel_values"] = processed["pixel_values"]
            out["image_grid_thw"] = grid
        return out
