"""The execution engine behind ``Guard``: one check's data flow, sync and async.

::

    prepare ─► cache? ─► backend stack ─► parse + scores ─► policy ─► sink
    (images,   cache.py  Bounded(MicroBatched(Bounded(backend)))   protocol.parsing  policy.py  events.py
     hashing)            backends/bounded.py, backends/batching.py  scores.py

``prepare`` and the cache lookup are host work done within the check's deadline (on a worker thread
when it is heavy: images or long text); generation is bounded by the backend stack; the output becomes a
*judgement* (labels, or an error); the policy turns it into a *decision*; the sink logs it, writes the
audit line and calls the hooks. Async twins keep CPU-heavy steps off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from grvl_sdk._threads import DaemonPool, to_daemon_thread
from grvl_sdk.backends.base import Backend
from grvl_sdk.backends.batching import agenerate_isolated, continuous_runner, generate_isolated, refilling
from grvl_sdk.backends.bounded import await_within, run_within
from grvl_sdk.cache import ContentHashes, VerdictCache, content_hashes
from grvl_sdk.errors import BackendError, DeadlineExceededError, GuardClosedError, InputError, ParseError
from grvl_sdk.events import VerdictSink
from grvl_sdk.policy import Policy
from grvl_sdk.protocol.parsing import MAX_OUTPUT_CHARS, parse_output
from grvl_sdk.scores import label_scores
from grvl_sdk.tiers import ReasoningSpeed, TieredJudge, TierSettings
from grvl_sdk.types import Generation, GuardInput
from grvl_sdk.verdict import Stage, Usage, Verdict, _new_id

__all__ = ["HEAVY_CHARS", "Admitted", "Engine"]

logger = logging.getLogger("grvl_sdk")

#: Inputs with more characters than this (or any image) are prepared, hashed and logged off the event loop.
HEAVY_CHARS = 1 << 16


def is_heavy(item: GuardInput) -> bool:
    return bool(item.images) or len(item.text or "") + len(item.response or "") > HEAVY_CHARS


@dataclass(frozen=True)
class Admitted:
    """An input ready to judge: the prepared input, its cache key and hashes, and a cached judgement."""

    item: GuardInput
    key: str | None = None
    hashes: ContentHashes | None = None
    cached: Verdict | None = None


def check_policy_fits(policy: Policy, item: GuardInput) -> None:
    """A check must hold a part the policy judges: ``check="response"`` needs a response,
    ``check="request"`` a request (otherwise the guard would decide on nothing)."""
    if policy.check == "response" and item.response is None:
        raise InputError("the policy checks responses only (check='response') and no response was given")
    if policy.check == "request" and not item.has_request:
        raise InputError("the policy checks requests only (check='request') and no request was given")


class Engine:
    """Runs checks for one ``Guard`` over its backend stack, cache and sink (see the module docstring)."""

    def __init__(
        self,
        stack: Backend,
        *,
        cache: VerdictCache,
        sink: VerdictSink,
        model_id: str,
        tiers: TierSettings | None = None,
        speed: ReasoningSpeed | None = None,
    ) -> None:
        self.stack = stack
        self.cache = cache
        self.sink = sink
        self.model_id = model_id
        #: The latency tier (``GuardOptions.mode``) and, for ``fast``/``auto``, its judge.
        self.tiers = tiers or TierSettings()
        self.tiered = TieredJudge(self, self.tiers) if self.tiers.mode != "think" else None
        #: Measured speed of think generations (for ``auto``'s deadline estimate).
        self.speed = speed or ReasoningSpeed()
        self.prepare_pool = DaemonPool("grvl-prepare")
        #: The stack refills batches while they run (continuous batching): hand over all inputs at once.
        self.refiller = refilling(stack)
        self.refills = self.refiller is not None or continuous_runner(stack) is not None
        self.closed = False

    def ensure_open(self) -> None:
        if self.closed:
            raise GuardClosedError("the guard is closed: create a new Guard to check more inputs")

    # -- admission: prepare + cache lookup --------------------------------------------------------
    def admit(self, prepare: Callable[[], GuardInput], budget: int, policy: Policy) -> Admitted:
        """Prepare one input and look it up in the cache (hashing is skipped when nothing needs it)."""
        item = prepare()
        check_policy_fits(policy, item)
        if not self.cache.enabled and self.sink.audit_log is None:
            return Admitted(item)
        hashes = content_hashes(item)
        if not self.cache.enabled:
            return Admitted(item, hashes=hashes)
        key = hashes.key(self.model_id, self.stack.cache_settings + self.tiers.cache_tag, budget)
        hit = self.cache.get(key)
        if hit is not None:
            hit = hit.model_copy(update={"cached": True, "id": _new_id()})
        return Admitted(item, key, hashes, hit)

    # -- one check ---------------------------------------------------------------------------------
    def run(
        self,
        prepare: Callable[[], GuardInput],
        heavy: bool,
        policy: Policy,
        budget: int,
        deadline: float | None,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> tuple[Verdict, GuardInput | None]:
        """prepare + cache lookup (within the deadline) → judge → cache → decide → sink. Returns the
        verdict and the prepared input (``None`` when preparing ran out of time)."""
        try:
            pool = self.prepare_pool if heavy else None
            admitted = (
                run_within(
                    pool, deadline, "preparing the input (image loading, hashing)", self.admit, prepare, budget, policy
                )
                if pool is not None
                else self.admit(prepare, budget, policy)
            )
        except DeadlineExceededError as exc:
            return self.finish(self.failed(exc), None, None, policy, started, stage=stage, call_id=call_id), None
        raw = admitted.cached
        if raw is None:
            raw = self.judge(admitted.item, budget, deadline)
            if admitted.key is not None:
                self.cache.put(admitted.key, raw)
        verdict = self.finish(raw, admitted.item, admitted.hashes, policy, started, stage=stage, call_id=call_id)
        return verdict, admitted.item

    async def arun(
        self,
        prepare: Callable[[], GuardInput],
        heavy: bool,
        policy: Policy,
        budget: int,
        deadline: float | None,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> tuple[Verdict, GuardInput | None]:
        """Async twin of :meth:`run`: CPU-heavy steps in worker threads, never on the event loop."""
        try:
            if heavy:
                work = to_daemon_thread(self.admit, prepare, budget, policy)
                admitted = await await_within(work, deadline, "preparing the input (image loading, hashing)")
            else:
                admitted = self.admit(prepare, budget, policy)
        except DeadlineExceededError as exc:
            return self.finish(self.failed(exc), None, None, policy, started, stage=stage, call_id=call_id), None
        raw = admitted.cached
        if raw is None:
            raw = await self.ajudge(admitted.item, budget, deadline)
            if admitted.key is not None:
                self.cache.put(admitted.key, raw)
        finish = functools.partial(
            self.finish, raw, admitted.item, admitted.hashes, policy, started, stage=stage, call_id=call_id
        )
        if heavy or self.sink.audit_log is not None:  # hashing for the audit line, disk writes
            return await asyncio.to_thread(finish), admitted.item
        return finish(), admitted.item

    def judge(self, item: GuardInput, budget: int, deadline: float | None) -> Verdict:
        """The judgement of one input: a verdict with labels, or a failed verdict (never raises for a
        guard failure; ``InputError`` and ``GuardClosedError`` are the caller's and propagate)."""
        if self.tiered is not None:
            return self.tiered.judge([item], budget, deadline)[0]
        try:
            generation = self.stack.generate([item], max_new_tokens=budget, deadline=deadline)[0]
        except (InputError, GuardClosedError):
            raise
        except Exception as exc:
            return self.failed(exc)
        self.speed.observe(generation)
        return self.verdict(item, generation)

    async def ajudge(self, item: GuardInput, budget: int, deadline: float | None) -> Verdict:
        if self.tiered is not None:
            return (await self.tiered.ajudge([item], budget, deadline))[0]
        try:
            generation = (await self.stack.agenerate([item], max_new_tokens=budget, deadline=deadline))[0]
        except (InputError, GuardClosedError):
            raise
        except Exception as exc:
            return self.failed(exc)
        if len(generation.text) > HEAVY_CHARS:
            return await asyncio.to_thread(self.verdict, item, generation)
        return self.verdict(item, generation)

    # -- many checks ---------------------------------------------------------------------------------
    def run_batch(
        self, admitted: list[Admitted], policy: Policy, budget: int, deadline: float | None, size: int, started: float
    ) -> list[Verdict]:
        raws: list[Verdict | None] = [a.cached for a in admitted]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        size = max(1, len(missing)) if self.refills and self.tiered is None else size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            items = [admitted[i].item for i in chunk]
            if self.tiered is not None:
                self.store(chunk, items, self.tiered.judge(items, budget, deadline), raws, admitted)
                continue
            if self.refiller is not None:  # each input settles alone: no retry of the others
                self.store(chunk, items, self.refiller.outcomes(items, budget, deadline), raws, admitted)
                continue
            run = functools.partial(self.stack.generate, max_new_tokens=budget, deadline=deadline)
            self.store(chunk, items, generate_isolated(run, items), raws, admitted)
        return [self.finish(r, a.item, a.hashes, policy, started) for r, a in zip(raws, admitted, strict=True)]  # type: ignore[arg-type]

    async def arun_batch(
        self, admitted: list[Admitted], policy: Policy, budget: int, deadline: float | None, size: int, started: float
    ) -> list[Verdict]:
        raws: list[Verdict | None] = [a.cached for a in admitted]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        size = max(1, len(missing)) if self.refills and self.tiered is None else size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            items = [admitted[i].item for i in chunk]
            if self.tiered is not None:
                judged = await self.tiered.ajudge(items, budget, deadline)
                await asyncio.to_thread(self.store, chunk, items, judged, raws, admitted)
                continue
            if self.refiller is not None:  # each input settles alone: no retry of the others
                outcomes = await self.refiller.aoutcomes(items, budget, deadline)
            else:
                run = functools.partial(self.stack.agenerate, max_new_tokens=budget, deadline=deadline)
                outcomes = await agenerate_isolated(run, items)
            await asyncio.to_thread(self.store, chunk, items, outcomes, raws, admitted)
        return await asyncio.to_thread(
            lambda: [self.finish(r, a.item, a.hashes, policy, started) for r, a in zip(raws, admitted, strict=True)]  # type: ignore[arg-type]
        )

    def store(
        self,
        chunk: list[int],
        items: list[GuardInput],
        outcomes: Sequence[Generation | Exception | Verdict],
        raws: list[Verdict | None],
        admitted: list[Admitted],
    ) -> None:
        """Turn a chunk's outcomes (or judgements already made) into judgements (a backend
        ``InputError`` is the caller's: raised)."""
        for index, item, outcome in zip(chunk, items, outcomes, strict=True):
            if isinstance(outcome, (InputError, GuardClosedError)):
                raise outcome
            if isinstance(outcome, Verdict):
                raw = outcome
            elif isinstance(outcome, BaseException):
                raw = self.failed(outcome)
            else:
                self.speed.observe(outcome)
                raw = self.verdict(item, outcome)
            raws[index] = raw
            key = admitted[index].key
            if key is not None:
                self.cache.put(key, raw)

    # -- output -> verdict -> decision ---------------------------------------------------------------
    def failed(self, exc: BaseException) -> Verdict:
        if not isinstance(exc, (BackendError, DeadlineExceededError)):
            logger.warning("guard backend raised %s", type(exc).__name__, exc_info=exc)
        return Verdict.from_error(exc, model=self.model_id)

    def verdict(self, item: GuardInput, generation: Generation) -> Verdict:
        """The judgement of one output. Only the parts given are judged (a response-only input has no
        request label). An output without a usable verdict gives a failed verdict that keeps the
        ``harmful`` labels read outside the reasoning (they still block)."""
        common: dict[str, Any] = {
            "raw_output": generation.text[:MAX_OUTPUT_CHARS],  # longer outputs are refused unread anyway
            "model": self.model_id,
            "usage": Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                latency_ms=generation.latency_ms,
            ),
        }
        try:
            parsed = parse_output(generation.text)
            if not generation.finished and parsed.source == "untagged":
                # No verdict block closes an untagged output: cut off, its labels may be mid-reasoning.
                raise ParseError(
                    "an untagged output cut before its end holds no verdict",
                    output=generation.text,
                    request_label=parsed.request_label,
                    response_label=parsed.response_label,
                )
        except ParseError as exc:
            if not generation.finished:
                exc = ParseError(
                    f"the guard output was cut off at max_new_tokens before a complete verdict; {exc.message}",
                    output=exc.output,
                    request_label=exc.request_label,
                    response_label=exc.response_label,
                )
            return Verdict.from_error(exc, **_harmful_only(item, exc.request_label, exc.response_label), **common)
        if item.response is not None and parsed.response_label is None:
            error = ParseError(
                "a response was given but the guard output has no response label", output=generation.text
            )
            labels = _harmful_only(item, parsed.request_label, None)
            return Verdict.from_error(error, reasoning=parsed.reasoning, **labels, **common)
        request_label = parsed.request_label if item.has_request else None
        response_label = parsed.response_label if item.response is not None else None
        request_score, response_score = label_scores(generation.logprobs)
        return Verdict.from_labels(
            request_label,
            response_label,
            reasoning=parsed.reasoning,
            request_score=request_score if request_label is not None else None,
            response_score=response_score if response_label is not None else None,
            **common,
        )

    def finish(
        self,
        raw: Verdict,
        item: GuardInput | None,
        hashes: ContentHashes | None,
        policy: Policy,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> Verdict:
        """Decide (the policy), time, and emit (log, audit line, hooks)."""
        usage = raw.usage.model_copy(update={"total_ms": (time.perf_counter() - started) * 1000})
        verdict = policy.decide(raw, usage=usage, stage=stage, call_id=call_id)
        self.sink.emit(verdict, item, hashes)
        return verdict


def _harmful_only(item: GuardInput, request_label: str | None, response_label: str | None) -> dict[str, str | None]:
    """The labels a failed verdict keeps: only ``harmful`` ones of parts that were given (they block
    whatever the fail mode); an ``unharmful`` read from an unusable output is no judgement."""
    return {
        "request_label": request_label if request_label == "harmful" and item.has_request else None,
        "response_label": response_label if response_label == "harmful" and item.response is not None else None,
    }
