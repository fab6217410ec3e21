"""The values that flow between the guard's stages: what is checked, how to decode, what came out.

::

    GuardInput ──► backend.generate(inputs, max_new_tokens=, deadline=, decoding=) ──► Generation
                                                                                    (text, tokens, logprobs)

Frozen, keyword-only dataclasses, in a module of their own so every stage (cache, audit log,
micro-batcher, trainer, evaluation) can name them without importing the backends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from grvl_sdk.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FAST", "GREEDY", "Decoding", "Generation", "GuardInput", "TokenLogprobs"]


@dataclass(frozen=True, kw_only=True)
class GuardInput:
    """One thing to check: a request text, its images (already loaded, RGB) and an optional response.

    A request needs a text or an image, unless a response is given: a response-only input judges the
    response alone (its request label is not a judgement and is not reported).
    """

    text: str | None = None
    response: str | None = None
    images: tuple[Image.Image, ...] = field(default_factory=tuple)

    @property
    def has_request(self) -> bool:
        return bool(self.text) or bool(self.images)


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How to decode. The default is the authors' evaluation setting (spec 2.4): greedy, repetition
    penalty 1.0. Sampling (``temperature > 0``) is for training (rejection sampling, GRPO rollouts).

    ``n``: outputs per input; ``generate`` then returns ``len(inputs) * n`` generations, the ``n`` of
    input 0 first. ``seed``: for reproducible sampling where the backend supports it.

    ``tier``: ``"think"`` (the paper's protocol: reasoning, then the verdict) or ``"fast"`` (no
    reasoning: the assistant turn is forced to start with an empty ``<think>`` block and an open
    ``<result>``, and each label is read from the probabilities of the label tokens; see
    :mod:`grvl_sdk.protocol.fast`). A fast generation is greedy with ``n == 1`` (the sampling settings
    are not used); a backend that cannot do it raises
    :class:`~grvl_sdk.errors.FastModeUnsupportedError`.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    n: int = 1
    seed: int | None = None
    tier: Literal["think", "fast"] = "think"

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature < 100 or not 0.0 < self.top_p <= 1.0:
            raise InputError(f"need 0 <= temperature < 100 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be >= 1 or None, got {self.top_k}")
        if not 0.0 < self.repetition_penalty < 10 or self.n < 1:
            raise InputError(f"need 0 < repetition_penalty < 10 and n >= 1, got {self.repetition_penalty}, {self.n}")
        if self.tier not in ("think", "fast"):
            raise InputError(f"tier must be 'think' or 'fast', got {self.tier!r}")
        if self.tier == "fast" and (self.n != 1 or not self.greedy):
            raise InputError("a fast-tier generation reads label probabilities: it takes n=1 and temperature=0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


#: The authors' decoding: what every check uses.
GREEDY = Decoding()
#: The fast tier: the verdict without reasoning, labels read from their token probabilities.
FAST = Decoding(tier="fast")


@dataclass(frozen=True)
class TokenLogprobs:
    """Per generated token: its text, and the top alternatives at that step.

    ``alternatives(i)`` maps token text to log-probability for step ``i`` (the chosen token included);
    it is a callable so a backend can decode alternatives lazily, only where a label was written.
    """

    tokens: Sequence[str]
    alternatives: Callable[[int], Mapping[str, float]]


@dataclass(frozen=True, kw_only=True)
class Generation:
    """A raw guard output and what it cost (tokens; ``latency_ms`` of the generate call that made it)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    #: False when generation hit ``max_new_tokens`` (or the deadline) before the verdict block was closed.
    finished: bool = True
    #: Per-token log-probabilities, for label scores (``None`` when the backend gives none).
    logprobs: TokenLogprobs | None = None
