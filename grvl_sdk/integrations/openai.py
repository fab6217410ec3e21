"""The OpenAI client, guarded: ``GuardedOpenAI(OpenAI(), guard)`` / ``AsyncGuardedOpenAI(AsyncOpenAI(), guard)``.

Same surface as the client for the two generation APIs, everything else passed through unchanged::

    client = GuardedOpenAI(OpenAI(), guard, policy={"on_block": "refuse"})
    completion = client.chat.completions.create(model=..., messages=[...])          # judged twice
    with client.chat.completions.create(model=..., messages=[...], stream=True) as stream:
        for chunk in stream: ...                                                    # moderated
    response = client.responses.create(model=..., input=[...])                      # Responses API

Guarded calls — ``chat.completions.create`` / ``.parse`` and ``responses.create`` / ``.parse``, with
and without ``stream=True`` (one :class:`~grvl_sdk.calls.GuardedCall` each; sync and async alike):

1. **The request is judged before the upstream is called**: Chat Completions ``messages``; Responses
   ``instructions`` (as a system turn) and ``input`` (a string or items) — text, images (``image_url`` /
   ``input_image`` parts), tool calls and tool results; the latest user turn with the rest as context
   (:mod:`grvl_sdk.conversation`); fields overridden in ``extra_body`` are judged as sent. A Responses
   input without a user turn (tool outputs continuing a ``previous_response_id``) is judged as a whole.
   Blocked: the upstream is **not** called.
2. **The response is judged before it is returned**: every choice (``n > 1``), its text, refusal and
   tool calls (name and arguments); a Responses ``output`` (messages, function calls, reasoning).
   Fields the client's types do not declare (``reasoning_content`` of vLLM / DeepSeek servers, a
   choice's ``text``...) are not read by the guard, so they are **removed** from answers, chunks and
   events before they are judged and returned: what reaches you was judged.
3. **Streams** are moderated as they flow (:mod:`grvl_sdk.middleware.streaming`: ``stream_mode``
   ``"buffer"`` holds chunks until a check passed them, ``"passthrough"`` forwards them and cuts the
   stream on a block; the final check always runs) and keep the SDK's stream interface: iteration,
   ``with ... as stream``, ``close()`` (``async for`` / ``async with`` / ``await close()``), and the
   stream's other attributes (``response``...). Every Responses stream event is read: deltas add their
   text; events repeating content (``*.done``, content parts, output items, the ``Response`` of
   ``response.completed``) are judged too when they hold more than what was streamed (a server may send
   whole items without deltas); an event carrying content the guard cannot read (audio, images, code
   interpreter code, MCP arguments, hosted tool items, unknown event types...) raises
   :class:`~grvl_sdk.errors.InputError` rather than being let through unjudged.

A block raises :class:`~grvl_sdk.errors.GuardBlocked` (``on_block="raise"``, the guard's default) or
answers the policy's refusal in the API's shape (``on_block="refuse"``, see :mod:`grvl_sdk.shapes`): a
``ChatCompletion`` whose choices have ``finish_reason="content_filter"``, a stream ending with a chunk
that carries the refusal and ``content_filter``; a Responses ``Response`` with ``status="incomplete"``
and ``incomplete_details.reason="content_filter"``, a Responses stream ending with a
``response.output_text.delta`` event holding the refusal and a ``response.incomplete`` event. Each
refusal carries ``grvl`` (decision, stage, verdict id). A call may override the policy with a
``grvl_policy=`` keyword (removed before the upstream call).

Not guarded: the SDK's streaming helpers and raw-response wrappers of these APIs
(``chat.completions.stream``, ``responses.stream``, ``with_raw_response``, ``with_streaming_response``,
``responses.connect``) raise :class:`~grvl_sdk.errors.UnguardedCallError` (a ``NotImplementedError``;
use ``create(..., stream=True)``); the other
APIs (legacy ``completions``, audio, images, realtime, ``beta``...) pass through **unjudged**.
Server-side context (``previous_response_id``, ``conversation``, stored ``prompt`` templates) is not
visible to the guard: only what the call sends is judged.

Needs the ``openai`` package: ``pip install 'grvl-sdk[openai]'`` (else
:class:`~grvl_sdk.errors.MissingDependencyError` on import).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.calls import AsyncGuardedStream, GuardedCall, GuardedStream
from grvl_sdk.errors import InputError, UnguardedCallError
from grvl_sdk.messages import to_messages
from grvl_sdk.messages._response_events import ResponsesEventReader
from grvl_sdk.middleware.wrap import POLICY_KWARG
from grvl_sdk.policy import Policy, PolicyLike
from grvl_sdk.shapes import Kind
from grvl_sdk.shapes import refusal as shaped_refusal
from grvl_sdk.verdict import Verdict

_openai = require("openai", extra="openai")

__all__ = ["AsyncGuardedOpenAI", "GuardedOpenAI"]

#: Methods of the guarded resources (and the client) that would reach the model around the guard.
_BYPASSES = frozenset({"stream", "with_raw_response", "with_streaming_response", "connect"})


def _drop_extras(value: Any) -> Any:
    """``value`` (an ``openai`` model: answer, chunk, event) with the fields its type does not declare
    removed, at every depth (in place): the guard does not read them, so they must not be returned."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, _openai.BaseModel):
            extra = node.__pydantic_extra__
            if extra:
                extra.clear()
            stack.extend(item for item in node.__dict__.values() if isinstance(item, (_openai.BaseModel, list)))
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (_openai.BaseModel, list)))
    return value


async def _adrop_extras(source: Any) -> AsyncIterator[Any]:
    """The chunks of async ``source``, each through :func:`_drop_extras`."""
    async for chunk in source:
        yield _drop_extras(chunk)


def _reading(reader: ResponsesEventReader) -> Callable[[Any], str]:
    """``get_chunk_text`` of a Responses stream: the event's undeclared fields dropped, then ``reader``."""
    return lambda event: reader(_drop_extras(event))


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _sent(kwargs: Mapping[str, Any], name: str) -> Any:
    """The value of request field ``name`` the upstream receives: ``extra_body`` overrides the keyword."""
    extra = kwargs.get("extra_body")
    return extra[name] if isinstance(extra, Mapping) and name in extra else kwargs.get(name)


def _bypass(owner: str, name: str) -> UnguardedCallError:
    return UnguardedCallError(
        f"{owner}.{name} is not guarded by grvl-sdk: its output would reach you unjudged; use "
        "create(..., stream=True) (or call the unwrapped client deliberately)"
    )


class _RefusalEvents(list[Any]):
    """The events standing for one refusal in a Responses stream (expanded by :func:`_expand`)."""


def _refusal_events(policy: Policy, model: str, reader: ResponsesEventReader) -> Callable[[Verdict], _RefusalEvents]:
    types = _openai.types.responses

    def build(verdict: Verdict) -> _RefusalEvents:
        response = shaped_refusal("openai.responses", policy.refusal, verdict, stage=verdict.stage or "request",
                                  model=model)  # fmt: skip
        first = reader.sequence + 1
        delta = {"type": "response.output_text.delta", "item_id": f"msg_grvl_{verdict.id}", "output_index": 0,
                 "content_index": 0, "delta": policy.refusal, "logprobs": [], "sequence_number": first}  # fmt: skip
        end = {"type": "response.incomplete", "response": response, "sequence_number": first + 1}
        return _RefusalEvents([types.ResponseTextDeltaEvent.model_validate(delta),
                               types.ResponseIncompleteEvent.model_validate(end)])  # fmt: skip

    return build


def _expand(moderated: GuardedStream) -> Iterator[Any]:
    try:
        for item in moderated:
            if isinstance(item, _RefusalEvents):
                yield from item
            else:
                yield item
    finally:
        moderated.close()


async def _aexpand(moderated: AsyncGuardedStream) -> AsyncIterator[Any]:
    try:
        async for item in moderated:
            if isinstance(item, _RefusalEvents):
                for event in item:
                    yield event
            else:
                yield item
    finally:
        await moderated.aclose()


def _responses_request(kwargs: Mapping[str, Any]) -> Any:
    """What a ``responses.create`` call sends the model, as a guarded call's request: ``instructions``
    as a system turn and the ``input`` items; without a user turn, every item's text and images."""
    items: list[Any] = []
    instructions = _sent(kwargs, "instructions")
    if isinstance(instructions, str) and instructions:
        items.append({"role": "system", "content": instructions})
    elif isinstance(instructions, (list, tuple)):
        items.extend(instructions)
    value = _sent(kwargs, "input")
    if isinstance(value, str):
        items.append({"role": "user", "content": value})
    elif isinstance(value, (list, tuple)):
        items.extend(value)
    turns = to_messages(items)
    if any(turn.role == "user" for turn in turns):
        return items
    return {"text": "\n".join(turn.text for turn in turns if turn.text),
            "images": [image for turn in turns for image in turn.images]}  # fmt: skip


class _Guarding:
    """What every guarded method shares: the guard, the policy, and how a call starts."""

    def __init__(self, guard: Any, policy: PolicyLike | None) -> None:
        self.guard = guard
        self.policy = guard.policy.merged(policy)

    def start(
        self, kwargs: dict[str, Any], request: Any, expects: Kind, refusal: Callable[[Verdict], Any] | None = None
    ) -> GuardedCall:
        policy = self.policy.merged(kwargs.pop(POLICY_KWARG, None))
        return GuardedCall(self.guard, request, policy=policy, refusal=refusal, expects=expects,
                           model=str(kwargs.get("model") or ""))  # fmt: skip

    def start_chat(self, kwargs: dict[str, Any]) -> GuardedCall:
        expects: Kind = "openai.chat.chunk" if kwargs.get("stream") else "openai.chat"
        return self.start(kwargs, _sent(kwargs, "messages"), expects)

    def start_responses(self, kwargs: dict[str, Any]) -> tuple[GuardedCall, ResponsesEventReader | None]:
        if _sent(kwargs, "background"):  # its output is made later and fetched by retrieve(), unjudged
            raise InputError(
                "responses.create(background=True) is not guarded: the output is produced after the call returns "
                "and fetched with responses.retrieve(), which the guard never sees; call without background"
            )
        if not kwargs.get("stream"):
            return self.start(kwargs, _responses_request(kwargs), "openai.responses"), None
        reader = ResponsesEventReader()
        policy = self.policy.merged(kwargs.get(POLICY_KWARG))
        events = _refusal_events(policy, str(kwargs.get("model") or ""), reader)
        return self.start(kwargs, _responses_request(kwargs), "openai.responses", refusal=events), reader


class _Resource:
    """A resource of the client: the guarded methods, the rest of its attributes passed through."""

    _owner = "client"

    def __init__(self, resource: Any, guarding: _Guarding) -> None:
        self._resource = resource
        self._guarding = guarding

    def __getattr__(self, name: str) -> Any:
        if name in _BYPASSES:
            raise _bypass(self._owner, name)
        return getattr(self._resource, name)


class _ChatCompletions(_Resource):
    _owner = "chat.completions"

    def create(self, **kwargs: Any) -> Any:
        """``chat.completions.create``, guarded (see the module docstring)."""
        call = self._guarding.start_chat(kwargs)
        streaming = bool(kwargs.get("stream"))
        if call.check_request() is not None and call.blocked:
            return call.refusal_stream() if streaming else call.refusal()
        result = self._resource.create(**kwargs)
        if streaming:  # the outer stream keeps the SDK stream's interface (close(), response...)
            return GuardedStream(call.stream(map(_drop_extras, result)), result)
        return call.check_response(_drop_extras(result))

    def parse(self, **kwargs: Any) -> Any:
        """``chat.completions.parse`` (structured outputs), guarded like :meth:`create`."""
        call = self._guarding.start_chat(kwargs)
        if call.check_request() is not None and call.blocked:
            return call.refusal()
        return call.check_response(_drop_extras(self._resource.parse(**kwargs)))


class _AsyncChatCompletions(_Resource):
    _owner = "chat.completions"

    async def create(self, **kwargs: Any) -> Any:
        """``await chat.completions.create``, guarded (see the module docstring)."""
        call = self._guarding.start_chat(kwargs)
        streaming = bool(kwargs.get("stream"))
        if await call.acheck_request() is not None and call.blocked:
            return call.arefusal_stream() if streaming else call.refusal()
        result = await self._resource.create(**kwargs)
        if streaming:
            return AsyncGuardedStream(call.astream(_adrop_extras(result)), result)
        return await call.acheck_response(_drop_extras(result))

    async def parse(self, **kwargs: Any) -> Any:
        """``await chat.completions.parse``, guarded like :meth:`create`."""
        call = self._guarding.start_chat(kwargs)
        if await call.acheck_request() is not None and call.blocked:
            return call.refusal()
        return await call.acheck_response(_drop_extras(await self._resource.parse(**kwargs)))


class _Responses(_Resource):
    _owner = "responses"

    def create(self, **kwargs: Any) -> Any:
        """``responses.create``, guarded (see the module docstring)."""
        call, reader = self._guarding.start_responses(kwargs)
        if call.check_request() is not None and call.blocked:
            refusal = call.refusal()
            return GuardedStream(iter(refusal), None) if reader is not None else refusal
        result = self._resource.create(**kwargs)
        if reader is None:
            return call.check_response(_drop_extras(result))
        return GuardedStream(_expand(call.stream(result, get_chunk_text=_reading(reader))), result)

    def parse(self, **kwargs: Any) -> Any:
        """``responses.parse`` (structured outputs), guarded like :meth:`create`."""
        call, _ = self._guarding.start_responses({**kwargs, "stream": False})
        kwargs.pop(POLICY_KWARG, None)
        if call.check_request() is not None and call.blocked:
            return call.refusal()
        return call.check_response(_drop_extras(self._resource.parse(**kwargs)))


class _AsyncResponses(_Resource):
    _owner = "responses"

    async def create(self, **kwargs: Any) -> Any:
        """``await responses.create``, guarded (see the module docstring)."""
        call, reader = self._guarding.start_responses(kwargs)
        if await call.acheck_request() is not None and call.blocked:
            refusal = call.refusal()
            if reader is None:
                return refusal

            async def events() -> AsyncIterator[Any]:
                for event in refusal:
                    yield event

            return AsyncGuardedStream(events(), None)
        result = await self._resource.create(**kwargs)
        if reader is None:
            return await call.acheck_response(_drop_extras(result))
        return AsyncGuardedStream(_aexpand(call.astream(result, get_chunk_text=_reading(reader))), result)

    async def parse(self, **kwargs: Any) -> Any:
        """``await responses.parse``, guarded like :meth:`create`."""
        call, _ = self._guarding.start_responses({**kwargs, "stream": False})
        kwargs.pop(POLICY_KWARG, None)
        if await call.acheck_request() is not None and call.blocked:
            return call.refusal()
        return await call.acheck_response(_drop_extras(await self._resource.parse(**kwargs)))


class _Chat(_Resource):
    _owner = "chat"

    def __init__(self, resource: Any, guarding: _Guarding, completions: type[_Resource]) -> None:
        super().__init__(resource, guarding)
        self.completions = completions(resource.completions, guarding)


class GuardedOpenAI:
    """An ``openai.OpenAI`` client whose ``chat.completions`` and ``responses`` calls are guarded by
    ``guard`` (see the module docstring); ``policy`` overrides the guard's. Every other attribute is the
    client's; ``with_options`` / ``copy`` return a guarded client."""

    _chat_completions: type[_Resource] = _ChatCompletions
    _responses: type[_Resource] = _Responses

    def __init__(self, client: Any, guard: Any, *, policy: PolicyLike | None = None) -> None:
        self._client = client
        self._guarding = _Guarding(guard, policy)
        self.guard = guard
        self.policy: Policy = self._guarding.policy
        self.chat = _Chat(client.chat, self._guarding, self._chat_completions)
        if hasattr(client, "responses"):  # openai < 1.66 has no Responses API
            self.responses = self._responses(client.responses, self._guarding)

    def with_options(self, **options: Any) -> Any:
        """The client's ``with_options`` (``copy``), guarded by the same guard and policy."""
        return type(self)(self._client.with_options(**options), self.guard, policy=self.policy)

    copy = with_options

    def __getattr__(self, name: str) -> Any:
        if name in _BYPASSES:
            raise _bypass("client", name)
        return getattr(self._client, name)

    def __enter__(self) -> Any:
        self._client.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._client.__exit__(*exc_info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r}, guard={self.guard!r})"


class AsyncGuardedOpenAI(GuardedOpenAI):
    """``openai.AsyncOpenAI``, guarded: as :class:`GuardedOpenAI`, with awaitable calls and async streams."""

    _chat_completions = _AsyncChatCompletions
    _responses = _AsyncResponses

    async def __aenter__(self) -> Any:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._client.__aexit__(*exc_info)
