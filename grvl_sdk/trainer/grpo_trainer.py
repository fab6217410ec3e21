"""Online RL (stage 2 of the GuardReasoner-VL recipe, spec section 4.5) on TRL's ``GRPOTrainer``.

:func:`train_rl` starts from the R-SFT guard and trains it on RL data (:mod:`grvl_sdk.trainer.rl_data`)
with the length-aware safety reward (:mod:`grvl_sdk.trainer.rewards`) and dynamic clipping
(:mod:`grvl_sdk.trainer.clipping`), with the settings of :class:`~grvl_sdk.trainer.grpo_config.GuardRLConfig`.
It runs on one CPU (tests), one GPU, or many under ``accelerate launch`` (the DeepSpeed ZeRO-3 / FSDP /
DDP configs of ``grvl_sdk/trainer/configs/accelerate``), generating rollouts with vLLM when available
(TRL's colocate or server mode) and with transformers otherwise.

What differs from a plain ``GRPOTrainer``:

- the clip range is set every optimizer step by the schedule's callback, and recorded **from inside the
  loss** (``clip_range/low``/``high`` in ``metrics.jsonl``; ``trainer.clip_trace`` in memory): the value
  the loss used, not the value a callback meant to set (the authors' never reached the loss, spec 6.3);
- prompts use the guard's inference layout (:meth:`RLSample.prompt`); over-long prompts are dropped and
  counted, never cut;
- with ``fast_fraction``, a seeded share of the prompts is pre-filled with the fast tier's forced prefix
  (:data:`~grvl_sdk.protocol.fast.FAST_PREFIX`, as an ``assistant`` message the answer continues): its tokens
  are appended to the prompt's token ids exactly as ``mode="fast"`` appends them at inference (tokenised
  on their own after the generation prompt), so the policy samples only the labels; the reward judges
  prefix + completion (:class:`~grvl_sdk.trainer.rewards.SafetyReward`);
- full fine-tuning checkpoints are reloaded with ``from_pretrained`` on resume (see
  :mod:`grvl_sdk.trainer.rsft_trainer`: transformers' plain resume cannot map Qwen2.5-VL's key names);
- the run folder gets ``grpo_config.yaml``, ``data_summary.json``, ``metrics.jsonl``, ``loss.png`` and
  ``rl_curves.png`` (:mod:`grvl_sdk.trainer.rl_curves`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.data.versions import stamp
from grvl_sdk.errors import DataError, ModelLoadError, TrainingConfigError, TrainingError
from grvl_sdk.protocol.fast import FAST_PREFIX
from grvl_sdk.trainer.checkpoints import PreloadedWeights, save_trained_model
from grvl_sdk.trainer.clipping import dynamic_clipping
from grvl_sdk.trainer.console import report
from grvl_sdk.trainer.grpo_config import GuardRLConfig, RolloutPlan
from grvl_sdk.trainer.modeling import load_model, lora_config, resolve_bf16
from grvl_sdk.trainer.rewards import SafetyReward, prefill
from grvl_sdk.trainer.rl_data import RLSample, load_rl_data, rl_dataset
from grvl_sdk.trainer.runs import METRICS_FILE, PLOT_FILE, last_checkpoint, resolve_resume, versions, write_run_config

__all__ = ["CONFIG_FILE", "RLResult", "train_rl"]

logger = logging.getLogger("grvl_sdk")

CONFIG_FILE = "grpo_config.yaml"


@dataclass
class RLResult:
    """What :func:`train_rl` produced."""

    output_dir: Path
    global_step: int
    train_loss: float | None
    plan: RolloutPlan
    train_samples: int
    eval_samples: int
    dropped_overlong: int
    resumed_from: str | None
    metrics_path: Path
    curves: Path | None
    #: ``True`` when ``output_dir`` holds a full guard checkpoint (``False``: a LoRA adapter).
    merged: bool = True
    #: ``(global_step, s, ε_low, ε_high)`` set by the schedule at each optimizer step.
    schedule: list[tuple[int, int, float, float]] = field(default_factory=list)
    #: ``(global_step, ε_low, ε_high)`` read by the loss at every micro-batch of this process.
    clip_trace: list[tuple[int, float, float]] = field(default_factory=list)
    #: Whether a separate reference model was loaded (never when the KL coefficient ``beta`` is 0).
    reference_model_loaded: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


def _load_sources(sources: Sequence[Any]) -> list[RLSample]:
    samples: list[RLSample] = []
    for source in sources:
        if isinstance(source, Mapping):
            unknown = sorted(set(source) - {"path", "limit"})
            if unknown or "path" not in source:
                raise DataError(f"an RL data source is a path or {{path, limit}}, got keys {sorted(source)}")
            found = load_rl_data(source["path"])
            samples.extend(found[: source["limit"]] if source.get("limit") else found)
        else:
            samples.extend(load_rl_data(source))
    return samples


def _set_image_bounds(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Make the processor resize every image within the config's pixel bounds (the guard's resize rule)."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(image_processor, name):
            setattr(image_processor, name, value)


def _prefix_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a pre-filled answer start, tokenised on their own as the fast tier's forced text is at
    inference and as R-SFT tokenises its answers (user-free text, but no special tokens parsed either)."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _prompt_length(sample: RLSample, processor: Any, min_pixels: int, max_pixels: int, *, fast: bool = False) -> int:
    """Prompt tokens of ``sample``, each image counted as its vision tokens (and the forced prefix with
    ``fast``)."""
    from grvl_sdk.trainer.render import image_token_count

    tokenizer = getattr(processor, "tokenizer", processor)
    text = tokenizer.apply_chat_template(sample.prompt(), tokenize=False, add_generation_prompt=True)
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - len(sample.images)
    if fast:
        count += len(_prefix_ids(tokenizer, FAST_PREFIX))
    image_processor = getattr(processor, "image_processor", None)
    patch = int(getattr(image_processor, "patch_size", 14) or 14)
    merge = int(getattr(image_processor, "merge_size", 2) or 2)
    pixels = {"patch_size": patch, "merge_size": merge, "min_pixels": min_pixels, "max_pixels": max_pixels}
    return count + sum(image_token_count(image, **pixels) for image in sample.images)


def _drop_overlong(
    samples: list[RLSample], processor: Any, config: GuardRLConfig, fast: Collection[int] = ()
) -> tuple[list[RLSample], list[tuple[str, int]], frozenset[int]]:
    """(kept samples, dropped ``(source, length)``, positions of the fast rows among the kept ones)."""
    kept: list[RLSample] = []
    dropped: list[tuple[str, int]] = []
    kept_fast: set[int] = set()
    for position, sample in enumerate(samples):
        if config.max_prompt_length is not None:
            length = _prompt_length(sample, processor, config.min_pixels, config.max_pixels, fast=position in fast)
            if length > config.max_prompt_length:
                dropped.append((sample.source or sample.id, length))
                continue
        if position in fast:
            kept_fast.add(len(kept))
        kept.append(sample)
    return kept, dropped, frozenset(kept_fast)


def _use_vllm(config: GuardRLConfig, torch: Any) -> bool:
    if config.use_vllm == "auto":
        return bool(importlib.util.find_spec("vllm")) and torch.cuda.is_available() and not config.use_cpu
    return bool(config.use_vllm)


def _grpo_args(config: GuardRLConfig, plan: RolloutPlan, bf16: bool, use_vllm: bool, has_eval: bool) -> Any:
    trl = require("trl", extra="train")
    args: dict[str, Any] = {
        "output_dir": config.output_dir,
        "per_device_train_batch_size": plan.batch.per_device,
        "gradient_accumulation_steps": plan.batch.accumulation,
        "steps_per_generation": plan.steps_per_generation,
        "num_iterations": config.num_iterations,
        "num_generations": config.num_generations,
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
        "per_device_eval_batch_size": config.per_device_eval_batch_size or config.num_generations,
        "report_to": list(config.report_to) or "none",
        "dataloader_num_workers": config.dataloader_num_workers,
        "disable_tqdm": not config.progress,
        "use_cpu": config.use_cpu,
        "remove_unused_columns": False,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "max_completion_length": config.max_completion_length,
        "beta": config.beta,
        "epsilon": config.epsilon,
        "epsilon_high": config.epsilon_high,
        "loss_type": config.loss_type,
        "scale_rewards": config.scale_rewards,
        "use_vllm": use_vllm,
        "log_completions": False,
    }
    if use_vllm:
        args["vllm_mode"] = config.vllm_mode
        args["vllm_gpu_memory_utilization"] = config.vllm_gpu_memory_utilization
        if config.vllm_server_base_url:
            args["vllm_server_base_url"] = config.vllm_server_base_url
    args.update(config.extra_args)
    try:
        return trl.GRPOConfig(**args)
    except (TypeError, ValueError) as exc:
        raise TrainingConfigError(f"invalid trainer arguments: {exc}") from exc


def _drop_empty_images(module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Forward pre-hook: a micro-batch of text-only rows from a batch with images reaches the model with empty
    ``pixel_values``/``image_grid_thw``, which the vision tower cannot take; drop them."""
    grid = kwargs.get("image_grid_thw")
    if grid is not None and getattr(grid, "shape", (1,))[0] == 0:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pixel_values", "image_grid_thw")}
    return args, kwargs


def _trainer_class(trl: Any) -> type:
    """``GRPOTrainer`` that records the clip range the loss reads, and can skip its own weight loading on
    resume (see the module docstring)."""

    class GuardGRPOTrainer(PreloadedWeights, trl.GRPOTrainer):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.clip_trace: list[tuple[int, float, float]] = []
            self.model.register_forward_pre_hook(_drop_empty_images, with_kwargs=True)

        def _tokenize_prompts(self, prompts: list[Any]) -> Any:
            # A pre-filled prompt (the fast share) ends with an assistant message: TRL would render it as a
            # closed turn plus a new generation prompt. Render the prompt without it, then append its tokens.
            prefixes = [prefill(prompt) for prompt in prompts]
            if any(prefixes):
                prompts = [prompt[:-1] if prefix else prompt for prompt, prefix in zip(prompts, prefixes, strict=True)]
            prompt_ids, images, fields = super()._tokenize_prompts(prompts)
            if any(prefixes):
                prompt_ids, fields = _append_prefixes(self._tokenizer, prompt_ids, fields, prefixes)
            # TRL marks a text-only prompt of a batch with images as ``None``, which the Qwen processor refuses
            # later in the same step: an empty list is what it takes (text-only samples stay text-only).
            if images is not None:
                images = [found or [] for found in images]
            return prompt_ids, images, fields

        def _compute_loss(self, model: Any, inputs: Any) -> Any:
            if self.model.training:
                low, high = float(self.epsilon_low), float(self.epsilon_high)
                self._metrics["train"]["clip_range/low"].append(low)
                self._metrics["train"]["clip_range/high"].append(high)
                self.clip_trace.append((self.state.global_step, low, high))
            return super()._compute_loss(model, inputs)

    return GuardGRPOTrainer


def _append_prefixes(
    tokenizer: Any, prompt_ids: Sequence[Sequence[int]], fields: dict[str, Any], prefixes: Sequence[str]
) -> tuple[list[list[int]], dict[str, Any]]:
    """Append each pre-filled prefix's tokens to its prompt's ids, and zeros to the per-token fields
    (``token_type_ids``, a Qwen processor's ``mm_token_type_ids``: the prefix holds no image token); image
    tensors (``pixel_values``, ``image_grid_thw``) are unchanged."""
    extra = [_prefix_ids(tokenizer, prefix) if prefix else [] for prefix in prefixes]
    lengths = [len(ids) for ids in prompt_ids]
    out_ids = [[*ids, *more] for ids, more in zip(prompt_ids, extra, strict=True)]
    out_fields = dict(fields)
    for name, value in fields.items():
        if not name.endswith("token_type_ids"):
            continue
        rows = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(rows, list) and [len(row) if isinstance(row, list) else -1 for row in rows] == lengths:
            out_fields[name] = [[*row, *([0] * len(more))] for row, more in zip(rows, extra, strict=True)]
    return out_ids, out_fields


def _summary(samples: Sequence[RLSample]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "by_origin": dict(Counter(s.origin for s in samples)),
        "by_modality": dict(Counter(s.modality for s in samples)),
        "request_labels": dict(Counter(s.request_label for s in samples)),
        "response_labels": dict(Counter(s.response_label or "none" for s in samples)),
    }


def train_rl(
    config: GuardRLConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    train_samples: Sequence[RLSample] | None = None,
    eval_samples: Sequence[RLSample] | None = None,
    callbacks: Sequence[Any] = (),
) -> RLResult:
    """Run GRPO from the R-SFT guard and save a guard ``Guard.from_pretrained(output_dir)`` loads.

    ``config`` is a :class:`GuardRLConfig`, a dict of its fields, or a YAML path. ``train_samples`` /
    ``eval_samples`` (:class:`RLSample`) replace ``config.train_data`` / ``eval_data``. ``callbacks`` are
    extra ``transformers.TrainerCallback`` objects. Raises :class:`DataError` for unusable data,
    :class:`TrainingConfigError` for bad settings, :class:`ModelLoadError` when the model cannot be loaded.
    """
    config = GuardRLConfig.coerce(config)
    torch = require("torch", extra="train")
    trl = require("trl", extra="train")
    accelerate = require("accelerate", extra="train")
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.trainer.render import fast_rows
    from grvl_sdk.trainer.rl_curves import CURVES_FILE, curves_recorder, write_rl_curves
    from grvl_sdk.trainer.runs import run_recorder, write_loss_plot

    state = accelerate.PartialState(cpu=config.use_cpu)
    main = state.is_main_process
    plan = config.rollout_plan(state.num_processes)
    out = Path(config.output_dir)
    train = list(train_samples) if train_samples is not None else _load_sources(config.train_data)
    evals = list(eval_samples) if eval_samples is not None else _load_sources(config.eval_data)
    if not train:
        raise TrainingError("no RL training samples: set train_data (or pass train_samples)")
    try:
        processor = load_processor(config.model_name_or_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the processor of {config.model_name_or_path!r}: {exc}") from exc
    _set_image_bounds(processor, config.min_pixels, config.max_pixels)
    fast = fast_rows(len(train), config.fast_fraction, config.seed)
    train, dropped, fast = _drop_overlong(train, processor, config, fast)
    evals, eval_dropped, _ = _drop_overlong(evals, processor, config)
    if not train:
        raise TrainingError(f"every RL training prompt is longer than max_prompt_length={config.max_prompt_length}")
    resume = resolve_resume(config.output_dir, config.resume_from_checkpoint)
    bf16 = resolve_bf16(config, torch)
    use_vllm = _use_vllm(config, torch)
    report(f"GRPO on {len(train)} prompts ({len(dropped)} dropped as longer than max_prompt_length): {plan}", main)
    if fast:
        report(f"fast tier: {len(fast)} of {len(train)} prompts pre-filled with the forced empty reasoning", main)
    report(
        f"reward β={config.reward_beta:.4g} ({config.reward_length_unit}, normaliser {config.reward_normaliser}, "
        f"floor {config.reward_min_length:g}); "
        f"clip {config.clip_schedule} ε={config.epsilon}; method {config.method}; generation "
        f"{'vLLM ' + config.vllm_mode if use_vllm else 'transformers'}; resume {resume or 'no'}",
        main,
    )
    if not plan.clipping_acts:
        logger.warning(
            "one policy update per rollout batch: the ratio π/π_old is 1 and clipping never acts; raise "
            "prompts_per_rollout / prompts_per_update or num_iterations for the paper's several updates"
        )

    args = _grpo_args(config, plan, bf16, use_vllm, has_eval=bool(evals))
    device_index: Any = "cpu" if (config.use_cpu or not torch.cuda.is_available()) else state.local_process_index
    sharded = getattr(state.distributed_type, "value", state.distributed_type) in ("DEEPSPEED", "FSDP")
    preload = resume is not None and config.method == "full" and not sharded
    model = load_model(config, bf16, device_index, source=resume if preload else None)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {
            "processes": plan.batch.processes,
            "gradient_accumulation_steps": plan.batch.accumulation,
            "effective_batch_size": plan.batch.effective,
            "steps_per_generation": plan.steps_per_generation,
            "updates_per_rollout": plan.updates_per_rollout,
            "bf16": bf16,
            "use_vllm": use_vllm,
            "train_prompts": len(train),
            "fast_prompts": len(fast),
            "eval_prompts": len(evals),
            "dropped_overlong": len(dropped) + len(eval_dropped),
            "versions": versions(),
        }
        write_run_config(out, config.to_dict(), resolved, name=CONFIG_FILE)
        summary = {
            "train": {**_summary(train), "fast_prompts": len(fast)},
            "eval": _summary(evals),
            "dropped_overlong": dropped + eval_dropped,
        }
        (out / "data_summary.json").write_text(json.dumps(stamp("training-run", summary), indent=2), encoding="utf-8")
    if config.resume_from_checkpoint is None and last_checkpoint(out) is not None:  # False: afresh, no note
        report(
            f"note: {out} already holds checkpoints; this run starts afresh and replaces them as it saves. Pass "
            "resume_from_checkpoint=True to continue from them (False starts afresh without this note).",
            main,
        )

    reward = SafetyReward(
        max_length=config.reward_normaliser,
        beta=config.reward_beta,
        unit=config.reward_length_unit,
        min_length=config.reward_min_length,
        tier_metrics=bool(fast),
    )
    clipping = dynamic_clipping(
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        kind=config.clip_schedule,
        floor=config.clip_floor,
        updates_per_rollout=plan.updates_per_rollout,
    )
    title = f"GRPO of {Path(config.model_name_or_path).name} (β={config.reward_beta:.3g}, {config.method})"
    trainer = _trainer_class(trl)(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=rl_dataset(train, fast=fast),
        eval_dataset=rl_dataset(evals) if evals else None,
        processing_class=processor,
        peft_config=lora_config(config) if config.method in ("lora", "qlora") else None,
        callbacks=[run_recorder(out, title=title), curves_recorder(out, title=title), clipping, *callbacks],
    )
    clipping.trainer = trainer
    trainer.weights_preloaded = preload
    output = trainer.train(resume_from_checkpoint=resume)
    trace = list(trainer.clip_trace)
    reference_loaded = getattr(trainer, "ref_model", None) is not None
    del model
    merged = save_trained_model(trainer, config, processor, out, state=state, bf16=bf16)
    curves = None
    if main:
        write_loss_plot(out / METRICS_FILE, out / PLOT_FILE, title=title)
        curves = write_rl_curves(out / METRICS_FILE, out / CURVES_FILE, title=title)
    return RLResult(
        output_dir=out,
        global_step=output.global_step,
        train_loss=output.training_loss,
        plan=plan,
        train_samples=len(train),
        eval_samples=len(evals),
        dropped_overlong=len(dropped),
        resumed_from=resume,
        metrics_path=out / METRICS_FILE,
        curves=curves,
        merged=merged,
        schedule=list(clipping.history),
        clip_trace=trace,
        reference_model_loaded=reference_loaded,
        metrics=dict(output.metrics),
    )
