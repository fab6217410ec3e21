"""A scripted OpenAI-compatible upstream on loopback, for the server tests and benchmark.

``ScriptedUpstream`` answers ``/v1/chat/completions`` and ``/v1/responses`` (whole answers and SSE
streams) and ``/v1/models``, with text from ``reply(body)`` (default: ``"Echo: <last user text>"``), and
logs every request (path, body, ``Authorization``). Knobs: ``delay`` (seconds before answering),
``statuses`` (HTTP statuses answered instead, in order), ``chunk_chars`` (stream chunk size),
``chunk_delay`` (seconds between chat stream chunks),
``message_extra`` (extra fields put into each message / delta, e.g. ``reasoning_content``), ``raw``
(bytes answered as they are instead: the body of a whole answer, the ``data:`` of a stream's one event),
``output_extra`` (extra Responses output items, e.g. a ``function_call``; streamed as their own item).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from grvl_sdk.server.run import BackgroundServer

MODEL = "upstream-vlm"


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a chat or Responses request."""
    items = body.get("messages")
    if items is None:
        given = body.get("input")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
    for message in reversed(items):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


def echo(body: dict[str, Any]) -> str:
    return f"Echo: {last_user_text(body)}"


@dataclass
class ScriptedUpstream:
    """The upstream's script and request log (see the module docstring)."""

    reply: Callable[[dict[str, Any]], str] = echo
    delay: float = 0.0
    statuses: list[int] = field(default_factory=list)
    chunk_chars: int = 8
    chunk_delay: float = 0.0
    message_extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    output_extra: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    streams_closed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def paths(self) -> list[str]:
        with self.lock:
            return [entry["path"] for entry in self.log]

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [entry["body"] for entry in self.log]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _chat(body: dict[str, Any], text: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", MODEL),
        "choices": [{"index": i, "message": {"role": "assistant", "content": text, **extra}, "finish_reason": "stop",
                     "logprobs": None} for i in range(int(body.get("n") or 1))],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 5 + len(text.split())},
    }  # fmt: skip


def _response(
    body: dict[str, Any], text: str, status: str = "completed", extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    output = [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}] if text else []  # fmt: skip
    output += extra or []
    return {
        "id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": time.time(), "status": status,
        "model": body.get("model", MODEL), "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
        "temperature": 1.0, "top_p": 1.0, "usage": None,
    }  # fmt: skip


def _sse(data: Any, event: str | None = None) -> bytes:
    return (f"event: {event}\n" if event else "").encode() + f"data: {json.dumps(data)}\n\n".encode()


def create_upstream_app(script: ScriptedUpstream) -> FastAPI:
    """The upstream app for ``script``."""
    app = FastAPI()

    async def begin(request: Request) -> tuple[dict[str, Any], Any]:
        body = await request.json()
        with script.lock:
            script.log.append({"path": request.url.path, "body": body,
                               "authorization": request.headers.get("authorization")})  # fmt: skip
            status = script.statuses.pop(0) if script.statuses else None
        if script.delay:
            await asyncio.sleep(script.delay)
        if status is not None:
            error = {"error": {"message": f"scripted HTTP {status}", "type": "scripted", "param": None, "code": None}}
            return body, JSONResponse(error, status_code=status)
        return body, None

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body, failed = await begin(request)
        if failed is not None:
            return failed
        if script.raw is not None:
            return _raw(script.raw, bool(body.get("stream")))
        text = script.reply(body)
        if not body.get("stream"):
            return _chat(body, text, script.message_extra)
        return StreamingResponse(_chat_stream(script, body, text), media_type="text/event-stream")

    @app.post("/v1/responses")
    async def responses(request: Request) -> Any:
        body, failed = await begin(request)
        if failed is not None:
            return failed
        if script.raw is not None:
            return _raw(script.raw, bool(body.get("stream")))
        text = script.reply(body)
        if not body.get("stream"):
            return _response(body, text, extra=script.output_extra)
        return StreamingResponse(_responses_stream(script, body, text), media_type="text/event-stream")

    return app


def _raw(data: bytes, stream: bool) -> Any:
    from fastapi.responses import Response

    if stream:
        return Response(b"data: " + data + b"\n\ndata: [DONE]\n\n", media_type="text/event-stream")
    return Response(data, media_type="application/json")


async def _chat_stream(script: ScriptedUpstream, body: dict[str, Any], text: str) -> Any:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", MODEL)}  # fmt: skip
    try:
        yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})  # fmt: skip
        for piece in _pieces(text, script.chunk_chars):
            delta = {"content": piece, **script.message_extra}
            yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            await asyncio.sleep(script.chunk_delay)
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                          "total_tokens": 8}})  # fmt: skip
        yield b"data: [DONE]\n\n"
    finally:
        with script.lock:
            script.streams_closed += 1


async def _responses_stream(script: ScriptedUpstream, body: dict[str, Any], text: str) -> Any:
    seq = iter(range(1_000_000))
    started = _response(body, "", status="in_progress")
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    try:
        yield _sse({"type": "response.created", "sequence_number": next(seq), "response": started},
                   "response.created")  # fmt: skip
        yield _sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                    "item": item}, "response.output_item.added")  # fmt: skip
        yield _sse({"type": "response.content_part.added", "sequence_number": next(seq), "output_index": 0,
                    "item_id": "msg_1", "content_index": 0, "part": part}, "response.content_part.added")  # fmt: skip
        for piece in _pieces(text, script.chunk_chars):
            yield _sse({"type": "response.output_text.delta", "sequence_number": next(seq), "item_id": "msg_1",
                        "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []},
                       "response.output_text.delta")  # fmt: skip
            await asyncio.sleep(0)
        for index, extra in enumerate(script.output_extra, start=1):
            yield _sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": index,
                        "item": {**extra, "status": "in_progress"}}, "response.output_item.added")  # fmt: skip
            if extra.get("type") == "function_call":
                yield _sse({"type": "response.function_call_arguments.delta", "sequence_number": next(seq),
                            "item_id": extra.get("id"), "output_index": index, "delta": extra.get("arguments", "")},
                           "response.function_call_arguments.delta")  # fmt: skip
            yield _sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": index,
                        "item": extra}, "response.output_item.done")  # fmt: skip
        done = _response(body, text, extra=script.output_extra)
        done["id"] = started["id"]
        yield _sse({"type": "response.completed", "sequence_number": next(seq), "response": done},
                   "response.completed")  # fmt: skip
    finally:
        with script.lock:
            script.streams_closed += 1


def start_upstream(script: ScriptedUpstream | None = None) -> tuple[BackgroundServer, ScriptedUpstream]:
    """A started upstream server (``server.url + "/v1"`` is its API root) and its script."""
    script = script or ScriptedUpstream()
    server = BackgroundServer(create_upstream_app(script)).start()
    return server, script


class Harness:
    """A scripted upstream and a grvl server in front of it, both on loopback.

    ``guard`` defaults to a scripted guard flagging "bomb" and "poison"; ``settings`` are
    :class:`~grvl_sdk.server.ServerConfig` fields; ``app_options`` go to ``create_app``."""

    def __init__(self, guard: Any = None, *, script: ScriptedUpstream | None = None, app_options: Any = None,
                 **settings: Any) -> None:  # fmt: skip
        from grvl_sdk import Guard
        from grvl_sdk.server import ServerConfig, create_app
        from grvl_sdk.testing import ScriptedBackend

        self.upstream, self.script = start_upstream(script)
        self.guard = guard if guard is not None else Guard(ScriptedBackend.flagging("bomb", "poison"))
        config = ServerConfig(upstream=self.upstream.url + "/v1", **settings)
        self.app = create_app(self.guard, config=config, **(app_options or {}))
        self.server = BackgroundServer(self.app).start()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def client(self, **options: Any) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=options.pop("api_key", "sk-upstream-secret-0001"),
                      max_retries=options.pop("max_retries", 0), **options)  # fmt: skip

    def async_client(self, **options: Any) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=options.pop("api_key", "sk-upstream-secret-0001"),
                           max_retries=options.pop("max_retries", 0), **options)  # fmt: skip

    def close(self) -> None:
        self.server.stop()
        self.upstream.stop()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
