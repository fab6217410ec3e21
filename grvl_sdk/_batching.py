"""Micro-batching: concurrent checks from threads and tasks coalesced into batched ``generate`` calls.

Callers :meth:`MicroBatcher.submit` one input and get a ``concurrent.futures.Future``. One worker
thread takes the oldest pending input and runs it together with the others pending (up to
``max_batch_size``); inputs that arrive while a batch runs are taken together by the next one. When
checks have been concurrent recently (within :data:`CONCURRENCY_WINDOW_S`), the worker also waits up
to ``max_wait_ms`` after the oldest input for others to join; a lone check on an idle guard is
dispatched at once and pays no wait. Inputs with different ``max_new_tokens`` never share a batch.
Results are routed back through each caller's own future; when a batch fails, its inputs are retried
one by one so one bad input cannot fail the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from grvl_sdk.backends.base import Generation, GuardInput
from grvl_sdk.errors import BackendError, DeadlineExceededError, InputError

__all__ = ["MicroBatcher"]

logger = logging.getLogger("grvl_sdk")

#: Seconds during which past concurrency makes the worker wait ``max_wait_ms`` for companions.
CONCURRENCY_WINDOW_S = 1.0

#: ``run(inputs, max_new_tokens, deadline)`` generates one output per input, in order.
RunBatch = Callable[[Sequence[GuardInput], int, "float | None"], list[Generation]]


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
        if max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
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
        """Queue one input; the future resolves to its ``Generation`` (or the batch's exception)."""
        pending = _Pending(item, max_new_tokens, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError("the guard is closed")
            self._pending.append(pending)
            if self._running or len(self._pending) > 1:
                self._last_concurrent = pending.enqueued
            if self._thread is None:
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
            outcomes: list[tuple[_Pending, Generation | BaseException]] = []
            try:
                if batch:
                    deadlines = [p.deadline for p in batch]
                    deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
                    self._run_batch(batch, deadline, outcomes)
            except BaseException as exc:  # interpreter shutdown and the like: never leave a caller waiting
                done = {id(p) for p, _ in outcomes}
                outcomes.extend((p, exc) for p in batch if id(p) not in done)
                raise
            finally:
                # Idle again *before* callers wake up, so a sequential caller is not taken for concurrency.
                with self._cond:
                    self._running = False
                for pending, outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)

    def _run_batch(
        self, batch: list[_Pending], deadline: float | None, outcomes: list[tuple[_Pending, Generation | BaseException]]
    ) -> None:
        try:
            generations = self._run([p.item for p in batch], batch[0].max_new_tokens, deadline)
            if len(generations) != len(batch):
                raise BackendError(f"the backend returned {len(generations)} outputs for {len(batch)} inputs")
        except DeadlineExceededError as exc:
            outcomes.extend((pending, exc) for pending in batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                outcomes.append((batch[0], exc))
                return
            # One bad input must not fail the others: run them one by one.
            logger.warning("a batch of %d checks failed (%s); retrying them one by one", len(batch), exc)
            for pending in batch:
                self._run_batch([pending], pending.deadline, outcomes)
            return
        self.batches += 1
        self.items += len(batch)
        outcomes.extend(zip(batch, generations, strict=True))

    def close(self) -> None:
        """Finish the pending inputs, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
