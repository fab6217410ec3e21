"""Streaming moderation: check a streamed response as it grows, and always at its end.

Chunk text is read per choice (:func:`grvl_sdk.messages.chunk_deltas`: content, refusal and tool-call
fragments; several choices kept apart), or by a ``get_chunk_text`` callable (one choice). Each time
a check is due by the policy's :class:`~grvl_sdk.middleware.schedule.CheckSchedule` (first after
``stream_check_every`` characters, then at geometrically growing offsets, at most ``stream_max_checks``
generations per choice), every choice received so far is checked with its request (stage
``"stream"``), and once more when the stream ends (stage ``"response"``, always).
With ``stream_mode="buffer"`` chunks are held until a check has passed them, so nothing unchecked
reaches the caller; with ``"passthrough"`` chunks are forwarded at once and the stream is cut when a
check blocks. Either way a stream only finishes after its final check passed: if a check blocks, the
source is closed and the policy's ``on_block`` applies (raise ``GuardBlocked``, or yield the refusal
and stop).

**Ending early.** A consumer that stops reading and closes the stream (``close()``/``aclose()``, a
``break`` out of a loop over it, or the stream being garbage-collected), or a source that fails,
still gets a final check (stage ``"response"``) of the text **delivered** to the consumer so far —
every chunk in passthrough mode, the released chunks in buffer mode — so it is judged and recorded
(log, audit line, hooks); nothing is yielded after that, and a source error still propagates. In
passthrough mode the leak window (text delivered before it is judged) is the schedule's
(:meth:`~grvl_sdk.middleware.schedule.CheckSchedule.leak_window`).

**Bytes chunks** are decoded as UTF-8 incrementally across chunks, so a character split between two
chunks is judged whole. ``get_chunk_text`` must return ``str`` (or ``bytes``); anything else is an
``InputError``.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from grvl_sdk._threads import in_daemon_thread
from grvl_sdk.errors import GuardBlocked, InputError
from grvl_sdk.middleware.schedule import CheckSchedule
from grvl_sdk.policy import Policy
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Stage, Verdict

__all__ = ["aguard_stream", "guard_stream"]

logger = logging.getLogger("grvl_sdk")

#: ``refusal(verdict, last_chunk)``: what a refused stream yields (``last_chunk`` shows the chunk shape).
StreamRefusal = Callable[[Verdict, Any], Any]


class _Stream:
    """One moderated stream: text received and delivered per choice, chunks held, when a check is due."""

    def __init__(self, policy: Policy, get_chunk_text: Callable[[Any], Any] | None) -> None:
        self.schedule = CheckSchedule.for_policy(policy)
        self.buffer = policy.stream_mode == "buffer"
        self.get_chunk_text = get_chunk_text
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.received: dict[int, list[str]] = {}
        self.delivered: dict[int, list[str]] = {}
        self.length = 0
        self.held: list[tuple[Any, list[tuple[int, str]]]] = []
        self.last: Any = None
        #: The final judgement was made (or a block ended the stream): nothing more to judge.
        self.done = False

    def read(self, chunk: Any) -> list[tuple[int, str]]:
        """The chunk's text per choice (bytes decoded incrementally), added to what was received."""
        self.last = chunk
        if isinstance(chunk, (bytes, bytearray, memoryview)) and self.get_chunk_text is None:
            parts = [(0, self.decoder.decode(bytes(chunk)))]
        elif self.get_chunk_text is None:
            from grvl_sdk.messages import chunk_deltas

            parts = [(delta.index, delta.text) for delta in chunk_deltas(chunk)]
        else:
            value = self.get_chunk_text(chunk)
            if isinstance(value, (bytes, bytearray, memoryview)):
                parts = [(0, self.decoder.decode(bytes(value)))]
            elif isinstance(value, str):
                parts = [(0, value)]
            else:
                raise InputError(
                    f"get_chunk_text must return str or bytes, got {type(value).__name__} for a "
                    f"{type(chunk).__name__} chunk"
                )
        for index, text in parts:
            self.received.setdefault(index, []).append(text)
            self.length += len(text)
        return parts

    def end(self) -> None:
        """The source ended: flush an incomplete UTF-8 sequence (as U+FFFD) into choice 0."""
        tail = self.decoder.decode(b"", final=True)
        if tail:
            self.received.setdefault(0, []).append(tail)
            self.length += len(tail)
            if self.held:
                self.held[-1][1].append((0, tail))
            else:
                self.delivered.setdefault(0, []).append(tail)

    @property
    def due(self) -> bool:
        return self.schedule.due(self.length)

    def texts(self, *, final: bool = False) -> list[str]:
        """Each choice's text received so far (choice 0 at least); an intermediate check is recorded."""
        if not final:
            self.schedule.mark(self.length)
        return ["".join(self.received[i]) for i in sorted(self.received)] or [""]

    def deliver(self, parts: list[tuple[int, str]]) -> None:
        for index, text in parts:
            self.delivered.setdefault(index, []).append(text)

    def release(self) -> Iterator[Any]:
        """The held chunks, each counted as delivered as it is handed over."""
        held, self.held = self.held, []
        for chunk, parts in held:
            self.deliver(parts)
            yield chunk

    def delivered_texts(self) -> list[str]:
        self.done = True
        return ["".join(parts) for _, parts in sorted(self.delivered.items()) if "".join(parts)]


def _blocked(verdict: Verdict, stage: Stage, policy: Policy, refusal: StreamRefusal | None, last: Any) -> Any:
    if policy.on_block == "raise":
        raise GuardBlocked(verdict, stage=stage)
    return refusal(verdict, last) if refusal is not None else policy.refusal


def guard_stream(
    guard: Any,
    source: Iterator[Any],
    item: GuardInput,
    policy: Policy,
    *,
    call_id: str,
    get_chunk_text: Callable[[Any], Any] | None = None,
    refusal: StreamRefusal | None = None,
    on_verdict: Callable[[Verdict], Any] | None = None,
) -> Iterator[Any]:
    """Moderate a sync stream of chunks (see the module docstring)."""
    stream = _Stream(policy, get_chunk_text)

    def judge(texts: list[str], stage: Stage) -> Verdict | None:
        """Check each choice's text; the first blocking verdict (or ``None``)."""
        for text in texts:
            verdict = guard.check_input(dataclasses.replace(item, response=text), policy=policy, stage=stage,
                                        call_id=call_id)  # fmt: skip
            if on_verdict is not None:
                on_verdict(verdict)
            if verdict.blocked:
                return verdict
        return None

    def judge_delivered() -> None:
        texts = stream.delivered_texts()
        if texts:
            try:
                judge(texts, "response")
            except Exception:
                logger.exception("the final check of a stream that ended early failed (call %s)", call_id)

    try:
        for chunk in source:
            parts = stream.read(chunk)
            if stream.buffer:
                stream.held.append((chunk, parts))
            else:
                stream.deliver(parts)
                yield chunk
            if stream.due:
                blocking = judge(stream.texts(), "stream")
                if blocking is not None:
                    stream.done = True
                    yield _blocked(blocking, "stream", policy, refusal, stream.last)
                    return
                yield from stream.release()
        stream.end()
        stream.done = True
        blocking = judge(stream.texts(final=True), "response")
        if blocking is not None:
            yield _blocked(blocking, "response", policy, refusal, stream.last)
            return
        yield from stream.release()
    except BaseException:  # closed early (GeneratorExit), a failing source, anything: judge what was delivered
        if not stream.done:
            judge_delivered()
        raise
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
    get_chunk_text: Callable[[Any], Any] | None = None,
    refusal: StreamRefusal | None = None,
    on_verdict: Callable[[Verdict], Any] | None = None,
) -> AsyncIterator[Any]:
    """Moderate an async stream of chunks (see the module docstring)."""
    stream = _Stream(policy, get_chunk_text)

    async def judge(texts: list[str], stage: Stage) -> Verdict | None:
        for text in texts:
            verdict = await guard.acheck_input(dataclasses.replace(item, response=text), policy=policy,
                                               stage=stage, call_id=call_id)  # fmt: skip
            if on_verdict is not None:
                on_verdict(verdict)
            if verdict.blocked:
                return verdict
        return None

    def judge_sync(texts: list[str]) -> None:
        try:
            for text in texts:
                verdict = guard.check_input(dataclasses.replace(item, response=text), policy=policy,
                                            stage="response", call_id=call_id)  # fmt: skip
                if on_verdict is not None:
                    on_verdict(verdict)
        except Exception:
            logger.exception("the final check of a stream that ended early failed (call %s)", call_id)

    def judge_delivered() -> Any:
        """The final check of what was delivered, on a worker thread: it completes and is recorded even
        when the task awaiting it is cancelled or the event loop is shutting down."""
        texts = stream.delivered_texts()
        return in_daemon_thread(judge_sync, texts) if texts else None

    try:
        async for chunk in source:
            parts = stream.read(chunk)
            if stream.buffer:
                stream.held.append((chunk, parts))
            else:
                stream.deliver(parts)
                yield chunk
            if stream.due:
                blocking = await judge(stream.texts(), "stream")
                if blocking is not None:
                    stream.done = True
                    yield _blocked(blocking, "stream", policy, refusal, stream.last)
                    return
                for released in stream.release():
                    yield released
        stream.end()
        stream.done = True
        blocking = await judge(stream.texts(final=True), "response")
        if blocking is not None:
            yield _blocked(blocking, "response", policy, refusal, stream.last)
            return
        for released in stream.release():
            yield released
    except asyncio.CancelledError:  # cancelled: judge in the background, never delay the cancellation
        if not stream.done:
            judge_delivered()
        raise
    except BaseException:  # closed early (GeneratorExit), a failing source, anything: judge what was delivered
        if not stream.done:
            pending = judge_delivered()
            if pending is not None:
                await asyncio.shield(asyncio.wrap_future(pending))
        raise
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
