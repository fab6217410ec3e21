"""Micro-batching: concurrent checks from threads and tasks coalesced into batched ``generate`` calls.

:class:`MicroBatched` is the backend wrapper a ``Guard`` puts around an in-process backend;
:class:`MicroBatcher` is its queue and worker.

Callers :meth:`MicroBatcher.submit` one input and get a ``concurrent.futures.Future``. One worker
thread takes the oldest pending input and runs it together with the others pending (up to
``max_batch_size``); inputs that arrive while a batch runs are taken together by the next one. When
checks have been concurrent recently (within :data:`CONCURRENCY_WINDOW_S`), the worker also waits up
to ``max_wait_ms`` after the oldest input for others to join. On an idle guard the worker waits
:data:`IDLE_GRACE` × ``max_wait_ms`` for a second input: if one comes, a burst is forming and the
normal window applies, so a burst of concurrent callers after an idle period stays one batch (not
``[1, 7]``); a lone check pays only that grace (0.5 ms at the default 2 ms). Inputs with different
``max_new_tokens`` never share a batch (except in the continuous loop below).

**Continuous batching.** When the backend runs a continuous-batching loop (the local backend with
``continuous_batching=True``: :mod:`grvl_sdk.backends._continuous`), the worker hands the batch it took
to that loop and, whenever rows finish, the loop takes more pending inputs (any ``max_new_tokens``)
into the free slots; each caller's future resolves as soon as its own row is done, and an input that
fails fails alone. An async caller that is cancelled while its row runs marks it abandoned
(:func:`abandon`): the loop drops that row at its next step and gives the slot to the next input.

Results are routed back through each caller's own future; when a batch fails, its inputs are retried
one by one so one bad input cannot fail the others (:func:`generate_isolated`, also used by
``Guard.check_batch``).

The worker survives anything a backend raises, ``BaseException`` included (the callers of that batch
get a :class:`~grvl_sdk.errors.BackendError`); if the worker thread is gone all the same, the next
``submit`` starts a new one, so a caller is never left waiting on a dead worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import TypeVar

from grvl_sdk._threads import to_daemon_thread
from grvl_sdk.backends.base import Backend
from grvl_sdk.errors import BackendError, DeadlineExceededError, GuardClosedError, InputError
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput

__all__ = [
    "MicroBatched",
    "MicroBatcher",
    "abandon",
    "agenerate_isolated",
    "continuous_runner",
    "generate_isolated",
    "refilling",
]

logger = logging.getLogger("grvl_sdk")

#: Seconds during which past concurrency makes the worker wait ``max_wait_ms`` for companions.
CONCURRENCY_WINDOW_S = 1.0

#: Share of ``max_wait_ms`` a check on an idle guard waits for a second one (a burst forming).
IDLE_GRACE = 0.25

#: ``run(inputs, max_new_tokens, deadline)`` generates one output per input, in order.
RunBatch = Callable[[Sequence[GuardInput], int, "float | None"], list[Generation]]


T = TypeVar("T")
#: What one input of a batch ended with: its output, or the error that failed it.
Outcome = Generation | Exception
Settle = Callable[["_Pending", Outcome], None]
Take = Callable[[int], "list[_Pending]"]
#: ``continuous(first, settle, take)``: a continuous-batching run (see :class:`MicroBatcher`).
ContinuousRun = Callable[[Sequence["_Pending"], Settle, Take], None]


def continuous_runner(backend: object) -> Callable[..., None] | None:
    """The ``run_continuous`` of the backend under ``backend``'s wrappers (``.inner``), when that backend
    has continuous batching switched on (``continuous_batching is True``); else ``None``."""
    seen: object | None = backend
    for _ in range(8):
        if seen is None:
            return None
        run = getattr(seen, "run_continuous", None)
        if getattr(seen, "continuous_batching", False) is True and callable(run):
            return run  # type: ignore[no-any-return]
        seen = getattr(seen, "inner", None)
    return None


def refilling(stack: object) -> MicroBatched | None:
    """The :class:`MicroBatched` under ``stack``'s wrappers (``.inner``) when it refills batches while
    they run (continuous batching): a caller then hands over all its inputs at once
    (:meth:`MicroBatched.outcomes`) instead of in chunks of the batch size."""
    seen: object | None = stack
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, MicroBatched) and seen.refills:
            return seen
        seen = getattr(seen, "inner", None)
    return None


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


class _JobFuture(Future[Generation]):
    """A queued input's future; ``abandoned`` is set when its caller stops waiting (:func:`abandon`)."""

    abandoned = False


def abandon(futures: Sequence[Future[Generation]]) -> None:
    """Mark the inputs behind ``futures`` (from :meth:`MicroBatcher.submit`) as given up by their caller:
    queued ones are cancelled, running ones are dropped by the continuous loop at its next step (a
    running future cannot be cancelled)."""
    for future in futures:
        if isinstance(future, _JobFuture):
            future.abandoned = True
        future.cancel()


@dataclass
class _Pending:
    item: GuardInput
    max_new_tokens: int
    deadline: float | None
    future: _JobFuture = field(default_factory=_JobFuture)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def abandoned(self) -> bool:
        """Whether the caller stopped waiting (see :func:`abandon`)."""
        return self.future.abandoned


class MicroBatcher:
    """Coalesces concurrent single checks into batches for one backend. With ``continuous``
    (``continuous(first, settle, take)``: runs ``first``, takes more with ``take(n)`` as rows free up,
    calls ``settle(pending, outcome)`` once per input) batches are refilled while they run."""

    def __init__(
        self, run: RunBatch, *, max_batch_size: int, max_wait_ms: float, continuous: ContinuousRun | None = None
    ) -> None:
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= max_wait_ms < 60_000:  # NaN fails too
            raise InputError(f"max_wait_ms must be in [0, 60000), got {max_wait_ms}")
        self._run = run
        self._continuous = continuous
        self._in_flight = 0
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
            if not recent and len(self._pending) == 1 and not self._closed:  # idle: is a burst forming?
                grace = first.enqueued + self.max_wait * IDLE_GRACE - time.monotonic()
                if grace > 0:
                    self._cond.wait(grace)  # submit() notifies: wakes at the second arrival
                recent = len(self._pending) > 1
            while recent and len(self._pending) < self.max_batch_size and not self._closed:
                remaining = first.enqueued + self.max_wait - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            any_budget = self._continuous is not None  # the continuous loop runs each row to its own budget
            fits = [p for p in self._pending if any_budget or p.max_new_tokens == first.max_new_tokens]
            batch = fits[: self.max_batch_size]
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
            if self._continuous is not None:
                self._work_continuous(batch)
                continue
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

    def _work_continuous(self, batch: list[_Pending]) -> None:
        """One run of the continuous loop: ``batch`` first, then pending inputs as rows free up."""
        assert self._continuous is not None
        unsettled = {id(p): p for p in batch}
        with self._cond:
            self._in_flight = len(batch)
            if not batch:
                self._running = False
                return

        def settle(pending: _Pending, outcome: Outcome) -> None:
            if unsettled.pop(id(pending), None) is None:
                return
            with self._cond:
                self.items += 1
                self._in_flight -= 1
                if self._in_flight <= 0 and not self._pending:
                    self._running = False  # idle again before the caller wakes (see _settle)
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

        def take(n: int) -> list[_Pending]:
            with self._cond:
                if self._closed or n <= 0:
                    return []
                taken, self._pending = self._pending[:n], self._pending[n:]
                if taken:
                    self._last_concurrent = time.monotonic()
            live = [p for p in taken if p.future.set_running_or_notify_cancel()]
            with self._cond:
                self._in_flight += len(live)
            unsettled.update((id(p), p) for p in live)
            return live

        try:
            self._continuous(batch, settle, take)
        except BaseException as exc:  # never leave a caller waiting, and keep serving the others
            error = exc if isinstance(exc, Exception) else BackendError(f"the backend raised {type(exc).__name__}")
            for pending in list(unsettled.values()):
                settle(pending, error)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            for pending in list(unsettled.values()):  # a loop that returned without settling everything
                settle(pending, BackendError("the continuous-batching loop ended without an output for this input"))
            with self._cond:
                self.batches += 1
                self._in_flight = 0
                self._running = False

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

    def close(self, timeout: float = 1.0) -> None:
        """Stop taking inputs: the pending ones fail with :class:`GuardClosedError` at once, the batch
        running finishes on its own, and the worker stops after it. Waits at most ``timeout`` seconds
        for that (never for a backend that does not return: the worker is a daemon thread); not at all
        for a continuous-batching loop, whose rows fail with :class:`GuardClosedError` once its backend
        is closed."""
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
            thread = self._thread
        for item in pending:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(GuardClosedError("the guard was closed before this check ran"))
        # A continuous-batching loop runs until its rows end; its backend's close() (which follows in
        # MicroBatched.close) makes them fail at the next step, so waiting here would only keep it going.
        if thread is not None and thread is not threading.current_thread() and self._continuous is None:
            thread.join(timeout)


class MicroBatched(Backend):
    """``inner`` behind a :class:`MicroBatcher`: concurrent greedy ``generate`` calls (from threads or
    tasks) are coalesced into batched calls of ``inner``. Each input of a call waits for its own
    result until the call's deadline; sampling calls (``decoding.n > 1`` or ``temperature > 0``) go
    straight to ``inner``. Wrap ``inner`` in :class:`~grvl_sdk.backends.bounded.Bounded` so a batch
    whose backend hangs is given up at its deadline and the worker serves the next one."""

    def __init__(self, inner: Backend, *, max_batch_size: int, max_wait_ms: float) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.prefers_micro_batching = inner.prefers_micro_batching

        def run(items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Generation]:
            return inner.generate(items, max_new_tokens=budget, deadline=deadline)

        runner = continuous_runner(inner)
        continuous: ContinuousRun | None = None
        if runner is not None:

            def continuous(first: Sequence[_Pending], settle: Settle, take: Take) -> None:
                runner(first, settle, take, slots=max_batch_size)

        #: Whether batches are refilled while they run (the backend's continuous-batching loop).
        self.refills = continuous is not None
        self.batcher = MicroBatcher(run, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, continuous=continuous)

    @property
    def image_bounds(self) -> tuple[int, int] | None:
        return self.inner.image_bounds

    @property
    def cache_settings(self) -> str:
        return self.inner.cache_settings

    def _submit(self, inputs: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Future[Generation]]:
        try:
            return [self.batcher.submit(item, max_new_tokens=budget, deadline=deadline) for item in inputs]
        except RuntimeError as exc:
            raise GuardClosedError(f"the guard is closed: {exc}") from exc

    def generate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        if decoding != GREEDY:
            return self.inner.generate(inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding)
        futures = self._submit(inputs, max_new_tokens, deadline)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        _done, pending = wait(futures, timeout=timeout)
        for future in pending:
            future.cancel()
        if pending:
            raise DeadlineExceededError("deadline passed while queued or generating")
        return [future.result() for future in futures]

    def outcomes(self, inputs: Sequence[GuardInput], max_new_tokens: int, deadline: float | None) -> list[Outcome]:
        """Greedy outputs of ``inputs``, one outcome per input (its ``Generation`` or the error that
        failed it alone; :class:`DeadlineExceededError` for those not done by ``deadline``)."""
        futures = self._submit(inputs, max_new_tokens, deadline)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait(futures, timeout=timeout)
        return [_outcome(future) for future in futures]

    async def aoutcomes(
        self, inputs: Sequence[GuardInput], max_new_tokens: int, deadline: float | None
    ) -> list[Outcome]:
        """Async twin of :meth:`outcomes`."""
        futures = self._submit(inputs, max_new_tokens, deadline)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        wrapped = [asyncio.wrap_future(f) for f in futures]
        try:
            await asyncio.wait(wrapped, timeout=timeout)
        except asyncio.CancelledError:
            abandon(futures)
            raise
        return [_outcome(future) for future in futures]

    async def agenerate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        if decoding != GREEDY:
            return await self.inner.agenerate(
                inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding
            )
        futures = self._submit(inputs, max_new_tokens, deadline)
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except asyncio.CancelledError:
            abandon(futures)
            raise

    def format_prompt(self, item: GuardInput) -> str:
        return self.inner.format_prompt(item)

    def close(self) -> None:
        self.batcher.close()
        self.inner.close()

    async def aclose(self) -> None:
        await to_daemon_thread(self.batcher.close)
        await self.inner.aclose()


def _outcome(future: Future[Generation]) -> Outcome:
    """A settled future's result or error; a pending one is cancelled: the deadline passed."""
    if not future.done():
        future.cancel()
        return DeadlineExceededError("deadline passed while queued or generating")
    if future.cancelled():
        return DeadlineExceededError("deadline passed while queued")
    error = future.exception()
    return error if isinstance(error, Exception) else future.result()
