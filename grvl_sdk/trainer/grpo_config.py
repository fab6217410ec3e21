"""``GuardRLConfig``: every setting of the RL stage (GRPO) in one dataclass, with the paper's values.

Defaults are GuardReasoner-VL's online RL (spec section 4.5): group size 16, rollout temperature 1.2, lr
1e-6 constant, AdamW with weight decay 0.01, no KL term (``beta = 0``: no reference model is loaded), at
most 3072 prompt and 3072 completion tokens, one epoch, 512 prompts per rollout batch and 128 prompts per
policy update — **four optimizer updates per rollout batch** — and dynamic clipping (``ε = 0.2``, the
product schedule of :mod:`grvl_sdk.trainer.clipping`). The reward is the length-aware safety reward of
:mod:`grvl_sdk.trainer.rewards`; the presets differ only in its cut-off: ``standard`` (``reward_beta = 1``)
and ``eco`` (``reward_beta = 1/6``).

**Several policy updates per rollout batch, or clipping does nothing.** PPO-style clipping bounds the
ratio ``π_θ/π_old`` of the policy being updated to the one that generated the batch. With one update per
rollout batch (``prompts_per_rollout == prompts_per_update`` and ``num_iterations == 1``) that ratio is
exactly 1 and no clip range, dynamic or not, ever acts. The paper's setting (512/128) gives 4 updates; in
TRL's terms ``steps_per_generation = 4 × gradient_accumulation_steps``. ``num_iterations > 1`` reuses each
update's batch again (more updates still).

Batch arithmetic (TRL counts completions): one optimizer update takes ``prompts_per_update ×
num_generations`` completions (the ``effective_batch_size``, 2048 by default), split as
``per_device_train_batch_size × gradient_accumulation_steps × processes`` (accumulation derived, as in
R-SFT); one rollout generates ``prompts_per_rollout × num_generations`` (8192). On 12,000 prompts that is
about 94 optimizer updates in 23.4 rollouts: the paper's "about 23 steps", which is what ``S`` of the
clip schedule counts.

**Both tiers** (``fast_fraction``, issue 15; R-SFT's option of the same name). A seeded share of the
training prompts (``round(fast_fraction × prompts)``, drawn with ``seed`` as R-SFT draws its samples) has
the assistant turn pre-filled with :data:`grvl_sdk.protocol.fast.FAST_PREFIX` — the text
``GuardOptions(mode="fast")`` forces at inference — so the sampled completion is only the labels and
the closing tag. The prefix belongs to the prompt: it is never sampled and takes no loss, so no
gradient ever teaches the policy to *choose* an empty reasoning block on a think prompt. Each prompt's
group of answers is all fast or all think. The reward judges prefix + completion (the verdict block
opens in the prefix) and drops its length term for those rows (see
:class:`~grvl_sdk.trainer.rewards.SafetyReward`). Evaluation prompts stay in the think tier, as R-SFT's
evaluation samples do.

The vision tower is **trained** by default (``freeze_vision_tower: false``), as the authors' released RL
configuration did (R-SFT froze it); set ``true`` to keep it fixed (less memory). LoRA never adapts it.
Image budget: the guard's inference defaults (``min_pixels = 4·28·28``, ``max_pixels = 1280·28·28``), so RL
trains on the pixels inference sees; the authors' RL resized images into [262,144; 4,194,304] pixels
(small images blown up to ≥ 324 vision tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from grvl_sdk._constants import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from grvl_sdk.errors import TrainingConfigError
from grvl_sdk.trainer.base_config import BaseTrainingConfig, BatchPlan, _positive_or_null, _share
from grvl_sdk.trainer.clipping import CLIP_KINDS
from grvl_sdk.trainer.rewards import AUTHORS_MAX_CHARACTERS, ECO_BETA, STANDARD_BETA

__all__ = ["CLIPPED_LOSSES", "PRESETS", "GuardRLConfig", "RolloutPlan"]

#: TRL's loss types whose ratio is clipped to ``[1 − ε_low, 1 + ε_high]``: the ones the clip schedule applies to.
CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo")

#: Named starting points: the standard and the Eco reward (spec 4.6).
PRESETS: dict[str, dict[str, Any]] = {
    "standard": {"reward_beta": STANDARD_BETA, "output_dir": "runs/grpo"},
    "eco": {"reward_beta": ECO_BETA, "output_dir": "runs/grpo-eco"},
}


@dataclass(frozen=True)
class RolloutPlan:
    """How rollouts map onto optimizer updates (TRL's ``steps_per_generation``) for a number of processes."""

    batch: BatchPlan
    #: Optimizer updates per rollout batch (``prompts_per_rollout / prompts_per_update × num_iterations``).
    updates_per_rollout: int
    #: Micro-batches per process one rollout is split into (TRL's ``steps_per_generation``).
    steps_per_generation: int
    num_iterations: int
    num_generations: int

    @property
    def completions_per_rollout(self) -> int:
        return self.batch.per_device * self.batch.processes * self.steps_per_generation

    @property
    def clipping_acts(self) -> bool:
        """Whether the policy ratio can differ from 1 (more than one update per rollout batch)."""
        return self.updates_per_rollout > 1

    def __str__(self) -> str:
        return (
            f"{self.completions_per_rollout // self.num_generations} prompts × {self.num_generations} answers per "
            f"rollout, {self.updates_per_rollout} optimizer update(s) per rollout; each update: {self.batch}"
        )


@dataclass
class GuardRLConfig(BaseTrainingConfig):
    """Settings of :func:`grvl_sdk.trainer.train_rl` (also the YAML keys of ``grvl train rl``); see the module
    docstring. Batch sizes count completions, as TRL's do."""

    stage: ClassVar[str] = "GRPO"
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    # -- model, data, output (shared fields with the RL stage's defaults) ------------------------
    #: The R-SFT guard to start from (``grvl train sft``'s output_dir).
    model_name_or_path: str = "runs/rsft"
    #: Where checkpoints, the final guard, the settings, metrics and curves go. (``train_data`` / ``eval_data``:
    #: RL data of ``grvl train sample`` / ``augment``, ``train.jsonl`` files or their folders.)
    output_dir: str = "runs/grpo"
    freeze_vision_tower: bool = False

    # -- optimisation (spec 4.5) ---------------------------------------------------------------------
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    num_train_epochs: float = 1.0
    weight_decay: float = 0.01
    #: Completions per optimizer update over all processes; ``None``: ``prompts_per_update × num_generations``.
    effective_batch_size: int | None = None
    per_device_train_batch_size: int = 16
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    logging_steps: int = 1
    save_steps: int = 20

    # -- rollouts --------------------------------------------------------------------------------
    #: Answers sampled per prompt (the group of GRPO's advantage).
    num_generations: int = 16
    temperature: float = 1.2
    top_p: float = 1.0
    #: Prompts longer than this (tokens, image tokens included) are dropped and counted, never cut.
    max_prompt_length: int | None = 3072
    max_completion_length: int = 3072
    #: Prompts per rollout batch (the paper's "step"); must be a multiple of ``prompts_per_update``.
    prompts_per_rollout: int = 512
    #: Prompts per optimizer update.
    prompts_per_update: int = 128
    #: TRL's ``num_iterations``: times each update's batch is used (more updates per rollout).
    num_iterations: int = 1
    #: Share of the training prompts (chosen with ``seed``) whose answer starts from the fast tier's forced
    #: prefix (an empty reasoning block and an open result), so the policy only writes the labels and RL
    #: also trains ``GuardOptions(mode="fast")``; 0 is the paper's recipe (see the module docstring).
    fast_fraction: float = 0.0

    # -- loss ------------------------------------------------------------------------------------
    #: KL coefficient (TRL's ``beta``); 0 loads no reference model.
    beta: float = 0.0
    #: Clip range ε of the schedule (TRL's ``epsilon``), and its upper side (``None``: symmetric).
    epsilon: float = 0.2
    epsilon_high: float | None = None
    #: ``"product"`` (the paper's dynamic clipping), ``"constant"``, ``"linear"`` or ``"cosine"``.
    clip_schedule: str = "product"
    #: Lower bound of the scheduled clip range (the product reaches 0 at the end; see ``clipping``).
    clip_floor: float = 0.0
    #: TRL's loss aggregation; ``"dapo"`` averages over the tokens of the whole update, ``"bnpo"`` over
    #: each micro-batch's tokens (the released code's aggregation); also ``"grpo"``, ``"dr_grpo"``
    #: (:data:`CLIPPED_LOSSES`: losses whose clip range the schedule sets).
    loss_type: str = "dapo"
    #: Advantage ``(r − group mean) / (group std + ε)`` (``"group"``, the paper) or ``"batch"``/``"none"``.
    scale_rewards: str = "group"

    # -- reward (spec 4.6) ---------------------------------------------------------------------------
    #: The length cut-off β: 1 (standard) or 1/6 (Eco).
    reward_beta: float = STANDARD_BETA
    #: ``"tokens"`` (completion tokens) or ``"characters"`` (the authors' unit).
    reward_length_unit: Literal["tokens", "characters"] = "tokens"
    #: The length normaliser; ``None``: ``max_completion_length`` (tokens) or 3072 (characters).
    reward_max_length: int | None = None
    #: The length floor (same unit): shorter outputs count as this long, bounding the penalty of an empty or
    #: near-empty answer at ``−(normaliser / reward_min_length)²`` (1: the spec's bare "no division by zero").
    reward_min_length: float = 1.0

    # -- generation backend ----------------------------------------------------------------------
    #: vLLM generation: ``"auto"`` (when vLLM imports and a GPU is used), ``true`` or ``false``.
    use_vllm: bool | str = "auto"
    #: TRL's ``vllm_mode``: ``"colocate"`` (vLLM inside the training processes) or ``"server"`` (``trl vllm-serve``).
    vllm_mode: str = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = 0.3

    def validate(self) -> None:
        """Raise :class:`~grvl_sdk.errors.TrainingConfigError` for an impossible setting."""
        for name in ("num_generations", "prompts_per_rollout", "prompts_per_update", "num_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainingConfigError(f"{name} must be a positive integer, got {value!r}", field=name)
        if self.num_generations < 2:
            raise TrainingConfigError("GRPO needs num_generations >= 2 (a group to compare)", field="num_generations")
        if self.prompts_per_rollout % self.prompts_per_update:
            raise TrainingConfigError(
                f"prompts_per_rollout={self.prompts_per_rollout} must be a multiple of prompts_per_update="
                f"{self.prompts_per_update}",
                field="prompts_per_rollout",
            )
        derived = self.prompts_per_update * self.num_generations
        if self.effective_batch_size is None:
            self.effective_batch_size = derived
        elif self.effective_batch_size != derived:
            raise TrainingConfigError(
                f"effective_batch_size={self.effective_batch_size} completions differs from prompts_per_update × "
                f"num_generations = {derived}; set effective_batch_size to null",
                field="effective_batch_size",
            )
        super().validate()
        _positive_or_null(self, "max_prompt_length")
        _positive_or_null(self, "reward_max_length")
        _share(self, "fast_fraction")
        if not isinstance(self.max_completion_length, int) or self.max_completion_length < 1:
            raise TrainingConfigError("max_completion_length must be a positive integer", field="max_completion_length")
        if not 0.0 < self.reward_beta <= 1.0:
            raise TrainingConfigError(f"reward_beta must be in (0, 1], got {self.reward_beta}", field="reward_beta")
        if self.reward_length_unit not in ("tokens", "characters"):
            raise TrainingConfigError("reward_length_unit must be 'tokens' or 'characters'", field="reward_length_unit")
        if not 0 < self.reward_min_length <= self.reward_normaliser:
            raise TrainingConfigError(
                f"reward_min_length must be in (0, {self.reward_normaliser}], got {self.reward_min_length}",
                field="reward_min_length",
            )
        if self.loss_type not in CLIPPED_LOSSES:
            # cispo/sapo/vespo read epsilon differently (a ratio cap, a temperature...): a schedule shrinking it
            # to 0 would not narrow a clip range there, it would break the loss.
            raise TrainingConfigError(
                f"loss_type must be one of {CLIPPED_LOSSES} (PPO-clipped losses, which dynamic clipping schedules), "
                f"got {self.loss_type!r}",
                field="loss_type",
            )
        if self.clip_schedule not in CLIP_KINDS:
            raise TrainingConfigError(f"clip_schedule must be one of {CLIP_KINDS}", field="clip_schedule")
        for name in ("epsilon", "clip_floor", "beta"):
            if getattr(self, name) < 0:
                raise TrainingConfigError(f"{name} must be >= 0", field=name)
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise TrainingConfigError("epsilon_high must be >= 0 or null", field="epsilon_high")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise TrainingConfigError("need temperature > 0 and 0 < top_p <= 1", field="temperature")
        if self.use_vllm not in (True, False, "auto"):
            raise TrainingConfigError("use_vllm must be true, false or 'auto'", field="use_vllm")
        if self.vllm_mode not in ("colocate", "server"):
            raise TrainingConfigError("vllm_mode must be 'colocate' or 'server'", field="vllm_mode")

    @property
    def reward_normaliser(self) -> int:
        """``max_length`` of the reward's ``l``: ``reward_max_length``, else ``max_completion_length`` (tokens)
        or 3072 (characters, the authors')."""
        if self.reward_max_length is not None:
            return self.reward_max_length
        return self.max_completion_length if self.reward_length_unit == "tokens" else AUTHORS_MAX_CHARACTERS

    def rollout_plan(self, processes: int) -> RolloutPlan:
        """The batch plan of one optimizer update and how rollouts split into updates, for ``processes``."""
        batch = self.batch_plan(processes)
        updates = self.prompts_per_rollout // self.prompts_per_update
        return RolloutPlan(
            batch=batch,
            updates_per_rollout=updates * self.num_iterations,
            steps_per_generation=batch.accumulation * updates,
            num_iterations=self.num_iterations,
            num_generations=self.num_generations,
        )
