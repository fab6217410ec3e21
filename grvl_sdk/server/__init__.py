"""``grvl serve``: the guard as a server (``pip install 'grvl-sdk[server]'``; see ``docs/server.md``).

Three APIs on one FastAPI app:

- a **guarded proxy** in front of any OpenAI-compatible model server: ``POST /v1/chat/completions``,
  ``POST /v1/responses`` (streaming or not), ``GET /v1/models``;
- ``POST /v1/moderations`` in OpenAI's shape;
- LiteLLM's **Generic Guardrail API**, ``POST /beta/litellm_basic_guardrail_api``;

and ``/health``, ``/ready``, ``/metrics``. Modules:

==========================  ===============================================================================
``app``                     :func:`create_app`: routes, middleware, lifespan
``config``                  :class:`ServerConfig`: every setting, from arguments or a file
``runtime``                 what the handlers share: guard, upstream client, fetcher, metrics, readiness
``proxy``                   the proxy routes: request check, forwarding, answer check
``streams``                 proxied streams, moderated as they flow
``history``                 earlier turns beyond the guard's context window, judged in extra checks
``apis``                    Chat Completions vs Responses: validation, judged fields, refusal shapes
``upstream``                the upstream client and its error mapping
``sse``                     server-sent events in and out
``jsonio``                  strict JSON: refuses what could not be sent on (NaN, lone surrogates...)
``images``                  image URLs fetched under the allowlist and inlined; image and size audits
``moderations``             ``/v1/moderations``
``litellm``                 the LiteLLM guardrail endpoint
``ops``                     ``/health``, ``/ready``, ``/metrics``
``limits``                  body size, JSON, API keys, admission (concurrency, queue, 429)
``errors``                  OpenAI-style errors everywhere
``metrics``                 Prometheus metrics
``access``                  structured access logs
``outcome``                 ``x-grvl-*`` headers and block reasons
``schemas``                 request/response schemas for the OpenAPI document
``run``                     :func:`serve`, :class:`BackgroundServer`
==========================  ===============================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grvl_sdk._lazy import require
from grvl_sdk.server.config import ServerConfig

if TYPE_CHECKING:
    from grvl_sdk.server.app import create_app
    from grvl_sdk.server.run import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServerConfig", "create_app", "serve"]

_LAZY = {"create_app": "grvl_sdk.server.app", "BackgroundServer": "grvl_sdk.server.run",
         "serve": "grvl_sdk.server.run"}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grvl_sdk.server' has no attribute {name!r}")
    require("fastapi", extra="server")
    import importlib

    return getattr(importlib.import_module(module), name)
