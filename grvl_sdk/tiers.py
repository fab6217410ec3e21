"""Latency tiers: ``GuardOptions.mode`` ``"think"`` (default), ``"fast"`` and ``"auto"``.

- ``think``: the paper's protocol — reasoning, then the verdict (the engine's ordinary path).
- ``fast``: the verdict without reasoning (:mod:`grvl_sdk.protocol.fast`): one forward pass per
  label, the probability of ``harmful`` as the score.
- ``auto``: fast first; escalate to think when

  1. the fast tier failed (no fast tier on this backend, low label mass, error): ``"fast_failed"``;
  2. ``auto_escalate_images`` and the input has images: ``"images"``;
  3. the ``auto_escalate(item, fast_verdict)`` callback returns true: ``"policy"``;
  4. a fast score of a judged part lies in ``auto_band`` (``low <= score <= high``): ``"uncertain"``;

  — but never past the deadline: when the time left is shorter than reasoning is expected to take
  (mean output tokens of earlier think generations ÷ their measured tokens per second) and
  ``auto_short_deadline="fast"`` (default), the fast answer is kept (``tier.skipped="deadline"``),
  and so it is when reasoning was tried (no estimate yet, or slower than measured) and the deadline
  cut it; with ``"think"`` reasoning is tried anyway and a check it cannot finish in time fails
  closed. The think generation itself always runs under the check's deadline.

Every fast or auto verdict records the tier in ``Verdict.tier`` (:class:`~grvl_sdk.verdict.TierInfo`):
which path answered, the scores of both tiers, the time of each. An escalated verdict's ``usage``
adds both generations (tokens and ``latency_ms``). A failed fast tier on ``mode="fast"`` is a failed
verdict (fail-closed, the policy's ``on_error`` decides); a failed think step after an escalation is a
failed verdict that keeps a fast ``harmful`` label (which blocks).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from grvl_sdk.backends.batching import agenerate_isolated, generate_isolated
from grvl_sdk.errors import DeadlineExceededError, FastModeUnsupportedError, GuardClosedError, InputError, ParseError
from grvl_sdk.protocol.fast import is_fast_output, label_mass
from grvl_sdk.types import FAST, Generation, GuardInput
from grvl_sdk.verdict import TierInfo, Usage, Verdict

if TYPE_CHECKING:
    from grvl_sdk.engine import Engine

__all__ = ["Escalation", "ReasoningSpeed", "TierMode", "TierSettings", "TieredJudge"]

logger = logging.getLogger("grvl_sdk")

TierMode = Literal["think", "fast", "auto"]
Escalation = Literal["uncertain", "images", "policy", "fast_failed"]
#: Weight of the newest think generation in the running estimates of :class:`ReasoningSpeed`.
_SMOOTHING = 0.2


@dataclass(frozen=True)
class TierSettings:
    """The tier settings of one guard (from :class:`~grvl_sdk.options.GuardOptions`)."""

    mode: TierMode = "think"
    band: tuple[float, float] = (0.2, 0.8)
    escalate_images: bool = False
    escalate: Callable[[GuardInput, Verdict], bool] | None = None
    short_deadline: Literal["fast", "think"] = "fast"
    min_label_mass: float = 0.01

    @classmethod
    def from_options(cls, options: Any) -> TierSettings:
        return cls(
            mode=options.mode,
            band=tuple(options.auto_band),  # type: ignore[arg-type]
            escalate_images=options.auto_escalate_images,
            escalate=options.auto_escalate,
            short_deadline=options.auto_short_deadline,
            min_label_mass=options.fast_min_label_mass,
        )

    @property
    def cache_tag(self) -> str:
        """What makes a cached verdict of this mode differ from a think one (part of cache keys)."""
        if self.mode == "think":
            return ""
        if self.mode == "fast":
            return f":fast:{self.min_label_mass}"
        escalate = getattr(self.escalate, "__qualname__", repr(self.escalate)) if self.escalate else ""
        return (
            f":auto:{self.band[0]}:{self.band[1]}:{self.escalate_images}:{escalate}:"
            f"{self.short_deadline}:{self.min_label_mass}"
        )


class ReasoningSpeed:
    """Running estimates from think generations: output tokens per millisecond (prefill included, so
    conservative) and mean output tokens; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tokens_per_ms: float | None = None
        self.mean_tokens: float | None = None

    def observe(self, generation: Generation) -> None:
        if generation.completion_tokens <= 0 or generation.latency_ms <= 0:
            return
        rate = generation.completion_tokens / generation.latency_ms
        with self._lock:
            if self.tokens_per_ms is None or self.mean_tokens is None:
                self.tokens_per_ms, self.mean_tokens = rate, float(generation.completion_tokens)
            else:
                self.tokens_per_ms += _SMOOTHING * (rate - self.tokens_per_ms)
                self.mean_tokens += _SMOOTHING * (generation.completion_tokens - self.mean_tokens)

    def estimate_ms(self, budget: int) -> float | None:
        """Expected milliseconds of one think generation (``None`` before any was measured)."""
        with self._lock:
            if self.tokens_per_ms is None or self.mean_tokens is None:
                return None
            return min(float(budget), self.mean_tokens) / self.tokens_per_ms


def _scores(verdict: Verdict) -> list[float]:
    return [s for s in (verdict.request_score, verdict.response_score) if s is not None]


class TieredJudge:
    """Judges inputs in ``fast`` or ``auto`` mode for one :class:`~grvl_sdk.engine.Engine`."""

    def __init__(self, engine: Engine, settings: TierSettings) -> None:
        self.engine = engine
        self.settings = settings

    # -- the two tiers -------------------------------------------------------------------------
    def fast_verdict(self, item: GuardInput, outcome: Generation | BaseException) -> Verdict:
        """A fast outcome as a verdict: failed when the backend failed, ignored the fast tier, or put
        too little probability on the labels (``InputError``/``GuardClosedError`` are raised)."""
        engine = self.engine
        mode: Literal["fast", "auto"] = "fast" if self.settings.mode == "fast" else "auto"
        if isinstance(outcome, (InputError, GuardClosedError)):
            raise outcome
        if isinstance(outcome, BaseException):
            return engine.failed(outcome).model_copy(update={"tier": TierInfo(mode=mode, path="fast")})
        if not is_fast_output(outcome):
            unsupported = FastModeUnsupportedError(
                f"the backend ignored the fast tier and wrote {outcome.text[:60]!r}: it has no mode='fast'"
            )
            return engine.failed(unsupported).model_copy(update={"tier": TierInfo(mode=mode, path="fast")})
        verdict = engine.verdict(item, outcome)
        mass = label_mass(outcome)
        if not verdict.failed and mass is not None and mass < self.settings.min_label_mass:
            error = ParseError(
                f"fast mode: the labels hold only {mass:.3g} of the model's probability (fast_min_label_mass="
                f"{self.settings.min_label_mass}); the model does not answer without reasoning",
                output=outcome.text,
            )
            keep = {
                "request_label": verdict.request_label if verdict.request_label == "harmful" else None,
                "response_label": verdict.response_label if verdict.response_label == "harmful" else None,
            }
            verdict = Verdict.from_error(error, **keep, raw_output=verdict.raw_output, model=verdict.model,
                                         usage=verdict.usage)  # fmt: skip
        info = TierInfo(
            mode=mode,
            path="fast",
            fast_request_score=verdict.request_score,
            fast_response_score=verdict.response_score,
            fast_ms=outcome.latency_ms,
            label_mass=mass,
        )
        return verdict.model_copy(update={"reasoning": None, "tier": info})

    def think_verdict(self, item: GuardInput, outcome: Generation | BaseException) -> tuple[Verdict, float | None]:
        engine = self.engine
        if isinstance(outcome, (InputError, GuardClosedError)):
            raise outcome
        if isinstance(outcome, BaseException):
            return engine.failed(outcome), None
        engine.speed.observe(outcome)
        return engine.verdict(item, outcome), outcome.latency_ms

    # -- escalation ----------------------------------------------------------------------------
    def escalation(self, item: GuardInput, fast: Verdict) -> Escalation | None:
        """Why ``auto`` should reason about ``item`` after its fast verdict, or ``None``."""
        settings = self.settings
        if fast.failed:
            return "fast_failed"
        if settings.escalate_images and item.images:
            return "images"
        if settings.escalate is not None and settings.escalate(item, fast):
            return "policy"
        low, high = settings.band
        if any(low <= score <= high for score in _scores(fast)):
            return "uncertain"
        return None

    def too_short(self, budget: int, deadline: float | None) -> bool:
        """Whether the time left before ``deadline`` is shorter than reasoning is expected to take."""
        if deadline is None:
            return False
        expected = self.engine.speed.estimate_ms(budget)
        return expected is not None and (deadline - time.monotonic()) * 1000 < expected

    def _plan(
        self, items: Sequence[GuardInput], fasts: list[Verdict], budget: int, deadline: float | None
    ) -> tuple[list[int], dict[int, Escalation]]:
        """(indices to reason about, every wanted escalation)."""
        if self.settings.mode != "auto":
            return [], {}
        wanted = {i: reason for i, item in enumerate(items) if (reason := self.escalation(item, fasts[i]))}
        short = bool(wanted) and self.settings.short_deadline == "fast" and self.too_short(budget, deadline)
        run = [i for i, reason in wanted.items() if not (short and reason != "fast_failed")]
        return run, wanted

    def _combine(self, fast: Verdict, think: Verdict, think_ms: float | None, reason: Escalation) -> Verdict:
        info = fast.tier.model_copy(  # type: ignore[union-attr]
            update={
                "path": "think",
                "escalation": reason,
                "think_request_score": think.request_score,
                "think_response_score": think.response_score,
                "think_ms": think_ms,
            }
        )
        usage = Usage(
            prompt_tokens=fast.usage.prompt_tokens + think.usage.prompt_tokens,
            completion_tokens=fast.usage.completion_tokens + think.usage.completion_tokens,
            latency_ms=fast.usage.latency_ms + think.usage.latency_ms,
        )
        update: dict[str, Any] = {"tier": info, "usage": usage}
        if think.failed:  # fail-closed: a harmful fast label still blocks
            for name in ("request_label", "response_label"):
                if getattr(think, name) is None and getattr(fast, name) == "harmful":
                    update[name] = "harmful"
        return think.model_copy(update=update)

    def _finish(
        self,
        fasts: list[Verdict],
        wanted: dict[int, Escalation],
        run: list[int],
        thinks: list[tuple[Verdict, float | None]],
    ) -> list[Verdict]:
        results = list(fasts)
        for index, reason in wanted.items():
            if index not in run:
                info = fasts[index].tier.model_copy(update={"escalation": reason, "skipped": "deadline"})  # type: ignore[union-attr]
                results[index] = fasts[index].model_copy(update={"tier": info})
        for index, (think, think_ms) in zip(run, thinks, strict=True):
            fast = fasts[index]
            if self._ran_out(fast, think):  # reasoning was tried and the deadline cut it: the fast answer
                info = fast.tier.model_copy(update={"escalation": wanted[index], "skipped": "deadline"})  # type: ignore[union-attr]
                results[index] = fast.model_copy(update={"tier": info})
                continue
            results[index] = self._combine(fast, think, think_ms, wanted[index])
        return results

    def _ran_out(self, fast: Verdict, think: Verdict) -> bool:
        """Whether a think step failed only for the deadline while a usable fast answer exists (kept
        with ``auto_short_deadline="fast"``: no estimate yet, or reasoning slower than measured)."""
        return (
            self.settings.short_deadline == "fast"
            and not fast.failed
            and think.error is not None
            and think.error.code == DeadlineExceededError.code
        )

    # -- sync / async ----------------------------------------------------------------------------
    def judge(self, items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Verdict]:
        """Verdicts of ``items`` in this mode (never raises for a guard failure; ``InputError`` and
        ``GuardClosedError`` propagate)."""
        stack = self.engine.stack
        fast_run = functools.partial(stack.generate, max_new_tokens=budget, deadline=deadline, decoding=FAST)
        fasts = [self.fast_verdict(i, o) for i, o in zip(items, generate_isolated(fast_run, items), strict=True)]
        run, wanted = self._plan(items, fasts, budget, deadline)
        thinks: list[tuple[Verdict, float | None]] = []
        if run:
            think_run = functools.partial(stack.generate, max_new_tokens=budget, deadline=deadline)
            chosen = [items[i] for i in run]
            thinks = [
                self.think_verdict(i, o) for i, o in zip(chosen, generate_isolated(think_run, chosen), strict=True)
            ]
        return self._finish(fasts, wanted, run, thinks)

    async def ajudge(self, items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Verdict]:
        """Async twin of :meth:`judge`."""
        stack = self.engine.stack
        fast_run = functools.partial(stack.agenerate, max_new_tokens=budget, deadline=deadline, decoding=FAST)
        outcomes = await agenerate_isolated(fast_run, items)
        fasts = [self.fast_verdict(i, o) for i, o in zip(items, outcomes, strict=True)]
        run, wanted = self._plan(items, fasts, budget, deadline)
        thinks: list[tuple[Verdict, float | None]] = []
        if run:
            think_run = functools.partial(stack.agenerate, max_new_tokens=budget, deadline=deadline)
            chosen = [items[i] for i in run]
            outcomes = await agenerate_isolated(think_run, chosen)
            thinks = [self.think_verdict(i, o) for i, o in zip(chosen, outcomes, strict=True)]
        return self._finish(fasts, wanted, run, thinks)
