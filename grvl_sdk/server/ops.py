"""Operations endpoints: ``GET /health`` (the process answers), ``GET /ready`` (the guard is loaded and
the server is not draining: route traffic here), ``GET /metrics`` (Prometheus; needs the API key when
one is configured)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from grvl_sdk.server.errors import ApiError
from grvl_sdk.server.runtime import Runtime

__all__ = ["register"]


def register(app: Any) -> None:
    """Add ``/health``, ``/ready`` and ``/metrics`` to ``app``."""

    @app.get("/health", tags=["operations"], summary="Liveness")
    async def health() -> Any:
        return JSONResponse({"status": "ok"})

    @app.get("/ready", tags=["operations"], summary="Readiness (guard loaded, not draining)",
             responses={503: {"description": "Loading, failed to load, or draining"}})  # fmt: skip
    async def ready(request: Request) -> Any:
        runtime: Runtime = request.app.state.grvl
        if runtime.ready:
            assert runtime.guard is not None
            return JSONResponse({"status": "ready", "model": runtime.guard.model_id})
        if runtime.draining:
            state = "shutting down"
        elif runtime.load_error:
            state = "the guard failed to load (see the server log)"
        else:
            state = "loading the guard"
        raise ApiError(503, f"not ready: {state}", code="not_ready", headers={"retry-after": "5"})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}, 401: {"description": "API key needed"}})  # fmt: skip
    async def metrics(request: Request) -> Any:
        runtime: Runtime = request.app.state.grvl
        runtime.require_key(request.headers, proxy=False)
        body, content_type = runtime.metrics.render()
        return Response(body, media_type=content_type)
