"""Loading the model to train: full fine-tuning (fp32 master weights, vision tower frozen), LoRA, or QLoRA.

Shared by the training stages: what differs between them is the trainer, not how the model is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.errors import ModelLoadError
from grvl_sdk.trainer.base_config import BaseTrainingConfig

logger = logging.getLogger("grvl_sdk")

__all__ = ["check_base_model", "load_model", "lora_config", "resolve_bf16"]

#: What a Python caller can do when the base model cannot be reached (the CLI gives its own advice).
API_MODEL_ADVICE = (
    "Set model_name_or_path to a local checkpoint folder (a Qwen2.5-VL-Instruct checkpoint or a guard), e.g. "
    "RSFTConfig(model_name_or_path='/path/to/Qwen2.5-VL-3B-Instruct', ...)."
)

# Module paths of the vision tower (transformers 5.x, 4.x) and the output head: never quantised.
_SKIP_QUANTIZATION = ["model.visual", "visual", "lm_head"]


def resolve_bf16(config: BaseTrainingConfig, torch: Any) -> bool:
    """``config.bf16``, or (``None``) whether the GPU supports bf16."""
    if config.bf16 is not None:
        return bool(config.bf16)
    return bool(not config.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def check_base_model(model_name_or_path: str, *, advice: str = API_MODEL_ADVICE) -> str:
    """Check, before anything is loaded, that the base model can be: a checkpoint folder, a cached hub id, or a
    hub id with the hub reachable. Returns the id to load.

    Raises :class:`ModelLoadError` within seconds (instead of minutes of hub retries) for a missing folder, a
    folder without ``config.json``, or a hub id that is neither cached nor downloadable, with ``advice`` (how
    to point at a local folder). A cached hub id with the hub unreachable switches ``huggingface_hub`` to
    offline mode for the process, so every later load reads the cache without retrying the network.
    """
    from grvl_sdk.backends._loading import resolve_model

    resolved, local_only = resolve_model(model_name_or_path, advice=advice)
    if local_only and not Path(resolved).is_dir():
        import huggingface_hub.constants

        logger.warning("the Hugging Face hub cannot be reached: using the cached copy of %s", resolved)
        os.environ["HF_HUB_OFFLINE"] = "1"
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    return resolved


def _visual_module(model: Any) -> Any:
    inner = getattr(model, "model", None)
    return getattr(inner, "visual", None) or getattr(model, "visual", None)


def load_model(config: BaseTrainingConfig, bf16: bool, device_index: Any, source: str | None = None) -> Any:
    """The model of ``config`` (or of ``source``, a checkpoint) prepared for its ``method``."""
    torch = require("torch", extra="train")
    transformers = require("transformers", extra="train")
    kwargs: dict[str, Any] = {}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    half = torch.bfloat16 if bf16 else torch.float32
    if config.method == "full":
        kwargs["dtype"] = torch.float32  # fp32 master weights; bf16 runs as autocast (or DeepSpeed's bf16)
    elif config.method == "lora":
        kwargs["dtype"] = half
    else:
        require("bitsandbytes", extra="train")
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        kwargs["dtype"] = half
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=half,
            llm_int8_skip_modules=_SKIP_QUANTIZATION,
        )
        kwargs["device_map"] = {"": device_index}
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(source or config.model_name_or_path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model {source or config.model_name_or_path!r}: {exc}") from exc
    if config.method == "full" and config.freeze_vision_tower:
        visual = _visual_module(model)
        if visual is not None:
            for parameter in visual.parameters():
                parameter.requires_grad_(False)
    if config.method == "qlora":
        peft = require("peft", extra="train")
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model


def lora_config(config: BaseTrainingConfig) -> Any:
    """PEFT's ``LoraConfig`` for ``config``'s LoRA settings."""
    peft = require("peft", extra="train")
    return peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
