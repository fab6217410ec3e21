"""The public call flow: put any model call behind the guard, step by step.

::

    call = guard.call(messages)                  # any request shape (see grvl_sdk.messages)
    call.check_request()                         # before the model; GuardBlocked, or call.refusal
    result = model(...)
    result = call.check_response(result)         # after it: the result, or a refusal in its shape
    stream = call.stream(model(..., stream=True))  # or: moderate a stream, keeping its interface

All verdicts of a call share ``call.call_id``. Which checks run is the policy's ``check``: a stage it
does not check is skipped. A block raises :class:`~grvl_sdk.errors.GuardBlocked` (``on_block="raise"``)
or answers a refusal in the caller's own shape (``on_block="refuse"``, see :mod:`grvl_sdk.shapes`).
Everything the model sees or says is judged — all choices of a response, tool-call names and
arguments, refusal parts, images in any role — or the call is refused with ``InputError``.
:func:`grvl_sdk.middleware.wrap` and the framework adapters are thin layers over this.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from grvl_sdk.errors import GuardBlocked, InputError
from grvl_sdk.policy import Policy, PolicyLike
from grvl_sdk.shapes import Kind, kind_of, refusal
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Stage, Verdict, _new_id

if TYPE_CHECKING:
    from grvl_sdk.guard import Guard

__all__ = ["AsyncGuardedStream", "GuardedCall", "GuardedStream"]

_FIELDS = frozenset({"text", "image", "images"})


class GuardedCall:
    """One guarded model call (see the module docstring).

    ``request``: a string, chat messages of any supported shape, a LangChain prompt value, a prepared
    :class:`~grvl_sdk.types.GuardInput`, or ``None`` with ``text=``/``image=``/``images=``.
    ``refusal``: a callable ``refusal(verdict) -> value`` to answer blocks instead of the built-in
    shapes. ``expects``: the shape a blocked *request* answers with (default ``"text"``; ``wrap`` infers
    it from the guarded function).
    """

    def __init__(
        self,
        guard: Guard,
        request: Any = None,
        *,
        policy: PolicyLike | None = None,
        refusal: Callable[[Verdict], Any] | None = None,
        expects: Kind = "text",
        model: str = "",
        **fields: Any,
    ) -> None:
        unknown = set(fields) - _FIELDS
        if unknown:
            raise InputError(f"unknown request fields {sorted(unknown)}; use text=, image=, images=")
        if request is not None and fields:
            raise InputError("give the request either as one value or as text=/image=/images=, not both")
        if request is None and not fields:
            raise InputError("a guarded call needs its request (a string, messages, or text=/image=)")
        self.guard = guard
        self.policy: Policy = guard.policy.merged(policy)
        self.call_id = _new_id()
        self.expects = expects
        self.model = model
        self._request = fields if request is None else request
        self._refusal = refusal
        self.item: GuardInput | None = None
        #: The verdicts of this call, in order.
        self.verdicts: list[Verdict] = []

    # -- request ---------------------------------------------------------------------------------
    def _prepare(self) -> GuardInput:
        """The request as the guard's input (prepared once; the request stage ignores an assistant prefill)."""
        if self.item is None:
            self.item = _request_input(self.guard, self._request)
        return self.item

    @property
    def checks_request(self) -> bool:
        return self.policy.check != "response"

    @property
    def checks_response(self) -> bool:
        return self.policy.check != "request"

    def check_request(self) -> Verdict | None:
        """Judge the request (images loaded within the policy's deadline). Returns the verdict, or
        ``None`` when the policy does not check requests. Raises :class:`GuardBlocked` when blocked and
        ``on_block="raise"``; with ``"refuse"`` check :attr:`blocked` and answer :meth:`refusal`."""
        if not self.checks_request:
            return None
        verdict, item = self.guard._run(self._prepare, True, self.policy, None, stage="request",
                                        call_id=self.call_id)  # fmt: skip
        self.item = item or self.item
        return self._settle(verdict, "request")

    async def acheck_request(self) -> Verdict | None:
        """Async twin of :meth:`check_request`."""
        if not self.checks_request:
            return None
        verdict, item = await self.guard._arun(self._prepare, True, self.policy, None, stage="request",
                                               call_id=self.call_id)  # fmt: skip
        self.item = item or self.item
        return self._settle(verdict, "request")

    def _settle(self, verdict: Verdict, stage: Stage) -> Verdict:
        self.verdicts.append(verdict)
        if verdict.blocked and self.policy.on_block == "raise":
            raise GuardBlocked(verdict, stage=stage)
        return verdict

    @property
    def blocked(self) -> Verdict | None:
        """The verdict that blocked this call, if one did."""
        return next((v for v in self.verdicts if v.blocked), None)

    def refusal(self, verdict: Verdict | None = None, *, like: Any = None, kind: Kind | None = None) -> Any:
        """What a refused call answers: ``refusal(verdict)`` when given, else the policy's refusal text in
        the shape of ``like`` (a value the call returned) or ``kind`` (default: :attr:`expects`)."""
        verdict = verdict or self.blocked
        if verdict is None:
            raise InputError("nothing was blocked: no refusal to make")
        if self._refusal is not None:
            return self._refusal(verdict)
        shape = kind or (kind_of(like) if like is not None else self.expects)
        return refusal(shape, self.policy.refusal, verdict, stage=verdict.stage or "request", template=like,
                       model=self.model)  # fmt: skip

    def refusal_stream(self, verdict: Verdict | None = None) -> GuardedStream:
        """A blocked *streaming* call's answer: a stream (same interface as a guarded one) holding the
        refusal as its only chunk."""
        return GuardedStream(iter([self.refusal(verdict)]), None)

    def arefusal_stream(self, verdict: Verdict | None = None) -> AsyncGuardedStream:
        """Async twin of :meth:`refusal_stream`."""
        chunk = self.refusal(verdict)

        async def one() -> AsyncIterator[Any]:
            yield chunk

        return AsyncGuardedStream(one(), None)

    # -- response --------------------------------------------------------------------------------
    def _responses(self, response: Any) -> list[GuardInput]:
        from grvl_sdk.messages import response_messages

        item = self._prepare()
        answers = response_messages(response)
        if not answers:
            raise InputError(f"the response holds nothing to judge ({type(response).__name__})")
        return [_with_response(self.guard, item, answer) for answer in answers]

    def check_response(self, response: Any) -> Any:
        """Judge ``response`` with its request — every choice, tool calls included — and return it, or
        (blocked, ``on_block="refuse"``) a refusal in its own shape; raises :class:`GuardBlocked` when
        blocked and ``on_block="raise"``. Returns ``response`` unchanged when the policy does not check
        responses."""
        if not self.checks_response:
            return response
        for item in self._responses(response):
            verdict = self.guard._run(functools.partial(_same, item), True, self.policy, None, stage="response",
                                      call_id=self.call_id)[0]  # fmt: skip
            if self._settle(verdict, "response").blocked:
                return self.refusal(verdict, like=response)
        return response

    async def acheck_response(self, response: Any) -> Any:
        """Async twin of :meth:`check_response`."""
        if not self.checks_response:
            return response
        for item in self._responses(response):
            verdict = (await self.guard._arun(functools.partial(_same, item), True, self.policy, None,
                                              stage="response", call_id=self.call_id))[0]  # fmt: skip
            if self._settle(verdict, "response").blocked:
                return self.refusal(verdict, like=response)
        return response

    # -- streams ---------------------------------------------------------------------------------
    def stream(self, source: Any, *, get_chunk_text: Callable[[Any], Any] | None = None) -> GuardedStream:
        """``source`` (an iterable of chunks) moderated as it flows (see
        :mod:`grvl_sdk.middleware.streaming`), as a :class:`GuardedStream` that keeps ``source``'s
        interface: iteration, ``close()``, ``with ... as stream``, and its other attributes."""
        from grvl_sdk.middleware.streaming import guard_stream

        if not self.checks_response:
            return GuardedStream(iter(source), source)
        moderated = guard_stream(
            self.guard, iter(source), self._prepare(), self.policy, call_id=self.call_id,
            get_chunk_text=get_chunk_text, refusal=self._stream_refusal, on_verdict=self.verdicts.append,
        )  # fmt: skip
        return GuardedStream(moderated, source)

    def astream(self, source: Any, *, get_chunk_text: Callable[[Any], Any] | None = None) -> AsyncGuardedStream:
        """Async twin of :meth:`stream` (``source`` an async iterable)."""
        from grvl_sdk.middleware.streaming import aguard_stream

        if not self.checks_response:
            return AsyncGuardedStream(aiter(source), source)
        moderated = aguard_stream(
            self.guard, aiter(source), self._prepare(), self.policy, call_id=self.call_id,
            get_chunk_text=get_chunk_text, refusal=self._stream_refusal, on_verdict=self.verdicts.append,
        )  # fmt: skip
        return AsyncGuardedStream(moderated, source)

    def _stream_refusal(self, verdict: Verdict, last_chunk: Any) -> Any:
        return self.refusal(verdict, like=last_chunk) if last_chunk is not None else self.refusal(verdict)


def _same(item: GuardInput) -> GuardInput:
    return item


def _request_input(guard: Guard, request: Any) -> GuardInput:
    """Any request shape as the guard's input (see :class:`GuardedCall`)."""
    if isinstance(request, GuardInput):
        return request
    if isinstance(request, Mapping) and request and set(request) <= _FIELDS:
        return guard.prepare(request.get("text"), request.get("image"), images=request.get("images"))
    if isinstance(request, str):
        return guard.prepare(request)
    # Chat messages (any shape): the latest user turn with context; an assistant prefill is no response yet.
    return dataclasses.replace(guard.prepare_conversation(request), response=None)


def _with_response(guard: Guard, item: GuardInput, answer: Any) -> GuardInput:
    """``item`` with one answer (a ``grvl_sdk.messages.Message``) as its response; images an answer
    carries are judged with the request's."""
    text = guard.prepare(response=answer.text).response
    if not answer.images:
        return dataclasses.replace(item, response=text)
    images = guard.prepare(images=list(answer.images), response="").images
    return dataclasses.replace(item, response=text, images=(*item.images, *images))


class GuardedStream:
    """A moderated stream that keeps its source's interface: iterate it, ``close()`` it, use it as a
    context manager; other attributes (``response``, ...) are the source's."""

    def __init__(self, moderated: Iterator[Any], source: Any) -> None:
        self._moderated = moderated
        self._source = source

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> Any:
        return next(self._moderated)

    def close(self) -> None:
        """Stop the stream: the source is closed and what was delivered gets its final check."""
        close = getattr(self._moderated, "close", None)
        if close is not None:
            close()
        source_close = getattr(self._source, "close", None)
        if source_close is not None and self._source is not self._moderated:
            source_close()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class AsyncGuardedStream:
    """Async twin of :class:`GuardedStream`: ``async for``, ``await close()``/``aclose()``,
    ``async with``; other attributes are the source's."""

    def __init__(self, moderated: AsyncIterator[Any], source: Any) -> None:
        self._moderated = moderated
        self._source = source

    def __aiter__(self) -> AsyncGuardedStream:
        return self

    async def __anext__(self) -> Any:
        return await self._moderated.__anext__()

    async def aclose(self) -> None:
        """Stop the stream: the source is closed and what was delivered gets its final check."""
        aclose = getattr(self._moderated, "aclose", None)
        if aclose is not None:
            await aclose()
        for name in ("aclose", "close"):
            source_close = getattr(self._source, name, None)
            if source_close is not None and self._source is not self._moderated:
                result = source_close()
                if hasattr(result, "__await__"):
                    await result
                break

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)
