"""A loopback OpenAI-compatible chat-completions server for a local guard — for tests and development.

Not for production (serve the model with vLLM or SGLang). It behaves like those servers do for the
requests :class:`~grvl_sdk.backends.remote.RemoteBackend` sends: it renders the messages with the
model's chat template, decodes ``data:`` URL images, tokenises the rendered prompt with special tokens
parsed (as vLLM does), decodes greedily with the local backend and answers with the text, finish
reason, usage and (when asked) ``logprobs`` with ``top_logprobs``.

Fault injection, for testing clients: :class:`ServerFaults` (a delay per request, HTTP statuses to
answer instead of generating) set directly in-process or through ``POST /admin/faults``;
``GET /admin/state`` reports requests seen, requests in flight and the rendered prompts.

In-process::

    with LoopbackServer(guard.backend) as server:
        remote = Guard.from_server(server.base_url, model=server.model_name)

As a separate process (prints ``READY <base_url>`` once serving; ``--delay`` in seconds)::

    python -m grvl_sdk.testing.server --model /path/to/checkpoint [--port 0] [--delay 0.5]

(``python -m grvl_sdk.testing_server`` still works, deprecated.) Needs ``pip install 'grvl-sdk[server]'``
(FastAPI, uvicorn) besides the local extra; :class:`~grvl_sdk.errors.MissingDependencyError` otherwise.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.errors import GRVLError
from grvl_sdk.images import load_image
from grvl_sdk.protocol.encoding import EncodedBatch

__all__ = ["LoopbackServer", "ServerFaults", "ServerState", "create_app", "main"]


@dataclass
class ServerFaults:
    """Faults to inject: ``delay_s`` before answering each request; ``statuses``: HTTP statuses answered
    (one per request, in order) instead of generating."""

    delay_s: float = 0.0
    statuses: list[int] = field(default_factory=list)


@dataclass
class ServerState:
    """What the server saw: request count, requests in flight, rendered prompts and their token ids,
    and its own handling time per request (ms)."""

    requests: int = 0
    in_flight: int = 0
    prompts: list[str] = field(default_factory=list)
    input_ids: list[list[int]] = field(default_factory=list)
    process_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


class _Completer:
    """Messages → rendered prompt → tokens → greedy generation → chat completion body."""

    def __init__(self, backend: Any, model_name: str, state: ServerState) -> None:
        self.backend = backend
        self.model_name = model_name
        self.state = state
        self.tokenizer = backend.tokenizer
        self.image_token_id = backend.encoder.image_token_id

    def _render(self, messages: list[dict[str, Any]], *, continue_final: bool = False) -> tuple[str, list[Any]]:
        images: list[Any] = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
                        images.append(load_image(url))
        prompt = self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.backend.encoder.chat_template,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return prompt, images

    def _encode(self, prompt: str, images: list[Any]) -> EncodedBatch:
        encoder = self.backend.encoder
        kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
            kwargs["images_kwargs"] = {
                "size": {"shortest_edge": encoder.min_pixels, "longest_edge": encoder.max_pixels}
            }
        encoded = self.backend.processor(**kwargs)
        device = self.backend.device
        input_ids = encoded["input_ids"].to(device)
        pixel_values = encoded.get("pixel_values")
        grid = encoded.get("image_grid_thw")
        return EncodedBatch(
            input_ids=input_ids,
            attention_mask=encoded["attention_mask"].to(device),
            mm_token_type_ids=(input_ids == self.image_token_id).long() if self.image_token_id is not None else None,
            pixel_values=None
            if pixel_values is None
            else pixel_values.to(device=device, dtype=self.backend._pixel_dtype()),
            image_grid_thw=None if grid is None else grid.to(device),
            prompt_lengths=[int(input_ids.shape[1])],
        )

    @staticmethod
    def _logprobs(generation: Any, top: int) -> dict[str, Any] | None:
        logprobs = generation.logprobs
        if logprobs is None:
            return None
        content = []
        for step, token in enumerate(logprobs.tokens):
            # JSON has no -inf: write vLLM's floor instead.
            found = {text: max(value, -9999.0) for text, value in logprobs.alternatives(step).items()}
            alternatives = sorted(found.items(), key=lambda kv: -kv[1])
            chosen = dict(alternatives).get(token, alternatives[0][1] if alternatives else 0.0)
            content.append(
                {
                    "token": token,
                    "logprob": chosen,
                    "bytes": list(token.encode("utf-8")),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in alternatives[:top]
                    ],
                }
            )
        return {"content": content}

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        if float(body.get("temperature", 1.0)) != 0.0:
            raise ValueError("this test server only decodes greedily: send temperature=0")
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        # vLLM's extension: continue the final (assistant) message instead of starting a new turn.
        continue_final = bool(body.get("continue_final_message")) and not body.get("add_generation_prompt", True)
        prompt, images = self._render(body["messages"], continue_final=continue_final)
        batch = self._encode(prompt, images)
        with self.state.lock:
            self.state.prompts.append(prompt)
            self.state.input_ids.append(batch.input_ids[0].tolist())
        wants_logprobs = bool(body.get("logprobs"))
        generation = self.backend.generate_encoded(
            batch, max_new_tokens=max_tokens, score_every_step=wants_logprobs or None
        )[0]
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "finish_reason": "stop" if generation.finished else "length",
        }
        if wants_logprobs:
            choice["logprobs"] = self._logprobs(generation, int(body.get("top_logprobs") or 0))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens,
                "total_tokens": generation.prompt_tokens + generation.completion_tokens,
            },
        }


def create_app(
    backend: Any, *, model_name: str | None = None, faults: ServerFaults | None = None, state: ServerState | None = None
) -> Any:
    """A FastAPI app serving ``backend`` (a ``LocalBackend``) at ``/v1/chat/completions``."""
    fastapi = require("fastapi", extra="server")
    from fastapi import Request

    name = model_name or backend.model_id or "grvl-guard"
    faults = faults if faults is not None else ServerFaults()
    state = state if state is not None else ServerState()
    completer = _Completer(backend, name, state)
    app = fastapi.FastAPI(title="grvl-sdk loopback guard server")
    app.state.faults, app.state.server_state = faults, state

    @app.middleware("http")
    async def timing(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = (time.perf_counter() - started) * 1000
        response.headers["x-process-ms"] = f"{elapsed:.3f}"
        if request.url.path.endswith("/chat/completions"):
            with state.lock:
                state.process_ms.append(elapsed)
        return response

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "grvl-sdk"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any]) -> Any:
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            status = faults.statuses.pop(0) if faults.statuses else None
        try:
            if faults.delay_s:
                time.sleep(faults.delay_s)
            if status is not None:
                return _error(status, f"injected fault: HTTP {status}")
            if body.get("model") != name:
                return _error(404, f"model {body.get('model')!r} is not served here (serving {name!r})")
            try:
                return completer.complete(body)
            except (KeyError, TypeError, ValueError, GRVLError) as exc:
                return _error(400, f"{type(exc).__name__}: {exc}")
        finally:
            with state.lock:
                state.in_flight -= 1

    @app.post("/admin/faults")
    def set_faults(body: dict[str, Any]) -> dict[str, Any]:
        faults.delay_s = float(body.get("delay_s", faults.delay_s))
        faults.statuses = [int(s) for s in body.get("statuses", faults.statuses)]
        return {"delay_s": faults.delay_s, "statuses": faults.statuses}

    @app.get("/admin/state")
    def get_state() -> dict[str, Any]:
        with state.lock:
            return {"requests": state.requests, "in_flight": state.in_flight, "prompts": list(state.prompts)}

    return app


class LoopbackServer:
    """Runs :func:`create_app` with uvicorn on ``127.0.0.1`` (a free port by default) in a thread."""

    def __init__(self, backend: Any, *, model_name: str | None = None, port: int = 0) -> None:
        uvicorn = require("uvicorn", extra="server")
        self.faults = ServerFaults()
        self.state = ServerState()
        self.model_name = model_name or backend.model_id or "grvl-guard"
        app = create_app(backend, model_name=self.model_name, faults=self.faults, state=self.state)
        # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets (else keep-alive responses stall 40 ms).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> LoopbackServer:
        """Serve in a daemon thread; returns once listening. Raises ``RuntimeError`` when not started within
        ``timeout`` seconds."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="grvl-loopback", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """The ``python -m grvl_sdk.testing.server`` entry point: serve ``--model`` until interrupted."""
    parser = argparse.ArgumentParser(description="Serve a local guard checkpoint over the OpenAI chat API (tests).")
    parser.add_argument("--model", required=True, help="local checkpoint folder")
    parser.add_argument("--name", help="served model name (default: the path)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering each request")
    args = parser.parse_args(argv)
    from grvl_sdk.backends.local import LocalBackend

    backend = LocalBackend.from_pretrained(args.model, device=args.device)
    server = LoopbackServer(backend, model_name=args.name, port=args.port)
    server.faults.delay_s = args.delay
    server.start()
    print(f"READY {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
