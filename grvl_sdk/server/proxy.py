"""The guarded proxy: ``POST /v1/chat/completions``, ``POST /v1/responses``, ``GET /v1/models``.

For each call (see :mod:`grvl_sdk.calls`): image URLs are fetched under the allowlist and inlined, the
request is checked as a whole (the latest user turn with earlier turns as context, every image, an
assistant prefill as the response; earlier turns beyond the context window in extra checks) — a blocked
request never reaches the upstream —, the request goes upstream with the caller's forwarded headers, and
the answer is checked with its request before it is returned: every choice, tool calls included, with the
fields the guard does not read removed. Streams are moderated as they flow (:mod:`grvl_sdk.server.streams`).
Headers ``x-grvl-decision``, ``x-grvl-guard-ms`` (for streams: of the request check), ``x-grvl-upstream-ms``,
``x-grvl-call-id`` and ``x-grvl-blocked-stage`` say what happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from grvl_sdk.calls import GuardedCall
from grvl_sdk.errors import GRVLError, InputError
from grvl_sdk.messages import Message, to_messages
from grvl_sdk.server.apis import CHAT, RESPONSES, Api, StreamState
from grvl_sdk.server.errors import ApiError, from_grvl_error
from grvl_sdk.server.history import history_chunks
from grvl_sdk.server.images import audit_answer, audit_messages
from grvl_sdk.server.limits import parse_json
from grvl_sdk.server.outcome import block_reason, headers_for
from grvl_sdk.server.runtime import Runtime
from grvl_sdk.server.streams import open_stream
from grvl_sdk.server.upstream import forwarded_headers

__all__ = ["register"]

#: Text-only chats shorter than this are prepared on the event loop (cheaper than a thread hop).
_INLINE_PREPARE_CHARS = 16_384

logger = logging.getLogger("grvl_sdk.server")


def register(app: Any, schemas: dict[str, Any]) -> None:
    """Add the proxy routes to ``app`` (``schemas``: request body schemas for the OpenAPI document)."""

    @app.post("/v1/chat/completions", tags=["proxy"], openapi_extra=schemas["chat"],
              responses=_RESPONSES, summary="Guarded chat completion (streaming or not)")  # fmt: skip
    async def chat_completions(request: Request) -> Any:
        return await _guarded(request, CHAT)

    @app.post("/v1/responses", tags=["proxy"], openapi_extra=schemas["responses"], responses=_RESPONSES,
              summary="Guarded Responses API call (streaming or not)")  # fmt: skip
    async def responses(request: Request) -> Any:
        return await _guarded(request, RESPONSES)

    @app.get("/v1/models", tags=["proxy"], summary="The upstream's models")
    async def models(request: Request) -> Any:
        runtime: Runtime = request.app.state.grvl
        runtime.require_key(request.headers, proxy=True)
        upstream = runtime.require_upstream()
        answer, back = await upstream.get_json(
            "models", forwarded_headers(request.headers, runtime.config.forward_headers)
        )
        return JSONResponse(answer, headers=back)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The upstream's answer (checked), a refusal, or an SSE stream",
          "content": {"application/json": {}, "text/event-stream": {}}},
    400: {"description": "Invalid request, or blocked (block_style=error)"},
    401: {"description": "Missing or wrong x-grvl-api-key (protect_proxy)"},
    413: {"description": "Body too large"},
    429: {"description": "Server busy"},
    502: {"description": "Upstream failed"},
    503: {"description": "Not ready"},
    504: {"description": "Timed out"},
}  # fmt: skip


async def _guarded(request: Any, api: Api) -> Any:
    """One proxied call (see the module docstring)."""
    runtime: Runtime = request.app.state.grvl
    config = runtime.config
    runtime.require_key(request.headers, proxy=True)
    upstream = runtime.require_upstream()
    guard = runtime.require_guard()
    body = await parse_json(request, config.max_body_bytes, config.body_timeout)
    api.validate(body, config)
    given_model = body.get("model")
    model = given_model if isinstance(given_model, str) else ""
    try:
        with anyio.fail_after(config.request_timeout):
            await runtime.images.inline(api.image_root(body), max_images=config.max_images)
            item, normalized = await _request_input(runtime, guard, api.messages(body))
            call = GuardedCall(guard, item, policy=runtime.policy, model=model)
            await check_request(runtime, guard, call, normalized)
            runtime.metrics.verdicts(api.name, call.verdicts)
            blocked = call.blocked
            if blocked is not None:
                return _blocked(runtime, api, call, blocked, model, stream=body.get("stream") is True)
            headers = forwarded_headers(request.headers, config.forward_headers)
            if body.get("stream") is True:
                return await open_stream(runtime, api, upstream, call, body, headers, model)
            started = time.perf_counter()
            answer, back = await upstream.post_json(api.path, body, headers)
            upstream_ms = (time.perf_counter() - started) * 1000
            runtime.metrics.upstream_seconds.observe(upstream_ms / 1000)
            return await _judge_answer(runtime, api, call, answer, back, upstream_ms, model)
    except TimeoutError:
        raise ApiError(504, f"the request took over {config.request_timeout} s", code="request_timeout") from None
    except GRVLError as exc:
        raise from_grvl_error(exc) from None


async def _request_input(runtime: Runtime, guard: Any, messages: list[Any]) -> tuple[Any, list[Message]]:
    """The chat as the guard's input (latest user turn, earlier turns as context, a trailing assistant
    prefill as the response it judges), after the image and size audits; and the normalised messages.
    Decoding images runs on a thread."""
    config = runtime.config
    normalized = to_messages(messages)
    audit_messages(normalized, max_images=config.max_images, max_text_chars=config.max_text_chars)
    if any(m.images for m in normalized) or sum(len(m.text) for m in normalized) > _INLINE_PREPARE_CHARS:
        return await anyio.to_thread.run_sync(guard.prepare_conversation, messages), normalized
    return guard.prepare_conversation(messages), normalized


async def check_request(runtime: Runtime, guard: Any, call: GuardedCall, normalized: list[Message]) -> None:
    """The request check, and the checks of earlier turns the context window leaves out (see
    :mod:`grvl_sdk.server.history`), run together; all verdicts land in ``call.verdicts``."""
    chunks = history_chunks(normalized, guard.context_chars, runtime.config.max_images) if (
        runtime.config.history_checks and call.checks_request) else []  # fmt: skip
    if not chunks:
        await runtime.checked(call.acheck_request())
        return
    policy = runtime.policy.merged({"check": "request"})
    extra = [guard.acheck(text, images=images or None, policy=policy) for text, images in chunks]
    _, *history = await runtime.checked(asyncio.gather(call.acheck_request(), *extra))
    call.verdicts.extend(v.model_copy(update={"stage": "request", "call_id": call.call_id}) for v in history)


def _blocked(runtime: Runtime, api: Api, call: GuardedCall, verdict: Any, model: str, *, stream: bool) -> Any:
    headers = headers_for(call.verdicts)
    if runtime.config.block_style == "error":
        param = "messages" if api is CHAT else "input"
        error = ApiError(400, block_reason(verdict), code="content_filter",
                         param=param if verdict.stage == "request" else None, headers=headers)  # fmt: skip
        return JSONResponse(error.body(), status_code=400, headers=headers)
    if stream:
        events = api.blocked_events(verdict, runtime.policy, model, StreamState(), "refusal")
        return Response(events, media_type="text/event-stream", headers=headers)
    return JSONResponse(api.blocked_answer(verdict, runtime.policy, model), headers=headers)


async def _judge_answer(
    runtime: Runtime, api: Api, call: GuardedCall, answer: Any, back: dict[str, str], upstream_ms: float, model: str
) -> Any:
    state = StreamState()
    answer = api.judged_view(answer, state)
    before = len(call.verdicts)
    try:
        audit_answer(answer)
        checked = await runtime.checked(call.acheck_response(answer))
    except InputError as exc:  # an answer the guard cannot read is never passed on
        raise ApiError(502, f"the upstream's answer cannot be judged: {exc.message}",
                       code="upstream_unjudgeable") from None  # fmt: skip
    runtime.metrics.verdicts(api.name, call.verdicts[before:])
    headers = {**back, **headers_for(call.verdicts, upstream_ms=upstream_ms)}
    if state.dropped:
        headers["x-grvl-dropped-fields"] = str(state.dropped)
    blocked = call.blocked
    if blocked is not None:
        if runtime.config.block_style == "error":
            error = ApiError(400, block_reason(blocked), code="content_filter")
            return JSONResponse(error.body(), status_code=400, headers=headers)
        checked = api.blocked_answer(blocked, runtime.policy, model, template=answer)
    return JSONResponse(checked, headers=headers)
