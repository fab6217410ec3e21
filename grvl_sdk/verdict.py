"""The typed result of a guard check."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from grvl_sdk.errors import GRVLError
from grvl_sdk.protocol.parsing import Label

__all__ = ["Decision", "ErrorInfo", "FailMode", "Mode", "Stage", "TierInfo", "Usage", "Verdict"]

#: What the policy decided: ``allow`` / ``block`` on a judgement, ``error-allowed`` / ``error-blocked``
#: when the guard could not judge and the fail mode (``on_error``) decided instead.
Decision = Literal["allow", "block", "error-allowed", "error-blocked"]
#: ``enforce``: decisions are acted on; ``monitor``: they are only recorded and logged.
Mode = Literal["enforce", "monitor"]
#: The fail mode: ``block`` (fail-closed) or ``allow`` (fail-open).
FailMode = Literal["block", "allow"]
#: Which check of a guarded call: the request (before the call), the response (after it), or a
#: partial response while a stream is still running.
Stage = Literal["request", "response", "stream"]


def _new_id() -> str:
    return uuid.uuid4().hex


class Usage(BaseModel):
    """Token counts and wall time of one check."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Wall time of the generation that produced this verdict (for a batch: the whole batch's time).
    latency_ms: float = 0.0
    #: Wall time of the whole check as the caller saw it (image loading, queueing, cache lookup included).
    total_ms: float = 0.0


class ErrorInfo(BaseModel):
    """Why a verdict failed: a stable ``code`` (see :mod:`grvl_sdk.errors`), the error type and message."""

    model_config = ConfigDict(frozen=True)

    code: str
    type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        code = exc.code if isinstance(exc, GRVLError) else "backend_error"
        return cls(code=code, type=type(exc).__name__, message=str(exc))


class TierInfo(BaseModel):
    """How a ``mode="fast"`` or ``mode="auto"`` verdict was reached (``Verdict.tier``; ``None`` in the
    default ``mode="think"``). See :mod:`grvl_sdk.tiers`.

    ``path``: which tier answered (``"fast"``: labels read without reasoning; ``"think"``: reasoning).
    ``escalation``: why ``auto`` wanted reasoning — ``"uncertain"`` (a fast score inside the band),
    ``"images"``, ``"policy"`` (the ``auto_escalate`` callback), ``"fast_failed"`` — or ``None``;
    ``skipped``: ``"deadline"`` when it was wanted but the deadline left too little time for reasoning
    (estimated from measured tokens/s) and the fast answer was kept. Scores are the probability of
    ``harmful`` from each tier that ran (``None`` where a tier did not run or a part was not judged);
    ``fast_ms``/``think_ms``: wall time of each tier's generation (milliseconds); ``label_mass``: the
    fast tier's ``P(harmful) + P(unharmful)`` (how much the model wanted to write a label at all).
    """

    model_config = ConfigDict(frozen=True)

    mode: Literal["fast", "auto"]
    path: Literal["fast", "think"]
    escalation: Literal["uncertain", "images", "policy", "fast_failed"] | None = None
    skipped: Literal["deadline"] | None = None
    fast_request_score: float | None = None
    fast_response_score: float | None = None
    think_request_score: float | None = None
    think_response_score: float | None = None
    fast_ms: float | None = None
    think_ms: float | None = None
    label_mass: float | None = None


class Verdict(BaseModel):
    """The guard's judgement of one request (and optional response), and the policy's decision.

    Three separate questions, three separate fields:

    - ``harmful``: did the guard **judge** something harmful? (a label that reads ``harmful``; never set
      by a failure alone);
    - ``failed`` / ``error``: could the guard **not judge** (backend error, unparseable output,
      deadline)? A failed verdict keeps only the ``harmful`` labels it read outside the reasoning
      before the output turned out unusable (e.g. ``Request: harmful`` with the response label
      missing); an ``unharmful`` from an unusable output is no judgement and is dropped;
    - ``decision`` / ``blocked``: what the **policy** did with it (see :mod:`grvl_sdk.policy` for the
      full table): ``allow``/``block`` on a judgement — a ``harmful`` label the policy checks blocks
      even on a failed verdict —, ``error-allowed``/``error-blocked`` when the fail mode decided.
      ``blocked`` is true when the decision blocks and the policy enforces (``monitor`` never blocks).

    Only the parts given are judged: ``response_label`` is ``None`` without a response, and
    ``request_label`` is ``None`` for a response-only check.
    """

    model_config = ConfigDict(frozen=True)

    request_label: Label | None = None
    #: ``None`` when no response was given (nothing to judge).
    response_label: Label | None = None
    reasoning: str | None = None
    raw_output: str = ""
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    error: ErrorInfo | None = None
    #: The model's probability of ``harmful`` at its request / response label (see ``grvl_sdk.scores``;
    #: not calibrated). ``None`` without a label or without log-probabilities.
    request_score: float | None = None
    response_score: float | None = None
    #: The policy's decision (``None`` only on a verdict built by hand).
    decision: Decision | None = None
    #: The policy mode the decision was made under; in ``monitor`` mode nothing is blocked.
    mode: Mode | None = None
    #: The fail mode applied when the guard could not judge, and why (``None`` when it judged).
    fail_mode: FailMode | None = None
    fail_reason: str | None = None
    #: True when the judgement came from the verdict cache.
    cached: bool = False
    #: Unique id of this verdict; ``call_id`` groups the verdicts of one guarded call.
    id: str = Field(default_factory=_new_id)
    call_id: str | None = None
    stage: Stage | None = None
    #: The latency tier that answered (``GuardOptions.mode`` ``"fast"``/``"auto"``); ``None`` in ``"think"``.
    tier: TierInfo | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def harmful(self) -> bool:
        """True when a label the guard wrote reads ``harmful`` (also on a failed verdict that kept one)."""
        return self.request_label == "harmful" or self.response_label == "harmful"

    @property
    def failed(self) -> bool:
        """True when the guard produced no usable judgement (see ``error``)."""
        return self.error is not None

    @property
    def blocked(self) -> bool:
        """True when the decision blocks and the policy enforces it (``monitor`` mode never blocks). A
        verdict built by hand without a decision is blocked when harmful or failed (fail-closed)."""
        if self.decision is None:
            return self.harmful or self.failed
        return self.mode != "monitor" and self.decision in ("block", "error-blocked")

    @classmethod
    def from_labels(cls, request_label: Label | None, response_label: Label | None, **fields: Any) -> Verdict:
        return cls(request_label=request_label, response_label=response_label, **fields)

    @classmethod
    def from_error(cls, exc: BaseException, **fields: Any) -> Verdict:
        return cls(error=ErrorInfo.from_exception(exc), **fields)
