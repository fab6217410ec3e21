"""Fine-tuning your own GuardReasoner-VL guard: data, reasoning synthesis and reasoning SFT.

>>> from grvl_sdk.trainer import RSFTConfig, load_data, synthesize, train_rsft
>>> samples = load_data("labelled.jsonl")                 # or load_vltrain / load_benchmark / load_table
>>> synthesize(samples, "synth/", base_url="http://localhost:8000/v1", model="teacher")   # adds reasoning
>>> train_rsft(RSFTConfig.preset("3b", train_data=["synth/records.jsonl"], method="lora"))

Data loading and synthesis need only the base install (plus ``tqdm`` for progress bars); training
needs ``pip install 'grvl-sdk[train]'`` (TRL, PEFT, accelerate, datasets). Heavy modules are imported
on first use.

Modules (named as TRL names them): ``base_config`` (settings every stage shares), ``rsft_config`` /
``rsft_trainer`` (reasoning SFT), ``vltrain`` / ``loaders`` / ``summary`` (data; samples, labels and
readers are the shared :mod:`grvl_sdk.data` layer), ``synthesize`` / ``teacher`` (reasoning synthesis),
``render`` (tokenising), ``modeling`` / ``checkpoints`` / ``runs`` (models, saved guards, run folders).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grvl_sdk.data.labels import normalize_label
from grvl_sdk.data.samples import Modality, TrainingSample, render_completion
from grvl_sdk.protocol.prompt import parse_transcript
from grvl_sdk.trainer.base_config import BaseTrainingConfig, BatchPlan
from grvl_sdk.trainer.loaders import ColumnMap, detect_format, load_benchmark, load_data, load_table
from grvl_sdk.trainer.rsft_config import PRESETS, RSFTConfig
from grvl_sdk.trainer.summary import DataSummary, summarize
from grvl_sdk.trainer.synthesize import SynthesisReport, synthesize
from grvl_sdk.trainer.teacher import validate_teacher_answer
from grvl_sdk.trainer.vltrain import load_vltrain, sample_to_record

if TYPE_CHECKING:
    from grvl_sdk.trainer.checkpoints import load_adapter_guard, merge_adapter
    from grvl_sdk.trainer.render import training_prompt
    from grvl_sdk.trainer.rsft_trainer import RSFTResult, train_rsft

__all__ = [
    "PRESETS",
    "BaseTrainingConfig",
    "BatchPlan",
    "ColumnMap",
    "DataSummary",
    "Modality",
    "RSFTConfig",
    "RSFTResult",
    "SynthesisReport",
    "TrainingSample",
    "detect_format",
    "load_adapter_guard",
    "load_benchmark",
    "load_data",
    "load_table",
    "load_vltrain",
    "merge_adapter",
    "normalize_label",
    "parse_transcript",
    "render_completion",
    "sample_to_record",
    "summarize",
    "synthesize",
    "train_rsft",
    "training_prompt",
    "validate_teacher_answer",
]

_LAZY = {
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
