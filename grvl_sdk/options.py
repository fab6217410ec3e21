"""``GuardOptions``: the one definition of a guard's middleware settings.

``Guard(backend, **options)``, ``Guard.from_pretrained(..., **options)`` and
``Guard.from_server(..., **options)`` all take these fields as keyword arguments (or a ready
``options=GuardOptions(...)``); ``guard.with_options(**changes)`` derives a guard that shares the
backend, the micro-batcher and the cache. Mistakes raise :class:`~grvl_sdk.errors.InputError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict

from pydantic import ConfigDict, Field, StrictBool, StrictInt, field_validator

from grvl_sdk._constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CACHE_SIZE,
    DEFAULT_CONTEXT_CHARS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_WAIT_MS,
)
from grvl_sdk._validation import SettingsModel
from grvl_sdk.errors import InputError
from grvl_sdk.policy import Policy, PolicyLike

__all__ = ["GuardOptions", "GuardOptionsKwargs"]


class GuardOptions(SettingsModel):
    """A guard's middleware settings (frozen). Defaults are in :mod:`grvl_sdk._constants`."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    #: Generation budget per check (tokens). The paper's outputs average ~210 tokens; the authors allowed 4096.
    max_new_tokens: StrictInt = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1)
    #: Images with more pixels are refused before decoding (decompression bombs).
    max_image_pixels: StrictInt = Field(default=DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    #: Inputs generated together by ``check_batch``.
    batch_size: StrictInt = Field(default=DEFAULT_BATCH_SIZE, ge=1)
    #: The guard's policy (a ``Policy`` or a dict of its fields); per-call ``policy=`` overrides it.
    policy: Policy = Field(default_factory=Policy)
    #: Verdict LRU entries (0 = off).
    cache_size: StrictInt = Field(default=DEFAULT_CACHE_SIZE, ge=0)
    #: Coalesce concurrent checks into batched generation (``None``: on for in-process backends).
    micro_batching: StrictBool | None = None
    #: Micro-batching: at most this many checks per batch, waiting at most ``max_wait_ms`` for companions.
    max_batch_size: StrictInt = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1)
    max_wait_ms: float = Field(default=DEFAULT_MAX_WAIT_MS, ge=0, lt=60_000, allow_inf_nan=False)
    #: Characters of earlier turns given as context when a chat is checked.
    context_chars: StrictInt = Field(default=DEFAULT_CONTEXT_CHARS, ge=0)
    #: An ``AuditLog``, or a path to open one at (JSONL, one line per verdict).
    audit_log: Any = None
    #: Callbacks given every decided verdict.
    on_verdict: tuple[Callable[..., Any], ...] = ()
    #: Fetch ``http(s)`` image URLs found in requests, within this policy (an allowlist, SSRF-safe; see
    #: :mod:`grvl_sdk.fetch`). ``None`` (default): image URLs are refused with ``InputError``.
    image_fetch: Any = None
    #: Latency tier (:mod:`grvl_sdk.tiers`): ``"think"`` (reasoning, then the verdict: the paper's
    #: protocol), ``"fast"`` (the verdict without reasoning, labels read from their probabilities) or
    #: ``"auto"`` (fast first, reasoning when the fast answer is uncertain or a rule says so).
    mode: Literal["think", "fast", "auto"] = "think"
    #: ``auto``: escalate to reasoning when a fast score lies in ``[low, high]``.
    auto_band: tuple[float, float] = (0.2, 0.8)
    #: ``auto``: always reason about inputs with images.
    auto_escalate_images: StrictBool = False
    #: ``auto``: ``callback(item, fast_verdict) -> bool``, true to reason about that input.
    auto_escalate: Callable[..., Any] | None = None
    #: ``auto``: when the deadline leaves less time than reasoning is expected to take (measured tokens/s),
    #: ``"fast"`` keeps the fast answer, ``"think"`` tries reasoning anyway (failing closed if too late).
    auto_short_deadline: Literal["fast", "think"] = "fast"
    #: ``fast``/``auto``: a fast verdict whose labels hold less probability than this fails (``auto``: escalates).
    fast_min_label_mass: float = Field(default=0.01, ge=0, le=1, allow_inf_nan=False)

    @field_validator("auto_band", mode="before")
    @classmethod
    def _band(cls, value: Any) -> Any:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError("must be a pair (low, high) of probabilities") from None
        if not 0.0 <= low <= high <= 1.0:  # NaN fails too
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got {tuple(value)!r}")
        return (low, high)

    @field_validator("auto_escalate", mode="before")
    @classmethod
    def _escalate(cls, value: Any) -> Any:
        if value is not None and not callable(value):
            raise ValueError(f"must be a callable (item, fast_verdict) -> bool, got {type(value).__name__}")
        return value

    @field_validator("image_fetch", mode="before")
    @classmethod
    def _fetch(cls, value: Any) -> Any:
        from grvl_sdk.fetch import FetchPolicy

        if value is None or isinstance(value, FetchPolicy):
            return value
        if isinstance(value, dict):
            return FetchPolicy(**value)
        raise ValueError(f"must be a FetchPolicy (or a dict of its fields), got {type(value).__name__}")

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Policy:
        return Policy().merged(value)

    @field_validator("max_wait_ms", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number of milliseconds, got {type(value).__name__}")
        return value

    @field_validator("audit_log", mode="before")
    @classmethod
    def _audit_log(cls, value: Any) -> Any:
        from grvl_sdk.audit import AuditLog

        if value is None or isinstance(value, (AuditLog, str, os.PathLike)):
            return value
        raise ValueError(f"must be an AuditLog or a path, got {type(value).__name__}")

    @field_validator("on_verdict", mode="before")
    @classmethod
    def _hooks(cls, value: Any) -> tuple[Callable[..., Any], ...]:
        if value is None:
            return ()
        hooks = (value,) if callable(value) else tuple(value) if isinstance(value, Sequence) else None
        if hooks is None or not all(callable(h) for h in hooks):
            raise ValueError("must be a callable or a list of callables")
        return hooks

    def merged(self, changes: dict[str, Any]) -> GuardOptions:
        """These options with ``changes`` applied (a ``policy`` dict updates the current policy)."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise InputError(f"unknown guard options {sorted(unknown)}; known: {sorted(type(self).model_fields)}")
        data = {name: getattr(self, name) for name in type(self).model_fields}
        if isinstance(changes.get("policy"), dict):
            changes = {**changes, "policy": self.policy.merged(changes["policy"])}
        return GuardOptions(**{**data, **changes})


class GuardOptionsKwargs(TypedDict, total=False):
    """The fields of :class:`GuardOptions` as keyword arguments, for type checkers (kept equal to the
    model by a test)."""

    max_new_tokens: int
    max_image_pixels: int
    batch_size: int
    policy: PolicyLike
    cache_size: int
    micro_batching: bool | None
    max_batch_size: int
    max_wait_ms: float
    context_chars: int
    audit_log: Any
    on_verdict: Callable[..., Any] | Sequence[Callable[..., Any]] | None
    image_fetch: Any
    mode: Literal["think", "fast", "auto"]
    auto_band: tuple[float, float]
    auto_escalate_images: bool
    auto_escalate: Callable[..., Any] | None
    auto_short_deadline: Literal["fast", "think"]
    fast_min_label_mass: float
