"""The backend contract: turn prepared inputs into raw guard outputs.

A backend implements one method, :meth:`Backend.generate`::

    generate(inputs, *, max_new_tokens, deadline=None, decoding=GREEDY) -> list[Generation]

- ``inputs``: prepared :class:`~grvl_sdk.types.GuardInput` (images loaded and already on the model's
  grid when :attr:`Backend.image_bounds` is set);
- ``max_new_tokens``: the generation budget per output;
- ``deadline``: a ``time.monotonic()`` value or ``None``; a backend should stop by then where it can
  (raise :class:`~grvl_sdk.errors.DeadlineExceededError`). The ``Guard`` also enforces it from outside
  (:class:`~grvl_sdk.backends.bounded.Bounded`), so a backend that cannot stop is still never waited for;
- ``decoding``: :class:`~grvl_sdk.types.Decoding` — greedy by default (every check); the trainer passes
  sampling settings (``n`` outputs per input, input-major order);
- returns one :class:`~grvl_sdk.types.Generation` per input and sample, in order. Errors: raise a
  :class:`~grvl_sdk.errors.BackendError` (or any exception: the ``Guard`` turns it into a failed
  verdict); raise :class:`~grvl_sdk.errors.InputError` for input the backend cannot take.

Everything else has a default: :meth:`agenerate` runs :meth:`generate` on a worker thread,
:meth:`close`/:meth:`aclose` release nothing. Set ``Generation.logprobs`` to give verdicts label
scores. Backends written for the older contract (``generate(inputs, *, max_new_tokens)``) still work:
:func:`adapt` wraps them, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from grvl_sdk._deprecation import warn_deprecated
from grvl_sdk._threads import to_daemon_thread
from grvl_sdk.errors import InputError
from grvl_sdk.protocol.prompt import render_prompt
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput

__all__ = ["Backend", "Generation", "GuardInput", "adapt"]


class Backend(ABC):
    """Runs the guard model. Subclasses implement :meth:`generate` (see the module docstring)."""

    #: The model id or path this backend serves (recorded on every verdict).
    model_id: str = ""
    #: Whether a ``Guard`` should coalesce concurrent checks into batched ``generate`` calls by default
    #: (true for in-process models; a server batches by itself).
    prefers_micro_batching: bool = False

    @property
    def image_bounds(self) -> tuple[int, int] | None:
        """(min_pixels, max_pixels) the model's images are resized within (Qwen2.5-VL's grid rule,
        :func:`grvl_sdk.images.smart_resize`), or ``None`` when this backend does not resize. The
        ``Guard`` resizes once, while preparing an input, so the cache, the audit log and the
        backend all see the pixels the model sees."""
        return None

    @property
    def cache_settings(self) -> str:
        """Settings that change outputs for the same input (pixel budgets, server...): part of cache keys."""
        return type(self).__name__

    @abstractmethod
    def generate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """Generate ``decoding.n`` outputs per input, in order (see the module docstring)."""

    async def agenerate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """Async twin of :meth:`generate`; by default runs it on a worker (daemon) thread."""
        return await to_daemon_thread(
            self.generate, inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding
        )

    def format_prompt(self, item: GuardInput) -> str:
        """The exact prompt string the model receives (image blocks unexpanded)."""
        return render_prompt(item.text, item.response, num_images=len(item.images))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, GPU memory). Default: nothing to do."""

    async def aclose(self) -> None:
        """Async :meth:`close` (a remote backend also closes its async connections)."""
        self.close()


class _Legacy(Backend):
    """A backend object outside the current contract (e.g. ``generate(inputs, *, max_new_tokens)``): given
    a deadline only if it takes one (the ``Guard`` enforces it from outside anyway), and refusing
    non-greedy decoding it cannot honour."""

    def __init__(self, inner: Any, *, takes_deadline: bool, takes_decoding: bool) -> None:
        self.inner = inner
        self.takes_deadline = takes_deadline
        self.takes_decoding = takes_decoding
        self.model_id = getattr(inner, "model_id", "") or ""
        self.prefers_micro_batching = bool(getattr(inner, "prefers_micro_batching", False))

    @property
    def image_bounds(self) -> tuple[int, int] | None:
        return getattr(self.inner, "image_bounds", None)

    @property
    def cache_settings(self) -> str:
        return str(getattr(self.inner, "cache_settings", type(self.inner).__name__))

    def _kwargs(self, max_new_tokens: int, deadline: float | None, decoding: Decoding) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if self.takes_decoding:
            kwargs["decoding"] = decoding
        elif decoding != GREEDY:
            raise InputError(f"{type(self.inner).__name__}.generate takes no decoding settings (greedy only)")
        if self.takes_deadline:
            kwargs["deadline"] = deadline
        return kwargs

    def generate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        return self.inner.generate(inputs, **self._kwargs(max_new_tokens, deadline, decoding))

    async def agenerate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        kwargs = self._kwargs(max_new_tokens, deadline, decoding)
        agenerate = getattr(self.inner, "agenerate", None)
        if agenerate is None or getattr(type(self.inner), "agenerate", None) is Backend.agenerate:
            # No async twin of its own (the base one would call generate with the new arguments).
            return await to_daemon_thread(self.inner.generate, inputs, **kwargs)
        if not _takes(agenerate, "deadline"):
            kwargs.pop("deadline", None)
        if not _takes(agenerate, "decoding"):
            kwargs.pop("decoding", None)
        return await agenerate(inputs, **kwargs)

    def format_prompt(self, item: GuardInput) -> str:
        return self.inner.format_prompt(item) if hasattr(self.inner, "format_prompt") else super().format_prompt(item)

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()

    async def aclose(self) -> None:
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            self.close()


def _takes(method: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def adapt(backend: Any) -> Backend:
    """``backend`` under the current contract: itself when its ``generate`` takes ``deadline`` and
    ``decoding``; wrapped (with a ``DeprecationWarning``) when written for the older contract.
    Raises :class:`InputError` for something that is no backend."""
    generate = getattr(backend, "generate", None)
    if not callable(generate):
        raise InputError(f"backend must be a grvl_sdk Backend (with generate()), got {type(backend).__name__}")
    deadline, decoding = _takes(generate, "deadline"), _takes(generate, "decoding")
    if deadline and decoding and isinstance(backend, Backend):
        return backend
    if not (deadline and decoding):
        warn_deprecated(
            f"{type(backend).__name__}.generate(inputs, *, max_new_tokens) without deadline= and decoding=",
            "generate(inputs, *, max_new_tokens, deadline=None, decoding=GREEDY)",
            stacklevel=4,
        )
    return _Legacy(backend, takes_deadline=deadline, takes_decoding=decoding)
