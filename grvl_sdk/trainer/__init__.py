"""Fine-tuning your own GuardReasoner-VL guard: data, reasoning synthesis, reasoning SFT and online RL.

>>> from grvl_sdk.trainer import RSFTConfig, load_data, synthesize, train_rsft
>>> samples = load_data("labelled.jsonl")                 # or load_vltrain / load_benchmark / load_table
>>> synthesize(samples, "synth/", base_url="http://localhost:8000/v1", model="teacher")   # adds reasoning
>>> train_rsft(RSFTConfig.preset("3b", train_data=["synth/records.jsonl"], method="lora"))

Stage two (RL) of the recipe:

>>> from grvl_sdk.trainer import GuardRLConfig, augment_data, sample_hard, train_rl
>>> sample_hard(load_data("synth/records.jsonl"), "rl-data/", model="runs/rsft")      # rejection sampling
>>> augment_data("rl-data/", "rl-data-aug/")                                           # concatenation
>>> train_rl(GuardRLConfig.preset("eco", train_data=["rl-data-aug/"], model_name_or_path="runs/rsft"))

or all of it: ``run_pipeline("pipeline.yaml")`` (``grvl train pipeline --config pipeline.yaml``).

Data loading and synthesis need only the base install (plus ``tqdm`` for progress bars); training
needs ``pip install 'grvl-sdk[train]'`` (TRL, PEFT, accelerate, datasets). Heavy modules are imported
on first use.

Modules (named as TRL names them): ``base_config`` (settings every stage shares), ``rsft_config`` /
``rsft_trainer`` (reasoning SFT), ``vltrain`` / ``loaders`` / ``summary`` (data; samples, labels and
readers are the shared :mod:`grvl_sdk.data` layer), ``synthesize`` / ``teacher`` (reasoning synthesis),
``render`` (tokenising), ``modeling`` / ``checkpoints`` / ``runs`` (models, saved guards, run folders);
RL: ``sampling`` (+ ``sampling_report``), ``augment``, ``rl_data``, ``rewards``, ``clipping``, ``grpo_config`` /
``grpo_trainer`` (+ ``rl_curves``), ``pipeline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grvl_sdk.data.labels import normalize_label
from grvl_sdk.data.samples import Modality, TrainingSample, render_completion
from grvl_sdk.protocol.prompt import parse_transcript
from grvl_sdk.trainer.base_config import BaseTrainingConfig, BatchPlan
from grvl_sdk.trainer.clipping import clip_schedule
from grvl_sdk.trainer.grpo_config import GuardRLConfig
from grvl_sdk.trainer.loaders import ColumnMap, detect_format, load_benchmark, load_data, load_table
from grvl_sdk.trainer.rewards import SafetyReward, safety_reward
from grvl_sdk.trainer.rsft_config import PRESETS, RSFTConfig
from grvl_sdk.trainer.summary import DataSummary, summarize
from grvl_sdk.trainer.synthesize import SynthesisReport, synthesize
from grvl_sdk.trainer.teacher import validate_teacher_answer
from grvl_sdk.trainer.vltrain import load_vltrain, sample_to_record

if TYPE_CHECKING:
    from grvl_sdk.trainer.augment import augment_data, augment_samples, concatenate
    from grvl_sdk.trainer.checkpoints import load_adapter_guard, merge_adapter
    from grvl_sdk.trainer.grpo_trainer import RLResult, train_rl
    from grvl_sdk.trainer.pipeline import PipelineConfig, run_pipeline
    from grvl_sdk.trainer.render import training_prompt
    from grvl_sdk.trainer.rl_data import RLSample, load_rl_data, rl_dataset
    from grvl_sdk.trainer.rsft_trainer import RSFTResult, train_rsft
    from grvl_sdk.trainer.sampling import SamplingReport, sample_hard

__all__ = [
    "PRESETS",
    "BaseTrainingConfig",
    "BatchPlan",
    "ColumnMap",
    "DataSummary",
    "GuardRLConfig",
    "Modality",
    "PipelineConfig",
    "RLResult",
    "RLSample",
    "RSFTConfig",
    "RSFTResult",
    "SafetyReward",
    "SamplingReport",
    "SynthesisReport",
    "TrainingSample",
    "augment_data",
    "augment_samples",
    "clip_schedule",
    "concatenate",
    "detect_format",
    "load_adapter_guard",
    "load_benchmark",
    "load_data",
    "load_rl_data",
    "load_table",
    "load_vltrain",
    "merge_adapter",
    "normalize_label",
    "parse_transcript",
    "render_completion",
    "rl_dataset",
    "run_pipeline",
    "safety_reward",
    "sample_hard",
    "sample_to_record",
    "summarize",
    "synthesize",
    "train_rl",
    "train_rsft",
    "training_prompt",
    "validate_teacher_answer",
]

_LAZY = {
    "PipelineConfig": "grvl_sdk.trainer.pipeline",
    "RLResult": "grvl_sdk.trainer.grpo_trainer",
    "RLSample": "grvl_sdk.trainer.rl_data",
    "SamplingReport": "grvl_sdk.trainer.sampling",
    "augment_data": "grvl_sdk.trainer.augment",
    "augment_samples": "grvl_sdk.trainer.augment",
    "concatenate": "grvl_sdk.trainer.augment",
    "load_rl_data": "grvl_sdk.trainer.rl_data",
    "rl_dataset": "grvl_sdk.trainer.rl_data",
    "run_pipeline": "grvl_sdk.trainer.pipeline",
    "sample_hard": "grvl_sdk.trainer.sampling",
    "train_rl": "grvl_sdk.trainer.grpo_trainer",
    "RSFTResult": "grvl_sdk.trainer.rsft_trainer",
    "load_adapter_guard": "grvl_sdk.trainer.checkpoints",
    "merge_adapter": "grvl_sdk.trainer.checkpoints",
    "train_rsft": "grvl_sdk.trainer.rsft_trainer",
    "training_prompt": "grvl_sdk.trainer.render",
}


#: Old submodules (deprecated shims), importable as attributes as when this package imported them.
_OLD_MODULES = ("config", "data", "rsft")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _OLD_MODULES:
        return importlib.import_module(f"grvl_sdk.trainer.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grvl_sdk.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
