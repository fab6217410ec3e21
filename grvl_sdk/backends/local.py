"""The local backend: a GuardReasoner-VL checkpoint run in-process with transformers.

Greedy decoding exactly as the authors evaluated (no sampling, repetition penalty 1.0), overriding the
checkpoint's own sampling defaults; generation stops once ``</result>`` is written, or when the check's
deadline passes; batches are left-padded. For label scores, the top log-probabilities of the logits the
model computes anyway are kept at the steps that can hold a label (after a token ending in ``:``, ``*``
or whitespace), so scoring costs almost nothing per step. Quantisation (4-bit NF4 / 8-bit) goes through
bitsandbytes with the vision tower kept in full precision.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from grvl_sdk._constants import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, SCORE_TOP_K
from grvl_sdk._lazy import require
from grvl_sdk._threads import to_daemon_thread
from grvl_sdk.backends._continuous import ContinuousDecoder, ContinuousJob, PrefixCache, continuous_decoding
from grvl_sdk.backends._decoding import _LabelLogprobs, _StopAtDeadline, _StopOnVerdict
from grvl_sdk.backends._loading import resolve_model
from grvl_sdk.backends._processor import load_processor
from grvl_sdk.backends._token_scan import scanned_tokens
from grvl_sdk.backends.base import Backend
from grvl_sdk.backends.compiled import CompiledDecoding, CompileSettings
from grvl_sdk.errors import BackendError, DeadlineExceededError, GuardClosedError, InputError, ModelLoadError
from grvl_sdk.protocol.encoding import EncodedBatch, PromptEncoder
from grvl_sdk.protocol.parsing import verdict_end
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput, TokenLogprobs

__all__ = ["LocalBackend", "Quantization", "resolve_model"]

logger = logging.getLogger("grvl_sdk")

Quantization = Literal["4bit", "8bit"]
# Module paths of the vision tower (transformers 5.x, 4.x) and the output head: never quantised.
_SKIP_QUANTIZATION = ["model.visual", "visual", "lm_head"]


class LocalBackend(Backend):
    """Runs a Qwen2.5-VL guard with transformers. Build it with :meth:`from_pretrained`.

    ``model`` and ``processor`` are the loaded transformers objects. ``score_top_k`` alternatives are
    kept at each step that may hold a label, for label scores (0 turns scores off);
    ``score_every_step`` keeps them at every step (for serving logprobs).
    """

    prefers_micro_batching = True
    #: The compiled decode path (``from_pretrained(..., compile=True)``; :mod:`grvl_sdk.backends.compiled`).
    compiled: CompiledDecoding | None = None

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str = "",
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        score_top_k: int = SCORE_TOP_K,
        score_every_step: bool = False,
        continuous_batching: bool = False,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        prefix_cache_size: int = 0,
    ) -> None:
        if min_pixels < 1 or max_pixels < min_pixels:
            raise InputError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if score_top_k < 0:
            raise InputError(f"score_top_k must be >= 0, got {score_top_k}")
        if max_batch_size < 1 or prefix_cache_size < 0:
            sizes = f"{max_batch_size}, {prefix_cache_size}"
            raise InputError(f"need max_batch_size >= 1 and prefix_cache_size >= 0, got {sizes}")
        if prefix_cache_size and not continuous_batching:
            raise InputError("prefix_cache_size needs continuous_batching=True (the prefix cache lives in that loop)")
        self.score_top_k = score_top_k
        self.score_every_step = score_every_step
        self.model = model
        self.processor = processor
        self.model_id = model_id or getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        self.encoder = PromptEncoder(processor, min_pixels=min_pixels, max_pixels=max_pixels)
        self.tokenizer = self.encoder.tokenizer
        self._lock = threading.Lock()
        scan = scanned_tokens(self.tokenizer)  # cached per tokenizer: ~1 s over a 151k vocabulary
        self._trigger_ids = scan.triggers
        self._label_trigger_ids = scan.label_triggers
        self._eos_ids = self._collect_eos_ids()
        #: Greedy generations run in the continuous-batching loop (:mod:`grvl_sdk.backends._continuous`).
        self.continuous_batching = continuous_batching
        self.max_batch_size = max_batch_size
        self.prefix_cache: PrefixCache | None = PrefixCache(prefix_cache_size) if prefix_cache_size else None

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        quantization: Quantization | None = None,
        dtype: str | Any | None = None,
        device: str | None = None,
        device_map: Any = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        attn_implementation: str | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        score_top_k: int = SCORE_TOP_K,
        compile: bool | CompileSettings = False,
        continuous_batching: bool = False,
        prefix_cache_size: int = 0,
        **model_kwargs: Any,
    ) -> LocalBackend:
        """Load a checkpoint (hub id or local folder).

        ``dtype`` defaults to bf16 on CUDA (fp16 where bf16 is unsupported) and fp32 on CPU; ``device``
        defaults to CUDA when available. ``quantization`` is ``None``, ``"4bit"`` (NF4, double
        quantisation) or ``"8bit"``, via bitsandbytes; the vision tower is not quantised. ``compile``
        (``True`` or a :class:`~grvl_sdk.backends.compiled.CompileSettings`): greedy decoding with a static
        KV cache and a ``torch.compile``-d decode step, compiled once here; raises
        :class:`~grvl_sdk.errors.CompileUnsupportedError` where that cannot work (see the module).
        ``continuous_batching``: greedy generations run in the continuous-batching loop
        (:mod:`grvl_sdk.backends._continuous`: finished rows leave the batch, queued inputs take their
        slots; not with ``compile``); ``prefix_cache_size``: how many prompt key/value caches that loop
        keeps for prompts that start with the same tokens (a stream's successive checks; 0: off).
        """
        torch = require("torch", extra="local")
        transformers = require("transformers", extra="local")
        if quantization not in (None, "4bit", "8bit"):
            raise InputError(f"quantization must be None, '4bit' or '8bit', got {quantization!r}")
        if compile and continuous_batching:
            raise InputError("continuous_batching runs its own decode loop: it does not combine with compile")
        compiling = CompiledDecoding.requested(compile, quantization=quantization, device=device, device_map=device_map)
        resolved, local_only = resolve_model(model_id, revision=revision, cache_dir=cache_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = _resolve_dtype(torch, dtype, device)
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_only}
        kwargs: dict[str, Any] = {"dtype": torch_dtype, **hub, **model_kwargs}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if quantization is not None:
            require("bitsandbytes", extra="local")
            logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
            if quantization == "4bit":
                kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch_dtype,
                    llm_int8_skip_modules=_SKIP_QUANTIZATION,
                )
            else:
                kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                    load_in_8bit=True, llm_int8_skip_modules=_SKIP_QUANTIZATION
                )
            kwargs["device_map"] = device_map or {"": device}
        elif device_map is not None:
            kwargs["device_map"] = device_map
        try:
            processor = load_processor(resolved, **hub)
            model = transformers.AutoModelForImageTextToText.from_pretrained(resolved, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load model {model_id!r}: {exc}", model=model_id) from exc
        if quantization is None and device_map is None:
            model.to(device)
        model.eval()
        backend = cls(
            model, processor, model_id=model_id, min_pixels=min_pixels, max_pixels=max_pixels, score_top_k=score_top_k,
            continuous_batching=continuous_batching, prefix_cache_size=prefix_cache_size,
        )  # fmt: skip
        if compiling is not None:
            CompiledDecoding.install(backend, compiling)
        return backend

    # -- generation --------------------------------------------------------------------------
    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        for value in (getattr(config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return ids

    def generation_config(self, max_new_tokens: int, decoding: Decoding = GREEDY) -> Any:
        """The authors' decoding by default — greedy, repetition penalty 1.0 — overriding the checkpoint's
        sampling settings; ``decoding`` with ``temperature > 0`` samples (training: rejection sampling,
        rollouts), ``n`` outputs per input."""
        transformers = require("transformers", extra="local")
        sampling = not decoding.greedy
        return transformers.GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            num_beams=1,
            num_return_sequences=decoding.n,
            temperature=decoding.temperature if sampling else 1.0,
            top_p=decoding.top_p if sampling else 1.0,
            top_k=(decoding.top_k or 0) if sampling else 50,
            repetition_penalty=decoding.repetition_penalty,
            eos_token_id=sorted(self._eos_ids),
            pad_token_id=self.encoder.pad_token_id,
        )

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def _pixel_dtype(self) -> Any:
        visual = getattr(getattr(self.model, "model", self.model), "visual", None)
        params = visual.parameters() if visual is not None else self.model.parameters()
        return next(params).dtype

    def format_prompt(self, item: GuardInput) -> str:
        return self.encoder.format_prompt(item)

    @property
    def image_bounds(self) -> tuple[int, int]:
        return self.encoder.min_pixels, self.encoder.max_pixels

    @property
    def cache_settings(self) -> str:
        dtype = getattr(self.model, "dtype", "")
        return f"local:{self.encoder.min_pixels}:{self.encoder.max_pixels}:{dtype}"

    def generate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """Generate ``decoding.n`` outputs per input (input-major). ``deadline`` (a ``time.monotonic()``
        value) stops generation and raises :class:`DeadlineExceededError` once passed.
        ``decoding.tier == "fast"``: the verdict without reasoning, labels read from the logits
        (:mod:`grvl_sdk.backends._fast_local`)."""
        if self.model is None:
            raise GuardClosedError("the local backend is closed (its model was released)")
        if not inputs:
            return []
        if decoding.tier == "fast":
            from grvl_sdk.backends._fast_local import FastScorer

            return FastScorer.of(self).score(inputs, deadline=deadline)
        if self.continuous_batching and continuous_decoding(decoding):
            return self.generate_continuous(inputs, max_new_tokens=max_new_tokens, deadline=deadline)
        batch = self.encoder.encode_batch(inputs, device=self.device, pixel_dtype=self._pixel_dtype())
        return self.generate_encoded(batch, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding)

    def generate_continuous(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None
    ) -> list[Generation]:
        """Greedy outputs of ``inputs`` through the continuous-batching loop (``max_batch_size`` rows at
        once, finished rows refilled from the rest). Raises the first input's error if any failed
        (:class:`DeadlineExceededError` first), like a failed batch of :meth:`generate_encoded`."""
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        jobs = [ContinuousJob(item, max_new_tokens, deadline) for item in inputs]
        outcomes: dict[int, Generation | Exception] = {}
        self.run_continuous(jobs, lambda job, outcome: outcomes.__setitem__(id(job), outcome))
        results = [outcomes[id(job)] for job in jobs]
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise next((e for e in errors if isinstance(e, DeadlineExceededError)), errors[0])
        return [r for r in results if isinstance(r, Generation)]

    def run_continuous(self, first: Sequence[Any], settle: Any, take: Any = None, *, slots: int | None = None) -> None:
        """Run the continuous-batching loop (:class:`~grvl_sdk.backends._continuous.ContinuousDecoder`)
        over ``first`` and what ``take(n)`` hands over, ``slots`` rows at once (default
        ``max_batch_size``); ``settle(job, outcome)`` once per job."""
        if self.model is None:
            raise GuardClosedError("the local backend is closed (its model was released)")
        size = self.max_batch_size if slots is None else slots
        decoder = ContinuousDecoder(self, slots=size, prefix_cache=self.prefix_cache)
        decoder.run(first, settle, take)

    async def agenerate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """Async twin of :meth:`generate` (runs on a worker thread)."""
        return await to_daemon_thread(
            self.generate, inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding
        )

    def generate_encoded(
        self,
        batch: EncodedBatch,
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        score_every_step: bool | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """Generate from already tokenised inputs (``EncodedBatch``, left-padded).

        ``score_every_step`` overrides the backend's setting for this call."""
        import torch

        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        width = batch.input_ids.shape[1]
        stopping: list[Any] = [_StopOnVerdict(self.tokenizer, self._trigger_ids, width)]
        at_deadline = _StopAtDeadline(deadline) if deadline is not None else None
        if at_deadline is not None:
            stopping.append(at_deadline)
        scores = (
            _LabelLogprobs(
                self.score_top_k,
                self._label_trigger_ids,
                every_step=self.score_every_step if score_every_step is None else score_every_step,
            )
            if self.score_top_k
            else None
        )
        if scores is not None:
            stopping.append(scores)
        kwargs: dict[str, Any] = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "generation_config": self.generation_config(max_new_tokens, decoding),
            "stopping_criteria": stopping,
        }
        if batch.mm_token_type_ids is not None:
            kwargs["mm_token_type_ids"] = batch.mm_token_type_ids
        if batch.pixel_values is not None:
            kwargs["pixel_values"] = batch.pixel_values
            kwargs["image_grid_thw"] = batch.image_grid_thw
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise DeadlineExceededError("deadline passed while waiting for the model (busy with other checks)")
        if self.model is None:
            self._lock.release()
            raise GuardClosedError("the local backend is closed (its model was released)")
        # compile=True: static cache, compiled decode step, scores read by a logits processor (not the hook)
        compiled = self.compiled is not None and self.compiled.adapt(kwargs, width + max_new_tokens, scores, decoding)
        head = self.model.get_output_embeddings() if scores is not None and not compiled else None
        handle = head.register_forward_hook(scores.hook) if head is not None and scores is not None else None
        try:
            started = time.perf_counter()
            if decoding.seed is not None:
                torch.manual_seed(decoding.seed)  # under the model lock: reproducible sampling
            try:
                with torch.inference_mode():
                    output = self.model.generate(**kwargs)
            except torch.cuda.OutOfMemoryError as exc:  # type: ignore[attr-defined]
                size = len(batch.prompt_lengths)
                raise BackendError(f"out of GPU memory generating a batch of {size}: {exc}") from exc
            except (RuntimeError, ValueError, IndexError) as exc:
                raise BackendError(f"generation failed: {type(exc).__name__}: {exc}") from exc
            latency_ms = (time.perf_counter() - started) * 1000
        finally:
            if handle is not None:
                handle.remove()
            self._lock.release()
        recorded = scores.rows() if scores is not None and (handle is not None or compiled) else None
        generations = [
            self._to_generation(
                row,
                width,
                batch.prompt_lengths[i // decoding.n],
                latency_ms,
                max_new_tokens,
                None if recorded is None else (recorded[i] if recorded else {}),
                cut=at_deadline is not None and at_deadline.fired,
            )
            for i, row in enumerate(output.tolist())
        ]
        if at_deadline is not None and at_deadline.fired and not all(g.finished for g in generations):
            raise DeadlineExceededError(f"deadline passed after {latency_ms:.0f} ms of generation")
        return generations

    def _to_generation(
        self,
        row: list[int],
        width: int,
        prompt_tokens: int,
        latency_ms: float,
        max_new_tokens: int,
        top: dict[int, tuple[list[float], list[int]]] | None = None,
        *,
        cut: bool = False,
    ) -> Generation:
        """One row's output. ``cut``: the deadline stopped generation, so an output that neither closed
        its verdict nor ended is unfinished even if it is shorter than ``max_new_tokens``."""
        new = row[width:]
        stop = len(new)
        hit_eos = False
        for index, token in enumerate(new):
            if token in self._eos_ids or token == self.encoder.pad_token_id:
                stop, hit_eos = index, True
                break
        text = self.tokenizer.decode(new[:stop], skip_special_tokens=True)
        end = verdict_end(text)
        if end is not None:
            text = text[:end]
        finished = end is not None or hit_eos or (stop < max_new_tokens and not cut)
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=stop + (1 if hit_eos and stop < len(new) and new[stop] in self._eos_ids else 0),
            latency_ms=latency_ms,
            finished=finished,
            logprobs=self._token_logprobs(new[:stop], top) if top is not None else None,
        )

    def _token_logprobs(self, ids: list[int], top: dict[int, tuple[list[float], list[int]]]) -> TokenLogprobs:
        """Token texts now (one batched decode); alternatives decoded lazily, only where asked (and kept)."""
        tokens = self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
        decode = self.tokenizer.decode

        def alternatives(step: int) -> dict[str, float]:
            found: dict[str, float] = {}
            values, indices = top.get(step, ((), ()))
            for value, index in zip(values, indices, strict=True):
                text = decode([index], skip_special_tokens=False)
                # Two ids may decode to the same text (byte fragments): add their probabilities.
                found[text] = math.log(math.exp(found[text]) + math.exp(value)) if text in found else value
            return found

        return TokenLogprobs(tokens=tuple(tokens), alternatives=alternatives)

    def close(self) -> None:
        """Release the model: the compiled decode path and the prefix cache's key/value tensors, which
        hold the model and its device memory, go too. A continuous-batching run in flight fails its
        rows with :class:`GuardClosedError` at its next forward pass."""
        self.model = None
        self.compiled = None
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def _resolve_dtype(torch: Any, dtype: Any, device: str) -> Any:
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(
            torch, dtype.replace("bf16", "bfloat16").replace("fp16", "float16").replace("fp32", "float32"), None
        )
        if not isinstance(value, torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use 'bfloat16', 'float16' or 'float32'")
        return value
    return dtype
