"""Prometheus metrics of one server (its own registry: several apps in one process do not collide).

=====================================  =========  ===========================================================
``grvl_requests_total``                counter    requests by ``endpoint`` and ``status``
``grvl_request_seconds``               histogram  request handling time by ``endpoint`` (streams: to the end)
``grvl_requests_in_flight``            gauge      guarded requests being handled
``grvl_queue_depth``                   gauge      guarded requests waiting for a slot
``grvl_rejected_total``                counter    requests refused before handling, by ``reason``
``grvl_checks_total``                  counter    guard verdicts by ``endpoint``, ``stage`` and ``decision``
``grvl_check_seconds``                 histogram  guard check time (queueing included) by ``stage``
``grvl_guard_checks_in_flight``        gauge      request/response checks awaited now
``grvl_upstream_seconds``              histogram  upstream time of non-streamed calls
``grvl_upstream_errors_total``         counter    upstream failures by ``kind`` (timeout, connect, status, invalid)
``grvl_cache_hits_total`` / ``_misses``  counter  the guard's verdict cache
``grvl_cache_hit_ratio``               gauge      hits / (hits + misses) since start
``grvl_ready``                         gauge      1 once the guard is loaded and the server not draining
=====================================  =========  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from grvl_sdk.verdict import Verdict

__all__ = ["Metrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The server's metrics; ``cache()`` returns the guard cache's ``(hits, misses)`` at scrape time and
    ``ready()`` the readiness."""

    def __init__(self, cache: Callable[[], tuple[int, int]], ready: Callable[[], bool]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("grvl_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("grvl_request_seconds", "Request handling time", ["endpoint"],
                                         buckets=_LATENCY, registry=r)  # fmt: skip
        self.in_flight = Gauge("grvl_requests_in_flight", "Guarded requests being handled", registry=r)
        self.queue_depth = Gauge("grvl_queue_depth", "Guarded requests waiting for a slot", registry=r)
        self.rejected = Counter("grvl_rejected", "Requests refused before handling", ["reason"], registry=r)
        self.checks = Counter("grvl_checks", "Guard verdicts", ["endpoint", "stage", "decision"], registry=r)
        self.check_seconds = Histogram("grvl_check_seconds", "Guard check time", ["stage"], buckets=_LATENCY,
                                       registry=r)  # fmt: skip
        self.checks_in_flight = Gauge("grvl_guard_checks_in_flight", "Guard checks awaited now", registry=r)
        self.upstream_seconds = Histogram("grvl_upstream_seconds", "Upstream time of non-streamed calls",
                                          buckets=_LATENCY, registry=r)  # fmt: skip
        self.upstream_errors = Counter("grvl_upstream_errors", "Upstream failures", ["kind"], registry=r)
        r.register(_Live(cache, ready))

    def verdicts(self, endpoint: str, verdicts: Iterable[Verdict]) -> None:
        """Count ``verdicts`` (each once) and their check times."""
        for verdict in verdicts:
            stage = verdict.stage or "request"
            self.checks.labels(endpoint, stage, verdict.decision or "none").inc()
            self.check_seconds.labels(stage).observe(verdict.usage.total_ms / 1000)

    def admission(self, in_flight: int, waiting: int) -> None:
        self.in_flight.set(in_flight)
        self.queue_depth.set(waiting)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Live:
    """Values read at scrape time: the cache counters and readiness."""

    def __init__(self, cache: Callable[[], tuple[int, int]], ready: Callable[[], bool]) -> None:
        self._cache = cache
        self._ready = ready

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        hits, misses = self._cache()
        yield CounterMetricFamily("grvl_cache_hits", "Verdict cache hits", value=hits)
        yield CounterMetricFamily("grvl_cache_misses", "Verdict cache misses", value=misses)
        total = hits + misses
        yield GaugeMetricFamily("grvl_cache_hit_ratio", "Verdict cache hit ratio", value=hits / total if total else 0.0)
        yield GaugeMetricFamily("grvl_ready", "1 when ready to serve", value=1.0 if self._ready() else 0.0)
