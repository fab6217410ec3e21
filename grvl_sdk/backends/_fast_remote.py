"""The fast tier on an OpenAI-compatible server (see :mod:`grvl_sdk.protocol.fast`).

Each part is one chat completion whose last message is the forced assistant text, continued rather
than answered — vLLM's and SGLang's ``continue_final_message=True`` with ``add_generation_prompt=False``
— with ``max_tokens=1``, ``logprobs`` and ``top_logprobs``: the label probabilities are read from the
first generated token's alternatives (:func:`~grvl_sdk.protocol.fast.branch_logprobs`). A response
label needs a second call (with the chosen request label forced).

A server that cannot do this fails clearly, with :class:`~grvl_sdk.errors.FastModeUnsupportedError`:
it refuses the fields (HTTP 400/422), sends no ``logprobs``, or ignores the continuation (no label
among the top tokens).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from grvl_sdk.backends._wire import encode_body
from grvl_sdk.errors import FastModeUnsupportedError, RemoteBackendError
from grvl_sdk.protocol.fast import LabelLogprobs, assistant_prefix, branch_logprobs, chosen_label, fast_generation
from grvl_sdk.types import GREEDY, Generation, GuardInput

if TYPE_CHECKING:
    from grvl_sdk.backends.remote import RemoteBackend

__all__ = ["FAST_TOP_LOGPROBS", "fast_body", "fast_generate_one"]

#: ``top_logprobs`` asked for (vLLM's default ``max_logprobs`` is 20).
FAST_TOP_LOGPROBS = 20
_REFUSED = frozenset({400, 404, 422})


def fast_body(backend: RemoteBackend, item: GuardInput, forced_text: str) -> dict[str, Any]:
    """The chat completion body that continues ``forced_text`` as the assistant's message by one token."""
    body = backend.payload(item, 1, GREEDY)
    body["messages"].append({"role": "assistant", "content": forced_text})
    body.update(
        continue_final_message=True,
        add_generation_prompt=False,
        max_tokens=1,
        logprobs=True,
        top_logprobs=max(FAST_TOP_LOGPROBS, backend.score_top_k),
        n=1,
        temperature=0.0,
    )
    return body


def _labels(generation: Generation) -> LabelLogprobs:
    logprobs = generation.logprobs
    if logprobs is None or not logprobs.tokens:
        raise FastModeUnsupportedError("the guard server sent no logprobs: fast mode needs logprobs and top_logprobs")
    try:
        pair = branch_logprobs(logprobs.alternatives(0))
    except (TypeError, ValueError) as exc:
        raise FastModeUnsupportedError(f"the guard server sent malformed logprobs: {exc}") from exc
    if pair is None:
        raise FastModeUnsupportedError(
            f"no label among the guard server's top tokens after the forced prefix (it wrote "
            f"{generation.text[:40]!r}): the server did not continue the assistant message; fast mode needs "
            "continue_final_message (vLLM, SGLang)"
        )
    return pair


def fast_generate_one(backend: RemoteBackend, item: GuardInput, deadline: float | None) -> Generation:
    """The fast generation of one input (one call, two with a response). Raises
    :class:`FastModeUnsupportedError`, or what the backend's calls raise."""
    started = time.perf_counter()
    calls: list[Generation] = []

    def call(forced_text: str) -> LabelLogprobs:
        body = encode_body(fast_body(backend, item, forced_text))
        try:
            generation = backend._post(body, deadline, 1)[0]
        except RemoteBackendError as exc:
            status = exc.details.get("status_code")
            if status in _REFUSED:
                raise FastModeUnsupportedError(
                    f"the guard server refused the fast tier's assistant-prefix continuation (HTTP {status}); "
                    f"it needs continue_final_message and logprobs (vLLM, SGLang): {exc.message}",
                    status_code=status,
                ) from exc
            raise
        calls.append(generation)
        return _labels(generation)

    request = call(assistant_prefix())
    response = call(assistant_prefix(chosen_label(request))) if item.response is not None else None
    return fast_generation(
        request,
        response,
        prompt_tokens=calls[0].prompt_tokens,
        completion_tokens=sum(g.completion_tokens for g in calls),
        latency_ms=(time.perf_counter() - started) * 1000,
    )
