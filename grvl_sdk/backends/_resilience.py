"""Retries with exponential back-off and jitter, and a circuit breaker, for the remote backend."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from grvl_sdk.errors import CircuitOpenError, InputError

__all__ = ["CircuitBreaker", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; the n-th waits a random time in
    ``[0, min(backoff_max, backoff_base * 2**n)]`` ("full jitter"), or the server's ``Retry-After``
    when it is longer (capped at ``backoff_max``)."""

    max_retries: int = 2
    backoff_base: float = 0.2
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise InputError("max_retries, backoff_base and backoff_max must be >= 0")

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2**retry))
        wait = (rng or random).uniform(0, cap)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failed calls; while open, calls fail at once with
    :class:`CircuitOpenError`. After ``reset_after`` seconds one trial call is let through (half-open):
    its success closes the circuit, its failure opens it again. ``threshold=0`` disables it."""

    def __init__(self, threshold: int = 5, reset_after: float = 30.0) -> None:
        if threshold < 0 or reset_after < 0:
            raise InputError("breaker threshold and reset time must be >= 0")
        self.threshold = threshold
        self.reset_after = reset_after
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if time.monotonic() - self._opened_at >= self.reset_after else "open"

    def before_call(self) -> None:
        """Raise :class:`CircuitOpenError` if the call must not go out."""
        if self.threshold == 0:
            return
        with self._lock:
            if self._opened_at is None:
                return
            waited = time.monotonic() - self._opened_at
            if waited >= self.reset_after and not self._trial_running:
                self._trial_running = True
                return
            raise CircuitOpenError(
                f"the guard server failed {self._failures} calls in a row; not calling it for "
                f"{max(0.0, self.reset_after - waited):.1f} s more",
                failures=self._failures,
            )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def record_neutral(self) -> None:
        """A call ended without telling whether the server is healthy (e.g. the caller's deadline)."""
        with self._lock:
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self.threshold and (self._opened_at is not None or self._failures >= self.threshold):
                self._opened_at = time.monotonic()
