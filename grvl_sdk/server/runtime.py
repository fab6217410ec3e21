"""``Runtime``: what the handlers of one app share — the guard, the settings, the upstream client, the
image fetcher, the metrics — and the readiness (guard loaded, not draining)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grvl_sdk.fetch import ImageFetcher
from grvl_sdk.guard import Guard
from grvl_sdk.server.config import ServerConfig
from grvl_sdk.server.errors import ApiError
from grvl_sdk.server.images import ImageInliner, make_fetcher
from grvl_sdk.server.limits import check_key
from grvl_sdk.server.metrics import Metrics
from grvl_sdk.server.upstream import Upstream

__all__ = ["GuardSource", "Runtime"]

logger = logging.getLogger("grvl_sdk.server")

T = TypeVar("T")

#: A loaded guard, or a function loading one (called on a thread at start-up; ``/ready`` waits for it).
GuardSource = Guard | Callable[[], Guard]


class Runtime:
    """The state of one server app (see the module docstring)."""

    def __init__(
        self,
        source: GuardSource,
        config: ServerConfig,
        *,
        fetcher: ImageFetcher | None = None,
        upstream_transport: Any = None,
    ) -> None:
        self.config = config
        self.policy = config.guard_policy()
        self._loader: Callable[[], Guard] | None = None if isinstance(source, Guard) else source
        self._base: Guard | None = source if isinstance(source, Guard) else None
        self.guard: Guard | None = None if self._base is None else self._derive(self._base)
        self.load_error: str | None = None
        self.draining = False
        self.metrics = Metrics(cache=self._cache_counts, ready=lambda: self.ready)
        self.images = ImageInliner(
            fetcher
            if fetcher is not None
            else make_fetcher(config.image_allow, allow_http=config.image_allow_http, max_bytes=config.image_max_bytes,
                              timeout=config.image_fetch_timeout, max_redirects=config.image_max_redirects)
        )  # fmt: skip
        self.upstream: Upstream | None = None
        if config.upstream is not None:
            self.upstream = Upstream(
                config.upstream,
                timeout=config.upstream_timeout,
                connect_timeout=config.upstream_connect_timeout,
                max_connections=config.upstream_max_connections,
                on_error=lambda kind: self.metrics.upstream_errors.labels(kind).inc(),
                transport=upstream_transport,
            )
        self._thread: threading.Thread | None = None

    def _derive(self, base: Guard) -> Guard:
        """The guard the handlers use: the server's pixel limit, and no fetching of its own (the server
        fetches image URLs itself, under its allowlist, before the guard sees them)."""
        return base.with_options(max_image_pixels=self.config.max_image_pixels, image_fetch=None)

    def _cache_counts(self) -> tuple[int, int]:
        guard = self.guard
        return (guard.cache.hits, guard.cache.misses) if guard is not None else (0, 0)

    @property
    def ready(self) -> bool:
        """The guard is loaded and open, and the server is not shutting down."""
        return self.guard is not None and not self.guard.closed and not self.draining

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start loading the guard on a thread, when it was given as a loader."""
        if self._loader is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._load, name="grvl-server-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        assert self._loader is not None
        try:
            base = self._loader()
            self._base = base
            self.guard = self._derive(base)
            logger.info("guard loaded: %s", base.model_id)
        except Exception as exc:  # reported by /ready, and logged
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("the guard could not be loaded")

    async def close(self) -> None:
        """Close the upstream client and the fetcher; close the guard when this server loaded it."""
        self.draining = True
        if self.upstream is not None:
            await self.upstream.aclose()
        await self.images.aclose()
        if self.guard is not None:
            await self.guard.aclose()
        if self._loader is not None and self._base is not None:
            await self._base.aclose()
        logger.info("guard server stopped")

    # -- checks for handlers ----------------------------------------------------------------------
    async def checked(self, check: Awaitable[T]) -> T:
        """Await a guard check, counted in ``grvl_guard_checks_in_flight``."""
        gauge = self.metrics.checks_in_flight
        gauge.inc()
        try:
            return await check
        finally:
            gauge.dec()

    def require_guard(self) -> Guard:
        """The guard, or 503 while it loads (or after it failed to load, or while shutting down)."""
        guard = self.guard
        if guard is None or guard.closed:
            message = "the guard failed to load" if self.load_error else "the guard is not loaded yet"
            raise ApiError(503, message, code="not_ready", headers={"retry-after": "5"})
        return guard

    def require_upstream(self) -> Upstream:
        if self.upstream is None:
            raise ApiError(503, "this server has no upstream configured (grvl serve --upstream URL)",
                           code="no_upstream")  # fmt: skip
        return self.upstream

    def require_key(self, headers: Any, *, proxy: bool) -> None:
        """401 unless the request carries one of the configured keys (proxy endpoints: only with
        ``protect_proxy``, in ``x-grvl-api-key``)."""
        keys = self.config.api_keys
        if not keys or (proxy and not self.config.protect_proxy):
            return
        if proxy:
            presented = headers.get("x-grvl-api-key")
        else:
            auth = headers.get("authorization", "")
            presented = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key")
        if not check_key(presented, keys):
            self.metrics.rejected.labels("auth").inc()
            where = "x-grvl-api-key" if proxy else "Authorization: Bearer KEY (or x-api-key)"
            raise ApiError(401, f"a valid API key for this guard server is needed in {where}",
                           code="invalid_api_key")  # fmt: skip
