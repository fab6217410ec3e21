"""``wrap``: guard any VLM call — sync or async, returning a value or streaming chunks.

A thin layer over :class:`grvl_sdk.calls.GuardedCall`. For each call (its verdicts share a ``call_id``):

1. the request is found in the arguments (:mod:`grvl_sdk.middleware.extract`) and, if the policy
   checks requests, judged **before** the call: when it is blocked the wrapped function is not called;
2. the function runs;
3. if the policy checks responses, the response is judged **together with its request** (as the model
   was trained) — every choice, tool calls included; a stream is moderated as it flows
   (:mod:`grvl_sdk.middleware.streaming`) and keeps its interface (iteration, ``close()``, ``with``).

A block raises :class:`~grvl_sdk.errors.GuardBlocked` (``.verdict``, ``.stage``) or, with
``on_block="refuse"``, answers the refusal **in the shape the call returns** (a chat completion with
``finish_reason="content_filter"``, a LangChain ``AIMessage``, a string...; see :mod:`grvl_sdk.shapes`),
or ``refusal(verdict)`` if a callable was given. In ``monitor`` mode nothing is blocked; verdicts are
still logged. A call may override the policy for itself with a ``grvl_policy=`` keyword (removed
before the call).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from grvl_sdk.calls import GuardedCall
from grvl_sdk.errors import InputError
from grvl_sdk.middleware.extract import RequestSpec, request_getter, to_spec
from grvl_sdk.policy import PolicyLike
from grvl_sdk.shapes import expected_kind
from grvl_sdk.verdict import Verdict

__all__ = ["POLICY_KWARG", "wrap"]

#: Keyword a caller of a wrapped function may pass to override the policy for that call.
POLICY_KWARG = "grvl_policy"


def _is_stream(value: Any) -> bool:
    return inspect.isgenerator(value) or (
        hasattr(value, "__next__") and hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    )


def _is_astream(value: Any) -> bool:
    return inspect.isasyncgen(value) or hasattr(value, "__anext__")


class _Wrapped:
    """The per-wrap settings shared by every call of the wrapped function."""

    def __init__(
        self,
        guard: Any,
        fn: Callable[..., Any],
        *,
        policy: PolicyLike | None,
        get_request: Callable[..., Any] | None,
        get_response: Callable[[Any], str] | None,
        get_chunk_text: Callable[[Any], Any] | None,
        refusal: Callable[[Verdict], Any] | None,
    ) -> None:
        self.guard = guard
        self.fn = fn
        self.policy = policy
        default = request_getter(fn)
        self.get_request: Callable[[tuple[Any, ...], dict[str, Any]], RequestSpec] = (
            (lambda args, kwargs: to_spec(get_request(*args, **kwargs))) if get_request is not None else default
        )
        self.get_response = get_response
        self.get_chunk_text = get_chunk_text
        self.refusal = refusal

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> GuardedCall:
        """A call: its policy (``kwargs`` loses the policy override) and request."""
        override = kwargs.pop(POLICY_KWARG, None)
        policy = self.guard.policy.merged(self.policy).merged(override)
        spec = self.get_request(args, kwargs)
        request: Any = spec.messages if spec.messages is not None else {"text": spec.text, "images": spec.images}
        return GuardedCall(
            self.guard, request, policy=policy, refusal=self.refusal, expects=expected_kind(self.fn, kwargs),
            model=str(kwargs.get("model") or ""),
        )  # fmt: skip

    def response_value(self, result: Any) -> Any:
        """What the response check reads: ``get_response(result)`` (a string) or the result itself."""
        if self.get_response is None:
            return result
        text = self.get_response(result)
        if not isinstance(text, str):
            raise InputError(f"get_response must return the response text (str), got {type(text).__name__}")
        return text

    def _unreadable(self, exc: InputError) -> InputError:
        if self.get_response is not None:
            return exc
        return InputError(f"{exc.message}; pass get_response=callable to wrap() to read this result", **exc.details)

    def checked(self, call: GuardedCall, result: Any) -> Any:
        try:
            call.check_response(self.response_value(result))
        except InputError as exc:
            raise self._unreadable(exc) from exc
        return call.refusal(call.blocked, like=result) if call.blocked else result

    async def achecked(self, call: GuardedCall, result: Any) -> Any:
        try:
            await call.acheck_response(self.response_value(result))
        except InputError as exc:
            raise self._unreadable(exc) from exc
        return call.refusal(call.blocked, like=result) if call.blocked else result


def wrap(
    guard: Any,
    fn: Callable[..., Any],
    *,
    policy: PolicyLike | None = None,
    get_request: Callable[..., Any] | None = None,
    get_response: Callable[[Any], str] | None = None,
    get_chunk_text: Callable[[Any], Any] | None = None,
    refusal: Callable[[Verdict], Any] | None = None,
) -> Callable[..., Any]:
    """Return ``fn`` guarded by ``guard`` (see the module docstring).

    ``policy`` overrides the guard's policy for this function. ``get_request(*args, **kwargs)`` returns
    the request (a ``RequestSpec``, a string, ``{"text", "image", "images"}`` or ``{"messages"}``);
    ``get_response(result)`` returns the response text; ``get_chunk_text(chunk)`` a chunk's text;
    ``refusal(verdict)`` builds what a refused call returns (or yields, for a stream).
    """
    state = _Wrapped(
        guard, fn, policy=policy, get_request=get_request, get_response=get_response,
        get_chunk_text=get_chunk_text, refusal=refusal,
    )  # fmt: skip
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator(state)
    if inspect.iscoroutinefunction(fn):
        return _wrap_async(state)
    if inspect.isgeneratorfunction(fn):
        return _wrap_generator(state)
    return _wrap_sync(state)


def _wrap_sync(state: _Wrapped) -> Callable[..., Any]:
    @functools.wraps(state.fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = state.start(args, kwargs)
        if call.check_request() is not None and call.blocked:
            return call.refusal_stream() if kwargs.get("stream") else call.refusal()
        result = state.fn(*args, **kwargs)
        if _is_stream(result):
            return call.stream(result, get_chunk_text=state.get_chunk_text)
        if _is_astream(result):
            return call.astream(result, get_chunk_text=state.get_chunk_text)
        return state.checked(call, result)

    return guarded


def _wrap_async(state: _Wrapped) -> Callable[..., Any]:
    @functools.wraps(state.fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        call = state.start(args, kwargs)
        if await call.acheck_request() is not None and call.blocked:
            return call.arefusal_stream() if kwargs.get("stream") else call.refusal()
        result = await state.fn(*args, **kwargs)
        if _is_astream(result):
            return call.astream(result, get_chunk_text=state.get_chunk_text)
        if _is_stream(result):
            return call.stream(result, get_chunk_text=state.get_chunk_text)
        return await state.achecked(call, result)

    return guarded


def _wrap_generator(state: _Wrapped) -> Callable[..., Any]:
    @functools.wraps(state.fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = state.start(args, kwargs)
        if call.check_request() is not None and call.blocked:
            yield call.refusal()
            return
        yield from call.stream(state.fn(*args, **kwargs), get_chunk_text=state.get_chunk_text)

    return guarded


def _wrap_async_generator(state: _Wrapped) -> Callable[..., Any]:
    @functools.wraps(state.fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        call = state.start(args, kwargs)
        if await call.acheck_request() is not None and call.blocked:
            yield call.refusal()
            return
        # ``async for`` does not close what it iterates when the consumer stops early: close it here,
        # so the source is released and the moderated stream runs its final check.
        stream = call.astream(state.fn(*args, **kwargs), get_chunk_text=state.get_chunk_text)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    return guarded
