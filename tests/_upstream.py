"""An OpenAI-compatible upstream on loopback for the adapter tests: scripted answers, a request log.

``Upstream().start()`` serves ``POST /v1/chat/completions`` (JSON or SSE with ``stream: true``, ``n``
choices) and ``POST /v1/responses`` (a ``Response`` object or its SSE event stream) on 127.0.0.1 with
uvicorn in a daemon thread. Every request body is appended to ``upstream.log`` (``{"path", "body"}``)
before it is answered. What it answers is ``upstream.reply``: a :class:`Reply`, or a callable
``reply(path, body) -> Reply``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

CREATED = 1_700_000_000


@dataclass
class Reply:
    """One scripted answer: a text per choice (``choices[i]`` for choice ``i``; the last one repeats
    for larger ``n``), and tool calls ``(name, arguments JSON)`` of choice 0."""

    choices: list[str] = field(default_factory=lambda: ["Hello from upstream."])
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    raw: Any = None
    """Sent as is instead, when set: the JSON body, or (streaming) the list of chunks / events."""

    def text(self, index: int) -> str:
        return self.choices[min(index, len(self.choices) - 1)]


def _pieces(text: str) -> list[str]:
    """``text`` in stream-sized pieces (words with their spaces)."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)] if text else []


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [{"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.tool_calls)]  # fmt: skip


def chat_completion(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for i in range(int(body.get("n") or 1)):
        message: dict[str, Any] = {"role": "assistant", "content": reply.text(i) or None}
        if i == 0 and reply.tool_calls:
            message["tool_calls"] = _tool_calls(reply)
        finish = "tool_calls" if i == 0 and reply.tool_calls else "stop"
        choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": CREATED, "model": body.get("model", "m"),
            "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}  # fmt: skip


def chat_chunks(reply: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": CREATED,
                "model": body.get("model", "m"),
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip

    n = int(body.get("n") or 1)
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    pieces = [_pieces(reply.text(i)) for i in range(n)]
    for step in range(max(map(len, pieces), default=0)):
        for i in range(n):
            if step < len(pieces[i]):
                yield chunk(i, {"content": pieces[i][step]})
    for k, (name, args) in enumerate(reply.tool_calls):
        yield chunk(0, {"tool_calls": [{"index": k, "id": f"call_{k}", "type": "function",
                                        "function": {"name": name, "arguments": ""}}]})  # fmt: skip
        for part in _pieces(args):
            yield chunk(0, {"tool_calls": [{"index": k, "function": {"arguments": part}}]})
    for i in range(n):
        yield chunk(i, {}, "tool_calls" if i == 0 and reply.tool_calls else "stop")


def response_object(reply: Reply, body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if reply.text(0):
        output.append({"type": "message", "id": "msg_up", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": reply.text(0), "annotations": []}]})  # fmt: skip
    for i, (name, args) in enumerate(reply.tool_calls):
        output.append({"type": "function_call", "id": f"fc_{i}", "call_id": f"call_{i}", "name": name,
                       "arguments": args, "status": "completed"})  # fmt: skip
    return {"id": "resp_up", "object": "response", "created_at": CREATED, "model": body.get("model", "m"),
            "status": status, "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "incomplete_details": None, "error": None}  # fmt: skip


def response_events(reply: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    seq = iter(range(10_000))
    yield {"type": "response.created", "sequence_number": next(seq),
           "response": {**response_object(Reply([""]), body, "in_progress"), "output": []}}  # fmt: skip
    text = reply.text(0)
    if text:
        item = {"type": "message", "id": "msg_up", "role": "assistant", "status": "in_progress", "content": []}
        yield {"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0, "item": item}
        part = {"type": "output_text", "text": "", "annotations": []}
        yield {"type": "response.content_part.added", "sequence_number": next(seq), "item_id": "msg_up",
               "output_index": 0, "content_index": 0, "part": part}  # fmt: skip
        for piece in _pieces(text):
            yield {"type": "response.output_text.delta", "sequence_number": next(seq), "item_id": "msg_up",
                   "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}  # fmt: skip
        yield {"type": "response.output_text.done", "sequence_number": next(seq), "item_id": "msg_up",
               "output_index": 0, "content_index": 0, "text": text, "logprobs": []}  # fmt: skip
    for i, (name, args) in enumerate(reply.tool_calls):
        index = i + (1 if text else 0)
        item = {"type": "function_call", "id": f"fc_{i}", "call_id": f"call_{i}", "name": name, "arguments": "",
                "status": "in_progress"}  # fmt: skip
        yield {"type": "response.output_item.added", "sequence_number": next(seq), "output_index": index,
               "item": item}  # fmt: skip
        for piece in _pieces(args):
            yield {"type": "response.function_call_arguments.delta", "sequence_number": next(seq),
                   "item_id": f"fc_{i}", "output_index": index, "delta": piece}  # fmt: skip
    yield {"type": "response.completed", "sequence_number": next(seq), "response": response_object(reply, body)}


def _sse(events: Iterator[dict[str, Any]], *, named: bool) -> Iterator[str]:
    for event in events:
        prefix = f"event: {event['type']}\n" if named else ""
        yield f"{prefix}data: {json.dumps(event)}\n\n"
    if not named:
        yield "data: [DONE]\n\n"


class Upstream:
    """The loopback upstream (see the module docstring)."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []
        self.reply: Reply | Callable[[str, dict[str, Any]], Reply] = Reply()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            reply = self._answer("chat", body)
            if body.get("stream"):
                chunks = iter(reply.raw) if reply.raw is not None else chat_chunks(reply, body)
                return StreamingResponse(_sse(chunks, named=False), media_type="text/event-stream")
            return JSONResponse(reply.raw if reply.raw is not None else chat_completion(reply, body))

        @app.post("/v1/responses")
        async def responses(request: Request) -> Any:
            body = await request.json()
            reply = self._answer("responses", body)
            if body.get("stream"):
                events = iter(reply.raw) if reply.raw is not None else response_events(reply, body)
                return StreamingResponse(_sse(events, named=True), media_type="text/event-stream")
            return JSONResponse(reply.raw if reply.raw is not None else response_object(reply, body))

        # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets (else keep-alive stalls 40 ms).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread: threading.Thread | None = None

    def _answer(self, path: str, body: dict[str, Any]) -> Reply:
        self.log.append({"path": path, "body": body})
        return self.reply(path, body) if callable(self.reply) else self.reply

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Upstream:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()
