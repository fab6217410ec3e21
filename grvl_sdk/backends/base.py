"""The backend interface: turn checked inputs into raw guard outputs.

A backend implements one method, :meth:`Backend.generate`; everything else has a default. The
``Guard`` does the rest of the data flow (input → prompt → **backend** → parse → verdict).

Optional: a ``generate``/``agenerate`` that accepts a ``deadline`` keyword (a ``time.monotonic()``
value, or ``None``) is given each check's deadline and should stop by then (raise
``DeadlineExceededError``); for other backends the ``Guard`` enforces deadlines from outside. Setting
``Generation.logprobs`` gives verdicts label scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from grvl_sdk._threads import to_daemon_thread
from grvl_sdk.prompt import render_prompt
from grvl_sdk.scores import TokenLogprobs

__all__ = ["Backend", "Generation", "GuardInput"]


@dataclass(frozen=True)
class GuardInput:
    """One thing to check: a request text, its images (already loaded) and an optional response."""

    text: str | None = None
    response: str | None = None
    images: tuple[Image.Image, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Generation:
    """A raw guard output and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    #: False when generation hit ``max_new_tokens`` before the verdict block was closed.
    finished: bool = True
    #: Per-token log-probabilities, for label scores (``None`` when the backend gives none).
    logprobs: TokenLogprobs | None = None


class Backend(ABC):
    """Runs the guard model. Subclasses implement :meth:`generate`."""

    #: The model id or path this backend serves (recorded on every verdict).
    model_id: str = ""
    #: Whether a ``Guard`` should coalesce concurrent checks into batched ``generate`` calls by default
    #: (true for in-process models; a server batches by itself).
    prefers_micro_batching: bool = False

    @property
    def image_bounds(self) -> tuple[int, int] | None:
        """(min_pixels, max_pixels) the model's images are resized within (Qwen2.5-VL's grid rule,
        :func:`grvl_sdk.images.smart_resize`), or ``None`` when this backend does not resize. The
        ``Guard`` resizes once, while preparing an input, so the cache, the audit log and the
        backend all see the pixels the model sees."""
        return None

    @property
    def cache_settings(self) -> str:
        """Settings that change outputs for the same input (pixel budgets, server...): part of cache keys."""
        return type(self).__name__

    @abstractmethod
    def generate(self, inputs: Sequence[GuardInput], *, max_new_tokens: int) -> list[Generation]:
        """Generate one output per input, in order (greedy decoding)."""

    async def agenerate(self, inputs: Sequence[GuardInput], *, max_new_tokens: int) -> list[Generation]:
        """Async twin of :meth:`generate`; by default runs it in a worker (daemon) thread."""
        return await to_daemon_thread(self.generate, inputs, max_new_tokens=max_new_tokens)

    def format_prompt(self, item: GuardInput) -> str:
        """The exact prompt string the model receives (image blocks unexpanded)."""
        return render_prompt(item.text, item.response, num_images=len(item.images))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, GPU memory). Default: nothing to do."""
