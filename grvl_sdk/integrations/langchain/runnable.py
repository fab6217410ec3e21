"""``GuardRunnable``: the guard as a LangChain ``Runnable`` whose output is the :class:`Verdict`.

Input (``input_schema``): a string (a request); a :class:`GuardCheckInput` dict ``{"text", "image",
"images", "response"}`` (``guard.check``'s arguments); a list of messages of any shape
:mod:`grvl_sdk.messages` reads (LangChain messages with standard content blocks, tuples, OpenAI
dicts), judged as a chat (the latest user turn with earlier turns as context, and the assistant's
answer when the chat ends with one, see :mod:`grvl_sdk.conversation`); or a ``PromptValue``. Output
(``output_schema``): :class:`~grvl_sdk.verdict.Verdict` — the runnable judges, it does not block:
act on ``verdict.blocked``.

``invoke`` is ``guard.check``; ``ainvoke`` is ``guard.acheck`` (image decoding and generation run off
the event loop); ``batch`` / ``abatch`` are **one** ``guard.check_batch`` (batched generation, not a
thread pool of single checks). ``run_name``, tags, metadata and callbacks of the config apply: each
input is one run (``on_chain_start`` with the input, ``on_chain_end`` with the verdict). Bad input
raises :class:`~grvl_sdk.errors.InputError` (in ``batch``, for that input only: with
``return_exceptions=True`` it takes that input's place).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union, cast

from langchain_core.messages import MessageLikeRepresentation
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

from grvl_sdk.conversation import conversation_input
from grvl_sdk.errors import InputError
from grvl_sdk.policy import Policy
from grvl_sdk.verdict import Verdict

__all__ = ["GuardCheckInput", "GuardRunnable", "GuardRunnableInput", "as_runnable"]

_KEYS = frozenset({"text", "image", "images", "response"})


class GuardCheckInput(TypedDict, total=False):
    """A direct check: ``guard.check(text, image, images=..., response=...)``."""

    text: str
    image: Any
    images: list[Any]
    response: str


#: What a :class:`GuardRunnable` takes.
GuardRunnableInput = Union[str, GuardCheckInput, Sequence[MessageLikeRepresentation], PromptValue]  # noqa: UP007


def check_spec(value: Any, context_chars: int) -> dict[str, Any]:
    """One runnable input as ``guard.check`` keyword arguments."""
    if isinstance(value, str):
        return {"text": value}
    if isinstance(value, Mapping) and not {"role", "type"} & set(value):
        unknown = set(value) - _KEYS
        if unknown:
            raise InputError(f"unknown keys {sorted(unknown)} in a guard input; use {sorted(_KEYS)}")
        return dict(value)
    chat = conversation_input([value] if isinstance(value, Mapping) else value, context_chars=context_chars)
    return {"text": chat.text, "images": chat.images or None, "response": chat.response}


class GuardRunnable(RunnableSerializable[GuardRunnableInput, Verdict]):
    """The guard as a ``Runnable`` (see the module docstring). Build it with :func:`as_runnable`."""

    guard: Any = Field(exclude=True)
    """The :class:`~grvl_sdk.guard.Guard` that judges."""
    policy: Policy | dict[str, Any] | None = None
    """Overrides the guard's policy for these checks (a ``Policy`` or a dict of its fields)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def InputType(self) -> Any:  # LangChain's name
        return GuardRunnableInput

    @property
    def OutputType(self) -> type[Verdict]:  # LangChain's name
        return Verdict

    def _spec(self, value: Any) -> dict[str, Any]:
        return check_spec(value, self.guard.context_chars)

    def _check(self, value: Any) -> Verdict:
        return cast(Verdict, self.guard.check(**self._spec(value), policy=self.policy))

    async def _acheck(self, value: Any) -> Verdict:
        return cast(Verdict, await self.guard.acheck(**self._spec(value), policy=self.policy))

    def invoke(self, input: GuardRunnableInput, config: RunnableConfig | None = None, **kwargs: Any) -> Verdict:
        """Judge one input; returns its verdict."""
        return self._call_with_config(self._check, input, config)

    async def ainvoke(self, input: GuardRunnableInput, config: RunnableConfig | None = None, **kwargs: Any) -> Verdict:
        """Async :meth:`invoke`: nothing blocks the event loop."""
        return await self._acall_with_config(self._acheck, input, config)

    def _specs(self, inputs: list[Any]) -> tuple[list[Any], list[int]]:
        """Per input: its check arguments or the ``InputError`` reading it raised; the readable indices."""
        out: list[Any] = []
        for value in inputs:
            try:
                out.append(self._spec(value))
            except InputError as exc:
                out.append(exc)
        return out, [i for i, spec in enumerate(out) if not isinstance(spec, Exception)]

    def _batch(self, inputs: list[Any]) -> list[Verdict | Exception]:
        results, pending = self._specs(inputs)
        while pending:  # one batched generation; an input that cannot be prepared fails alone
            try:
                verdicts = self.guard.check_batch([results[i] for i in pending], policy=self.policy)
            except InputError as exc:
                if not isinstance(exc.details.get("index"), int):
                    raise
                results[pending.pop(exc.details["index"])] = exc
                continue
            for i, verdict in zip(pending, verdicts, strict=True):
                results[i] = verdict
            break
        return results

    async def _abatch(self, inputs: list[Any]) -> list[Verdict | Exception]:
        results, pending = self._specs(inputs)
        while pending:
            try:
                verdicts = await self.guard.acheck_batch([results[i] for i in pending], policy=self.policy)
            except InputError as exc:
                if not isinstance(exc.details.get("index"), int):
                    raise
                results[pending.pop(exc.details["index"])] = exc
                continue
            for i, verdict in zip(pending, verdicts, strict=True):
                results[i] = verdict
            break
        return results

    def batch(
        self,
        inputs: list[GuardRunnableInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Verdict]:
        """Judge ``inputs`` with one batched generation (``guard.check_batch``); verdicts in order."""
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[GuardRunnableInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Verdict]:
        """Async :meth:`batch` (``guard.acheck_batch``)."""
        return await self._abatch_with_config(self._abatch, inputs, config, return_exceptions=return_exceptions)


def as_runnable(
    guard: Any, *, policy: Policy | Mapping[str, Any] | None = None, name: str | None = None
) -> GuardRunnable:
    """``guard`` as a :class:`GuardRunnable` (``policy`` overrides the guard's for its checks)."""
    return GuardRunnable(guard=guard, policy=dict(policy) if isinstance(policy, Mapping) else policy, name=name)
