"""``GuardrailMiddleware``: the guard in a LangChain v1 agent (``langchain.agents.create_agent``).

::

    agent = create_agent(model, tools, middleware=[GuardrailMiddleware(guard, check_tool_results=True)])

Hooks (sync and async twins; one :class:`~grvl_sdk.calls.GuardedCall` per check):

- ``before_model`` (``check_input``, on): judges the **new user input** — the latest human message,
  with the conversation before it as context — once per new human message (the id it judged is kept in
  the private state key ``grvl_checked_input``), before the model sees it. Blocked: the refusal is
  added as an ``AIMessage`` and the agent jumps to the end; the model is not called.
- ``after_model`` (``check_output``, on): judges the model's message — its text, tool calls and
  refusals — with its request (the latest user turn, and the tool calls and results after it). Blocked:
  the message is **replaced** by the refusal (same id, no tool calls) and the agent ends: no tool runs.
- ``wrap_tool_call`` (``check_tool_results``, off by default): judges each tool result with the
  conversation before the model sees it (as part of the request: the latest user turn, the tool call
  and its result). Blocked: the ``ToolMessage`` content is replaced by the refusal (``status="error"``).
  A tool returning a ``Command`` has the ``ToolMessage``\\s of its ``update["messages"]`` judged.

The policy is the guard's with ``on_block="refuse"`` unless ``policy`` says otherwise; with
``on_block="raise"`` every hook raises :class:`~grvl_sdk.errors.GuardBlocked` instead. Refusals carry
their verdicts in ``response_metadata["grvl"]`` (see :func:`~grvl_sdk.integrations.langchain.verdicts_of`).

Streaming note: ``after_model`` runs once the model's message is complete. An agent streamed with
``stream_mode="messages"`` (or ``astream_events``) shows the model's tokens as they come, before they
are judged; to judge a stream before it is shown, give the agent a guarded model
(:func:`~grvl_sdk.integrations.langchain.with_guard`, buffer mode) as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from langchain.agents.middleware.types import AgentMiddleware, AgentState, PrivateStateAttr, hook_config
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.runtime import Runtime
from langgraph.types import Command
from typing_extensions import NotRequired

from grvl_sdk.calls import GuardedCall
from grvl_sdk.integrations.langchain._common import annotate, refusal_message
from grvl_sdk.policy import Policy, PolicyLike

__all__ = ["GuardrailMiddleware", "GuardrailState"]

_CHECKED = "grvl_checked_input"


class GuardrailState(AgentState[Any]):
    """The agent state with the id of the last human message the middleware judged (private)."""

    grvl_checked_input: NotRequired[Annotated[str | None, PrivateStateAttr]]


def _messages(state: Any) -> list[BaseMessage]:
    messages = state.get("messages") if isinstance(state, Mapping) else getattr(state, "messages", None)
    return list(messages or [])


def _last_index(messages: list[BaseMessage], kind: type[BaseMessage]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], kind)), None)


class GuardrailMiddleware(AgentMiddleware[GuardrailState, Any]):
    """Agent middleware judging user input, model output and (optionally) tool results.

    ``guard``: the :class:`~grvl_sdk.guard.Guard`. ``policy``: overrides the guard's (a ``Policy``
    replaces it, a dict updates fields; default ``{"on_block": "refuse"}``). ``check_input``,
    ``check_output``, ``check_tool_results``: which hooks judge (see the module docstring).
    """

    state_schema = GuardrailState

    def __new__(cls, guard: Any, *, check_tool_results: bool = False, **options: Any) -> GuardrailMiddleware:
        if check_tool_results and cls is GuardrailMiddleware:
            cls = _ToolResultsMiddleware
        return super().__new__(cls)

    def __init__(
        self,
        guard: Any,
        *,
        policy: PolicyLike | None = None,
        check_input: bool = True,
        check_output: bool = True,
        check_tool_results: bool = False,
    ) -> None:
        super().__init__()
        self.guard = guard
        self.policy: Policy = guard.policy.merged({"on_block": "refuse"}).merged(policy)
        self.check_input = check_input
        self.check_output = check_output
        self.check_tool_results = check_tool_results

    @property
    def name(self) -> str:
        """``"GuardrailMiddleware"`` (its hooks' node names in the agent graph)."""
        return "GuardrailMiddleware"

    def _call(self, messages: list[BaseMessage]) -> GuardedCall:
        return GuardedCall(self.guard, messages, policy=self.policy, expects="langchain.message")

    # -- user input ---------------------------------------------------------------------------
    def _new_input(self, state: Any) -> tuple[list[BaseMessage], str] | None:
        """The messages and the id of a human message not judged yet, or ``None``."""
        if not self.check_input:
            return None
        messages = _messages(state)
        index = _last_index(messages, HumanMessage)
        if index is None:
            return None
        marker = messages[index].id or f"index-{index}"
        checked = state.get(_CHECKED) if isinstance(state, Mapping) else None
        return None if checked == marker else (messages, marker)

    @staticmethod
    def _input_update(call: GuardedCall, marker: str) -> dict[str, Any]:
        if call.blocked is None:
            return {_CHECKED: marker}
        return {"messages": [refusal_message(call)], "jump_to": "end", _CHECKED: marker}

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: GuardrailState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Judge new user input before the model sees it (blocked: refusal, jump to the end)."""
        pending = self._new_input(state)
        if pending is None:
            return None
        call = self._call(pending[0])
        call.check_request()
        return self._input_update(call, pending[1])

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: GuardrailState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`before_model`."""
        pending = self._new_input(state)
        if pending is None:
            return None
        call = self._call(pending[0])
        await call.acheck_request()
        return self._input_update(call, pending[1])

    # -- model output -------------------------------------------------------------------------
    def _output(self, state: Any) -> tuple[list[BaseMessage], AIMessage] | None:
        """The messages before the model's latest message, and that message (``None``: nothing new)."""
        if not self.check_output:
            return None
        messages = _messages(state)
        index = _last_index(messages, AIMessage)
        human = _last_index(messages, HumanMessage)
        if index is None or (human is not None and human > index):
            return None
        return messages[:index], messages[index]  # type: ignore[return-value]

    @staticmethod
    def _output_update(call: GuardedCall, checked: Any) -> dict[str, Any] | None:
        if call.blocked is None:
            return None
        return {"messages": [annotate(checked, call)], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: GuardrailState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Judge the model's message, tool calls included (blocked: replaced by the refusal, end)."""
        pending = self._output(state)
        if pending is None:
            return None
        call = self._call(pending[0])
        return self._output_update(call, call.check_response(pending[1]))

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: GuardrailState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`after_model`."""
        pending = self._output(state)
        if pending is None:
            return None
        call = self._call(pending[0])
        return self._output_update(call, await call.acheck_response(pending[1]))


class _ToolResultsMiddleware(GuardrailMiddleware):
    """:class:`GuardrailMiddleware` with ``check_tool_results``: also judges tool results (``wrap_tool_call``).

    A class of its own because ``create_agent`` adds a tool node for any middleware whose class defines
    ``wrap_tool_call``; without ``check_tool_results`` the agent's graph stays as it was.
    """

    @staticmethod
    def _tool_messages(result: ToolMessage | Command[Any]) -> list[ToolMessage]:
        if isinstance(result, ToolMessage):
            return [result]
        update = result.update if isinstance(result, Command) else None
        found = update.get("messages") if isinstance(update, Mapping) else None
        return [m for m in found or [] if isinstance(m, ToolMessage)]

    @staticmethod
    def _refused_tool(message: ToolMessage, call: GuardedCall) -> ToolMessage:
        refusal = refusal_message(call)
        return message.model_copy(update={"content": refusal.content, "status": "error", "artifact": None,
                                          "response_metadata": refusal.response_metadata})  # fmt: skip

    @staticmethod
    def _replace(result: ToolMessage | Command[Any], judged: dict[int, ToolMessage]) -> ToolMessage | Command[Any]:
        if not judged:
            return result
        if isinstance(result, ToolMessage):
            return judged[id(result)]
        update = dict(result.update or {})  # a Command whose update holds the judged messages
        update["messages"] = [judged.get(id(m), m) for m in update["messages"]]
        return dataclasses.replace(result, update=update)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        """Run the tool and judge its result before the model sees it."""
        result = handler(request)
        judged: dict[int, ToolMessage] = {}
        for message in self._tool_messages(result):
            call = self._call([*_messages(request.state), message])
            call.check_request()
            if call.blocked is not None:
                judged[id(message)] = self._refused_tool(message, call)
        return self._replace(result, judged)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async twin of :meth:`wrap_tool_call`."""
        result = await handler(request)
        judged: dict[int, ToolMessage] = {}
        for message in self._tool_messages(result):
            call = self._call([*_messages(request.state), message])
            await call.acheck_request()
            if call.blocked is not None:
                judged[id(message)] = self._refused_tool(message, call)
        return self._replace(result, judged)
