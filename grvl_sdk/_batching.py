"""Micro-batching: concurrent checks from threads and tasks coalesced into batched ``generate`` calls.

Callers :meth:`MicroBatcher.submit` one input and get a ``concurrent.futures.Future``. One worker
thread takes the oldest pending input and runs it together with the others pending (up to
``max_batch_size``); inputs that arrive while a batch runs are taken together by the next one. When
checks have been concurrent recently (within :data:`CONCURRENCY_WINDOW_S`), the worker also waits up
to ``max_wait_ms`` after the oldest input for others to join; a lone check on an idle guard is
dispatched at once and pays no wait. Inputs with different ``max_new_tokens`` never share a batch.
Results are routed back through each caller's own future; when a batch fails, its inputs are retried
one by one so one bad input cannot fail the others (:func:`generate_isolated`, also used by
``Guard.check_batch``).

The worker survives anything a backend raises, ``BaseException`` included (the callers of that batch
get a :class:`~grvl_sdk.errors.BackendError`); if the worker thread is gone all the same, the next
``submit`` starts a new one, so a caller is never left waiting on a dead worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

from grvl_sdk.backends.base import Generation, GuardInput
from grvl_sdk.errors import BackendError, DeadlineExceededError, GuardClosedError, InputError

__all__ = ["MicroBatcher", "agenerate_isolated", "generate_isolated"]

logger = logging.getLogger("grvl_sdk")

#: Seconds during which past concurrency makes the worker wait ``max_wait_ms`` for companions.
CONCURRENCY_WINDOW_S = 1.0

#: ``run(inputs, max_new_tokens, deadline)`` generates one output per input, in order.
RunBatch = Callable[[Sequence[GuardInput], int, "float | None"], list[Generation]]


T = TypeVar("T")
#: What one input of a batch ended with: its output, or the error that failed it.
Outcome = Generation | Exception


def _all_fail(exc: Exception) -> bool:
    """Errors that concern the whole call, not one input: no point retrying inputs alone."""
    return isinstance(exc, (DeadlineExceededError, GuardClosedError))


def _counted(generations: Sequence[Generation], size: int) -> list[Outcome]:
    if len(generations) != size:
        raise BackendError(f"the backend returned {len(generations)} outputs for {size} inputs")
    return list(generations)


def generate_isolated(run: Callable[[Sequence[T]], Sequence[Generation]], items: Sequence[T]) -> list[Outcome]:
    """``run(items)`` once; if it raises, each input alone, so one bad input fails only itself.

    Returns one outcome per input, in order. A deadline or a closed guard fails every input at once."""
    try:
        return _counted(run(items), len(items))
    except Exception as exc:
        if len(items) == 1 or _all_fail(exc):
            return [exc] * len(items)
        logger.warning("a batch of %d checks failed (%s); retrying them one by one", len(items), exc)
        return [outcome for item in items for outcome in generate_isolated(run, [item])]


async def agenerate_isolated(
    run: Callable[[Sequence[T]], Awaitable[Sequence[Generation]]], items: Sequence[T]
) -> list[Outcome]:
    """Async twin of :func:`generate_isolated`."""
    try:
        return _counted(await run(items), len(items))
    except Exception as exc:
        if len(items) == 1 or _all_fail(exc):
            return [exc] * len(items)
        logger.warning("a batch of %d checks failed (%s); retrying them one by one", len(items), exc)
        return [outcome for item in items for outcome in await agenerate_isolated(run, [item])]


@dataclass
class _Pending:
    item: GuardInput
    max_new_tokens: int
    deadline: float | None
    future: Future[Generation] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Coalesces concurrent single checks into batches for one backend."""

    def __init__(self, run: RunBatch, *, max_batch_size: int, max_wait_ms: float) -> None:
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= max_wait_ms < 60_000:  # NaN fails too
            raise InputError(f"max_wait_ms must be in [0, 60000), got {max_wait_ms}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self._pending: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._running = False
        self._last_concurrent = float("-inf")
        #: Counters: batches run and inputs generated (for metrics and tests).
        self.batches = 0
        self.items = 0

    def submit(self, item: GuardInput, *, max_new_tokens: int, deadline: float | None) -> Future[Generation]:
        """Queue one input; the future resolves to its ``Generation`` (or the error that failed it).

        Raises ``RuntimeError`` once :meth:`close` was called."""
        pending = _Pending(item, max_new_tokens, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError("the guard is closed")
            self._pending.append(pending)
            if self._running or len(self._pending) > 1:
                self._last_concurrent = pending.enqueued
            if self._thread is None or not self._thread.is_alive():
                self._running = False
                self._thread = threading.Thread(target=self._work, name="grvl-microbatch", daemon=True)
                self._thread.start()
            self._cond.notify()
        return pending.future

    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            first = self._pending[0]
            recent = first.enqueued - self._last_concurrent < CONCURRENCY_WINDOW_S
            while recent and len(self._pending) < self.max_batch_size and not self._closed:
                remaining = first.enqueued + self.max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [p for p in self._pending if p.max_new_tokens == first.max_new_tokens][: self.max_batch_size]
            taken = {id(p) for p in batch}
            self._pending = [p for p in self._pending if id(p) not in taken]
            if len(batch) > 1:
                self._last_concurrent = time.monotonic()
            self._running = True
        # Callers that gave up (deadline, cancelled task) are dropped before generation.
        return [p for p in batch if p.future.set_running_or_notify_cancel()]

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            outcomes: list[Outcome] = []
            try:
                if batch:
                    outcomes = generate_isolated(self._run_pending, batch)
            except BaseException as exc:  # never leave a caller waiting, and keep serving the others
                error = exc if isinstance(exc, Exception) else BackendError(f"the backend raised {type(exc).__name__}")
                outcomes = [error] * len(batch)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    self._settle(batch, outcomes)
                    raise
            self._settle(batch, outcomes)

    def _run_pending(self, batch: Sequence[_Pending]) -> list[Generation]:
        deadlines = [p.deadline for p in batch]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        try:
            generations = self._run([p.item for p in batch], batch[0].max_new_tokens, deadline)
        except Exception:
            raise
        except BaseException as exc:  # e.g. a CancelledError raised inside a backend: fail this batch only
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise BackendError(f"the backend raised {type(exc).__name__}: {exc}") from exc
        self.batches += 1
        self.items += len(batch)
        return generations

    def _settle(self, batch: Sequence[_Pending], outcomes: Sequence[Outcome]) -> None:
        # Idle again *before* callers wake up, so a sequential caller is not taken for concurrency.
        with self._cond:
            self._running = False
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    def close(self) -> None:
        """Finish the pending inputs, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
