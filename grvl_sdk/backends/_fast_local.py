"""The fast tier on a local model: label probabilities from the logits (see :mod:`grvl_sdk.protocol.fast`).

For each part (the request label, then the response label when a response is given) the batch gets one
forward pass over ``prompt + forced assistant text + label tokens``: the prompt is tokenised by the
injection-proof :class:`~grvl_sdk.protocol.encoding.PromptEncoder` and the forced text is template text.
A label spelled by several tokens (`` un`` + ``harm`` + ``ful``) is teacher-forced, and its probability
is the product of its tokens' conditional probabilities; the rows that carry those tokens are shared
between the labels (a row whose tokens start another row's is dropped: its logits are in the longer
one), so with the usual tokenisations each input needs one row per part.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grvl_sdk.errors import BackendError, DeadlineExceededError, FastModeUnsupportedError, GuardClosedError
from grvl_sdk.protocol.encoding import EncodedBatch
from grvl_sdk.protocol.fast import LABELS, LabelLogprobs, assistant_prefix, chosen_label, fast_generation
from grvl_sdk.types import Generation, GuardInput

if TYPE_CHECKING:
    from grvl_sdk.backends.local import LocalBackend

__all__ = ["FastScorer", "LabelTokens"]


@dataclass(frozen=True)
class LabelTokens:
    """The token ids of one forced assistant text and of each label continuing it."""

    forced: tuple[int, ...]
    labels: tuple[tuple[int, ...], tuple[int, ...]]  # harmful, unharmful

    @property
    def extensions(self) -> list[tuple[int, ...]]:
        """The label tokens that must be fed (all but each label's last), without those another one
        starts with: one row per extension left."""
        needed = sorted({label[:-1] for label in self.labels}, key=len, reverse=True)
        kept: list[tuple[int, ...]] = []
        for ext in needed:
            if not any(longer[: len(ext)] == ext for longer in kept):
                kept.append(ext)
        return kept


class FastScorer:
    """Reads fast-tier labels with one :class:`~grvl_sdk.backends.local.LocalBackend`'s model."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self._tokens: dict[str, LabelTokens] = {}

    @classmethod
    def of(cls, backend: LocalBackend) -> FastScorer:
        """The backend's scorer (made on first use, kept on the backend: label tokens are cached)."""
        scorer = backend.__dict__.get("_fast_scorer")
        if scorer is None:
            scorer = backend.__dict__["_fast_scorer"] = cls(backend)
        return scorer

    def label_tokens(self, forced_text: str) -> LabelTokens:
        """Token ids of ``forced_text`` and of `` harmful`` / `` unharmful`` after it, as the model's
        tokenizer splits the whole assistant text (so a label is scored as the model would write it).
        Raises :class:`FastModeUnsupportedError` when the tokenizer merges a label into the forced text."""
        cached = self._tokens.get(forced_text)
        if cached is not None:
            return cached
        encode = self.backend.encoder._encode_text
        forced = tuple(encode(forced_text))
        labels = []
        for label in LABELS:
            ids = tuple(encode(f"{forced_text} {label}"))
            if ids[: len(forced)] != forced or len(ids) == len(forced):
                raise FastModeUnsupportedError(
                    f"this tokenizer merges the label {label!r} into the forced text {forced_text[-12:]!r}: "
                    "fast mode cannot read it"
                )
            labels.append(ids[len(forced) :])
        if labels[0] == labels[1][: len(labels[0])] or labels[1] == labels[0][: len(labels[1])]:
            raise FastModeUnsupportedError("the two labels' tokens are not distinguishable with this tokenizer")
        tokens = LabelTokens(forced, (labels[0], labels[1]))
        self._tokens[forced_text] = tokens
        return tokens

    def score(self, inputs: Sequence[GuardInput], *, deadline: float | None) -> list[Generation]:
        """One fast generation per input (see the module docstring). Raises
        :class:`DeadlineExceededError`, :class:`BackendError` (a failed forward pass) or
        :class:`GuardClosedError`."""
        backend = self.backend
        if backend.model is None:
            raise GuardClosedError("the local backend is closed (its model was released)")
        started = time.perf_counter()
        batch = backend.encoder.encode_batch(inputs, device=backend.device, pixel_dtype=backend._pixel_dtype())
        prompts = _unpadded(batch)
        image_counts = [len(item.images) for item in inputs]
        first = self.label_tokens(assistant_prefix())
        request = self._part(batch, prompts, image_counts, [first] * len(inputs), deadline)
        request_labels = [chosen_label(pair) for pair in request]
        with_response = [i for i, item in enumerate(inputs) if item.response is not None]
        response: dict[int, LabelLogprobs] = {}
        if with_response:
            tokens = [self.label_tokens(assistant_prefix(request_labels[i])) for i in with_response]
            rows = [prompts[i] for i in with_response]
            sub = _select(batch, with_response, image_counts)
            pairs = self._part(sub, rows, [image_counts[i] for i in with_response], tokens, deadline)
            response = dict(zip(with_response, pairs, strict=True))
        latency_ms = (time.perf_counter() - started) * 1000
        generations = []
        for i, pair in enumerate(request):
            final = self.label_tokens(assistant_prefix(request_labels[i])) if i in response else first
            label_ids = final.labels[LABELS.index(chosen_label(response.get(i, pair)))]
            generations.append(
                fast_generation(
                    pair,
                    response.get(i),
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=len(final.forced) + len(label_ids),
                    latency_ms=latency_ms,
                )
            )
        return generations

    def _part(
        self,
        batch: EncodedBatch,
        prompts: list[list[int]],
        image_counts: list[int],
        tokens: list[LabelTokens],
        deadline: float | None,
    ) -> list[LabelLogprobs]:
        """One forward pass: the two labels' log-probabilities after each input's forced text. Raises
        :class:`BackendError` when the model's logits give a NaN label probability."""
        rows: list[list[int]] = []
        owners: list[int] = []  # the input of each row
        where: list[dict[tuple[int, ...], int]] = []  # per input: extension -> row
        for index, (prompt, label_tokens) in enumerate(zip(prompts, tokens, strict=True)):
            own: dict[tuple[int, ...], int] = {}
            for ext in label_tokens.extensions:
                own[ext] = len(rows)
                rows.append([*prompt, *label_tokens.forced, *ext])
                owners.append(index)
            where.append(own)
        keep = max(len(ext) for t in tokens for ext in t.extensions) + 1
        logprobs = self._forward(batch, rows, owners, image_counts, keep, deadline)
        results: list[LabelLogprobs] = []
        for index, label_tokens in enumerate(tokens):
            pair = []
            for label in label_tokens.labels:
                ext, row = next((ext, row) for ext, row in where[index].items() if ext[: len(label) - 1] == label[:-1])
                start = keep - 1 - len(ext)  # the kept position that predicts the label's first token
                pair.append(float(sum(logprobs[row, start + j, token].item() for j, token in enumerate(label))))
            if any(math.isnan(value) for value in pair):
                # min(0.0, nan) is 0.0: unchecked, NaN logits would read as certainty in both labels.
                raise BackendError("fast scoring produced NaN label log-probabilities (non-finite logits)")
            results.append((min(0.0, pair[0]), min(0.0, pair[1])))
        return results

    def _forward(
        self,
        batch: EncodedBatch,
        rows: list[list[int]],
        owners: list[int],
        image_counts: list[int],
        keep: int,
        deadline: float | None,
    ) -> Any:
        """Log-softmax of the last ``keep`` positions of each row, shape ``(rows, keep, vocab)``."""
        import torch

        backend = self.backend
        encoder = backend.encoder
        device = backend.device
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), encoder.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention.to(device),
            "use_cache": False,
            "logits_to_keep": keep,
        }
        if encoder.image_token_id is not None:
            kwargs["mm_token_type_ids"] = (input_ids == encoder.image_token_id).long().to(device)
        if batch.pixel_values is not None:
            pixels, grid = _images_for(batch, owners, image_counts)
            if grid is not None:
                kwargs["pixel_values"], kwargs["image_grid_thw"] = pixels, grid
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not backend._lock.acquire(timeout=wait):
            raise DeadlineExceededError("deadline passed while waiting for the model (busy with other checks)")
        try:
            if backend.model is None:
                raise GuardClosedError("the local backend is closed (its model was released)")
            try:
                with torch.inference_mode():
                    logits = backend.model(**kwargs).logits[:, -keep:, :]
            except torch.cuda.OutOfMemoryError as exc:  # type: ignore[attr-defined]
                raise BackendError(f"out of GPU memory scoring a batch of {len(rows)}: {exc}") from exc
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise BackendError(f"fast scoring failed: {type(exc).__name__}: {exc}") from exc
        finally:
            backend._lock.release()
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError("deadline passed while scoring the labels")
        return torch.log_softmax(logits.float(), dim=-1)


def _unpadded(batch: EncodedBatch) -> list[list[int]]:
    width = batch.input_ids.shape[1]
    ids = batch.input_ids.tolist()
    return [row[width - length :] for row, length in zip(ids, batch.prompt_lengths, strict=True)]


def _select(batch: EncodedBatch, chosen: list[int], image_counts: list[int]) -> EncodedBatch:
    """The batch restricted to the inputs ``chosen`` (only its images matter to the scorer)."""
    pixels, grid = _images_for(batch, chosen, image_counts) if batch.pixel_values is not None else (None, None)
    return EncodedBatch(
        input_ids=batch.input_ids[chosen],
        attention_mask=batch.attention_mask[chosen],
        mm_token_type_ids=None,
        pixel_values=pixels,
        image_grid_thw=grid,
        prompt_lengths=[batch.prompt_lengths[i] for i in chosen],
    )


def _images_for(batch: EncodedBatch, owners: list[int], image_counts: list[int]) -> tuple[Any, Any]:
    """Pixel patches and grids for rows owned by ``owners`` (an input's images repeated for each of its
    rows, in row order); ``(None, None)`` when those rows have no images."""
    import torch

    grid: Any = batch.image_grid_thw
    patches = grid.prod(-1).tolist()
    image_start = [sum(image_counts[:i]) for i in range(len(image_counts))]
    patch_start = [sum(patches[:j]) for j in range(len(patches))]
    pixels: Any = batch.pixel_values
    pixel_parts, grid_parts = [], []
    for owner in owners:
        for j in range(image_start[owner], image_start[owner] + image_counts[owner]):
            pixel_parts.append(pixels[patch_start[j] : patch_start[j] + patches[j]])
            grid_parts.append(grid[j : j + 1])
    if not grid_parts:
        return None, None
    return torch.cat(pixel_parts), torch.cat(grid_parts)
