"""Dynamic clipping (spec section 4.5): the PPO clip range shrinks over the RL run.

The paper's schedule, for RL step ``s`` of ``S`` (a step is one rollout batch: 512 prompts × 16 answers
in the paper, about 23 steps on 12,000 samples)::

    ε_s = ε · Π_{i=1..s} (1 − i / S)          ε = 0.2

large early (exploration), shrinking to 0 (exploitation): with S = 23, ε_1 ≈ 0.191, ε_5 ≈ 0.098,
ε_12 ≈ 0.003, and ε_22 ≈ 2.5·10⁻¹⁰, ε_23 = 0. ``"constant"``, ``"linear"`` (``ε·(1 − s/S)``) and ``"cosine"``
(``ε·(1 + cos(π·s/S))/2``) are there for ablations.

**What ε = 0 means.** The ratio ``π_θ/π_old`` is clamped to exactly 1: the first policy update of a rollout
batch (where the ratio is 1) still learns fully, but the later updates of that batch can only move the
policy back toward the one that generated it. The product schedule thus ends the run with one effective
update per rollout batch. ``floor`` keeps some room (``ε_s = max(ε_s, floor)``).

**The clip range must reach the loss.** TRL's ``GRPOTrainer`` reads ``trainer.epsilon_low`` /
``trainer.epsilon_high`` at every loss computation; :func:`dynamic_clipping` returns a callback that sets
them at the start of every optimizer step (the authors' schedule changed a copy of the config the loss
never read: training ran at a fixed 0.2, spec 6.3 bug 2). Clipping only acts when a rollout batch is
used for several policy updates (see :class:`~grvl_sdk.trainer.grpo_config.GuardRLConfig`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from grvl_sdk._lazy import require

__all__ = ["ClipKind", "clip_schedule", "dynamic_clipping", "rollout_step"]

ClipKind = Literal["product", "constant", "linear", "cosine"]
CLIP_KINDS: tuple[str, ...] = ("product", "constant", "linear", "cosine")


def clip_schedule(
    step: int, total_steps: int, epsilon: float = 0.2, kind: ClipKind | str = "product", *, floor: float = 0.0
) -> float:
    """The clip range ε_s at RL step ``step`` (1-based) of ``total_steps`` (see the module docstring).

    A ``step`` past ``total_steps`` is read as the last step. Returns ``max(ε_s, floor)``. Raises
    ``ValueError`` for ``step < 1``, ``total_steps < 1``, a negative ``epsilon`` or ``floor``, or an unknown
    ``kind``.
    """
    if step < 1 or total_steps < 1:
        raise ValueError(f"need step >= 1 and total_steps >= 1, got step={step}, total_steps={total_steps}")
    if epsilon < 0 or floor < 0:
        raise ValueError(f"epsilon and floor must be >= 0, got {epsilon}, {floor}")
    s = min(step, total_steps)
    if kind == "product":
        value = epsilon
        for i in range(1, s + 1):
            value *= 1.0 - i / total_steps
    elif kind == "constant":
        value = epsilon
    elif kind == "linear":
        value = epsilon * (1.0 - s / total_steps)
    elif kind == "cosine":
        value = epsilon * 0.5 * (1.0 + math.cos(math.pi * s / total_steps))
    else:
        raise ValueError(f"unknown clip schedule {kind!r}; use one of {CLIP_KINDS}")
    return max(value, floor)


def rollout_step(global_step: int, updates_per_rollout: int) -> int:
    """The 1-based RL step (rollout batch) that optimizer step ``global_step + 1`` belongs to."""
    if updates_per_rollout < 1:
        raise ValueError(f"updates_per_rollout must be >= 1, got {updates_per_rollout}")
    return global_step // updates_per_rollout + 1


def dynamic_clipping(
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    kind: ClipKind | str = "product",
    floor: float = 0.0,
    updates_per_rollout: int = 1,
    total_rollouts: int | None = None,
) -> Any:
    """A ``TrainerCallback`` that sets the GRPO trainer's clip range from :func:`clip_schedule` every step.

    Bind it to the trainer (``callback.trainer = trainer``; TRL callbacks are not handed the trainer). At
    the start of each optimizer step it computes the RL step ``s`` (``updates_per_rollout`` optimizer
    updates per rollout batch) and sets ``trainer.epsilon_low = ε_s`` and ``trainer.epsilon_high`` (the
    same schedule from ``epsilon_high``, or ε_s when ``None``). ``total_rollouts`` defaults to
    ``ceil(max_steps / updates_per_rollout)`` of the run. ``callback.history`` keeps ``(global_step, s,
    ε_low, ε_high)`` for every step set.
    """
    transformers = require("transformers", extra="train")
    clip_schedule(1, 1, epsilon, kind, floor=floor)  # validate the settings now
    if epsilon_high is not None:
        clip_schedule(1, 1, epsilon_high, kind, floor=floor)

    class DynamicClipping(transformers.TrainerCallback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.trainer: Any = None
            self.total = total_rollouts
            self.history: list[tuple[int, int, float, float]] = []

        def _apply(self, state: Any) -> None:
            if self.trainer is None:
                raise RuntimeError("dynamic clipping is not bound to a trainer: set callback.trainer = trainer")
            total = self.total or max(1, math.ceil(max(state.max_steps, 1) / updates_per_rollout))
            s = rollout_step(state.global_step, updates_per_rollout)
            low = clip_schedule(s, total, epsilon, kind, floor=floor)
            high = low if epsilon_high is None else clip_schedule(s, total, epsilon_high, kind, floor=floor)
            self.trainer.epsilon_low, self.trainer.epsilon_high = low, high
            self.history.append((state.global_step, s, low, high))

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._apply(state)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._apply(state)

    return DynamicClipping()
