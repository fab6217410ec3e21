"""Guarding VLM calls: ``guard.wrap(fn)`` for sync/async functions and streams.

- :mod:`~grvl_sdk.middleware.wrap`: the call flow (request check, call, response check);
- :mod:`~grvl_sdk.middleware.extract`: finding the request and the response text;
- :mod:`~grvl_sdk.middleware.streaming`: moderating streamed responses.
"""

from grvl_sdk.middleware.extract import RequestSpec, chunk_text, response_text
from grvl_sdk.middleware.streaming import aguard_stream, guard_stream
from grvl_sdk.middleware.wrap import POLICY_KWARG, wrap

__all__ = ["POLICY_KWARG", "RequestSpec", "aguard_stream", "chunk_text", "guard_stream", "response_text", "wrap"]
