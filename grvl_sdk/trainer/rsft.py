"""Reasoning SFT (stage 1 of the GuardReasoner-VL recipe) on TRL's ``SFTTrainer``.

The same function runs on one CPU (tests), one GPU, or many under ``accelerate launch`` with the
DeepSpeed ZeRO-3 / FSDP configs shipped in ``grvl_sdk/trainer/configs/accelerate``: the trainer picks
up the launcher's settings, and the effective batch is kept by deriving the accumulation steps from
the number of processes (:meth:`RSFTConfig.batch_plan`).

Prompts are tokenised by the inference prompt encoder (see :mod:`grvl_sdk.trainer.render`) and the
loss covers the assistant turn only (labels are ``-100`` on the prompt).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.errors import DataError, ModelLoadError, TrainingConfigError, TrainingError
from grvl_sdk.trainer.config import BatchPlan, RSFTConfig
from grvl_sdk.trainer.data import DataSummary, TrainingSample, load_data, summarize
from grvl_sdk.trainer.render import _split_source
from grvl_sdk.trainer.runs import CONFIG_FILE, METRICS_FILE, PLOT_FILE, SUMMARY_FILE, last_checkpoint

__all__ = ["RSFTResult", "load_adapter_guard", "merge_adapter", "train_rsft"]

logger = logging.getLogger("grvl_sdk")

_ADAPTER_DIR = "adapter"
# Processor-level files copied verbatim from the base model, so the trained guard loads exactly like it.
_PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
# Module paths of the vision tower (transformers 5.x, 4.x) and the output head: never quantised.
_SKIP_QUANTIZATION = ["model.visual", "visual", "lm_head"]


@dataclass
class RSFTResult:
    """What :func:`train_rsft` produced."""

    output_dir: Path
    global_step: int
    train_loss: float | None
    batch_plan: BatchPlan
    summary: DataSummary
    dropped_overlong: int
    resumed_from: str | None
    metrics_path: Path
    loss_plot: Path | None
    #: ``True`` when ``output_dir`` holds a full checkpoint ``Guard.from_pretrained`` loads; ``False``
    #: when it holds a LoRA adapter (``merge_lora=False``; see :func:`load_adapter_guard`).
    merged: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)


def _coerce(config: RSFTConfig | Mapping[str, Any] | str | os.PathLike[str]) -> RSFTConfig:
    if isinstance(config, RSFTConfig):
        config.validate()
        return config
    if isinstance(config, Mapping):
        return RSFTConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return RSFTConfig.from_yaml(config)
    raise TrainingConfigError(f"config must be an RSFTConfig, a dict or a YAML path, got {type(config).__name__}")


def _load_sources(sources: Sequence[Any]) -> list[TrainingSample]:
    samples: list[TrainingSample] = []
    for source in sources:
        samples.extend(load_data(source))
    return samples


def _check_targets(samples: Sequence[TrainingSample], what: str) -> None:
    missing = [s for s in samples if not s.has_target]
    if missing:
        first = missing[0]
        file, line = _split_source(first.source)
        raise DataError(
            f"{len(missing)} of {len(samples)} {what} samples have no reasoning and labels to train on "
            f"(first at {first.source or 'an in-memory sample'}); add reasoning with `grvl train synthesize`",
            file=file,
            line=line,
            field="reasoning",
        )


def _resolve_bf16(config: RSFTConfig, torch: Any) -> bool:
    if config.bf16 is not None:
        return bool(config.bf16)
    return bool(not config.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _resolve_resume(config: RSFTConfig) -> str | None:
    value = config.resume_from_checkpoint
    if value in (None, False):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last", "auto")):
        found = last_checkpoint(config.output_dir)
        if found is None:
            if isinstance(value, str) and value.lower() == "auto":
                return None
            raise TrainingError(f"no checkpoint to resume from in {config.output_dir}", output_dir=config.output_dir)
        return found
    path = Path(str(value))
    if not path.is_dir():
        raise TrainingError(f"checkpoint to resume from not found: {path}", checkpoint=str(path))
    return str(path)


def _visual_module(model: Any) -> Any:
    inner = getattr(model, "model", None)
    return getattr(inner, "visual", None) or getattr(model, "visual", None)


def _load_model(config: RSFTConfig, bf16: bool, device_index: Any, source: str | None = None) -> Any:
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


def _lora_config(config: RSFTConfig) -> Any:
    peft = require("peft", extra="train")
    return peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _sft_args(config: RSFTConfig, plan: BatchPlan, bf16: bool, has_eval: bool) -> Any:
    trl = require("trl", extra="train")
    args: dict[str, Any] = {
        "output_dir": config.output_dir,
        "per_device_train_batch_size": plan.per_device,
        "gradient_accumulation_steps": plan.accumulation,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_steps": config.warmup_ratio,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "max_grad_norm": config.max_grad_norm,
        "weight_decay": config.weight_decay,
        "optim": config.optim,
        "seed": config.seed,
        "bf16": bf16,
        "fp16": False,
        "gradient_checkpointing": config.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if config.gradient_checkpointing else None,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": (config.eval_steps or config.save_steps) if has_eval else None,
        "per_device_eval_batch_size": config.per_device_eval_batch_size or plan.per_device,
        "report_to": list(config.report_to) or "none",
        "dataloader_num_workers": config.dataloader_num_workers,
        "disable_tqdm": not config.progress,
        "use_cpu": config.use_cpu,
        # The collator builds every tensor from the examples; TRL must not re-tokenise.
        "remove_unused_columns": False,
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "max_length": None,
        "packing": False,
    }
    args.update(config.extra_args)
    try:
        return trl.SFTConfig(**args)
    except (TypeError, ValueError) as exc:
        raise TrainingConfigError(f"invalid trainer arguments: {exc}") from exc


def _save_processor(processor: Any, base: str, out: Path) -> None:
    """Tokenizer plus the base model's processor files, so ``Guard.from_pretrained(out)`` loads it like the base."""
    from grvl_sdk.backends._processor import _image_text_processor_class

    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.save_pretrained(str(out))
    if not isinstance(processor, _image_text_processor_class()):
        processor.save_pretrained(str(out))  # the stock processor saves itself faithfully
        return
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        image_processor.save_pretrained(str(out))
    from transformers.utils import cached_file

    for name in _PROCESSOR_FILES:
        try:
            found = cached_file(base, name, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            found = None
        target = out / name
        if found:
            shutil.copyfile(found, target)
        elif name == "processor_config.json" and target.is_file():
            target.unlink()  # written for the torchvision-free class; the base had none
    chat_template = getattr(processor, "chat_template", None)
    if chat_template and not (out / "chat_template.jinja").is_file() and not (out / "chat_template.json").is_file():
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def merge_adapter(
    adapter_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Merge a LoRA/QLoRA adapter into its (unquantised) base and save a full guard checkpoint.

    ``base_model`` defaults to the adapter's ``base_model_name_or_path``; ``dtype`` (``"bfloat16"``,
    ``"float32"``...) to the base's own. Returns ``output_dir``.
    """
    torch = require("torch", extra="train")
    transformers = require("transformers", extra="train")
    peft = require("peft", extra="train")
    from grvl_sdk.backends._processor import load_processor

    adapter_dir = Path(adapter_dir)
    base = base_model or _adapter_base(adapter_dir)
    kwargs: dict[str, Any] = {}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype.replace("bf16", "bfloat16").replace("fp32", "float32"))
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load base model {base!r} to merge the adapter into: {exc}") from exc
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor_source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base
    _save_processor(load_processor(processor_source), base, out)
    return out


def _adapter_base(adapter_dir: Path) -> str:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{adapter_dir} holds no adapter_config.json: not a LoRA adapter")
    base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{config_path} names no base_model_name_or_path; pass base_model=")
    return str(base)


def load_adapter_guard(
    adapter_dir: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    merge: bool = True,
    quantization: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    **guard_kwargs: Any,
) -> Any:
    """A :class:`~grvl_sdk.Guard` over a base model plus a LoRA adapter (``merge_lora=False`` runs).

    The adapter is merged in memory (``merge=True``; not possible over a quantised base, where it stays
    a PEFT model). ``guard_kwargs`` go to ``Guard`` (policy, max_new_tokens...).
    """
    peft = require("peft", extra="train")
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.backends.local import LocalBackend
    from grvl_sdk.guard import Guard

    adapter_dir = Path(adapter_dir)
    base = base_model or _adapter_base(adapter_dir)
    backend = LocalBackend.from_pretrained(base, quantization=quantization, device=device, dtype=dtype)  # type: ignore[arg-type]
    model = peft.PeftModel.from_pretrained(backend.model, str(adapter_dir))
    if merge and quantization is None:
        model = model.merge_and_unload()
    model.eval()
    processor_source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base
    pixels = {"min_pixels": backend.encoder.min_pixels, "max_pixels": backend.encoder.max_pixels}
    local = LocalBackend(model, load_processor(processor_source), model_id=str(adapter_dir), **pixels)
    return Guard(local, **guard_kwargs)


def _trainer_class(trl: Any) -> type:
    """``SFTTrainer`` that can skip its own weight loading on resume.

    transformers' plain (non-DeepSpeed, non-FSDP) resume loads ``model.safetensors`` with a raw
    ``load_state_dict``; Qwen2.5-VL checkpoints are saved under their original key names, so nothing
    matches and training would silently restart from the base weights. Full fine-tuning therefore
    loads the checkpoint with ``from_pretrained`` (which maps the keys) and skips that step.
    """

    class GuardSFTTrainer(trl.SFTTrainer):  # type: ignore[misc, valid-type]
        weights_preloaded = False

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            if self.weights_preloaded and model is None:
                logger.info("model weights already loaded from %s", resume_from_checkpoint)
                return
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    return GuardSFTTrainer


def _report(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def train_rsft(
    config: RSFTConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    train_samples: Sequence[TrainingSample] | None = None,
    eval_samples: Sequence[TrainingSample] | None = None,
    callbacks: Sequence[Any] = (),
) -> RSFTResult:
    """Run reasoning SFT and save a guard ``Guard.from_pretrained(output_dir)`` loads.

    ``config`` is an :class:`RSFTConfig`, a dict of its fields, or a YAML path. ``train_samples`` /
    ``eval_samples`` replace ``config.train_data`` / ``eval_data`` (in-memory data). ``callbacks`` are
    extra ``transformers.TrainerCallback`` objects. Prints the data summary and the batch plan before
    training (main process). Raises :class:`DataError` for unusable data, :class:`TrainingConfigError`
    for bad settings, :class:`ModelLoadError` when the base model cannot be loaded.
    """
    config = _coerce(config)
    torch = require("torch", extra="train")
    datasets = require("datasets", extra="train")
    trl = require("trl", extra="train")
    accelerate = require("accelerate", extra="train")
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.trainer.render import RSFTCollator, encode_samples
    from grvl_sdk.trainer.runs import run_recorder, write_loss_plot

    state = accelerate.PartialState(cpu=config.use_cpu)
    main = state.is_main_process
    plan = config.batch_plan(state.num_processes)
    out = Path(config.output_dir)

    train = list(train_samples) if train_samples is not None else _load_sources(config.train_data)
    evals = list(eval_samples) if eval_samples is not None else _load_sources(config.eval_data)
    if not train:
        raise TrainingError("no training samples: set train_data (or pass train_samples)")
    summary = summarize(train)
    _report(f"Training data ({len(train)} samples):\n{summary}", main)
    _check_targets(train, "training")
    _check_targets(evals, "evaluation")
    resume = _resolve_resume(config)
    bf16 = _resolve_bf16(config, torch)
    _report(f"R-SFT: method {config.method}, {plan}, bf16 {bf16}, resume {resume or 'no'}", main)

    try:
        processor = load_processor(config.model_name_or_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the processor of {config.model_name_or_path!r}: {exc}") from exc
    encode = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
    examples, dropped = encode_samples(
        train, processor, max_length=config.max_length, progress=config.progress and main, **encode
    )
    eval_examples, eval_dropped = encode_samples(evals, processor, max_length=config.max_length, **encode)
    if dropped or eval_dropped:
        longest = max(length for _, length in dropped + eval_dropped)
        _report(
            f"dropped {len(dropped)} training and {len(eval_dropped)} evaluation samples longer than "
            f"max_length={config.max_length} tokens (longest: {longest})",
            main,
        )
    if not examples:
        raise TrainingError(f"every training sample is longer than max_length={config.max_length}")

    # TrainingArguments first: under DeepSpeed ZeRO-3 it must exist before the model is loaded.
    args = _sft_args(config, plan, bf16, has_eval=bool(eval_examples))
    device_index: Any = "cpu" if (config.use_cpu or not torch.cuda.is_available()) else state.local_process_index
    sharded = getattr(state.distributed_type, "value", state.distributed_type) in ("DEEPSPEED", "FSDP")
    preload = resume is not None and config.method == "full" and not sharded
    model = _load_model(config, bf16, device_index, source=resume if preload else None)
    peft_config = _lora_config(config) if config.method in ("lora", "qlora") else None

    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {
            **config.to_dict(),
            "resolved": {
                "processes": plan.processes,
                "gradient_accumulation_steps": plan.accumulation,
                "effective_batch_size": plan.effective,
                "bf16": bf16,
                "train_examples": len(examples),
                "eval_examples": len(eval_examples),
                "dropped_overlong": len(dropped),
                "versions": _versions(),
            },
        }
        yaml = require("yaml", extra="train")
        (out / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8")
        (out / SUMMARY_FILE).write_text(
            json.dumps({**summary.to_dict(), "dropped_overlong": [s for s, _ in dropped]}, indent=2),
            encoding="utf-8",
        )

    collator = RSFTCollator(examples + eval_examples, processor, **encode)
    train_dataset = datasets.Dataset.from_dict({"index": list(range(len(examples)))})
    eval_dataset = (
        datasets.Dataset.from_dict({"index": list(range(len(examples), len(examples) + len(eval_examples)))})
        if eval_examples
        else None
    )
    if resume is None and last_checkpoint(out) is not None:
        _report(f"note: {out} already holds checkpoints; set resume_from_checkpoint=True to continue from them", main)
    title = f"R-SFT of {Path(config.model_name_or_path).name} ({config.method})"
    trainer = _trainer_class(trl)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[run_recorder(out, title=title), *callbacks],
    )
    trainer.weights_preloaded = preload
    output = trainer.train(resume_from_checkpoint=resume)

    merged = True
    if config.method == "full":
        trainer.save_model(str(out))
        if main:
            _save_processor(processor, config.model_name_or_path, out)
    else:
        adapter_dir = out / _ADAPTER_DIR if config.merge_lora else out
        trainer.save_model(str(adapter_dir))
        state.wait_for_everyone()
        if main:
            _save_processor(processor, config.model_name_or_path, adapter_dir)
            if config.merge_lora:
                trainer.model = None
                model = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                merge_adapter(
                    adapter_dir,
                    out,
                    base_model=config.model_name_or_path,
                    dtype="bfloat16" if bf16 else "float32",
                )
        merged = config.merge_lora
    state.wait_for_everyone()
    plot = write_loss_plot(out / METRICS_FILE, out / PLOT_FILE, title=title) if main else None
    return RSFTResult(
        output_dir=out,
        global_step=output.global_step,
        train_loss=output.training_loss,
        batch_plan=plan,
        summary=summary,
        dropped_overlong=len(dropped),
        resumed_from=resume,
        metrics_path=out / METRICS_FILE,
        loss_plot=plot,
        merged=merged,
        metrics=dict(output.metrics),
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found: dict[str, str] = {}
    for name in ("grvl-sdk", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
