"""One ``httpx.AsyncClient`` per event loop, closed with its loop.

An async client belongs to the loop it was first used on. Each is paired with a suspended async
generator started on that loop: ``loop.shutdown_asyncgens()`` (which ``asyncio.run`` calls on exit)
closes it, and its ``finally`` closes the client there — so ``asyncio.run(guard.acheck(...))`` in a
loop holds no sockets or closed loops. :meth:`LoopClients.close` closes the others from outside.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from grvl_sdk.errors import GuardClosedError

__all__ = ["LoopClients"]

logger = logging.getLogger("grvl_sdk")


class LoopClients:
    """The async clients of one backend, one per event loop; ``make()`` builds a client."""

    def __init__(self, make: Callable[[], httpx.AsyncClient]) -> None:
        self._make = make
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self.closed = False

    def __len__(self) -> int:
        return len(self._clients)

    async def get(self) -> httpx.AsyncClient:
        """The running loop's client (made, and tied to the loop's shutdown, on first use)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            if self.closed:
                raise GuardClosedError("the remote backend is closed")
            client = self._clients[loop] = self._make()
            closer = self._closers[loop] = _close_with_loop(weakref.ref(self), loop)
            await closer.asend(None)  # runs to its ``yield``; the loop now tracks it
        return client

    def _pop(self, loop: asyncio.AbstractEventLoop) -> tuple[httpx.AsyncClient | None, Any]:
        return self._clients.pop(loop, None), self._closers.pop(loop, None)

    async def aclose_current(self) -> None:
        """Close the running loop's client."""
        client, closer = self._pop(asyncio.get_running_loop())
        if client is not None:
            await client.aclose()
        if closer is not None:
            await closer.aclose()

    def close(self) -> None:
        """Close every loop's client on its own loop: at once if that loop runs in another thread,
        scheduled if it is this thread's running loop, run to completion if it is idle; a closed loop's
        client is dropped. Afterwards no client is made."""
        self.closed = True
        for loop in list(self._clients):
            client, closer = self._pop(loop)
            if client is not None:
                _close_on_loop(loop, client, closer)


async def _close_with_loop(
    owner: weakref.ref[LoopClients], loop: asyncio.AbstractEventLoop
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        clients = owner()
        if clients is not None:
            client, _ = clients._pop(loop)
            if client is not None:
                await client.aclose()


def _close_on_loop(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, closer: Any) -> None:
    async def shut() -> None:
        await client.aclose()
        if closer is not None:
            await closer.aclose()

    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        loop.create_task(shut())
    elif loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=5)
        except Exception:  # the loop stopped meanwhile: nothing more can be done from here
            logger.debug("could not close an async client on its loop", exc_info=True)
    else:
        loop.run_until_complete(shut())
