"""``GuardedChatModel``: a LangChain chat model that judges its input before the wrapped model and its
output after it.

``with_guard(chat_model, guard, policy=...)`` (or ``GuardedChatModel(chat_model=..., guard=...)``) is a
``BaseChatModel``: ``invoke``, ``ainvoke``, ``batch``, ``stream``, ``astream``, ``astream_events``, LCEL
(``prompt | guarded | StrOutputParser()``), ``bind_tools`` / ``with_structured_output`` (passed to the
wrapped model; tool calls in the output are judged), ``with_fallbacks``, and use as an agent's model.

Each call (one :class:`~grvl_sdk.calls.GuardedCall`):

1. the input messages are judged (the latest user turn, earlier turns as context, tool calls and tool
   results after it; images in any content block). Blocked: the wrapped model is **not** called;
2. the wrapped model runs — without the caller's callbacks, so nothing it says reaches a callback
   handler, ``astream_events`` or an agent's message stream before it is judged;
3. its message is judged with the request (text, tool calls, refusals). A stream is moderated as in
   :mod:`grvl_sdk.middleware.streaming`: ``stream_mode="buffer"`` (default) holds chunks until a check
   passed them; ``"passthrough"`` forwards them and cuts the stream on a block; the final check always
   runs, also when the consumer stops early.

A block raises :class:`~grvl_sdk.errors.GuardBlocked` (``on_block="raise"``, the default; catch it with
``.with_fallbacks([...], exceptions_to_handle=(GuardBlocked,))``) or answers the policy's refusal as an
``AIMessage`` (``on_block="refuse"``) with ``response_metadata["finish_reason"] == "content_filter"``.
Every message returned carries its verdicts in ``response_metadata["grvl"]`` (see
:func:`~grvl_sdk.integrations.langchain.verdicts_of`); a stream carries them on its last chunk.
The LLM cache is off by default (``cache=False``) so every call is judged and recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, cast

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import ConfigDict, Field

from grvl_sdk.calls import GuardedCall
from grvl_sdk.integrations.langchain._common import INNER_CONFIG, annotate, as_chunk, refusal_message
from grvl_sdk.messages import _langchain, chunk_deltas
from grvl_sdk.policy import Policy

__all__ = ["GuardedChatModel", "with_guard"]


def _chunk_text(chunk: Any) -> str:
    """A stream chunk's text, as :func:`grvl_sdk.messages.chunk_deltas` reads it (content, refusal,
    tool-call fragments), reading an ``AIMessageChunk`` directly (the generic reader probes other
    shapes first: about 4x slower per chunk)."""
    deltas = _langchain.chunk_deltas(chunk) if isinstance(chunk, AIMessageChunk) else chunk_deltas(chunk)
    return "".join(delta.text for delta in deltas)


def _model_kwargs(stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "stop": stop} if stop is not None else kwargs


class GuardedChatModel(BaseChatModel):
    """A chat model guarded by a :class:`~grvl_sdk.guard.Guard` (see the module docstring)."""

    chat_model: Runnable[LanguageModelInput, BaseMessage]
    """The wrapped model: a chat model, or one with tools bound (``bind_tools``)."""
    guard: Any = Field(exclude=True)
    """The :class:`~grvl_sdk.guard.Guard` that judges."""
    policy: Policy | dict[str, Any] | None = None
    """Overrides the guard's policy for this model (a ``Policy`` or a dict of its fields)."""
    cache: BaseCache | bool | None = Field(default=False, exclude=True)
    """Off by default: a cached answer would skip the checks and their records."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "grvl-guarded-chat-model"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"chat_model": self.chat_model.get_name(), "guard": str(getattr(self.guard, "model_id", ""))}

    def _start(self, messages: list[BaseMessage]) -> GuardedCall:
        return GuardedCall(self.guard, messages, policy=self.policy, expects="langchain.message")

    # -- invoke -------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._start(messages)
        if call.check_request() is not None and call.blocked:
            return ChatResult(generations=[ChatGeneration(message=refusal_message(call))])
        output = self.chat_model.invoke(messages, INNER_CONFIG, **_model_kwargs(stop, kwargs))
        checked = call.check_response(output)
        return ChatResult(generations=[ChatGeneration(message=annotate(checked, call))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._start(messages)
        if await call.acheck_request() is not None and call.blocked:
            return ChatResult(generations=[ChatGeneration(message=refusal_message(call))])
        output = await self.chat_model.ainvoke(messages, INNER_CONFIG, **_model_kwargs(stop, kwargs))
        checked = await call.acheck_response(output)
        return ChatResult(generations=[ChatGeneration(message=annotate(checked, call))])

    # -- stream -------------------------------------------------------------------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._start(messages)
        if call.check_request() is not None and call.blocked:
            yield ChatGenerationChunk(message=refusal_message(call, chunk=True))
            return
        source = self.chat_model.stream(messages, INNER_CONFIG, **_model_kwargs(stop, kwargs))
        moderated = call.stream(source, get_chunk_text=_chunk_text)
        try:
            held = None  # one chunk behind, so the last one can carry the verdicts
            for chunk in moderated:
                if held is not None:
                    yield ChatGenerationChunk(message=held)
                held = as_chunk(chunk)
            if held is not None:
                yield ChatGenerationChunk(message=annotate(held, call))
        finally:
            moderated.close()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._start(messages)
        if await call.acheck_request() is not None and call.blocked:
            yield ChatGenerationChunk(message=refusal_message(call, chunk=True))
            return
        source = self.chat_model.astream(messages, INNER_CONFIG, **_model_kwargs(stop, kwargs))
        moderated = call.astream(source, get_chunk_text=_chunk_text)
        try:
            held = None
            async for chunk in moderated:
                if held is not None:
                    yield ChatGenerationChunk(message=held)
                held = as_chunk(chunk)
            if held is not None:
                yield ChatGenerationChunk(message=annotate(held, call))
        finally:
            await moderated.aclose()

    # -- tools --------------------------------------------------------------------------------
    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The wrapped model's ``bind_tools``, still guarded: tool calls in its output are judged."""
        bind = getattr(self.chat_model, "bind_tools", None)
        if bind is None:
            raise NotImplementedError(f"{self.chat_model.get_name()} has no bind_tools")
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return cast("Runnable[LanguageModelInput, AIMessage]",
                    self.model_copy(update={"chat_model": bind(tools, **kwargs)}))  # fmt: skip


def with_guard(
    chat_model: Runnable[LanguageModelInput, BaseMessage],
    guard: Any,
    *,
    policy: Policy | Mapping[str, Any] | None = None,
) -> GuardedChatModel:
    """``chat_model`` guarded by ``guard`` (see :class:`GuardedChatModel`)."""
    return GuardedChatModel(
        chat_model=chat_model, guard=guard, policy=dict(policy) if isinstance(policy, Mapping) else policy
    )
