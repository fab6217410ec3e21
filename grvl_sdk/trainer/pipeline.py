"""The whole recipe in one command: synthesize (optional) → R-SFT → sample → augment → RL → evaluate.

:func:`run_pipeline` runs the stages in one run folder, each in its own sub-folder::

    pipeline.yaml            the settings (format training-run)
    pipeline_state.json      per stage: done or not, when, what it wrote (format pipeline-state)
    1-synthesize/            records.jsonl (reasoning added by the teacher), dropped.jsonl
    2-rsft/                  the R-SFT guard, rsft_config.yaml, metrics.jsonl, loss.png
    3-sample/                attempts.jsonl, train.jsonl, validation.jsonl, sampling_summary.json
    4-augment/               train.jsonl (with the concatenated samples), validation.jsonl, augment_summary.json
    5-rl/                    the final guard, grpo_config.yaml, metrics.jsonl, loss.png, rl_curves.png
    6-evaluate/              rsft/ and rl/ results folders (``grvl eval``), evaluation.md: the RL guard
                             against the R-SFT guard and the published numbers

**Resuming.** A stage that finished (recorded in ``pipeline_state.json`` with its outputs present) is
skipped — when its settings are unchanged: a finished stage whose section (or, for R-SFT, base model and
data) differs from the recorded one is a :class:`~grvl_sdk.errors.TrainingConfigError`, never a silent
mix of old outputs and new settings. A stage that was interrupted resumes where it stopped: synthesis
and sampling skip finished samples, R-SFT and RL continue from their last checkpoint
(``resume_from_checkpoint: auto``), evaluation keeps finished predictions. So re-running the same
command after a crash or a kill finishes the run without redoing completed work.

The settings (:class:`PipelineConfig`, a YAML file for ``grvl train pipeline --config``) hold the base
model, the labelled data, and one section per stage, passed to that stage's own settings: ``rsft``
(:class:`~grvl_sdk.trainer.rsft_config.RSFTConfig` fields), ``sample`` (:func:`sample_hard` options),
``augment`` (``share``, ``seed``), ``rl`` (:class:`~grvl_sdk.trainer.grpo_config.GuardRLConfig` fields,
``preset: eco`` allowed), ``evaluate`` (benchmarks and ``run_eval`` options); ``synthesize`` (teacher
settings of :func:`~grvl_sdk.trainer.synthesize`) turns on the first stage. The pipeline sets each stage's
model, data and output folder itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import DataError, TrainingConfigError, TrainingError
from grvl_sdk.trainer import _formats  # noqa: F401  (registers the pipeline-state format)

__all__ = ["STAGES", "PipelineConfig", "PipelineResult", "run_pipeline"]

STAGES = ("synthesize", "rsft", "sample", "augment", "rl", "evaluate")
STATE_FILE = "pipeline_state.json"
CONFIG_FILE = "pipeline.yaml"
_FOLDERS = {name: f"{index}-{name}" for index, name in enumerate(STAGES, start=1)}
_EVAL_KEYS = {"benchmarks", "data_dir", "limit", "batch_size", "max_new_tokens", "min_pixels", "max_pixels", "device"}


@dataclass
class PipelineConfig:
    """Settings of :func:`run_pipeline` (the YAML keys of ``grvl train pipeline``); see the module docstring."""

    output_dir: str = "runs/pipeline"
    #: The base model R-SFT starts from.
    model_name_or_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    #: Labelled data (``load_data`` sources); with reasoning unless ``synthesize`` is set.
    train_data: list[Any] = field(default_factory=list)
    #: Teacher settings of ``synthesize`` (``base_url``, ``model``, ``concurrency``...); ``None``: skip the stage.
    synthesize: dict[str, Any] | None = None
    rsft: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)
    #: Evaluate the RL guard on the validation prompts during RL (``eval_data`` of the RL stage).
    validate_rl: bool = False
    #: ``benchmarks`` (names or paths, see ``grvl eval run``) and ``data_dir``, ``limit``, ``batch_size``,
    #: ``max_new_tokens``, ``min_pixels``, ``max_pixels``, ``device``; ``None``: skip the stage.
    evaluate: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train_data, (str, os.PathLike, Mapping)):
            self.train_data = [self.train_data]
        self.train_data = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in self.train_data]
        self.output_dir = os.fspath(self.output_dir)
        for name in ("rsft", "sample", "augment", "rl"):
            if not isinstance(getattr(self, name), dict):
                raise TrainingConfigError(f"{name} must be a mapping of settings", field=name)
        if self.evaluate is not None:
            unknown = sorted(set(self.evaluate) - _EVAL_KEYS)
            if unknown or not self.evaluate.get("benchmarks"):
                raise TrainingConfigError(
                    f"evaluate needs 'benchmarks' and takes {sorted(_EVAL_KEYS)}; got {sorted(self.evaluate)}",
                    field="evaluate",
                )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Build from a dict (a written ``pipeline.yaml`` too); unknown keys raise."""
        values = {k: v for k, v in values.items() if k not in ("version", "resolved")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingConfigError(
                f"unknown pipeline setting(s) {unknown}; known: {sorted(known)}", field=unknown[0]
            )
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> PipelineConfig:
        """Read a YAML file of settings; ``overrides`` win. Relative paths in the file (data, output folder,
        model and benchmark folders, in the stage sections too) are relative to the file's folder
        (:mod:`grvl_sdk.trainer.config_paths`)."""
        from grvl_sdk._lazy import require
        from grvl_sdk.trainer.config_paths import rebase_settings

        yaml = require("yaml", extra="train")
        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingConfigError(f"cannot read pipeline config {path}: {exc}", file=str(path)) from exc
        if not isinstance(values, dict):
            raise TrainingConfigError(f"{path}: the config must be a mapping of settings", file=str(path))
        check_version("training-run", values, file=str(path))
        values = rebase_settings(values, Path(path).parent, sections=STAGES)
        return cls.from_dict({**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def folder(self, stage: str) -> Path:
        """The sub-folder of ``stage`` in the run folder."""
        return Path(self.output_dir) / _FOLDERS[stage]


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did: ``status`` per stage (``"ran"``, ``"skipped"`` (done before) or ``"off"``)."""

    output_dir: Path
    status: dict[str, str]
    outputs: dict[str, dict[str, Any]]
    evaluation: Path | None = None


class _State:
    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self.stages: dict[str, Any] = {}
        if self.path.is_file():
            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"unreadable pipeline state ({exc}); delete it to start over", file=str(self.path)
                ) from exc
            if not isinstance(record, dict):
                raise DataError(
                    "the pipeline state must be a JSON object; delete it to start over", file=str(self.path)
                )
            check_version("pipeline-state", record, file=str(self.path))
            self.stages = dict(record.get("stages", {}))

    def done(self, stage: str) -> dict[str, Any] | None:
        entry = self.stages.get(stage)
        if not entry or entry.get("status") != "done":
            return None
        outputs = entry.get("outputs", {})
        present = all(Path(p).exists() for p in outputs.values() if isinstance(p, str))
        return outputs if present else None

    def check_settings(self, stage: str, settings: dict[str, Any]) -> None:
        """Refuse to skip a finished stage whose recorded settings differ from ``settings``: the run would
        silently mix the old stage's outputs with the new settings (and ``pipeline.yaml`` would lie)."""
        recorded = (self.stages.get(stage) or {}).get("settings")
        if recorded is None or recorded == settings:
            return
        changed = sorted(k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k))
        raise TrainingConfigError(
            f"the {stage} stage finished in {self.path.parent} with other settings (changed: "
            f"{', '.join(changed)}); re-running would mix them. Use another output_dir, restore the settings, "
            f"or delete {_FOLDERS[stage]}/ and the later stages' folders and their entries in {STATE_FILE} to "
            "redo them",
            field=stage,
            file=str(self.path),
        )

    def mark(self, stage: str, outputs: dict[str, Any], seconds: float, settings: dict[str, Any]) -> None:
        self.stages[stage] = {
            "status": "done",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(seconds, 2),
            "outputs": outputs,
            "settings": settings,
        }
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(stamp("pipeline-state", {"stages": self.stages}), indent=2), encoding="utf-8")
        partial.replace(self.path)


def _say(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


# -- stages -----------------------------------------------------------------------------------------
def _labelled(sources: Sequence[Any]) -> list[Any]:
    from grvl_sdk.trainer.loaders import load_data

    return [sample for source in sources for sample in load_data(source)]


def _stage_synthesize(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # The package's ``synthesize`` attribute is the function: reach the module itself.
    synthesis = importlib.import_module("grvl_sdk.trainer.synthesize")
    assert config.synthesize is not None
    report = synthesis.synthesize(_labelled(config.train_data), config.folder("synthesize"), **config.synthesize)
    _say(str(report))
    if not report.complete:
        raise TrainingError(f"synthesis left {report.failed} sample(s) undone (HTTP errors): re-run to retry them")
    return {"records": str(report.records_path)}


def _rsft_data(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> list[Any]:
    return [outputs["synthesize"]["records"]] if config.synthesize is not None else list(config.train_data)


def _stage_rsft(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from grvl_sdk.trainer import rsft_trainer
    from grvl_sdk.trainer.rsft_config import RSFTConfig

    settings = {
        **config.rsft,
        "model_name_or_path": config.model_name_or_path,
        "train_data": _rsft_data(config, outputs),
        "output_dir": str(config.folder("rsft")),
        "resume_from_checkpoint": "auto",
    }
    if settings.get("merge_lora") is False:
        raise TrainingConfigError("the pipeline needs a merged R-SFT guard: leave rsft.merge_lora on", field="rsft")
    result = rsft_trainer.train_rsft(RSFTConfig.from_dict(settings))
    return {"model": str(result.output_dir), "metrics": str(result.metrics_path)}


def _stage_sample(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from grvl_sdk.trainer import sampling

    options = dict(config.sample)
    if "server" not in options:
        options["model"] = outputs["rsft"]["model"]
    folder = config.folder("sample")
    report = sampling.sample_hard(_labelled(_rsft_data(config, outputs)), folder, **options)
    _say(str(report))
    if not report.complete:
        raise TrainingError(f"rejection sampling left {report.failed} sample(s) undone: re-run to retry them")
    if not report.train_path or not sum(report.train_by_modality.values()):
        raise TrainingError("rejection sampling found no hard sample: nothing for the RL stage to learn from")
    return {"train": str(report.train_path), "validation": str(report.validation_path)}


def _stage_augment(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from grvl_sdk.trainer import augment

    report = augment.augment_data(Path(outputs["sample"]["train"]).parent, config.folder("augment"), **config.augment)
    _say(str(report))
    return {"train": str(report.train_path), "validation": str(report.validation_path or report.train_path)}


def _stage_rl(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from grvl_sdk.trainer import grpo_trainer
    from grvl_sdk.trainer.grpo_config import GuardRLConfig

    settings = {
        **config.rl,
        "model_name_or_path": outputs["rsft"]["model"],
        "train_data": [outputs["augment"]["train"]],
        "output_dir": str(config.folder("rl")),
        "resume_from_checkpoint": "auto",
    }
    if config.validate_rl and Path(outputs["augment"]["validation"]).name == "validation.jsonl":
        settings["eval_data"] = [outputs["augment"]["validation"]]
    if settings.get("merge_lora") is False:
        raise TrainingConfigError("the pipeline needs a merged RL guard: leave rl.merge_lora on", field="rl")
    result = grpo_trainer.train_rl(GuardRLConfig.from_dict(settings))
    return {"model": str(result.output_dir), "metrics": str(result.metrics_path)}


def _stage_evaluate(config: PipelineConfig, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from grvl_sdk.eval.report import load_published, render_markdown, row_from_summary
    from grvl_sdk.eval.runner import run_eval
    from grvl_sdk.guard import Guard

    assert config.evaluate is not None
    options = dict(config.evaluate)
    benchmarks = options.pop("benchmarks")
    guard_options = {
        k: options.pop(k) for k in ("max_new_tokens", "min_pixels", "max_pixels", "device") if k in options
    }
    folder = config.folder("evaluate")
    summaries = {}
    for name in ("rsft", "rl"):
        guard = Guard.from_pretrained(outputs[name]["model"], **guard_options)
        try:
            summaries[name] = run_eval(guard, benchmarks, folder / name, progress=False, **options)
        finally:
            guard.close()
    compare = [row_from_summary(summaries["rsft"], "R-SFT guard (this run)"), *load_published()]
    table = folder / "evaluation.md"
    table.write_text(render_markdown(summaries["rl"], compare), encoding="utf-8")
    return {"table": str(table)}


_RUNNERS: dict[str, Callable[[PipelineConfig, dict[str, dict[str, Any]]], dict[str, Any]]] = {
    "synthesize": _stage_synthesize,
    "rsft": _stage_rsft,
    "sample": _stage_sample,
    "augment": _stage_augment,
    "rl": _stage_rl,
    "evaluate": _stage_evaluate,
}


def _stage_settings(config: PipelineConfig, stage: str) -> dict[str, Any]:
    """The settings a stage's outputs depend on (besides the earlier stages'), as JSON values."""
    if stage == "synthesize":
        picked: dict[str, Any] = {"train_data": config.train_data, "synthesize": config.synthesize}
    elif stage == "rsft":
        picked = {
            "model_name_or_path": config.model_name_or_path,
            "train_data": config.train_data,
            "synthesize": config.synthesize is not None,
            "rsft": config.rsft,
        }
    elif stage == "rl":
        picked = {"rl": config.rl, "validate_rl": config.validate_rl}
    else:
        picked = {stage: getattr(config, stage)}
    result: dict[str, Any] = json.loads(json.dumps(picked, default=str))
    return result


def _write_settings(config: PipelineConfig) -> None:
    from grvl_sdk.trainer.runs import write_run_config

    write_run_config(Path(config.output_dir), config.to_dict(), {"stages": list(STAGES)}, name=CONFIG_FILE)


def run_pipeline(
    config: PipelineConfig | Mapping[str, Any] | str | os.PathLike[str], *, until: str | None = None
) -> PipelineResult:
    """Run the recipe's stages in ``config.output_dir`` (see the module docstring); ``until`` stops after that
    stage. Finished stages are skipped; an interrupted stage resumes. Raises the stage's own errors
    (:class:`DataError`, :class:`TrainingConfigError`, :class:`TrainingError`...) with the state saved.
    """
    if isinstance(config, Mapping):
        config = PipelineConfig.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        config = PipelineConfig.from_yaml(config)
    if until is not None and until not in STAGES:
        raise TrainingConfigError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}", field="until")
    if not config.train_data:
        raise DataError("the pipeline needs train_data (labelled samples)", field="train_data")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out)
    wanted = {"synthesize": config.synthesize is not None, "evaluate": config.evaluate is not None}
    for stage in STAGES:
        if wanted.get(stage, True) and state.done(stage) is not None:
            state.check_settings(stage, _stage_settings(config, stage))
    _write_settings(config)
    result = PipelineResult(output_dir=out, status={}, outputs={})
    for stage in STAGES:
        if not wanted.get(stage, True):
            result.status[stage] = "off"
        else:
            finished = state.done(stage)
            if finished is not None:
                _say(f"{stage}: done before, skipped")
                result.status[stage], result.outputs[stage] = "skipped", finished
            else:
                _say(f"{stage}: running in {config.folder(stage)}")
                started = time.perf_counter()
                result.outputs[stage] = _RUNNERS[stage](config, result.outputs)
                elapsed = time.perf_counter() - started
                state.mark(stage, result.outputs[stage], elapsed, _stage_settings(config, stage))
                result.status[stage] = "ran"
        if stage == until:
            break
    if "evaluate" in result.outputs:
        result.evaluation = Path(result.outputs["evaluate"]["table"])
    return result
