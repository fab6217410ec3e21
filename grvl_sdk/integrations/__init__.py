"""Framework adapters: the guard where users already call their models.

=================================================  ==========================================================
:mod:`grvl_sdk.integrations.langchain`             ``GuardRunnable`` (``as_runnable``), ``GuardedChatModel``
                                                   (``with_guard``), ``GuardrailMiddleware`` for
                                                   ``langchain.agents.create_agent``; extra ``langchain``
:mod:`grvl_sdk.integrations.openai`                ``GuardedOpenAI`` / ``AsyncGuardedOpenAI``: the OpenAI client
                                                   with ``chat.completions`` and ``responses`` guarded; extra
                                                   ``openai``
=================================================  ==========================================================

Each adapter is a thin layer over the call flow of :mod:`grvl_sdk.calls` (request judged before the
model, response — every choice, tool calls included — after it, streams moderated as they flow), so
policies, stream modes, refusals and verdict records behave as in :func:`grvl_sdk.middleware.wrap`.
Importing an adapter without its framework raises :class:`~grvl_sdk.errors.MissingDependencyError`
naming the extra to install (``pip install 'grvl-sdk[langchain]'`` / ``'grvl-sdk[openai]'``).
"""
