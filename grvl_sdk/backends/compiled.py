"""The local backend's compiled decode path (``compile=True``): a static KV cache and ``torch.compile`` of
the model's forward for the decode steps, through transformers' own mechanism.

``model.generate`` compiles the forward (``model.get_compiled_call``) when the generation config asks for
a compilable cache (``cache_implementation="static"``) and a ``compile_config`` allows the device. The
prefill (prompt and image encoding) stays eager: only the one-token decode steps, where a check spends
most of its time, run compiled. What this module adds around it:

* **Checks at load.** Compilation that cannot work raises :class:`~grvl_sdk.errors.CompileUnsupportedError`
  (code ``compile_unsupported``) from ``from_pretrained``: quantised (bitsandbytes) weights, a model
  split or offloaded over several devices, a device other than CPU/CUDA/XPU, Python/torch without
  TorchDynamo, the ``inductor`` backend without a C++ compiler (CPU) or Triton (GPU), an unknown
  backend. A warm-up generation then compiles the decode step once; anything torch raises there is
  reported the same way, at load, not at the first check. transformers itself would silently decode
  eagerly in most of these cases; here nothing falls back silently.
* **Cache length buckets.** The static cache holds ``max_cache_len`` positions: the prompt width plus
  ``max_new_tokens``, rounded up to a power of two and at least ``CompileSettings.min_cache_len``.
  transformers never shrinks it for later calls (``_previous_max_cache_length``). Every decode step
  attends over the whole cache (masked), so on CPU a large ``max_new_tokens`` costs a little per step.
* **Label scores without a forward hook.** The eager path records label log-probabilities with a forward
  hook on the output head (:class:`~grvl_sdk.backends._decoding._LabelLogprobs`). A hook inside a compiled
  forward is traced into the graph (and hooks added after compilation are not guarded), so the compiled
  path reads the same logits (``logits[:, -1]`` in float32) through a logits processor instead. That
  processor runs after transformers' own ones, so it sees the raw logits only when there are none:
  greedy decoding with a repetition penalty (which rewrites the logits first) runs eagerly when label
  scores are recorded.

Recompilation: the decode step's input shapes are the batch size and the cache length (images change
neither: pixels only enter the eager prefill). They are compiled symbolic (``dynamic=True``, the
default), so one graph serves every cache length, and one every batch size of 2 or more; batch size 1
gets its own (torch specialises sizes 0 and 1). The warm-up compiles both at load
(``warmup_batch_sizes=(1, 2)``): after it, no check compiles (``tests/test_compile.py``). With
``dynamic=None`` each first new shape is compiled static and the second compiled symbolic (more compiles,
possibly faster code). A compile takes seconds to minutes (model depth, backend, CPU speed); inductor
keeps its output on disk (``/tmp/torchinductor_$USER``), so loading the same model again compiles much
faster. A compile during a check counts against its deadline.

Limits: sampled decoding (``Decoding.temperature > 0``: training rollouts, rejection sampling) runs
eagerly even on a compiled backend, because its logits processors run before any label-score recorder
could; the fast tier (:mod:`grvl_sdk.backends._fast_local`) is one eager forward and is unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from grvl_sdk.backends._decoding import _LabelLogprobs
from grvl_sdk.errors import CompileUnsupportedError, InputError

__all__ = ["CompileSettings", "CompiledDecoding"]

logger = logging.getLogger("grvl_sdk")

_DEVICES = ("cpu", "cuda", "xpu")


@dataclass(frozen=True, kw_only=True)
class CompileSettings:
    """How ``compile=True`` compiles the decode step (``compile=CompileSettings(...)`` to change it).

    ``backend``: the ``torch.compile`` backend (``"inductor"``, or ``"aot_eager"`` / ``"eager"`` to trace
    without generating code, e.g. to debug). ``mode``: ``torch.compile``'s mode; ``None`` picks
    ``"reduce-overhead"`` (CUDA graphs) on CUDA and ``"default"`` elsewhere. ``dynamic``: as for
    ``torch.compile`` (``True``: symbolic batch size and cache length, no recompiles; ``None``: static
    first, symbolic after a shape changes). ``min_cache_len``: the smallest static-cache length in tokens
    (lengths are powers of two from here). ``warmup_batch_sizes``: batch sizes compiled at load by a short
    generation each: ``(1, 2)`` compiles the one-row graph and the one all batches of 2+ rows share
    (micro-batching), so no check waits for a compile; ``(1,)`` halves the load-time compile when checks
    never batch; ``()`` leaves every compile to the first checks.
    """

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool | None = True
    min_cache_len: int = 256
    warmup_batch_sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise InputError(f"CompileSettings.backend must be a backend name, got {self.backend!r}")
        if self.min_cache_len < 1:
            raise InputError(f"CompileSettings.min_cache_len must be >= 1, got {self.min_cache_len}")
        if any(not isinstance(n, int) or n < 1 for n in self.warmup_batch_sizes):
            raise InputError(f"CompileSettings.warmup_batch_sizes must be ints >= 1, got {self.warmup_batch_sizes}")


def check_request(settings: CompileSettings, *, quantization: Any, device: str | None, device_map: Any) -> None:
    """What can be refused before loading anything. Raises :class:`CompileUnsupportedError`."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantization is not None:
        raise _unsupported(
            f"compile=True cannot be combined with quantization={quantization!r}: bitsandbytes weights are not "
            "compilable (transformers would decode eagerly); load without quantization to compile",
            reason="quantized",
        )
    if device_map is not None:
        raise _unsupported(
            "compile=True needs the whole model on one device; it cannot be combined with device_map",
            reason="device_map",
        )
    kind = torch.device(device).type
    if kind not in _DEVICES:
        raise _unsupported(f"compile=True supports the devices {', '.join(_DEVICES)}, not {device!r}", reason="device")
    if not hasattr(torch, "compile"):
        raise _unsupported(f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)", reason="torch")
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise _unsupported(
            f"torch.compile is not supported by torch {torch.__version__} on this Python / platform",
            reason="torch",
        )
    if settings.backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise _unsupported(f"unknown torch.compile backend {settings.backend!r}", reason="backend")
    if settings.backend == "inductor":
        if kind == "cpu" and _cxx_compiler() is None:
            raise _unsupported(
                "the inductor backend needs a C++ compiler on CPU (none found: install g++ or clang, or set $CXX), "
                "or use compile=CompileSettings(backend='aot_eager')",
                reason="no_cxx_compiler",
            )
        if kind != "cpu" and not _has_triton():
            raise _unsupported(f"the inductor backend needs Triton on {kind} (pip install triton)", reason="no_triton")


def _cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU, or ``None``."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return str(get_cpp_compiler())
    except Exception:  # InvalidCxxCompiler, or a torch without this helper
        return None


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except ImportError:  # pragma: no cover - torch without the helper
        return False


def _unsupported(message: str, *, reason: str) -> CompileUnsupportedError:
    return CompileUnsupportedError(message, reason=reason)


class CompiledDecoding:
    """The compiled decode path of one loaded model. Build with :meth:`attach` after loading."""

    def __init__(self, model: Any, settings: CompileSettings) -> None:
        self.model = model
        self.settings = settings
        self.compile_seconds: float | None = None
        self._config = self._compile_config()

    @staticmethod
    def requested(value: Any, *, quantization: Any, device: str | None, device_map: Any) -> CompileSettings | None:
        """``compile=`` as given to ``from_pretrained``: ``False``/``None`` (eager: returns ``None``), ``True``
        (the default :class:`CompileSettings`) or a :class:`CompileSettings`, checked against the other
        loading options before anything is loaded. Raises :class:`InputError` for another value,
        :class:`CompileUnsupportedError` when it cannot work."""
        if value is None or value is False:
            return None
        if value is True:
            value = CompileSettings()
        if not isinstance(value, CompileSettings):
            raise InputError(f"compile must be True, False or a CompileSettings, got {value!r}")
        check_request(value, quantization=quantization, device=device, device_map=device_map)
        return value

    @classmethod
    def install(cls, backend: Any, settings: CompileSettings) -> CompiledDecoding:
        """Attaches the compiled path to a loaded :class:`~grvl_sdk.backends.local.LocalBackend` and warms
        it up (``settings.warmup_batch_sizes``). Raises :class:`CompileUnsupportedError`."""
        if getattr(backend, "continuous_batching", False):
            raise _unsupported(
                "compile=True cannot be combined with continuous_batching=True (its loop keeps its own "
                "dynamic cache); choose one",
                reason="continuous_batching",
            )
        path = cls.attach(backend.model, settings)
        backend.compiled = path
        started = time.perf_counter()
        for size in settings.warmup_batch_sizes:
            path.warm_up(backend, size)
        if settings.warmup_batch_sizes:
            path.compile_seconds = time.perf_counter() - started
            logger.info("compiled the decode step in %.1f s (%s)", path.compile_seconds, settings.backend)
        return path

    @classmethod
    def attach(cls, model: Any, settings: CompileSettings) -> CompiledDecoding:
        """Checks the loaded model (raises :class:`CompileUnsupportedError`) and returns the path."""
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and not getattr(quantizer, "is_compileable", False):
            raise _unsupported("this model's quantised weights cannot be compiled", reason="quantized")
        devices = set(getattr(model, "hf_device_map", {}).values())
        if len(devices) > 1 or "disk" in devices:
            raise _unsupported("compile=True needs the whole model on one device", reason="device_map")
        if not getattr(model, "_can_compile_fullgraph", False):
            raise _unsupported(
                f"{type(model).__name__} does not support a static KV cache with torch.compile", reason="model"
            )
        return cls(model, settings)

    def _compile_config(self) -> Any:
        import transformers

        device = next(self.model.parameters()).device
        mode = self.settings.mode or ("reduce-overhead" if device.type == "cuda" else "default")
        config: Any = transformers.CompileConfig(
            fullgraph=False, dynamic=self.settings.dynamic, backend=self.settings.backend, mode=mode
        )
        config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        return config

    def applies(self, decoding: Any) -> bool:
        """Whether a generation with ``decoding`` runs compiled (greedy yes; sampled no, see the module)."""
        return bool(decoding.greedy)

    def cache_length(self, needed: int) -> int:
        """The static cache length for ``needed`` positions (prompt width + ``max_new_tokens``): the next
        power of two, at least ``min_cache_len``."""
        length = self.settings.min_cache_len
        while length < needed:
            length *= 2
        return length

    def configure(self, generation_config: Any, needed: int) -> None:
        """Turns ``generation_config`` into a compiled, static-cache one for ``needed`` positions."""
        generation_config.cache_implementation = "static"
        generation_config.max_cache_len = self.cache_length(needed)
        generation_config.compile_config = self._config

    def adapt(self, kwargs: dict[str, Any], needed: int, scores: _LabelLogprobs | None, decoding: Any) -> bool:
        """Makes ``model.generate(**kwargs)`` decode compiled when ``decoding`` allows (:meth:`applies`):
        static cache for ``needed`` positions, and ``scores`` (if any) fed by a logits processor. Returns
        whether it did (then the output-head hook must not be installed). With ``scores`` and a repetition
        penalty it does not: the penalty's processor would run before the recorder (see the module)."""
        if not self.applies(decoding) or (scores is not None and decoding.repetition_penalty != 1.0):
            return False
        self.configure(kwargs["generation_config"], needed)
        if scores is not None:
            kwargs["logits_processor"] = [_ScoresFromLogits(scores)]
        return True

    def warm_up(self, backend: Any, batch_size: int) -> None:
        """Compiles the decode step for ``batch_size`` rows with a short greedy generation (a few tokens
        forced past any end-of-sequence). Raises :class:`CompileUnsupportedError` with torch's message
        when compilation fails."""
        import torch

        from grvl_sdk.types import GuardInput

        items = [GuardInput(text="compile warm-up")] * batch_size
        batch = backend.encoder.encode_batch(items, device=backend.device, pixel_dtype=backend._pixel_dtype())
        config = backend.generation_config(3)
        config.min_new_tokens = 3  # two decode steps: the first compiles, the second runs the compiled code
        self.configure(config, self.settings.min_cache_len)
        kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.mm_token_type_ids is not None:  # the same forward arguments as a check's: no recompile there
            kwargs["mm_token_type_ids"] = batch.mm_token_type_ids
        try:
            with backend._lock, torch.inference_mode():
                backend.model.generate(**kwargs, generation_config=config)
        except Exception as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise CompileUnsupportedError(
                f"torch.compile of the decode step failed at load (backend {self.settings.backend!r}): "
                f"{type(cause).__name__}: {str(cause).strip()[:500]}",
                reason="compile_failed",
            ) from exc


class _ScoresFromLogits:
    """Logits processor: hands each step's logits (``(batch, vocab)``, float32) to a
    :class:`_LabelLogprobs`, as its output-head hook would see them, and returns them unchanged."""

    def __init__(self, scores: _LabelLogprobs) -> None:
        self.scores = scores

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.scores.hook(None, None, scores[:, None, :])
        return scores
