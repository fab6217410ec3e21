"""OpenAI-style errors: every error the server answers is ``{"error": {"message", "type", "param", "code"}}``.

:class:`ApiError` is raised by the handlers; :func:`install_error_handlers` maps it, the SDK's
:class:`~grvl_sdk.errors.GRVLError`\\s, FastAPI's validation errors and Starlette's 404/405 to that
shape; :class:`ErrorShield` turns anything else into a bare 500 (the traceback goes to the server log,
never into a response).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from grvl_sdk.errors import GRVLError, GuardClosedError, InputError

__all__ = ["ApiError", "ErrorShield", "error_body", "from_grvl_error", "install_error_handlers"]

logger = logging.getLogger("grvl_sdk.server")

#: OpenAI error ``type`` per HTTP status (what the ``openai`` client and its users expect).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error answered to the client in OpenAI's shape, with its HTTP status and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {...}}``."""
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_grvl_error(exc: GRVLError, *, param: str | None = None) -> ApiError:
    """The client-facing error for an SDK error: bad input is a 400 naming the problem; a closed guard a
    503; anything else a 500 without details (logged here)."""
    if isinstance(exc, InputError):
        field = exc.details.get("field")
        return ApiError(400, exc.message, code=exc.code, param=param or (field if isinstance(field, str) else None))
    if isinstance(exc, GuardClosedError):
        return ApiError(503, "the guard is shutting down", code="guard_closed")
    logger.error("guard error: %s: %s", type(exc).__name__, exc.message)
    return ApiError(500, "the guard failed", code=exc.code)


def install_error_handlers(app: Any) -> None:
    """Answer :class:`ApiError`, SDK errors, validation errors and unknown routes in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def respond(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def api_error(_request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return respond(exc)

    async def grvl_error(_request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GRVLError)
        return respond(from_grvl_error(exc))

    async def validation_error(_request: Any, exc: Exception) -> JSONResponse:
        errors: list[dict[str, Any]] = list(getattr(exc, "errors", list)())
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return respond(ApiError(400, f"invalid request: {first.get('msg', 'bad value')}", param=where,
                                code="invalid_request"))  # fmt: skip

    async def http_error(_request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers or {})
        return respond(ApiError(status, message, code=code, headers=headers))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(GRVLError, grvl_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


_INTERNAL = json.dumps(error_body("internal server error", type="server_error", code="internal_error")).encode()


class ErrorShield:
    """ASGI middleware: an exception no handler took becomes a plain 500 in OpenAI's shape (logged with its
    traceback here); after the response started, the connection is just ended."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                return
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_INTERNAL)).encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": _INTERNAL})
