"""The settings every training stage shares (TRL style): model, data, output, optimisation, batch, images, run.

:class:`BaseTrainingConfig` holds them with the paper's values as defaults; a stage's config extends
it (:class:`~grvl_sdk.trainer.rsft_config.RSFTConfig` adds the R-SFT cutoff; the GRPO stage will add
its own). The effective batch is kept whatever the number of processes: ``gradient_accumulation_steps``
is derived as ``effective_batch_size / (per-device batch × processes)`` and must divide exactly
(:meth:`BaseTrainingConfig.batch_plan`).

A config is read from a dict or a YAML file (unknown keys are errors; relative paths in a file are relative
to the file's folder, :mod:`grvl_sdk.trainer.config_paths`); the settings file a run writes
into its folder (``rsft_config.yaml``) reads back too: its ``version`` is checked and its
``resolved`` block (what the run derived) is ignored.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from grvl_sdk._constants import DEFAULT_MIN_PIXELS, RSFT_MAX_PIXELS
from grvl_sdk.data.versions import check_version
from grvl_sdk.errors import DataError, TrainingConfigError

__all__ = ["DEFAULT_LORA_TARGETS", "BaseTrainingConfig", "BatchPlan", "Method"]

Method = Literal["full", "lora", "qlora"]
ConfigT = TypeVar("ConfigT", bound="BaseTrainingConfig")

#: Language-model projections of Qwen2.5-VL (the vision tower's modules live under ``visual``).
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
#: Keys of a run's written settings file that are not settings.
_RUN_KEYS = ("version", "resolved")


def _sources(value: Any, name: str) -> list[Any]:
    """Data sources as a list of plain values (paths as strings), so the config serialises to YAML."""
    if isinstance(value, (str, os.PathLike, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TrainingConfigError(f"{name} must be a list of paths or dicts, got {type(value).__name__}", field=name)
    out: list[Any] = []
    for item in value:
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        elif isinstance(item, Mapping):
            item = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in item.items()}
        elif not isinstance(item, str):
            raise TrainingConfigError(f"{name} entries must be paths or dicts, got {type(item).__name__}", field=name)
        out.append(item)
    return out


def _positive_or_null(config: Any, name: str) -> None:
    value = getattr(config, name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise TrainingConfigError(f"{name} must be a positive integer or null, got {value!r}", field=name)


def _share(config: Any, name: str) -> None:
    """Refuse a share (e.g. ``fast_fraction``) that is not a number in [0, 1] (NaN and booleans included)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise TrainingConfigError(f"{name} must be a number in [0, 1], got {value!r}", field=name)


@dataclass(frozen=True)
class BatchPlan:
    """How the effective batch maps onto processes: ``effective = per_device × accumulation × processes``."""

    per_device: int
    accumulation: int
    processes: int

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation * self.processes

    def __str__(self) -> str:
        return (
            f"effective batch {self.effective} = {self.per_device} per device × {self.accumulation} accumulation "
            f"× {self.processes} process(es)"
        )


@dataclass
class BaseTrainingConfig:
    """Settings shared by every training stage (the YAML keys of ``grvl train``); see the stage configs."""

    #: The stage's name in messages, and its named starting points (field overrides over the defaults).
    stage: ClassVar[str] = "training"
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    # -- model and data -------------------------------------------------------------------------
    #: Base model (hub id or folder): a Qwen2.5-VL-Instruct checkpoint, or a guard to fine-tune further.
    model_name_or_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    #: Training data: paths (format detected) or dicts (``path``, ``format``, ``columns``, ``image_root``,
    #: ``task``, ``limit``); see :func:`grvl_sdk.trainer.load_data`.
    train_data: list[Any] = field(default_factory=list)
    #: Optional held-out data, evaluated every ``eval_steps``.
    eval_data: list[Any] = field(default_factory=list)
    #: Where checkpoints, the final model, the resolved config, metrics and the loss curve go.
    output_dir: str = "runs/train"

    # -- method ---------------------------------------------------------------------------------
    #: ``"full"`` fine-tuning (the paper), ``"lora"``, or ``"qlora"`` (LoRA over a 4-bit NF4 base).
    method: Method = "full"
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    #: Modules given adapters: a regex over module names, or a list of names.
    lora_target_modules: str | list[str] = DEFAULT_LORA_TARGETS
    #: After LoRA/QLoRA training, merge the adapter into the (unquantised) base and save a full
    #: checkpoint in ``output_dir`` (loadable by ``Guard.from_pretrained``). Otherwise only the adapter
    #: is saved (load it with :func:`grvl_sdk.trainer.load_adapter_guard`).
    merge_lora: bool = True
    #: Keep the vision tower frozen in full fine-tuning (LLaMA-Factory's default; LoRA never adapts it).
    freeze_vision_tower: bool = True

    # -- optimisation (the paper's values) ------------------------------------------------------
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    num_train_epochs: float = 3.0
    #: Stop after this many optimizer steps (-1: run all epochs).
    max_steps: int = -1
    #: Samples per optimizer step over all processes; ``None`` uses ``gradient_accumulation_steps`` as given.
    effective_batch_size: int | None = 192
    per_device_train_batch_size: int = 6
    #: Derived from ``effective_batch_size`` when ``None``.
    gradient_accumulation_steps: int | None = None
    #: bf16 mixed precision; ``None`` = on where the GPU supports it, off on CPU.
    bf16: bool | None = None
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    seed: int = 42
    gradient_checkpointing: bool = True
    #: ``"sdpa"``, ``"flash_attention_2"``, ``"eager"`` or ``None`` (transformers' default).
    attn_implementation: str | None = None

    # -- images ---------------------------------------------------------------------------------
    #: Pixel budget per image (R-SFT used at most 768×768).
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = RSFT_MAX_PIXELS

    # -- run ------------------------------------------------------------------------------------
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    eval_steps: int | None = None
    per_device_eval_batch_size: int | None = None
    #: ``True``: continue from the last checkpoint in ``output_dir`` (an error if there is none);
    #: ``"auto"``: the same, or a fresh start when there is none; a path: from that checkpoint.
    resume_from_checkpoint: bool | str | None = None
    #: Integrations to report to (``"wandb"``, ``"tensorboard"``...); none by default.
    report_to: list[str] = field(default_factory=list)
    dataloader_num_workers: int = 0
    #: Progress bars (tokenising, training).
    progress: bool = True
    #: Force CPU even when a GPU is visible (tests).
    use_cpu: bool = False
    #: Extra trainer arguments (``trl.SFTConfig`` / ``TrainingArguments`` fields), passed through as given.
    extra_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def preset(cls: type[ConfigT], name: str, **overrides: Any) -> ConfigT:
        """A named starting point of the stage (R-SFT: ``"3b"`` or ``"7b"``, the paper's settings per base
        model size), with ``overrides``."""
        key = name.lower()
        if key not in cls.presets:
            raise TrainingConfigError(f"unknown preset {name!r}; known: {sorted(cls.presets)}", field="preset")
        return cls.from_dict({**cls.presets[key], **overrides})

    @classmethod
    def coerce(cls: type[ConfigT], config: ConfigT | Mapping[str, Any] | str | os.PathLike[str]) -> ConfigT:
        """``config`` as this class: an instance (validated), a dict (:meth:`from_dict`) or a YAML path
        (:meth:`from_yaml`). Raises :class:`~grvl_sdk.errors.TrainingConfigError` for anything else."""
        if isinstance(config, cls):
            config.validate()
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        if isinstance(config, (str, os.PathLike)):
            return cls.from_yaml(config)
        article = "an" if cls.__name__[0] in "AEIOUR" else "a"  # "an RSFTConfig", "a GuardRLConfig"
        raise TrainingConfigError(
            f"config must be {article} {cls.__name__}, a dict or a YAML path, got {type(config).__name__}"
        )

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any], *, file: str | None = None) -> ConfigT:
        """Build from a dict; a ``preset`` key applies that preset first. Unknown keys raise.

        A run's written settings (``version``, ``resolved``) read back: a ``version`` newer than this
        code reads raises, ``resolved`` is ignored.
        """
        values = dict(values)
        try:
            check_version("training-run", values, file=file)
        except DataError as exc:
            raise TrainingConfigError(str(exc), file=file, field="version") from None
        for key in _RUN_KEYS:
            values.pop(key, None)
        preset = values.pop("preset", None)
        if preset is not None:
            return cls.preset(str(preset), **values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingConfigError(
                f"unknown {cls.stage} setting(s) {unknown}; known: {', '.join(sorted(known))} "
                "(pass trainer arguments under `extra_args`)",
                field=unknown[0],
            )
        return cls(**_numbers(cls, values))

    @classmethod
    def from_yaml(cls: type[ConfigT], path: str | os.PathLike[str], **overrides: Any) -> ConfigT:
        """Read a YAML file of settings (optionally with ``preset:``); ``overrides`` win.

        Relative paths in the file (data, output folder, a model folder...) are relative to the file's folder
        (see :mod:`grvl_sdk.trainer.config_paths`); ``overrides`` are taken as given.
        """
        from grvl_sdk._lazy import require
        from grvl_sdk.trainer.config_paths import rebase_settings

        yaml = require("yaml", extra="train")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TrainingConfigError(f"cannot read config {path}: {exc}", file=str(path)) from exc
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise TrainingConfigError(f"{path}: not valid YAML: {exc}", file=str(path)) from exc
        if not isinstance(values, dict):
            raise TrainingConfigError(f"{path}: the config must be a mapping of settings", file=str(path))
        values = rebase_settings(values, Path(path).parent)
        return cls.from_dict({**values, **overrides}, file=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        from grvl_sdk._lazy import require

        yaml = require("yaml", extra="train")
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`TrainingConfigError` for an impossible setting."""
        _check_floats(self)
        if self.method not in ("full", "lora", "qlora"):
            raise TrainingConfigError(f"method must be 'full', 'lora' or 'qlora', got {self.method!r}", field="method")
        self.train_data = _sources(self.train_data, "train_data")
        self.eval_data = _sources(self.eval_data, "eval_data")
        if isinstance(self.output_dir, os.PathLike):
            self.output_dir = os.fspath(self.output_dir)
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        positive = {
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "lora_r": self.lora_r,
            "logging_steps": self.logging_steps,
            "save_steps": self.save_steps,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainingConfigError(f"{name} must be a positive integer, got {value!r}", field=name)
        for name in (
            "effective_batch_size",
            "gradient_accumulation_steps",
            "eval_steps",
            "save_total_limit",
            "per_device_eval_batch_size",
        ):
            _positive_or_null(self, name)
        if self.max_steps != -1 and self.max_steps < 1:
            raise TrainingConfigError(
                f"max_steps must be -1 (all epochs) or >= 1, got {self.max_steps}", field="max_steps"
            )
        if self.lora_alpha < 1:
            raise TrainingConfigError(f"lora_alpha must be >= 1, got {self.lora_alpha}", field="lora_alpha")
        if self.seed < 0:  # numpy's seed refuses negatives
            raise TrainingConfigError(f"seed must be >= 0, got {self.seed}", field="seed")
        if self.dataloader_num_workers < 0:
            raise TrainingConfigError("dataloader_num_workers must be >= 0", field="dataloader_num_workers")
        if self.min_pixels > self.max_pixels:
            raise TrainingConfigError("min_pixels must not exceed max_pixels", field="min_pixels")
        if self.learning_rate <= 0:
            raise TrainingConfigError(f"learning_rate must be > 0, got {self.learning_rate}", field="learning_rate")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainingConfigError("warmup_ratio must be in [0, 1)", field="warmup_ratio")
        if self.effective_batch_size is None and self.gradient_accumulation_steps is None:
            raise TrainingConfigError(
                "set effective_batch_size or gradient_accumulation_steps", field="effective_batch_size"
            )
        if not isinstance(self.extra_args, dict):
            raise TrainingConfigError("extra_args must be a mapping", field="extra_args")

    def batch_plan(self, processes: int) -> BatchPlan:
        """Map the effective batch onto ``processes`` (see the module docstring)."""
        if processes < 1:
            raise TrainingConfigError(f"processes must be >= 1, got {processes}", field="processes")
        per_device = self.per_device_train_batch_size
        if self.gradient_accumulation_steps is not None:
            plan = BatchPlan(per_device, self.gradient_accumulation_steps, processes)
            if self.effective_batch_size is not None and plan.effective != self.effective_batch_size:
                raise TrainingConfigError(
                    f"{plan} differs from effective_batch_size={self.effective_batch_size}; set one of "
                    "gradient_accumulation_steps or effective_batch_size to null",
                    field="gradient_accumulation_steps",
                )
            return plan
        assert self.effective_batch_size is not None
        per_step = per_device * processes
        if self.effective_batch_size % per_step:
            raise TrainingConfigError(
                f"effective_batch_size={self.effective_batch_size} is not a multiple of per-device batch "
                f"{per_device} × {processes} process(es) = {per_step}; change per_device_train_batch_size or "
                "effective_batch_size, or set gradient_accumulation_steps explicitly",
                field="effective_batch_size",
            )
        return BatchPlan(per_device, self.effective_batch_size // per_step, processes)


def _check_floats(config: Any) -> None:
    """Every number field holds a finite real number, every integer field an integer (``None`` only where
    the field allows it): ``null``, a list, ``true``, ``2.5`` or ``nan`` would otherwise crash in a
    comparison, reach the trainer as NaN, or be accepted by it unchecked and fail mid-run."""
    for item in dataclasses.fields(config):
        kind = str(item.type)
        is_float = "float" in kind
        if not is_float and kind not in ("int", "int | None"):
            continue
        value = getattr(config, item.name)
        if value is None and "None" in kind:
            continue
        if is_float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TrainingConfigError(f"{item.name} must be a finite number, got {value!r}", field=item.name)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TrainingConfigError(f"{item.name} must be an integer, got {value!r}", field=item.name)


def _numbers(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Read numbers written as strings in float fields: YAML 1.1 (PyYAML) loads ``1e-6`` — without a dot — as
    the string ``"1e-6"``, so ``learning_rate: 1e-6`` would otherwise fail deep in validation."""
    floats = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
    out = dict(values)
    for name in floats & set(out):
        value = out[name]
        if isinstance(value, str):
            try:
                out[name] = float(value)
            except ValueError:
                raise TrainingConfigError(f"{name} must be a number, got {value!r}", field=name) from None
    return out
