"""LiteLLM's Generic Guardrail API: ``POST /beta/litellm_basic_guardrail_api``.

A LiteLLM proxy configured with ``guardrail: generic_guardrail_api`` and this server as ``api_base``
sends the content of each call: ``texts``, ``images`` (base64, ``data:`` or http(s) URLs), ``tool_calls``,
``structured_messages`` (the chat, on requests), ``input_type`` (``request`` before the model,
``response`` after it). The answer is ``{"action": "BLOCKED", "blocked_reason": ...}`` or
``{"action": "NONE"}`` (this guard never rewrites content), plus a ``grvl`` extension with the verdict.

What is judged: for a request, the chat reduced as for every check (latest user turn, earlier turns as
context, an assistant prefill as the response), plus any text of ``texts`` not already in it, the tool
calls and the images; for a response, the response texts and tool calls with the request (when
``structured_messages`` are sent) as their context. A part the policy does not check (``check``) gets
``NONE`` without a check.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from grvl_sdk.conversation import conversation_input
from grvl_sdk.errors import GRVLError
from grvl_sdk.messages import to_messages
from grvl_sdk.server.errors import ApiError, from_grvl_error
from grvl_sdk.server.history import history_chunks
from grvl_sdk.server.images import audit_messages
from grvl_sdk.server.limits import parse_json
from grvl_sdk.server.outcome import block_reason, headers_for
from grvl_sdk.server.runtime import Runtime

__all__ = ["PATH", "register"]

PATH = "/beta/litellm_basic_guardrail_api"


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ApiError(400, f"{key} must be a list of strings", param=key, code="invalid_type")
    return value


def _objects(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise ApiError(400, f"{key} must be a list of objects", param=key, code="invalid_type")
    return value


def register(app: Any, schemas: dict[str, Any], responses: dict[int | str, dict[str, Any]]) -> None:
    """Add the LiteLLM guardrail endpoint to ``app``."""

    @app.post(PATH, tags=["guard"], openapi_extra=schemas["litellm"], responses=responses,
              summary="LiteLLM Generic Guardrail API")  # fmt: skip
    async def litellm_guardrail(request: Request) -> Any:
        runtime: Runtime = request.app.state.grvl
        runtime.require_key(request.headers, proxy=False)
        guard = runtime.require_guard()
        body = await parse_json(request, runtime.config.max_body_bytes, runtime.config.body_timeout)
        try:
            return await _judge(runtime, guard, body)
        except GRVLError as exc:
            raise from_grvl_error(exc) from None


async def _judge(runtime: Runtime, guard: Any, body: dict[str, Any]) -> Any:
    config = runtime.config
    input_type = body.get("input_type", "request")
    if input_type not in ("request", "response"):
        raise ApiError(400, "input_type must be 'request' or 'response'", param="input_type", code="invalid_type")
    texts = _strings(body, "texts")
    images = _strings(body, "images")
    tool_calls = _objects(body, "tool_calls")
    messages = _objects(body, "structured_messages")
    policy = runtime.policy
    if (input_type == "request" and policy.check == "response") or (
        input_type == "response" and policy.check == "request"
    ):
        return JSONResponse({"action": "NONE", "grvl": {"decision": "not checked", "input_type": input_type}})

    request_text: str | None = None
    prefill: str | None = None
    sources: list[str] = []
    history: list[tuple[str, list[Any]]] = []
    known: list[str] = []  # texts judged already (in the window or in the history checks)
    if messages:
        await runtime.images.inline(messages, max_images=config.max_images)
        normalized = to_messages(messages)
        audit_messages(normalized, max_images=config.max_images, max_text_chars=config.max_text_chars)
        if config.history_checks and input_type == "request":
            history = history_chunks(normalized, guard.context_chars, config.max_images)
            known = [m.text for m in normalized]
        chat = conversation_input(messages, context_chars=guard.context_chars)
        request_text, prefill = chat.text, chat.response
        sources = [str(image) for image in chat.images]
    for index, image in enumerate(images):
        source = await runtime.images.any_image(image, f"images[{index}]")
        if source not in sources:
            sources.append(source)
    if len(sources) > config.max_images:
        raise ApiError(400, f"{len(sources)} images; at most {config.max_images} are judged per check",
                       param="images", code="too_many_images")  # fmt: skip
    calls = to_messages([{"role": "assistant", "content": None, "tool_calls": tool_calls}])[0].text if tool_calls \
        else ""  # fmt: skip
    if input_type == "request":
        extra = [t for t in texts if t and not (request_text and t in request_text) and not any(t in k for k in known)]
        text = "\n".join(part for part in (request_text, *extra, calls) if part)
        response = prefill
    else:
        text = request_text or ""
        response = "\n".join(part for part in (*texts, calls) if part)
    if sum(len(t) for t in (text, response or "")) > config.max_text_chars:
        raise ApiError(400, f"over {config.max_text_chars} characters to judge", code="request_too_long")
    if not text and not response and not sources:
        return JSONResponse({"action": "NONE", "grvl": {"decision": "nothing to check", "input_type": input_type}})
    main = guard.acheck(text or None, images=sources or None, response=response or None, policy=policy)
    earlier_policy = policy.merged({"check": "request"})
    earlier = [guard.acheck(t, images=i or None, policy=earlier_policy) for t, i in history]
    verdicts = [v.model_copy(update={"stage": input_type}) for v in await asyncio.gather(main, *earlier)]
    runtime.metrics.verdicts("litellm", verdicts)
    verdict = next((v for v in verdicts if v.blocked), verdicts[0])
    extension = {"decision": verdict.decision, "request_label": verdict.request_label,
                 "response_label": verdict.response_label, "verdict_id": verdict.id,
                 "error": verdict.error.code if verdict.error else None}  # fmt: skip
    headers = headers_for(verdicts)
    if verdict.blocked:
        return JSONResponse({"action": "BLOCKED", "blocked_reason": block_reason(verdict), "grvl": extension},
                            headers=headers)  # fmt: skip
    return JSONResponse({"action": "NONE", "grvl": extension}, headers=headers)
