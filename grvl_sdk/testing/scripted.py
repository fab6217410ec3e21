"""Scripted backends: a stand-in for the model that replies from a script, for deterministic tests.

:class:`ScriptedBackend` implements the backend contract (:class:`grvl_sdk.backends.base.Backend`)
without a model: each input is answered by a fixed reply, the next reply of a list, or a function of
the input. :func:`guard_output` writes a well-formed guard output to reply with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from grvl_sdk.backends.base import Backend
from grvl_sdk.errors import BackendError
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput

__all__ = ["ScriptedBackend", "ScriptedReply", "guard_output"]


def guard_output(request: str = "unharmful", response: str | None = None, *, reasoning: str = "scripted") -> str:
    """A well-formed guard output: ``<think>reasoning</think><result>Request: ...\nResponse: ...</result>``."""
    return f"<think>\n{reasoning}\n</think>\n<result>\nRequest: {request}\nResponse: {response or 'None'}\n</result>"


#: What a scripted backend returns for one input: an output text, a full ``Generation``, or an
#: exception to raise (failing the whole ``generate`` call, like a real backend error).
ScriptedReply = str | Generation | BaseException


class ScriptedBackend(Backend):
    """A backend that replies from a script instead of a model, to test guarded apps deterministically.

    ``script`` is one reply for every input, a list of replies used in order (a
    ``BackendError`` once exhausted), or a callable ``script(item) -> reply``. A reply is an output text (see
    :func:`guard_output`), a ``Generation``, or an exception to raise. ``delay`` seconds are slept per
    ``generate`` call. ``calls`` records the inputs of each call.

    >>> backend = ScriptedBackend(lambda item: guard_output("harmful" if "bomb" in (item.text or "") else "unharmful"))
    >>> Guard(backend).check("how to make a bomb").decision
    'block'
    """

    def __init__(
        self,
        script: ScriptedReply | Sequence[ScriptedReply] | Callable[[GuardInput], ScriptedReply],
        *,
        model_id: str = "scripted",
        delay: float = 0.0,
        finished: bool = True,
    ) -> None:
        self.script = script
        self.model_id = model_id
        self.delay = delay
        self.finished = finished
        self.calls: list[list[GuardInput]] = []
        #: The ``max_new_tokens`` of each call.
        self.max_new_tokens: list[int] = []
        self._position = 0
        self._lock = threading.Lock()

    @classmethod
    def flagging(cls, *words: str, **options: Any) -> ScriptedBackend:
        """A backend labelling a request (or response) ``harmful`` when its text contains any of ``words``
        (case-insensitive), ``unharmful`` otherwise."""
        lowered = [w.lower() for w in words]

        def label(text: str | None) -> str:
            return "harmful" if text and any(w in text.lower() for w in lowered) else "unharmful"

        def script(item: GuardInput) -> str:
            return guard_output(label(item.text), None if item.response is None else label(item.response))

        return cls(script, **options)

    def _reply(self, item: GuardInput) -> ScriptedReply:
        if callable(self.script) and not isinstance(self.script, BaseException):
            return self.script(item)
        if isinstance(self.script, (str, Generation, BaseException)):
            return self.script
        with self._lock:
            if self._position >= len(self.script):
                raise BackendError(
                    f"ScriptedBackend ran out of replies after {len(self.script)}: reply {self._position + 1} "
                    "was asked for; give it more replies, or a callable script(item) -> reply"
                )
            reply = self.script[self._position]
            self._position += 1
        return reply

    def generate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """The scripted replies, ``decoding.n`` per input (the script is asked once per output).
        ``deadline`` is not looked at: the ``Guard`` enforces it, as for any backend that cannot stop."""
        with self._lock:
            self.calls.append(list(inputs))
            self.max_new_tokens.append(max_new_tokens)
        if self.delay:
            time.sleep(self.delay)
        generations: list[Generation] = []
        for item in (item for item in inputs for _ in range(decoding.n)):
            reply: Any = self._reply(item)
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, str):
                words = len(reply.split()) if len(reply) <= 65_536 else len(reply) // 4  # cheap for huge replies
                reply = Generation(
                    text=reply, completion_tokens=words, latency_ms=self.delay * 1000, finished=self.finished
                )
            generations.append(reply)
        return generations
