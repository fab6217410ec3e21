"""Streaming moderation: check a streamed response as it grows, and always at its end.

The accumulated response (with its request) is checked each time ``policy.stream_check_every`` more
characters have arrived (stage ``"stream"``) and once more when the stream ends (stage
``"response"``). With ``stream_mode="buffer"`` chunks are held until a check has passed them, so
nothing unchecked reaches the caller; with ``"passthrough"`` chunks are forwarded at once and the
stream is cut when a check blocks. Either way a stream only finishes after its final check passed:
if a check blocks, the source is closed and the policy's ``on_block`` applies (raise ``GuardBlocked``,
or yield the refusal and stop).

**Ending early.** A consumer that stops reading and closes the stream (``close()``/``aclose()``, a
``break`` in a ``for`` loop over a generator, or the stream being garbage-collected), or a source that
fails, still gets a final check (stage ``"response"``) of the text **delivered** to the consumer so
far — every chunk in passthrough mode, the released chunks in buffer mode — so it is judged and
recorded (log, audit line, hooks); nothing is yielded after that, and a source error still
propagates. A stream abandoned but kept alive (neither closed nor collected) is judged only when it
is collected.

**Bytes chunks** are decoded as UTF-8 incrementally across chunks, so a character split between two
chunks is judged whole (never as U+FFFD while the caller receives the intact text). ``get_chunk_text``
must return ``str`` (or ``bytes``, decoded the same way); anything else is an ``InputError``.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from grvl_sdk.backends.base import GuardInput
from grvl_sdk.errors import GuardBlocked, InputError
from grvl_sdk.middleware.extract import chunk_text
from grvl_sdk.policy import Policy
from grvl_sdk.verdict import Stage, Verdict

__all__ = ["aguard_stream", "guard_stream"]

logger = logging.getLogger("grvl_sdk")


class _Stream:
    """One moderated stream: the text received, chunks held, text delivered, and when a check is due."""

    def __init__(self, policy: Policy, get_chunk_text: Callable[[Any], Any]) -> None:
        self.every = policy.stream_check_every
        self.buffer = policy.stream_mode == "buffer"
        self.get_chunk_text = get_chunk_text
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.received: list[str] = []
        self.length = 0
        self.checked = 0
        self.held: list[tuple[Any, str]] = []
        self.delivered: list[str] = []
        #: The final judgement was made (or a block ended the stream): nothing more to judge.
        self.done = False

    def read(self, chunk: Any) -> str:
        """The chunk's text (bytes decoded incrementally), added to what was received."""
        if isinstance(chunk, (bytes, bytearray, memoryview)) and self.get_chunk_text is chunk_text:
            text = self.decoder.decode(bytes(chunk))
        else:
            value = self.get_chunk_text(chunk)
            if isinstance(value, (bytes, bytearray, memoryview)):
                text = self.decoder.decode(bytes(value))
            elif isinstance(value, str):
                text = value
            else:
                raise InputError(
                    f"get_chunk_text must return str or bytes, got {type(value).__name__} for a "
                    f"{type(chunk).__name__} chunk"
                )
        self.received.append(text)
        self.length += len(text)
        return text

    def end(self) -> None:
        """The source ended: flush an incomplete UTF-8 sequence (as U+FFFD) into the received text."""
        tail = self.decoder.decode(b"", final=True)
        if tail:
            self.received.append(tail)
            self.length += len(tail)
            if self.held:
                chunk, text = self.held[-1]
                self.held[-1] = (chunk, text + tail)

    @property
    def due(self) -> bool:
        return self.length - self.checked >= self.every

    def text(self) -> str:
        """Everything received, marked as checked."""
        self.checked = self.length
        return "".join(self.received)

    def release(self) -> Iterator[Any]:
        """The held chunks, each counted as delivered as it is handed over."""
        held, self.held = self.held, []
        for chunk, text in held:
            self.delivered.append(text)
            yield chunk


def _blocked(verdict: Verdict, stage: Stage, policy: Policy, refusal: Callable[[Verdict], Any] | None) -> Any:
    if policy.on_block == "raise":
        raise GuardBlocked(verdict, stage=stage)
    return refusal(verdict) if refusal is not None else policy.refusal


def _delivered_item(item: GuardInput, stream: _Stream) -> GuardInput | None:
    """What an early end judges: the request with the delivered text; ``None`` if nothing was delivered."""
    stream.done = True
    if not stream.delivered:
        return None
    return dataclasses.replace(item, response="".join(stream.delivered))


def guard_stream(
    guard: Any,
    source: Iterator[Any],
    item: GuardInput,
    policy: Policy,
    *,
    call_id: str,
    get_chunk_text: Callable[[Any], Any],
    refusal: Callable[[Verdict], Any] | None = None,
) -> Iterator[Any]:
    """Moderate a sync stream of chunks (see the module docstring)."""
    stream = _Stream(policy, get_chunk_text)

    def check(stage: Stage) -> Verdict:
        response_item = dataclasses.replace(item, response=stream.text())
        return guard.check_input(response_item, policy=policy, stage=stage, call_id=call_id)

    def judge_delivered() -> None:
        delivered = _delivered_item(item, stream)
        if delivered is None:
            return
        try:
            guard.check_input(delivered, policy=policy, stage="response", call_id=call_id)
        except Exception:
            logger.exception("the final check of a stream that ended early failed (call %s)", call_id)

    try:
        for chunk in source:
            text = stream.read(chunk)
            if stream.buffer:
                stream.held.append((chunk, text))
            else:
                stream.delivered.append(text)
                yield chunk
            if stream.due:
                verdict = check("stream")
                if verdict.blocked:
                    stream.done = True
                    yield _blocked(verdict, "stream", policy, refusal)
                    return
                yield from stream.release()
        stream.end()
        stream.done = True
        verdict = check("response")
        if verdict.blocked:
            yield _blocked(verdict, "response", policy, refusal)
            return
        yield from stream.release()
    except GeneratorExit:
        if not stream.done:
            judge_delivered()
        raise
    except Exception:
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
    get_chunk_text: Callable[[Any], Any],
    refusal: Callable[[Verdict], Any] | None = None,
) -> AsyncIterator[Any]:
    """Moderate an async stream of chunks (see the module docstring)."""
    stream = _Stream(policy, get_chunk_text)

    async def check(stage: Stage) -> Verdict:
        response_item = dataclasses.replace(item, response=stream.text())
        return await guard.acheck_input(response_item, policy=policy, stage=stage, call_id=call_id)

    async def judge_delivered() -> None:
        delivered = _delivered_item(item, stream)
        if delivered is None:
            return
        try:
            await guard.acheck_input(delivered, policy=policy, stage="response", call_id=call_id)
        except Exception:
            logger.exception("the final check of a stream that ended early failed (call %s)", call_id)

    try:
        async for chunk in source:
            text = stream.read(chunk)
            if stream.buffer:
                stream.held.append((chunk, text))
            else:
                stream.delivered.append(text)
                yield chunk
            if stream.due:
                verdict = await check("stream")
                if verdict.blocked:
                    stream.done = True
                    yield _blocked(verdict, "stream", policy, refusal)
                    return
                for released in stream.release():
                    yield released
        stream.end()
        stream.done = True
        verdict = await check("response")
        if verdict.blocked:
            yield _blocked(verdict, "response", policy, refusal)
            return
        for released in stream.release():
            yield released
    except GeneratorExit:
        if not stream.done:
            await judge_delivered()
        raise
    except Exception:
        if not stream.done:
            await judge_delivered()
        raise
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
