"""``Policy``: what a guard does with its verdicts. One per guard, overridable per call.

``check`` says which parts count: ``"request"``, ``"response"`` or ``"both"`` (default). It governs
direct checks and guarded calls alike: a guarded call skips the stage the policy does not check, and a
direct check must hold a part the policy checks (else ``InputError``).

The decision rule (:meth:`Policy.decide`), for the labels of the parts the policy checks:

======================================  ==============  ===================  ======================
judgement                               ``on_error``    ``decision``         ``blocked``
======================================  ==============  ===================  ======================
a checked label is ``harmful``          any             ``block``            yes (``enforce``)
  (also on a failed verdict)
judged, no checked label harmful        any             ``allow``            no
could not judge (``failed``)            ``"block"``     ``error-blocked``    yes (``enforce``)
could not judge (``failed``)            ``"allow"``     ``error-allowed``    no
======================================  ==============  ===================  ======================

In ``mode="monitor"`` the same decisions are recorded and logged, and ``blocked`` is always false.
``fail_mode``/``fail_reason`` are set only when the fail mode decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field

from grvl_sdk._constants import (
    DEFAULT_REFUSAL,
    DEFAULT_STREAM_CHECK_EVERY,
    DEFAULT_STREAM_CHECK_GROWTH,
    DEFAULT_STREAM_MAX_CHECKS,
)
from grvl_sdk._validation import SettingsModel
from grvl_sdk.errors import InputError
from grvl_sdk.verdict import Decision, FailMode, Mode, Verdict

__all__ = ["Policy", "PolicyLike"]


class Policy(SettingsModel):
    """How a guard acts on verdicts. Frozen: derive variants with :meth:`merged` or ``model_copy``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``enforce`` acts on decisions; ``monitor`` only records and logs them.
    mode: Mode = "enforce"
    #: Fail mode when the guard cannot judge: ``block`` (fail-closed) or ``allow`` (fail-open).
    on_error: FailMode = "block"
    #: What a guarded call checks: the request (before the call), the response (after it), or both.
    check: Literal["request", "response", "both"] = "both"
    #: What a blocked guarded call does: raise :class:`~grvl_sdk.errors.GuardBlocked`, or return ``refusal``.
    on_block: Literal["raise", "refuse"] = "raise"
    refusal: str = DEFAULT_REFUSAL
    #: Seconds for one check, queueing and generation included; on expiry the fail mode applies.
    deadline: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Generation budget per check (default: the guard's ``max_new_tokens``).
    max_new_tokens: int | None = Field(default=None, ge=1)
    #: Streaming: ``buffer`` holds chunks until a check passes them; ``passthrough`` forwards them at once
    #: and cuts the stream when a check blocks.
    stream_mode: Literal["buffer", "passthrough"] = "buffer"
    #: Streaming: the first check of the accumulated response after this many characters (and always
    #: one at the end); see :mod:`grvl_sdk.middleware.schedule`.
    stream_check_every: int = Field(default=DEFAULT_STREAM_CHECK_EVERY, ge=1)
    #: Streaming: each later check once the text grew by ``max(stream_check_every, (growth - 1) ×
    #: length at the last check)`` characters (``1``: a fixed interval).
    stream_check_growth: float = Field(default=DEFAULT_STREAM_CHECK_GROWTH, ge=1, allow_inf_nan=False)
    #: Streaming: at most this many guard generations per streamed choice, the final check included
    #: (``None``: no cap). Bounds the guard work of a stream of any length.
    stream_max_checks: int | None = Field(default=DEFAULT_STREAM_MAX_CHECKS, ge=1)

    def merged(self, override: PolicyLike | None) -> Policy:
        """This policy with ``override`` applied: a ``Policy`` replaces it, a dict updates some fields."""
        if override is None:
            return self
        if isinstance(override, Policy):
            return override
        if not isinstance(override, Mapping):
            raise InputError(f"policy must be a Policy or a dict of Policy fields, got {type(override).__name__}")
        if not all(isinstance(key, str) for key in override):
            raise InputError("policy override keys must be Policy field names (strings)", field="policy")
        return Policy(**{**self.model_dump(), **override})

    def flags(self, verdict: Verdict) -> bool:
        """True when a label this policy checks reads ``harmful`` (on a failed verdict too)."""
        request = self.check != "response" and verdict.request_label == "harmful"
        response = self.check != "request" and verdict.response_label == "harmful"
        return request or response

    def decide(self, verdict: Verdict, **fields: Any) -> Verdict:
        """``verdict`` with the decision, mode and fail mode recorded (plus any extra ``fields``)."""
        decision: Decision
        fail_mode: FailMode | None = None
        fail_reason: str | None = None
        if self.flags(verdict):
            decision = "block"
        elif verdict.error is not None:
            fail_mode = self.on_error
            decision = "error-allowed" if fail_mode == "allow" else "error-blocked"
            fail_reason = f"{verdict.error.code}: {verdict.error.message}"
        else:
            decision = "allow"
        return verdict.model_copy(
            update={
                "decision": decision,
                "mode": self.mode,
                "fail_mode": fail_mode,
                "fail_reason": fail_reason,
                **fields,
            }
        )


#: A policy, or a dict of fields overriding the guard's policy for one call.
PolicyLike = Policy | Mapping[str, Any]
