"""``Guard``: the public entry point. Data flow: input → prompt → backend → parse → verdict."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from grvl_sdk._constants import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_MODEL,
    MODEL_ENV_VAR,
)
from grvl_sdk.backends.base import Backend, Generation, GuardInput
from grvl_sdk.errors import InputError, ParseError
from grvl_sdk.images import load_images
from grvl_sdk.parsing import parse_output
from grvl_sdk.verdict import Usage, Verdict

__all__ = ["Guard"]

_CHECK_KEYS = frozenset({"text", "image", "images", "response"})
#: Default number of inputs generated together by ``check_batch``.
DEFAULT_BATCH_SIZE = 16


class Guard:
    """A GuardReasoner-VL guard over a backend (local transformers model, or a remote server).

    >>> guard = Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B", quantization="4bit")
    >>> verdict = guard.check("How do I pick this lock?", image="door.jpg")
    >>> verdict.request_label, verdict.harmful, verdict.reasoning
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self._backend = backend
        self.max_new_tokens = max_new_tokens
        self.max_image_pixels = max_image_pixels
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        quantization: str | None = None,
        dtype: Any = None,
        device: str | None = None,
        device_map: Any = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        **model_kwargs: Any,
    ) -> Guard:
        """Load a guard checkpoint locally (hub id or folder; default ``$GRVL_MODEL`` or the Eco-3B model).

        ``quantization``: ``None``, ``"4bit"`` or ``"8bit"`` (bitsandbytes). ``max_pixels`` caps the
        vision tokens per image (pixels / 784): lower is faster, higher sees more detail.
        """
        from grvl_sdk.backends.local import LocalBackend

        model_id = model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
        if quantization in ("none", "None", ""):
            quantization = None
        backend = LocalBackend.from_pretrained(
            model_id,
            quantization=quantization,  # type: ignore[arg-type]
            dtype=dtype,
            device=device,
            device_map=device_map,
            revision=revision,
            cache_dir=cache_dir,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            **model_kwargs,
        )
        return cls(backend, max_new_tokens=max_new_tokens, max_image_pixels=max_image_pixels, batch_size=batch_size)

    @property
    def backend(self) -> Backend:
        """The backend running the model (``guard.backend.model`` / ``.processor`` for a local one)."""
        return self._backend

    @property
    def model_id(self) -> str:
        return self._backend.model_id

    # -- input -> prompt ---------------------------------------------------------------------
    def prepare(
        self, text: str | None = None, image: Any = None, *, response: str | None = None, images: Any = None
    ) -> GuardInput:
        """Validate and load one input (images decoded, oriented, RGB)."""
        for name, value in (("text", text), ("response", response)):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{name} must be a string or None, got {type(value).__name__}", field=name)
        loaded = load_images(image, images, max_image_pixels=self.max_image_pixels)
        if not text and not loaded:
            raise InputError("nothing to check: give a request text, an image, or both", field="text")
        return GuardInput(text=text or None, response=response, images=tuple(loaded))

    def format_prompt(
        self, text: str | None = None, image: Any = None, *, response: str | None = None, images: Any = None
    ) -> str:
        """The exact prompt string given to the model (image blocks at the ``<image>`` position)."""
        return self._backend.format_prompt(self.prepare(text, image, response=response, images=images))

    # -- checks ------------------------------------------------------------------------------
    def check(
        self,
        text: str | None = None,
        image: Any = None,
        *,
        response: str | None = None,
        images: Any = None,
        max_new_tokens: int | None = None,
    ) -> Verdict:
        """Judge a request (text and/or images) and, if given, the AI's response to it."""
        item = self.prepare(text, image, response=response, images=images)
        generation = self._backend.generate([item], max_new_tokens=max_new_tokens or self.max_new_tokens)[0]
        return self._verdict(item, generation)

    async def acheck(
        self,
        text: str | None = None,
        image: Any = None,
        *,
        response: str | None = None,
        images: Any = None,
        max_new_tokens: int | None = None,
    ) -> Verdict:
        """Async twin of :meth:`check`; decoding and generation run off the event loop."""
        item = await asyncio.to_thread(self.prepare, text, image, response=response, images=images)
        generations = await self._backend.agenerate([item], max_new_tokens=max_new_tokens or self.max_new_tokens)
        return self._verdict(item, generations[0])

    def check_batch(
        self, inputs: Sequence[Mapping[str, Any]], *, max_new_tokens: int | None = None, batch_size: int | None = None
    ) -> list[Verdict]:
        """Check many inputs (dicts of ``check``'s keyword arguments) with batched generation, in order."""
        items = self._prepare_many(inputs)
        size = batch_size or self.batch_size
        verdicts: list[Verdict] = []
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            generations = self._backend.generate(chunk, max_new_tokens=max_new_tokens or self.max_new_tokens)
            verdicts.extend(self._verdict(item, gen) for item, gen in zip(chunk, generations, strict=False))
        return verdicts

    async def acheck_batch(
        self, inputs: Sequence[Mapping[str, Any]], *, max_new_tokens: int | None = None, batch_size: int | None = None
    ) -> list[Verdict]:
        """Async twin of :meth:`check_batch`."""
        items = await asyncio.to_thread(self._prepare_many, inputs)
        size = batch_size or self.batch_size
        verdicts: list[Verdict] = []
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            generations = await self._backend.agenerate(chunk, max_new_tokens=max_new_tokens or self.max_new_tokens)
            verdicts.extend(self._verdict(item, gen) for item, gen in zip(chunk, generations, strict=False))
        return verdicts

    def _prepare_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[GuardInput]:
        if isinstance(inputs, (str, bytes, Mapping)):
            raise InputError("check_batch takes a list of dicts like {'text': ..., 'image': ...}")
        items: list[GuardInput] = []
        for index, spec in enumerate(inputs):
            if not isinstance(spec, Mapping):
                raise InputError(f"check_batch input {index} must be a dict, got {type(spec).__name__}", index=index)
            unknown = set(spec) - _CHECK_KEYS
            if unknown:
                raise InputError(
                    f"check_batch input {index} has unknown keys {sorted(unknown)}; allowed: {sorted(_CHECK_KEYS)}",
                    index=index,
                )
            try:
                items.append(self.prepare(**spec))
            except InputError as exc:
                raise type(exc)(f"check_batch input {index}: {exc.message}", index=index, **exc.details) from exc
        return items

    # -- output -> verdict -------------------------------------------------------------------
    def _verdict(self, item: GuardInput, generation: Generation) -> Verdict:
        common: dict[str, Any] = {
            "raw_output": generation.text,
            "model": self.model_id,
            "usage": Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                latency_ms=generation.latency_ms,
            ),
        }
        try:
            parsed = parse_output(generation.text)
        except ParseError as exc:
            if not generation.finished:
                exc = ParseError(
                    f"guard output truncated at max_new_tokens before a verdict ({exc.message})",
                    output=generation.text,
                )
            return Verdict.from_error(exc, **common)
        if item.response is not None and parsed.response_label is None:
            error = ParseError(
                "a response was given but the guard output has no response label", output=generation.text
            )
            return Verdict.from_error(error, reasoning=parsed.reasoning, **common)
        response_label = parsed.response_label if item.response is not None else None
        return Verdict.from_labels(parsed.request_label, response_label, reasoning=parsed.reasoning, **common)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend's resources."""
        self._backend.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Guard(model={self.model_id!r}, backend={type(self._backend).__name__})"
