"""Running the app with uvicorn: :func:`serve` (blocking, graceful shutdown on SIGINT/SIGTERM) and
:class:`BackgroundServer` (in a thread, on loopback: tests, benchmarks, notebooks).

Graceful shutdown: on a signal the server reports not ready (``/ready`` 503), stops accepting
connections, lets in-flight requests — streams included — finish for up to ``shutdown_timeout``
seconds, then closes the upstream client and (when it loaded it) the guard.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from grvl_sdk._lazy import require

__all__ = ["BackgroundServer", "serve"]


def _server(app: Any, *, exit_on_load_error: bool = False, **config: Any) -> Any:
    uvicorn = require("uvicorn", extra="server")
    runtime = getattr(getattr(app, "state", None), "grvl", None)

    class GuardServer(uvicorn.Server):  # type: ignore[misc,name-defined]
        """uvicorn's server, reporting not ready as soon as a shutdown starts (and, with
        ``exit_on_load_error``, stopping when the guard fails to load)."""

        load_error: str | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if runtime is not None:
                runtime.draining = True
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if exit_on_load_error and runtime is not None and runtime.load_error:
                self.load_error = runtime.load_error
                runtime.draining = True
                return True
            return bool(await super().on_tick(counter))

    settings = {"lifespan": "on", "access_log": False, "server_header": False, "log_config": None, **config}
    return GuardServer(uvicorn.Config(app, **settings))


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_timeout: float = 30.0,
    keep_alive_timeout: float = 75.0,
    log_level: str = "info",
    exit_on_load_error: bool = True,
) -> str | None:
    """Serve ``app`` until SIGINT/SIGTERM (one process, one event loop: run one per GPU). With
    ``exit_on_load_error``, a guard that fails to load (given to ``create_app`` as a loader) stops the
    server too: returns that error (``None`` after a normal stop)."""
    server = _server(app, host=host, port=port, timeout_graceful_shutdown=shutdown_timeout,
                     timeout_keep_alive=keep_alive_timeout, log_level=log_level,
                     exit_on_load_error=exit_on_load_error)  # fmt: skip
    server.run()
    return server.load_error  # type: ignore[no-any-return]


class BackgroundServer:
    """``app`` served by uvicorn on ``127.0.0.1`` (a free port by default) in a daemon thread.

    >>> with BackgroundServer(create_app(guard, upstream=...)) as server:
    ...     OpenAI(base_url=server.url + "/v1", api_key="...")
    """

    def __init__(self, app: Any, *, port: int = 0, shutdown_timeout: float = 10.0) -> None:
        self.app = app
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets (else keep-alive answers stall 40 ms).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        self.server = _server(app, log_level="warning", timeout_graceful_shutdown=shutdown_timeout,
                              timeout_keep_alive=30)  # fmt: skip
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Serve in a thread; returns once listening (``RuntimeError`` if not within ``timeout`` s)."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]},
                                        name="grvl-server", daemon=True)  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the grvl server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """A graceful shutdown (as on SIGTERM): in-flight requests finish first."""
        self.server.handle_exit(15, None)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
