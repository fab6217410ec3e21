"""The typed result of a guard check."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from grvl_sdk.errors import GRVLError
from grvl_sdk.parsing import Label

__all__ = ["ErrorInfo", "Usage", "Verdict"]


class Usage(BaseModel):
    """Token counts and wall time of one check."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Wall time of the generation that produced this verdict (for a batch: the whole batch's time).
    latency_ms: float = 0.0


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


class Verdict(BaseModel):
    """The guard's judgement of one request (and optional response).

    A *failed* verdict (``failed`` is true, ``error`` says why) has no labels and reports
    ``harmful=True``: a guard that could not judge never reads as "unharmful".
    """

    model_config = ConfigDict(frozen=True)

    request_label: Label | None = None
    #: ``None`` when no response was given (nothing to judge).
    response_label: Label | None = None
    #: True if any judged part is harmful, or if the check failed (fail-closed).
    harmful: bool
    reasoning: str | None = None
    raw_output: str = ""
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    error: ErrorInfo | None = None

    @property
    def failed(self) -> bool:
        """True when the guard produced no usable judgement (see ``error``)."""
        return self.error is not None

    @classmethod
    def from_labels(cls, request_label: Label, response_label: Label | None, **fields: Any) -> Verdict:
        harmful = request_label == "harmful" or response_label == "harmful"
        return cls(request_label=request_label, response_label=response_label, harmful=harmful, **fields)

    @classmethod
    def from_error(cls, exc: BaseException, **fields: Any) -> Verdict:
        return cls(harmful=True, error=ErrorInfo.from_exception(exc), **fields)
