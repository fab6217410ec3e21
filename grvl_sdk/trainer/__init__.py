"""Fine-tuning your own GuardReasoner-VL guard: data, reasoning synthesis and reasoning SFT.

>>> from grvl_sdk.trainer import RSFTConfig, load_data, synthesize, train_rsft
>>> samples = load_data("labelled.jsonl")                 # or load_vltrain / load_benchmark / load_table
>>> synthesize(samples, "synth/", base_url="http://localhost:8000/v1", model="teacher")   # adds reasoning
>>> train_rsft(RSFTConfig.preset("3b", train_data=["synth/records.jsonl"], method="lora"))

Data loading and synthesis need only the base install (plus ``tqdm`` for progress bars); training
needs ``pip install 'grvl-sdk[train]'`` (TRL, PEFT, accelerate, datasets). Heavy modules are imported
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grvl_sdk.trainer.config import PRESETS, BatchPlan, RSFTConfig
from grvl_sdk.trainer.data import (
    ColumnMap,
    DataSummary,
    Modality,
    TrainingSample,
    detect_format,
    load_benchmark,
    load_data,
    load_table,
    load_vltrain,
    normalize_label,
    parse_transcript,
    render_completion,
    sample_to_record,
    summarize,
)
from grvl_sdk.trainer.synthesize import SynthesisReport, synthesize, validate_teacher_answer

if TYPE_CHECKING:
    from grvl_sdk.trainer.render import training_prompt
    from grvl_sdk.trainer.rsft import RSFTResult, load_adapter_guard, merge_adapter, train_rsft

__all__ = [
    "PRESETS",
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
    "RSFTResult": "grvl_sdk.trainer.rsft",
    "load_adapter_guard": "grvl_sdk.trainer.rsft",
    "merge_adapter": "grvl_sdk.trainer.rsft",
    "train_rsft": "grvl_sdk.trainer.rsft",
    "training_prompt": "grvl_sdk.trainer.render",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grvl_sdk.trainer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
