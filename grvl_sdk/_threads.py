"""Worker threads that never hold a program up: daemon threads, reused while idle.

``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, and
``asyncio.run`` joins the loop's default executor when it returns: a backend call that never returns
(a hung server without timeouts, a stuck custom backend) would then hang the caller's program long
after the check itself returned at its deadline. Calls given to a :class:`DaemonPool` hold only their
own thread, and nothing waits for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["DaemonPool", "in_daemon_thread", "to_daemon_thread"]

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonPool:
    """Runs calls on daemon threads; a thread idle for ``idle_timeout`` seconds exits. Unbounded: a
    call never waits for a free thread (callers bound their own work with deadlines)."""

    def __init__(self, name: str, *, idle_timeout: float = 30.0) -> None:
        self.name = name
        self.idle_timeout = idle_timeout
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._lock = threading.Lock()
        self._count = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._count += 1
                name = f"{self.name}-{self._count}"
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), name=name, daemon=True).start()
        inbox.put((future, fn, args, kwargs))
        return future

    def _work(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            try:
                job = inbox.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # still idle: leave; else a job is on its way
                        self._idle.remove(inbox)
                        return
                continue
            if job is None:
                return
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except (StopIteration, StopAsyncIteration) as exc:
                    # asyncio cannot put these on a future (an awaiting caller would wait forever).
                    error = RuntimeError(f"{fn!r} raised {type(exc).__name__}")
                    error.__cause__ = exc
                    future.set_exception(error)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del job, future, fn, args, kwargs
            with self._lock:
                self._idle.append(inbox)

    def shutdown(self) -> None:
        """Let the idle threads exit (busy ones exit when their call returns)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


_SHARED = DaemonPool("grvl-worker")


def in_daemon_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
    """Start ``fn(*args, **kwargs)`` on a daemon thread now; its future (context variables copied)."""
    context = contextvars.copy_context()
    return _SHARED.submit(context.run, fn, *args, **kwargs)


async def to_daemon_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` on a daemon thread: awaiting it can be cancelled or given up at a
    deadline, and a call that never returns does not hold ``asyncio.run`` or the interpreter's exit."""
    context = contextvars.copy_context()
    return await asyncio.wrap_future(_SHARED.submit(context.run, fn, *args, **kwargs))
