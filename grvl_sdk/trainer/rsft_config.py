"""``RSFTConfig``: every setting of reasoning SFT in one dataclass (TRL style), with the paper's defaults.

Defaults are those of GuardReasoner-VL's R-SFT (spec section 4.2): lr 5e-5, cosine schedule, no
warm-up, 3 epochs, effective batch 192 (6 per device × 8 accumulation × 4 GPUs), cutoff 2048 tokens,
bf16 where supported, AdamW, max grad norm 1.0. The shared settings (model, data, output, optimisation,
batch, precision, images, run) come from :class:`~grvl_sdk.trainer.base_config.BaseTrainingConfig`;
R-SFT adds the cutoff (``max_length``) and its presets. The effective batch is kept whatever the
number of processes: ``gradient_accumulation_steps`` is derived as ``effective_batch_size /
(per-device batch × processes)`` (32 on one GPU, 8 on four, 4 on eight) and must divide exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from grvl_sdk.trainer.base_config import (
    DEFAULT_LORA_TARGETS,
    BaseTrainingConfig,
    BatchPlan,
    Method,
    _positive_or_null,
    _share,
)

__all__ = ["DEFAULT_LORA_TARGETS", "PRESETS", "BatchPlan", "Method", "RSFTConfig"]

#: Named starting points; each is a set of field overrides over the paper's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "3b": {"model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", "output_dir": "runs/guardreasoner-vl-3b-rsft"},
    "7b": {"model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "output_dir": "runs/guardreasoner-vl-7b-rsft"},
}


@dataclass
class RSFTConfig(BaseTrainingConfig):
    """Settings of :func:`grvl_sdk.trainer.train_rsft` (also the YAML keys of ``grvl train sft``)."""

    stage: ClassVar[str] = "R-SFT"
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    #: Where checkpoints, the final model, the resolved config, metrics and the loss curve go.
    output_dir: str = "runs/rsft"

    # -- R-SFT ----------------------------------------------------------------------------------
    #: Cutoff in tokens (prompt with image tokens + answer); longer samples are dropped and counted.
    max_length: int | None = 2048
    #: Share of training samples (chosen with ``seed``) rendered with an empty reasoning block, so the
    #: guard also learns the fast tier (``GuardOptions(mode="fast")``); 0 is the paper's recipe.
    fast_fraction: float = 0.0

    def validate(self) -> None:
        """Raise :class:`~grvl_sdk.errors.TrainingConfigError` for an impossible setting."""
        super().validate()
        _positive_or_null(self, "max_length")
        _share(self, "fast_fraction")
