"""``create_app``: the FastAPI application of ``grvl serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from grvl_sdk.fetch import ImageFetcher
from grvl_sdk.server import litellm, moderations, ops, proxy
from grvl_sdk.server.access import AccessLog
from grvl_sdk.server.config import ServerConfig
from grvl_sdk.server.errors import ErrorShield, install_error_handlers
from grvl_sdk.server.limits import Admission
from grvl_sdk.server.runtime import GuardSource, Runtime
from grvl_sdk.server.schemas import REQUEST_BODIES, RESPONSES

__all__ = ["GUARDED_PATHS", "create_app"]

#: The endpoints that do guard work: bounded by the admission limit.
GUARDED_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/moderations", litellm.PATH)
_KNOWN_PATHS = frozenset({*GUARDED_PATHS, "/v1/models", "/health", "/ready", "/metrics"})


def create_app(
    guard: GuardSource,
    *,
    upstream: str | None = None,
    config: ServerConfig | None = None,
    image_fetcher: ImageFetcher | None = None,
    upstream_transport: Any = None,
) -> FastAPI:
    """The guard server as an ASGI app (run it with uvicorn, or :func:`grvl_sdk.server.serve`).

    ``guard``: a :class:`~grvl_sdk.guard.Guard` (left open at shutdown: it is the caller's), or a function
    loading one, called on a thread at start-up (``/ready`` answers 503 until it returns; the server
    closes that guard at shutdown). ``upstream``: the guarded model's API root (overrides
    ``config.upstream``). ``config``: a :class:`ServerConfig` (defaults otherwise). ``image_fetcher`` and
    ``upstream_transport`` replace the image fetcher and the upstream's httpx transport (tests).
    """
    from grvl_sdk import __version__

    config = config or ServerConfig()
    if upstream is not None:
        config = ServerConfig(**{**config.model_dump(), "upstream": upstream})
    runtime = Runtime(guard, config, fetcher=image_fetcher, upstream_transport=upstream_transport)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="grvl guard server",
        version=__version__,
        description="GuardReasoner-VL as a server: a guarded OpenAI-compatible proxy, /v1/moderations and "
        "LiteLLM's Generic Guardrail API.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.grvl = runtime
    install_error_handlers(app)
    proxy.register(app, REQUEST_BODIES)
    moderations.register(app, REQUEST_BODIES, RESPONSES["moderations"])
    litellm.register(app, REQUEST_BODIES, RESPONSES["litellm"])
    ops.register(app)

    metrics = runtime.metrics

    def done(path: str, status: int, seconds: float) -> None:
        endpoint = path if path in _KNOWN_PATHS else "other"
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.request_seconds.labels(endpoint).observe(seconds)

    # Added innermost first: AccessLog(ErrorShield(Admission(app))).
    app.add_middleware(
        Admission,  # type: ignore[arg-type]
        paths=GUARDED_PATHS,
        limit=config.max_concurrency,
        queue=config.max_queue,
        timeout=config.queue_timeout,
        retry_after=config.retry_after,
        on_change=metrics.admission,
        on_reject=lambda: metrics.rejected.labels("busy").inc(),
    )
    app.add_middleware(ErrorShield)  # type: ignore[arg-type]
    app.add_middleware(AccessLog, enabled=config.access_log, on_done=done)  # type: ignore[arg-type]
    return app
