"""Streaming moderation: check a streamed response as it grows, and always at its end.

The accumulated response (with its request) is checked each time ``policy.stream_check_every`` more
characters have arrived (stage ``"stream"``) and once more when the stream ends (stage
``"response"``). With ``stream_mode="buffer"`` chunks are held until a check has passed them, so
nothing unchecked reaches the caller; with ``"passthrough"`` chunks are forwarded at once and the
stream is cut when a check blocks. Either way a stream only finishes after its final check passed:
if the source stream fails, its error propagates and held chunks are never released; if a check
blocks, the source is closed and the policy's ``on_block`` applies (raise ``GuardBlocked``, or yield
the refusal and stop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from grvl_sdk.backends.base import GuardInput
from grvl_sdk.errors import GuardBlocked
from grvl_sdk.policy import Policy
from grvl_sdk.verdict import Stage, Verdict

__all__ = ["aguard_stream", "guard_stream"]


class _Progress:
    """Accumulated text and when the next check is due."""

    def __init__(self, policy: Policy) -> None:
        self.every = policy.stream_check_every
        self.parts: list[str] = []
        self.length = 0
        self.checked = 0

    def add(self, text: str) -> bool:
        """Add a chunk's text; True when a periodic check is due."""
        self.parts.append(text)
        self.length += len(text)
        return self.length - self.checked >= self.every

    def text(self) -> str:
        self.checked = self.length
        return "".join(self.parts)


def _blocked(verdict: Verdict, stage: Stage, policy: Policy, refusal: Callable[[Verdict], Any] | None) -> Any:
    if policy.on_block == "raise":
        raise GuardBlocked(verdict, stage=stage)
    return refusal(verdict) if refusal is not None else policy.refusal


def guard_stream(
    guard: Any,
    source: Iterator[Any],
    item: GuardInput,
    policy: Policy,
    *,
    call_id: str,
    get_chunk_text: Callable[[Any], str],
    refusal: Callable[[Verdict], Any] | None = None,
) -> Iterator[Any]:
    """Moderate a sync stream of chunks (see the module docstring)."""
    progress = _Progress(policy)
    held: list[Any] = []
    buffer = policy.stream_mode == "buffer"

    def check(stage: Stage) -> Verdict:
        response_item = dataclasses.replace(item, response=progress.text())
        return guard.check_input(response_item, policy=policy, stage=stage, call_id=call_id)

    try:
        for chunk in source:
            due = progress.add(get_chunk_text(chunk))
            if buffer:
                held.append(chunk)
            else:
                yield chunk
            if due:
                verdict = check("stream")
                if verdict.blocked:
                    yield _blocked(verdict, "stream", policy, refusal)
                    return
                yield from held
                held.clear()
        verdict = check("response")
        if verdict.blocked:
            yield _blocked(verdict, "response", policy, refusal)
            return
        yield from held
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


async def aguard_stream(
    guard: Any,
    source: AsyncIterator[Any],
    item: GuardInput,
    policy: Policy,
    *,
    call_id: str,
    get_chunk_text: Callable[[Any], str],
    refusal: Callable[[Verdict], Any] | None = None,
) -> AsyncIterator[Any]:
    """Moderate an async stream of chunks (see the module docstring)."""
    progress = _Progress(policy)
    held: list[Any] = []
    buffer = policy.stream_mode == "buffer"

    async def check(stage: Stage) -> Verdict:
        response_item = dataclasses.replace(item, response=progress.text())
        return await guard.acheck_input(response_item, policy=policy, stage=stage, call_id=call_id)

    try:
        async for chunk in source:
            due = progress.add(get_chunk_text(chunk))
            if buffer:
                held.append(chunk)
            else:
                yield chunk
            if due:
                verdict = await check("stream")
                if verdict.blocked:
                    yield _blocked(verdict, "stream", policy, refusal)
                    return
                for released in held:
                    yield released
                held.clear()
        verdict = await check("response")
        if verdict.blocked:
            yield _blocked(verdict, "response", policy, refusal)
            return
        for released in held:
            yield released
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
