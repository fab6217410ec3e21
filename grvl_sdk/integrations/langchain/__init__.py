"""LangChain adapters: a guard runnable, a guarded chat model, and agent middleware.

=============================  ========================================================================
:class:`GuardRunnable`         ``as_runnable(guard)``: the guard as a ``Runnable`` (input: a string, a
                               ``{"text", "image", "images", "response"}`` dict, messages or a
                               ``PromptValue``; output: the :class:`~grvl_sdk.verdict.Verdict`);
                               ``batch`` is one batched generation
:class:`GuardedChatModel`      ``with_guard(chat_model, guard)``: a ``BaseChatModel`` judging its input
                               before the wrapped model and its output (tool calls included) after it
:class:`GuardrailMiddleware`   agent middleware for ``langchain.agents.create_agent`` (the ``langchain``
                               v1 package): user input, model output and, optionally, tool results
=============================  ========================================================================

Messages are read by :mod:`grvl_sdk.messages`: LangChain message classes, ``(role, content)`` tuples,
dicts, ``PromptValue``\\s and the standard content blocks (``{"type": "image", "url" | "base64"}``,
OpenAI-style ``image_url`` parts, ``tool_call`` blocks...). Blocks the guard cannot see (audio, files,
``file_id`` images) raise :class:`~grvl_sdk.errors.InputError`: nothing is let through unjudged.

Needs ``langchain-core`` (and ``langchain`` for the middleware): ``pip install 'grvl-sdk[langchain]'``;
without it, importing this module raises :class:`~grvl_sdk.errors.MissingDependencyError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grvl_sdk._lazy import require

require("langchain_core", extra="langchain")

from grvl_sdk.integrations.langchain._common import verdicts_of  # noqa: E402
from grvl_sdk.integrations.langchain.chat_model import GuardedChatModel, with_guard  # noqa: E402
from grvl_sdk.integrations.langchain.runnable import GuardCheckInput, GuardRunnable, as_runnable  # noqa: E402

if TYPE_CHECKING:
    from grvl_sdk.integrations.langchain.middleware import GuardrailMiddleware, GuardrailState

__all__ = [
    "GuardCheckInput",
    "GuardRunnable",
    "GuardedChatModel",
    "GuardrailMiddleware",
    "GuardrailState",
    "as_runnable",
    "verdicts_of",
    "with_guard",
]


def __getattr__(name: str) -> Any:
    # The middleware needs the ``langchain`` package (not only langchain-core): imported on first use.
    if name in ("GuardrailMiddleware", "GuardrailState"):
        require("langchain.agents.middleware", extra="langchain")
        return getattr(importlib.import_module("grvl_sdk.integrations.langchain.middleware"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
