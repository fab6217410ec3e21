"""Proxied streams, moderated as they flow.

The upstream's server-sent events are read as JSON values and moderated by
:meth:`grvl_sdk.calls.GuardedCall.astream` with the policy's ``stream_mode``: ``buffer`` (default:
chunks are held until a check has passed them) or ``passthrough`` (chunks forwarded at once, the stream
cut when a check blocks), checked on the shared :mod:`grvl_sdk.middleware.schedule` and always at the end. A
Responses stream's final ``response.completed`` object is checked once more as a whole. A blocked stream
ends with a refusal chunk / ``response.incomplete`` event, or an error event (``block_style="error"``);
an upstream failure or an event the guard cannot read ends it with an error event (the status was sent
already). A client that leaves closes the upstream stream, and what it received gets its final check.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from starlette.responses import StreamingResponse

from grvl_sdk.calls import GuardedCall
from grvl_sdk.errors import GRVLError, InputError
from grvl_sdk.server import jsonio
from grvl_sdk.server.apis import Api, StreamState
from grvl_sdk.server.errors import ApiError, from_grvl_error
from grvl_sdk.server.images import audit_answer
from grvl_sdk.server.outcome import headers_for
from grvl_sdk.server.runtime import Runtime
from grvl_sdk.server.sse import EventTooLarge, read_events
from grvl_sdk.server.upstream import Upstream

__all__ = ["open_stream"]

logger = logging.getLogger("grvl_sdk.server")


async def open_stream(
    runtime: Runtime,
    api: Api,
    upstream: Upstream,
    call: GuardedCall,
    body: dict[str, Any],
    headers: dict[str, str],
    model: str,
) -> Any:
    response = await upstream.open_stream(api.path, body, headers)
    state = StreamState()
    out_headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **headers_for(call.verdicts)}
    events = _moderated(runtime, api, upstream, call, response, state, model)
    cut = api.error_events(f"the stream took over {runtime.config.stream_timeout} s", "stream_timeout", state)
    return _ClosingStream(events, media_type="text/event-stream", headers=out_headers,
                          limit=runtime.config.stream_timeout, cut=cut)  # fmt: skip


async def _source(api: Api, upstream: Upstream, response: httpx.Response, state: StreamState) -> AsyncIterator[Any]:
    """The upstream's events as JSON values (``[DONE]`` ends it; an upstream error event raises)."""

    try:
        async for event in read_events(upstream.lines(response)):
            if event.data.strip() == "[DONE]":
                return
            try:
                data = jsonio.loads(event.data)
            except (ValueError, RecursionError):
                raise ApiError(502, "the upstream's stream holds an event that is not valid JSON",
                               code="upstream_invalid_response") from None  # fmt: skip
            if isinstance(data, dict) and isinstance(data.get("error"), (dict, str)):
                error = data["error"]
                message = error.get("message") if isinstance(error, dict) else error
                raise ApiError(502, f"the upstream's stream failed: {str(message)[:500]}", code="upstream_error")
            state.last = api.judged_view(data, state)
            yield state.last
    except EventTooLarge as exc:
        raise ApiError(502, str(exc), code="upstream_invalid_response") from None


async def _moderated(
    runtime: Runtime,
    api: Api,
    upstream: Upstream,
    call: GuardedCall,
    response: httpx.Response,
    state: StreamState,
    model: str,
) -> AsyncIterator[bytes]:
    """The SSE bytes of a moderated stream (see the module docstring)."""
    style = runtime.config.block_style
    before = len(call.verdicts)
    moderated = call.astream(_source(api, upstream, response, state), get_chunk_text=api.chunk_reader())
    try:
        async for event in moderated:
            blocked = call.blocked
            if blocked is None and (final := api.final_answer(event)) is not None:
                audit_answer(final)
                await runtime.checked(call.acheck_response(final))  # a whole answer: judged as a whole
                blocked = call.blocked
            if blocked is not None:
                yield api.blocked_events(blocked, runtime.policy, model, state, style)
                return
            yield api.event_bytes(event)
        yield api.end()
    except ApiError as exc:
        yield api.error_events(exc.message, exc.code or "upstream_error", state)
    except InputError as exc:
        logger.warning("an upstream stream could not be judged: %s", exc.message)
        yield api.error_events(f"the upstream's stream cannot be judged: {exc.message}", "upstream_unjudgeable",
                               state)  # fmt: skip
    except GRVLError as exc:
        error = from_grvl_error(exc)
        yield api.error_events(error.message, error.code or "guard_error", state)
    finally:
        with anyio.CancelScope(shield=True):
            await moderated.aclose()
            await response.aclose()
        runtime.metrics.verdicts(api.name, call.verdicts[before:])
        if state.dropped:
            logger.debug("dropped %d unjudged fields from a stream (call %s)", state.dropped, call.call_id)


class _ClosingStream(StreamingResponse):
    """A streaming response that always closes its body iterator (also when the client went away), so the
    upstream stream is closed and what was delivered gets its final check; it lasts ``limit`` seconds at
    most (then ``cut`` is sent, if the client takes it within a second, and the response ends)."""

    def __init__(self, content: Any, *, limit: float, cut: bytes, **options: Any) -> None:
        super().__init__(content, **options)
        self.limit = limit
        self.cut = cut

    async def stream_response(self, send: Any) -> None:
        try:
            with anyio.move_on_after(self.limit) as scope:
                await super().stream_response(send)
            if scope.cancelled_caught:
                logger.warning("a proxied stream was cut after %s s", self.limit)
                with anyio.move_on_after(1.0):
                    await send({"type": "http.response.body", "body": self.cut, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
