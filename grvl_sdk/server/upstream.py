"""The upstream: the OpenAI-compatible model server behind the proxy.

One pooled ``httpx.AsyncClient`` (no proxy from the environment, no redirects followed, no cookies
kept). Only the configured headers of the caller are forwarded (``Authorization`` by default: never
logged nor stored). Failures become OpenAI-style errors: a timeout is 504 ``upstream_timeout``, no
connection 502 ``upstream_unavailable``, an upstream 5xx 502 ``upstream_error``, an upstream 4xx the same
status with the upstream's message, a 200 that is not JSON 502 ``upstream_invalid_response``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import httpx

from grvl_sdk.server import jsonio
from grvl_sdk.server.errors import ApiError

__all__ = ["Upstream", "forwarded_headers"]

#: Upstream response headers passed back to the caller.
_PASSED_BACK = ("retry-after", "x-request-id")


def forwarded_headers(headers: Mapping[str, str], allowed: Collection[str]) -> dict[str, str]:
    """The caller's headers that go upstream (only those named in ``allowed``)."""
    return {name: headers[name] for name in allowed if name in headers}


def passed_back(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream headers worth returning: ``Retry-After``, rate-limit headers, the upstream request id."""
    out = {k: v for k, v in headers.items() if k.lower() in _PASSED_BACK or k.lower().startswith("x-ratelimit-")}
    if "x-request-id" in out:
        out["x-upstream-request-id"] = out.pop("x-request-id")
    return out


def _upstream_error(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """An upstream's error answer as ours: 4xx keep their status and message; 5xx become 502."""
    message, code, param, kind = f"the upstream answered HTTP {status}", None, None, None
    try:
        data = jsonio.loads(body)
    except (ValueError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)[:2000]
        code = error.get("code") if isinstance(error.get("code"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
        kind = error.get("type") if isinstance(error.get("type"), str) else None
    elif isinstance(error, str):
        message = error[:2000]
    if status >= 500 or status < 400:
        return ApiError(502, f"upstream error (HTTP {status}): {message}", code="upstream_error",
                        headers=passed_back(headers))  # fmt: skip
    return ApiError(status, message, code=code, param=param, type=kind, headers=passed_back(headers))


class Upstream:
    """Calls to the upstream; ``on_error(kind)`` counts failures (``timeout``, ``connect``, ``status``,
    ``invalid``) for the metrics."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        on_error: Callable[[str], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._on_error = on_error
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
            follow_redirects=False,
            transport=transport,
        )

    def _failed(self, kind: str, error: ApiError) -> ApiError:
        if self._on_error is not None:
            self._on_error(kind)
        return error

    def _transport_error(self, exc: httpx.HTTPError) -> ApiError:
        if isinstance(exc, httpx.TimeoutException):
            return self._failed(
                "timeout", ApiError(504, "the upstream did not answer in time", code="upstream_timeout")
            )
        return self._failed("connect", ApiError(502, f"cannot reach the upstream: {type(exc).__name__}",
                                                code="upstream_unavailable"))  # fmt: skip

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    async def post_json(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[Any, dict[str, str]]:
        """POST ``body`` and return the decoded JSON answer and the headers to pass back."""
        try:
            response = await self.client.post(self._url(path), json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return self._json(response), passed_back(response.headers)

    async def get_json(self, path: str, headers: dict[str, str]) -> tuple[Any, dict[str, str]]:
        """GET ``path`` and return the decoded JSON answer and the headers to pass back."""
        try:
            response = await self.client.get(self._url(path), headers=headers)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return self._json(response), passed_back(response.headers)

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise self._failed("status", _upstream_error(response.status_code, response.content, response.headers))
        try:
            return jsonio.loads(response.content)
        except (ValueError, RecursionError) as exc:
            raise self._failed("invalid", ApiError(502, f"the upstream's answer is not valid JSON: {exc}"[:300],
                                                   code="upstream_invalid_response")) from None  # fmt: skip

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """POST ``body`` for a stream; returns the open response once its status is 200 (else raises)."""
        request = self.client.build_request("POST", self._url(path), json=body, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code != 200:
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            raise self._failed("status", _upstream_error(response.status_code, content, response.headers))
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            await response.aclose()
            raise self._failed("invalid", ApiError(502, f"the upstream answered {kind or 'no content type'} to a "
                                                   "stream request", code="upstream_invalid_response"))  # fmt: skip
        return response

    async def lines(self, response: httpx.Response) -> AsyncIterator[str]:
        """The lines of an open stream; transport failures become :class:`ApiError`."""
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    async def aclose(self) -> None:
        await self.client.aclose()


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()``)."""
    return (time.perf_counter() - started) * 1000
