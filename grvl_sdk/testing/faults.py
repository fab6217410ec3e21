"""A raw-socket HTTP server on 127.0.0.1 that misbehaves on purpose, for robustness tests of guard clients.

:class:`FaultServer` hangs, trickles its headers or its body, or answers a chosen (possibly malformed
or huge) body with a chosen status — what a proxy, an overloaded or a broken guard server may do.
Point ``Guard.from_server(server.base_url, model=...)`` (or your own client) at it and check that your
deadlines hold and failures stay closed. Each connection is served by its own daemon thread and every
thread stops on :meth:`FaultServer.close`. Standard library only.

>>> with FaultServer("body", body=completion(guard_output("harmful"))) as server:
...     Guard.from_server(server.base_url, model="m").check("hi").decision
'block'
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

__all__ = ["FaultServer", "completion", "wait_until"]


def completion(content: Any, *, usage: Any = None, logprobs: Any = None, finish_reason: Any = "stop") -> bytes:
    """A chat-completion JSON body (bytes) with ``content`` as the message text; ``usage``, ``logprobs``
    and ``finish_reason`` go in as given (any JSON value, to test malformed answers)."""
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}}
    choice["finish_reason"] = finish_reason
    if logprobs is not None:
        choice["logprobs"] = logprobs
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "choices": [choice]}
    body["usage"] = usage if usage is not None else {"prompt_tokens": 1, "completion_tokens": 1}
    return json.dumps(body).encode()


class FaultServer:
    """``mode``: ``"hang"`` (never answers), ``"slow-headers"`` (a header byte every ``interval`` s,
    never done), ``"trickle"`` (headers at once, then the body one byte every ``interval`` s),
    ``"body"`` (answers ``body`` with ``status`` at once). ``requests`` counts requests received.

    Listens on ``127.0.0.1`` at a free ``port`` from construction; ``base_url`` ends in ``/v1``. Use it as
    a context manager, or call :meth:`close`."""

    def __init__(self, mode: str, *, body: bytes = b"{}", status: int = 200, interval: float = 0.2) -> None:
        self.mode, self.body, self.status, self.interval = mode, body, status, interval
        self.requests = 0
        #: Raw header lines added to every answer (e.g. ``b"content-encoding: gzip\r\n"``).
        self.extra_headers = b""
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        conn.settimeout(5)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            rest += chunk
        self.requests += 1
        return True

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while not self._stop.is_set() and self._read_request(conn):
                    if self.mode == "hang":
                        self._stop.wait()
                        return
                    headers = (
                        (
                            f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\n"
                            f"content-length: {len(self.body)}\r\n"
                        ).encode()
                        + self.extra_headers
                        + b"\r\n"
                    )
                    if self.mode == "slow-headers":
                        for byte in headers:
                            if self._stop.wait(self.interval):
                                return
                            conn.sendall(bytes([byte]))
                        return
                    conn.sendall(headers)
                    if self.mode == "trickle":
                        for byte in self.body:
                            if self._stop.wait(self.interval):
                                return
                            conn.sendall(bytes([byte]))
                        continue
                    conn.sendall(self.body)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate()`` every 10 ms until it is true or ``timeout`` seconds passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
