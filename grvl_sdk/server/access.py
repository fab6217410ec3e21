"""Structured access logs (logger ``grvl_sdk.server.access``) and a JSON log formatter.

One record per request at INFO, after the response ended (streams included), with ``extra`` fields
``grvl_method``, ``grvl_path`` (no query string), ``grvl_status``, ``grvl_ms``, ``grvl_decision``,
``grvl_guard_ms``, ``grvl_call_id``, ``grvl_request_id``, ``grvl_client``. Never logged: headers
(``Authorization`` included), query strings, bodies. Every response carries ``x-request-id`` (the
caller's when it sent a safe one, else a new id).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["AccessLog", "JsonFormatter"]

access_logger = logging.getLogger("grvl_sdk.server.access")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class AccessLog:
    """ASGI middleware writing the access log and ``x-request-id``; ``on_done(path, status, seconds)``
    feeds the metrics."""

    def __init__(self, app: Any, *, enabled: bool = True, on_done: Callable[[str, int, float], None] | None = None):
        self.app = app
        self.enabled = enabled
        self.on_done = on_done

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        seen: dict[str, Any] = {"status": 500}

        async def logged_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = list(message.get("headers") or [])
                for name, value in headers:
                    if name in (b"x-grvl-decision", b"x-grvl-guard-ms", b"x-grvl-call-id"):
                        seen[name.decode()] = value.decode("latin-1")
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            if self.on_done is not None:
                self.on_done(path, int(seen["status"]), seconds)
            if self.enabled and access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                fields = {
                    "grvl_method": scope.get("method"),
                    "grvl_path": path[:200],
                    "grvl_status": seen["status"],
                    "grvl_ms": round(seconds * 1000, 1),
                    "grvl_decision": seen.get("x-grvl-decision"),
                    "grvl_guard_ms": seen.get("x-grvl-guard-ms"),
                    "grvl_call_id": seen.get("x-grvl-call-id"),
                    "grvl_request_id": request_id,
                    "grvl_client": client[0] if client else None,
                }
                access_logger.info("%s %s %s %.1f ms decision=%s", fields["grvl_method"], fields["grvl_path"],
                                   fields["grvl_status"], fields["grvl_ms"], fields["grvl_decision"] or "-",
                                   extra=fields)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the ``grvl_*`` extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k[5:]: v for k, v in record.__dict__.items() if k.startswith("grvl_")})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)
