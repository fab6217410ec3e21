"""Reasoning SFT (stage 1 of the GuardReasoner-VL recipe) on TRL's ``SFTTrainer``.

The same function runs on one CPU (tests), one GPU, or many under ``accelerate launch`` with the
DeepSpeed ZeRO-3 / FSDP configs shipped in ``grvl_sdk/trainer/configs/accelerate``: the trainer picks
up the launcher's settings, and the effective batch is kept by deriving the accumulation steps from
the number of processes (:meth:`RSFTConfig.batch_plan`).

Prompts are tokenised by the inference prompt encoder (see :mod:`grvl_sdk.trainer.render`) and the
loss covers the assistant turn only (labels are ``-100`` on the prompt).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.errors import DataError, ModelLoadError, TrainingConfigError, TrainingError
from grvl_sdk.trainer.base_config import BatchPlan
from grvl_sdk.trainer.checkpoints import (
    ADAPTER_DIR,
    PreloadedWeights,
    load_adapter_guard,
    merge_adapter,
    save_trained_model,
)
from grvl_sdk.trainer.console import (
    checkpointing_args,
    drop_step_printer,
    library_deprecations_hidden,
    pin_memory,
    report,
)
from grvl_sdk.trainer.loaders import load_data
from grvl_sdk.trainer.model_card import write_model_card
from grvl_sdk.trainer.modeling import check_base_model, load_model, lora_config, resolve_bf16
from grvl_sdk.trainer.render import _split_source
from grvl_sdk.trainer.rsft_config import RSFTConfig
from grvl_sdk.trainer.runs import (
    METRICS_FILE,
    PLOT_FILE,
    last_checkpoint,
    read_metrics,
    resolve_resume,
    versions,
    write_data_summary,
    write_run_config,
)
from grvl_sdk.trainer.summary import DataSummary, summarize

__all__ = ["RSFTResult", "load_adapter_guard", "merge_adapter", "train_rsft"]


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


def _sft_args(config: RSFTConfig, plan: BatchPlan, bf16: bool, has_eval: bool) -> Any:
    trl = require("trl", extra="train")
    torch = require("torch", extra="train")
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
        **checkpointing_args(trl.SFTConfig, config.gradient_checkpointing),
        "logging_steps": config.logging_steps,
        # With the last step (logged by the run recorder), even a run shorter than logging_steps has a curve.
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": (config.eval_steps or config.save_steps) if has_eval else None,
        "per_device_eval_batch_size": config.per_device_eval_batch_size or plan.per_device,
        "report_to": list(config.report_to) or "none",
        "dataloader_num_workers": config.dataloader_num_workers,
        "dataloader_pin_memory": pin_memory(config.use_cpu, torch),
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


def _trainer_class(trl: Any) -> type:
    """``SFTTrainer`` that can skip its own weight loading on resume (see :class:`PreloadedWeights`)."""

    class GuardSFTTrainer(PreloadedWeights, trl.SFTTrainer):  # type: ignore[misc, valid-type]
        pass

    return GuardSFTTrainer


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
    config = RSFTConfig.coerce(config)
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
    report(f"Training data ({len(train)} samples):\n{summary}", main)
    _check_targets(train, "training")
    _check_targets(evals, "evaluation")
    resume = resolve_resume(config.output_dir, config.resume_from_checkpoint)
    bf16 = resolve_bf16(config, torch)
    report(f"R-SFT: method {config.method}, {plan}, bf16 {bf16}, resume {resume or 'no'}", main)

    check_base_model(config.model_name_or_path)  # seconds, not minutes of hub retries, when it cannot load
    try:
        processor = load_processor(config.model_name_or_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the processor of {config.model_name_or_path!r}: {exc}") from exc
    encode: dict[str, Any] = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
    examples, dropped = encode_samples(
        train, processor, max_length=config.max_length, progress=config.progress and main,
        fast_fraction=config.fast_fraction, seed=config.seed, **encode,
    )  # fmt: skip
    eval_examples, eval_dropped = encode_samples(evals, processor, max_length=config.max_length, **encode)
    if dropped or eval_dropped:
        longest = max(length for _, length in dropped + eval_dropped)
        report(
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
    model = load_model(config, bf16, device_index, source=resume if preload else None)
    peft_config = lora_config(config) if config.method in ("lora", "qlora") else None

    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {
            "processes": plan.processes,
            "gradient_accumulation_steps": plan.accumulation,
            "effective_batch_size": plan.effective,
            "bf16": bf16,
            "train_examples": len(examples),
            "eval_examples": len(eval_examples),
            "dropped_overlong": len(dropped),
            "versions": versions(),
        }
        write_run_config(out, config.to_dict(), resolved)
        write_data_summary(out, summary.to_dict(), [s for s, _ in dropped])

    collator = RSFTCollator(examples + eval_examples, processor, **encode)
    train_dataset = datasets.Dataset.from_dict({"index": list(range(len(examples)))})
    eval_dataset = (
        datasets.Dataset.from_dict({"index": list(range(len(examples), len(examples) + len(eval_examples)))})
        if eval_examples
        else None
    )
    if config.resume_from_checkpoint is None and last_checkpoint(out) is not None:
        report(
            f"note: {out} already holds checkpoints; this run starts afresh and replaces them as it saves. Pass "
            "resume_from_checkpoint=True to continue from them (False starts afresh without this note).",
            main,
        )
    title = f"R-SFT of {Path(config.model_name_or_path).name} ({config.method})"
    with library_deprecations_hidden():  # PEFT reads a renamed transformers property while wrapping the model
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
    drop_step_printer(trainer, config.progress)
    trainer.weights_preloaded = preload
    output = trainer.train(resume_from_checkpoint=resume)

    del model
    with library_deprecations_hidden():
        merged = save_trained_model(trainer, config, processor, out, state=state, bf16=bf16)
    plot = None
    if main:
        plot = write_loss_plot(out / METRICS_FILE, out / PLOT_FILE, title=title)
        if plot is None:
            report(f"no {PLOT_FILE}: no loss was logged (0 optimizer steps)", main)
        card = {
            "stage": "R-SFT",
            "settings": config.to_dict(),
            "resolved": resolved,
            "summary": summary.to_dict(),
            "metrics": read_metrics(out / METRICS_FILE),
            "global_step": output.global_step,
            "train_loss": output.training_loss,
        }
        write_model_card(out, merged=merged, location=str(out), **card)
        if config.method != "full" and merged:  # the adapter kept beside the merged guard
            write_model_card(out / ADAPTER_DIR, merged=False, location=str(out / ADAPTER_DIR), **card)
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
