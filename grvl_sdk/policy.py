"""``Policy``: what a guard does with its verdicts. One per guard, overridable per call.

The decision rule (:meth:`Policy.decide`):

- ``block`` when a label the policy checks is ``harmful`` — also when the guard failed to judge the
  rest (a parsed ``harmful`` is never thrown away, whatever the fail mode). A check without a response
  judges the request. A check with a response judges the response, and the request too unless
  ``check="response"`` (then only the response label counts);
- else, when the guard could not judge (backend error, unparseable or truncated output, deadline,
  ...): the fail mode decides: ``on_error="block"`` (fail-closed, the default) gives
  ``error-blocked``, ``on_error="allow"`` (fail-open) gives ``error-allowed``; ``fail_mode`` and
  ``fail_reason`` are set;
- else ``allow``.

``mode="monitor"`` records and logs the same decisions but never blocks (``verdict.blocked`` is false).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from grvl_sdk._constants import DEFAULT_REFUSAL, DEFAULT_STREAM_CHECK_EVERY
from grvl_sdk.errors import InputError
from grvl_sdk.verdict import Decision, FailMode, Mode, Verdict

__all__ = ["Policy", "PolicyLike"]


class Policy(BaseModel):
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
    #: Streaming: check the accumulated response every this many characters (and always at the end).
    stream_check_every: int = Field(default=DEFAULT_STREAM_CHECK_EVERY, ge=1)

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise InputError(f"invalid policy: {_describe(exc)}", field="policy") from exc

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
        """True when a label this policy checks is ``harmful`` (ignores failure)."""
        if verdict.response_label is None:
            return verdict.request_label == "harmful"
        if verdict.response_label == "harmful":
            return True
        return self.check != "response" and verdict.request_label == "harmful"

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


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``field: message (got value)``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'policy'}: {error['msg']} (got {error.get('input')!r})"
        for error in exc.errors()
    )


#: A policy, or a dict of fields overriding the guard's policy for one call.
PolicyLike = Policy | Mapping[str, Any]
