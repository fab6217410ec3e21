"""Limits: body size, JSON parsing, API keys, and admission (concurrency with a bounded queue, else 429).

Admission is an ASGI middleware, so a streamed response holds its slot until its last byte is sent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable, Collection
from typing import Any

import anyio

from grvl_sdk.server import jsonio
from grvl_sdk.server.errors import ApiError

__all__ = ["Admission", "check_key", "parse_json", "read_body"]

#: Bodies larger than this are parsed on a worker thread, off the event loop.
_THREAD_PARSE_BYTES = 512 * 1024


async def read_body(request: Any, limit: int, timeout: float = 30.0) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or actual), and with 408 when it
    has not arrived within ``timeout`` seconds (a client trickling its body must not hold a slot)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length", code="invalid_request")
        if int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout} s", code="request_timeout") from None
    return b"".join(chunks)


def _loads(body: bytes) -> Any:
    try:
        return jsonio.loads(body)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply", code="invalid_json") from None
    except jsonio.InvalidJson as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None


async def parse_json(request: Any, limit: int, timeout: float = 30.0) -> dict[str, Any]:
    """The request body as a JSON object (400 when it is not one; 413 past ``limit`` bytes; 408 past
    ``timeout`` seconds)."""
    body = await read_body(request, limit, timeout)
    if not body:
        raise ApiError(400, "a JSON body is required", code="invalid_json")
    data = await anyio.to_thread.run_sync(_loads, body) if len(body) > _THREAD_PARSE_BYTES else _loads(body)
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object", code="invalid_json")
    return data


def check_key(presented: str | None, keys: Collection[str]) -> bool:
    """Whether ``presented`` is one of ``keys`` (compared in constant time); true when no keys are set."""
    if not keys:
        return True
    if not presented:
        return False
    given = presented.encode("utf-8", "replace")
    return any(hmac.compare_digest(given, key.encode("utf-8")) for key in keys)


class Admission:
    """ASGI middleware bounding the guarded requests (``paths``) handled at once to ``limit``; up to
    ``queue`` more wait at most ``timeout`` seconds for a slot; the others are answered 429 with
    ``Retry-After``. ``on_change(in_flight, waiting)`` and ``on_reject()`` feed the metrics."""

    def __init__(
        self,
        app: Any,
        *,
        paths: Collection[str],
        limit: int,
        queue: int,
        timeout: float,
        retry_after: int,
        on_change: Callable[[int, int], None] | None = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.limit, self.queue, self.timeout, self.retry_after = limit, queue, timeout, retry_after
        self.in_flight = 0
        self.waiting = 0
        self._on_change = on_change
        self._on_reject = on_reject
        self._free: asyncio.Condition | None = None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.in_flight, self.waiting)

    async def _acquire(self) -> bool:
        if self.in_flight < self.limit and self.waiting == 0:
            self.in_flight += 1
            self._changed()
            return True
        if self.waiting >= self.queue or self.timeout <= 0:
            return False
        if self._free is None:
            self._free = asyncio.Condition()
        self.waiting += 1
        self._changed()
        try:
            async with self._free:
                await asyncio.wait_for(self._free.wait_for(lambda: self.in_flight < self.limit), self.timeout)
                self.in_flight += 1
                return True
        except asyncio.TimeoutError:
            return False
        finally:
            self.waiting -= 1
            self._changed()

    async def _release(self) -> None:
        self.in_flight -= 1
        self._changed()
        if self._free is not None and self.waiting:
            async with self._free:
                self._free.notify_all()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if not await self._acquire():
            if self._on_reject is not None:
                self._on_reject()
            error = ApiError(429, "the guard server is busy; retry later", code="server_busy",
                             headers={"retry-after": str(self.retry_after)})  # fmt: skip
            body = json.dumps(error.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"retry-after", str(self.retry_after).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            await _shielded(self._release)


async def _shielded(fn: Callable[[], Any]) -> None:
    """Run ``await fn()`` even inside a cancelled scope (a slot must always be given back)."""
    with anyio.CancelScope(shield=True):
        await fn()
