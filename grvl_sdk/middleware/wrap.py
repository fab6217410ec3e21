"""``wrap``: guard any VLM call — sync or async, returning a value or streaming chunks.

For each call (all verdicts of one call share a ``call_id``):

1. the request is found in the arguments (:mod:`grvl_sdk.middleware.extract`) and, if the policy
   checks requests, judged **before** the call: when it is blocked the wrapped function is not called;
2. the function runs;
3. if the policy checks responses, the response is judged **together with its request** (as the model
   was trained); a stream is moderated as it flows (:mod:`grvl_sdk.middleware.streaming`).

A block raises :class:`~grvl_sdk.errors.GuardBlocked` (``.verdict``, ``.stage``) or, with
``on_block="refuse"``, returns the refusal: ``refusal(verdict)`` if a callable was given, else the
policy's ``refusal`` text. In ``monitor`` mode nothing is blocked; verdicts are still logged.
A call may override the policy for itself with a ``grvl_policy=`` keyword (removed before the call).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from grvl_sdk.backends.base import GuardInput
from grvl_sdk.errors import GuardBlocked
from grvl_sdk.middleware.extract import RequestSpec, chunk_text, request_getter, response_text, to_spec
from grvl_sdk.middleware.streaming import aguard_stream, guard_stream
from grvl_sdk.policy import Policy, PolicyLike
from grvl_sdk.verdict import Stage, Verdict, _new_id

__all__ = ["POLICY_KWARG", "wrap"]

#: Keyword a caller of a wrapped function may pass to override the policy for that call.
POLICY_KWARG = "grvl_policy"


def _is_stream(value: Any) -> bool:
    return inspect.isgenerator(value) or (
        hasattr(value, "__next__") and hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    )


def _is_astream(value: Any) -> bool:
    return inspect.isasyncgen(value) or hasattr(value, "__anext__")


class _Guarded:
    """The per-wrap state shared by the sync and async call paths."""

    def __init__(
        self,
        guard: Any,
        fn: Callable[..., Any],
        *,
        policy: PolicyLike | None,
        get_request: Callable[..., Any] | None,
        get_response: Callable[[Any], str] | None,
        get_chunk_text: Callable[[Any], str] | None,
        refusal: Callable[[Verdict], Any] | None,
    ) -> None:
        self.guard = guard
        self.fn = fn
        self.policy = policy
        default = request_getter(fn)
        self.get_request: Callable[[tuple[Any, ...], dict[str, Any]], RequestSpec] = (
            (lambda args, kwargs: to_spec(get_request(*args, **kwargs))) if get_request is not None else default
        )
        self.get_response = get_response or response_text
        self.get_chunk_text = get_chunk_text or chunk_text
        self.refusal = refusal

    def active_policy(self, kwargs: dict[str, Any]) -> Policy:
        override = kwargs.pop(POLICY_KWARG, None)
        return self.guard.policy.merged(self.policy).merged(override)

    def prepare(self, spec: RequestSpec) -> GuardInput:
        if spec.messages is not None:
            # The request check judges the user's turn; an assistant prefill is not a response yet.
            return dataclasses.replace(self.guard.prepare_conversation(spec.messages), response=None)
        return self.guard.prepare(spec.text, images=spec.images)

    def blocked(self, verdict: Verdict, stage: Stage, policy: Policy) -> Any:
        if policy.on_block == "raise":
            raise GuardBlocked(verdict, stage=stage)
        return self.refusal(verdict) if self.refusal is not None else policy.refusal

    def item(self, call: _Call) -> GuardInput:
        """The call's prepared request (prepared now if the request check did not prepare it)."""
        if call.item is None:
            call.item = self.prepare(call.spec)
        return call.item

    def check_request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        """Start a call: its policy (``kwargs`` loses the policy override), id, and request check (the
        request's images are loaded within the policy's deadline)."""
        policy = self.active_policy(kwargs)
        call = _Call(policy, _new_id(), self.get_request(args, kwargs))
        if policy.check != "response":
            verdict, call.item = self.guard._check_call(
                lambda: self.prepare(call.spec), policy, stage="request", call_id=call.call_id
            )
            call.blocking = verdict if verdict.blocked else None
        return call

    async def acheck_request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
        """Async twin of :meth:`check_request`."""
        policy = self.active_policy(kwargs)
        call = _Call(policy, _new_id(), self.get_request(args, kwargs))
        if policy.check != "response":
            verdict, call.item = await self.guard._acheck_call(
                lambda: self.prepare(call.spec), policy, stage="request", call_id=call.call_id
            )
            call.blocking = verdict if verdict.blocked else None
        return call

    def check_response(self, result: Any, call: _Call) -> Verdict:
        """Judge the call's result together with its request."""
        text = self.get_response(result)
        return self.guard._check_call(
            lambda: dataclasses.replace(self.item(call), response=text),
            call.policy, stage="response", call_id=call.call_id,
        )[0]  # fmt: skip

    async def acheck_response(self, result: Any, call: _Call) -> Verdict:
        """Async twin of :meth:`check_response`."""
        text = self.get_response(result)
        return (await self.guard._acheck_call(
            lambda: dataclasses.replace(self.item(call), response=text),
            call.policy, stage="response", call_id=call.call_id,
        ))[0]  # fmt: skip

    def stream(self, source: Any, call: _Call) -> Any:
        """``source`` moderated as it flows (see :func:`guard_stream`)."""
        return guard_stream(
            self.guard, source, self.item(call), call.policy, call_id=call.call_id,
            get_chunk_text=self.get_chunk_text, refusal=self.refusal,
        )  # fmt: skip

    def astream(self, source: Any, call: _Call) -> Any:
        """Async twin of :meth:`stream`."""
        return aguard_stream(
            self.guard, source, self.item(call), call.policy, call_id=call.call_id,
            get_chunk_text=self.get_chunk_text, refusal=self.refusal,
        )  # fmt: skip


@dataclasses.dataclass
class _Call:
    """One guarded call: its policy, id, request (as found and as prepared), and the request verdict if
    it blocked."""

    policy: Policy
    call_id: str
    spec: RequestSpec
    item: GuardInput | None = None
    blocking: Verdict | None = None


def wrap(
    guard: Any,
    fn: Callable[..., Any],
    *,
    policy: PolicyLike | None = None,
    get_request: Callable[..., Any] | None = None,
    get_response: Callable[[Any], str] | None = None,
    get_chunk_text: Callable[[Any], str] | None = None,
    refusal: Callable[[Verdict], Any] | None = None,
) -> Callable[..., Any]:
    """Return ``fn`` guarded by ``guard`` (see the module docstring).

    ``policy`` overrides the guard's policy for this function. ``get_request(*args, **kwargs)`` returns
    the request (a ``RequestSpec``, a string, ``{"text", "image", "images"}`` or ``{"messages"}``);
    ``get_response(result)`` and ``get_chunk_text(chunk)`` return text; ``refusal(verdict)`` builds what
    a refused call returns (or yields, for a stream).
    """
    state = _Guarded(
        guard,
        fn,
        policy=policy,
        get_request=get_request,
        get_response=get_response,
        get_chunk_text=get_chunk_text,
        refusal=refusal,
    )
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator(state)
    if inspect.iscoroutinefunction(fn):
        return _wrap_async(state)
    if inspect.isgeneratorfunction(fn):
        return _wrap_generator(state)
    return _wrap_sync(state)


def _wrap_sync(state: _Guarded) -> Callable[..., Any]:

    @functools.wraps(state.fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = state.check_request(args, kwargs)
        if call.blocking is not None:
            return state.blocked(call.blocking, "request", call.policy)
        result = state.fn(*args, **kwargs)
        if call.policy.check == "request":
            return result
        if _is_stream(result):
            return state.stream(result, call)
        verdict = state.check_response(result, call)
        if verdict.blocked:
            return state.blocked(verdict, "response", call.policy)
        return result

    return guarded


def _wrap_async(state: _Guarded) -> Callable[..., Any]:

    @functools.wraps(state.fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        call = await state.acheck_request(args, kwargs)
        if call.blocking is not None:
            return state.blocked(call.blocking, "request", call.policy)
        result = await state.fn(*args, **kwargs)
        if call.policy.check == "request":
            return result
        if _is_astream(result):
            return state.astream(result, call)
        verdict = await state.acheck_response(result, call)
        if verdict.blocked:
            return state.blocked(verdict, "response", call.policy)
        return result

    return guarded


def _wrap_generator(state: _Guarded) -> Callable[..., Any]:
    @functools.wraps(state.fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = state.check_request(args, kwargs)
        if call.blocking is not None:
            yield state.blocked(call.blocking, "request", call.policy)
            return
        source = state.fn(*args, **kwargs)
        if call.policy.check == "request":
            yield from source
            return
        yield from state.stream(source, call)

    return guarded


def _wrap_async_generator(state: _Guarded) -> Callable[..., Any]:
    @functools.wraps(state.fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        call = await state.acheck_request(args, kwargs)
        if call.blocking is not None:
            yield state.blocked(call.blocking, "request", call.policy)
            return
        source = state.fn(*args, **kwargs)
        # ``async for`` does not close what it iterates when the consumer stops early: close it here,
        # so the source is released and a moderated stream runs its final check.
        inner = source if call.policy.check == "request" else state.astream(source, call)
        try:
            async for chunk in inner:
                yield chunk
        finally:
            await inner.aclose()

    return guarded
