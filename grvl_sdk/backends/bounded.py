"""``Bounded``: a backend wrapper that makes every call end by its deadline, whatever the backend does.

With a deadline, ``generate`` runs the inner backend on a daemon worker thread and stops waiting at
the deadline (:class:`~grvl_sdk.errors.DeadlineExceededError`); ``agenerate`` awaits the inner
coroutine as a task and abandons it at the deadline without waiting for its cancellation. A late
answer is dropped. The inner backend is still given the deadline, so one that can stop early (the
local backend stops at the next token) frees its resources at once.

Also, once for every backend: the outputs are checked (a list of ``Generation``, one per input and
sample) and a ``BaseException`` that is not an ``Exception`` raised inside a backend (an
``asyncio.CancelledError`` of its own, say) becomes a :class:`~grvl_sdk.errors.BackendError` instead of
cancelling or killing the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

from grvl_sdk._threads import DaemonPool
from grvl_sdk.backends.base import Backend
from grvl_sdk.errors import BackendError, DeadlineExceededError
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput, TokenLogprobs

__all__ = ["Bounded", "await_within", "run_within"]

_FATAL = (KeyboardInterrupt, SystemExit)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def run_within(pool: DaemonPool, deadline: float | None, doing: str, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> Any:  # fmt: skip
    """``fn(*args, **kwargs)``, given up at ``deadline`` (run on ``pool`` then; inline without one)."""
    if deadline is None:
        return fn(*args, **kwargs)
    future = pool.submit(fn, *args, **kwargs)
    try:
        return future.result(timeout=_remaining(deadline))
    except concurrent.futures.TimeoutError:
        if future.done():  # fn itself raised a TimeoutError
            raise
        future.cancel()
        raise DeadlineExceededError(f"deadline passed while {doing}") from None


async def await_within(awaitable: Any, deadline: float | None, doing: str) -> Any:
    """Await ``awaitable`` until ``deadline``; then :class:`DeadlineExceededError`, the work cancelled
    and never waited for. A ``CancelledError`` raised by the work itself (not by cancelling the caller)
    becomes a :class:`BackendError`."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=None if deadline is None else _remaining(deadline))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task not in done:
        task.cancel()
        task.add_done_callback(_consume)
        raise DeadlineExceededError(f"deadline passed while {doing}")
    if task.cancelled():
        raise BackendError(f"the guard's work was cancelled while {doing}")
    exc = task.exception()
    if exc is not None and not isinstance(exc, (Exception, *_FATAL)):
        raise BackendError(f"the backend raised {type(exc).__name__}: {exc}") from exc
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def checked(generations: Any, expected: int) -> list[Generation]:
    """The backend's outputs, or a :class:`BackendError` when they are not ``expected`` well-formed
    ``Generation``s (text a string, token counts non-negative integers, ``finished`` a bool, logprobs
    ``None`` or :class:`~grvl_sdk.types.TokenLogprobs`)."""
    if not isinstance(generations, (list, tuple)) or not all(isinstance(g, Generation) for g in generations):
        raise BackendError(f"the backend must return a list of Generation, got {type(generations).__name__}")
    if len(generations) != expected:
        raise BackendError(f"the backend returned {len(generations)} outputs for {expected} expected")
    for index, g in enumerate(generations):
        problem = _malformed(g)
        if problem:
            raise BackendError(f"the backend's output {index} is malformed: {problem}")
    return list(generations)


def _malformed(g: Generation) -> str | None:
    if not isinstance(g.text, str):
        return f"text is a {type(g.text).__name__}, not a string"
    for name in ("prompt_tokens", "completion_tokens"):
        value = getattr(g, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name} is {value!r}, not a non-negative integer"
    if isinstance(g.latency_ms, bool) or not isinstance(g.latency_ms, (int, float)) or not g.latency_ms >= 0:
        return f"latency_ms is {g.latency_ms!r}"
    if not isinstance(g.finished, bool):
        return f"finished is {g.finished!r}, not a bool"
    if g.logprobs is not None and not isinstance(g.logprobs, TokenLogprobs):
        return f"logprobs is a {type(g.logprobs).__name__}, not TokenLogprobs"
    return None


class Bounded(Backend):
    """``inner`` with deadlines enforced from outside and its outputs checked (see the module docstring)."""

    def __init__(self, inner: Backend, *, name: str = "grvl-generate") -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.prefers_micro_batching = inner.prefers_micro_batching
        self._pool = DaemonPool(name)

    @property
    def image_bounds(self) -> tuple[int, int] | None:
        return self.inner.image_bounds

    @property
    def cache_settings(self) -> str:
        return self.inner.cache_settings

    def generate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before generation started")
        try:
            generations = run_within(
                self._pool, deadline, "generating", self.inner.generate, inputs,
                max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding,
            )  # fmt: skip
        except _FATAL:
            raise
        except Exception:
            raise
        except BaseException as exc:  # e.g. a CancelledError raised inside a backend
            raise BackendError(f"the backend raised {type(exc).__name__}: {exc}") from exc
        return checked(generations, len(inputs) * decoding.n)

    async def agenerate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before generation started")
        call = self.inner.agenerate(inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding)
        return checked(await await_within(call, deadline, "generating"), len(inputs) * decoding.n)

    def format_prompt(self, item: GuardInput) -> str:
        return self.inner.format_prompt(item)

    def close(self) -> None:
        self._pool.shutdown()
        self.inner.close()

    async def aclose(self) -> None:
        self._pool.shutdown()
        await self.inner.aclose()
