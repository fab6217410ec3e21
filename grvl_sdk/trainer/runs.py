"""The run directory: resolved config, data summary, metrics (JSONL) and the loss curve.

Layout of ``output_dir`` after :func:`grvl_sdk.trainer.train_rsft`::

    config.json, model.safetensors, tokenizer..., preprocessor_config.json   the final guard
    adapter/                      the LoRA adapter (LoRA/QLoRA with merge_lora)
    checkpoint-N/                 trainer checkpoints (resume from the last one)
    rsft_config.yaml              the resolved settings, batch plan, versions
    data_summary.json             counts per modality and label, dropped samples
    metrics.jsonl                 one line per logging step (loss, grad norm, lr, token accuracy...): every
                                  ``logging_steps``, plus the first and the last step
    loss.png                      the loss curve (train and eval)
    README.md                     the guard's model card (base model, data, recipe, results, how to load)

``rsft_config.yaml``, ``data_summary.json`` and every ``metrics.jsonl`` line carry a format ``version``
(:mod:`grvl_sdk.data.versions`); a newer major version is refused when read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.data.readers import iter_json_lines
from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import TrainingError

__all__ = [
    "METRICS_FILE",
    "PLOT_FILE",
    "last_checkpoint",
    "read_metrics",
    "resolve_resume",
    "run_recorder",
    "versions",
    "write_data_summary",
    "write_loss_plot",
    "write_run_config",
]

logger = logging.getLogger("grvl_sdk")

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CONFIG_FILE = "rsft_config.yaml"
SUMMARY_FILE = "data_summary.json"


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metric lines of a run (a line torn by an interrupted write is ignored; a line of a newer
    format version raises :class:`~grvl_sdk.errors.DataError`)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for line, value in iter_json_lines(path, bad_lines="skip"):
        if isinstance(value, dict):
            check_version("training-metrics", value, file=str(path), line=line)
            rows.append(value)
    return rows


def _trim_metrics(path: Path, after_step: int) -> None:
    """Drop lines logged after ``after_step`` (they are redone when resuming from that step)."""
    rows = read_metrics(path)
    kept = [row for row in rows if int(row.get("step", 0)) <= after_step]
    if len(kept) != len(rows) or (path.is_file() and not path.read_text(encoding="utf-8").endswith("\n")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        tmp.replace(path)


def write_loss_plot(
    metrics: str | os.PathLike[str], png: str | os.PathLike[str], *, title: str = "R-SFT"
) -> Path | None:
    """Plot training (and eval) loss against the optimizer step; ``None`` when nothing was logged."""
    rows = read_metrics(metrics)
    train = sorted({int(r["step"]): float(r["loss"]) for r in rows if "loss" in r and "step" in r}.items())
    evals = sorted({int(r["step"]): float(r["eval_loss"]) for r in rows if "eval_loss" in r and "step" in r}.items())
    if not train and not evals:
        return None
    matplotlib = require("matplotlib", extra="train")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        marker = "o" if len(train) <= 20 else None  # a short run's few points stay visible
        axis.plot([s for s, _ in train], [v for _, v in train], label="train loss", linewidth=1.5, marker=marker)
    if evals:
        axis.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="eval loss", linewidth=1.5)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (assistant tokens)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    png = Path(png)
    figure.savefig(png)
    plt.close(figure)
    return png


def write_run_config(
    output_dir: str | os.PathLike[str], settings: dict[str, Any], resolved: dict[str, Any], *, name: str = CONFIG_FILE
) -> Path:
    """Write a run's settings (``config.to_dict()``) and what it derived (``resolved``) as YAML, versioned.

    The file reads back as a config (:meth:`BaseTrainingConfig.from_yaml` checks ``version`` and ignores
    ``resolved``). Relative paths in ``settings`` (relative to the working directory) are written absolute,
    so the file means the same read from the run folder (paths in a config file are relative to its folder).
    """
    from grvl_sdk.trainer.config_paths import rebase_settings

    yaml = require("yaml", extra="train")
    path = Path(output_dir) / name
    nested = [key for key, value in settings.items() if isinstance(value, dict)]
    settings = rebase_settings(settings, Path.cwd(), sections=nested)
    record = stamp("training-run", {**settings, "resolved": resolved})
    path.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write_data_summary(output_dir: str | os.PathLike[str], summary: dict[str, Any], dropped: list[Any]) -> Path:
    """Write ``data_summary.json`` (counts, and the sources of samples dropped as too long), versioned."""
    path = Path(output_dir) / SUMMARY_FILE
    record = stamp("training-run", {**summary, "dropped_overlong": dropped})
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return path


def resolve_resume(output_dir: str, value: bool | str | None) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names: ``None`` (fresh start), the last ``checkpoint-N`` of
    ``output_dir`` (``True``, ``"last"``, ``"auto"``; ``"auto"`` starts fresh when there is none), or a path."""
    if value in (None, False):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last", "auto")):
        found = last_checkpoint(output_dir)
        if found is None:
            if isinstance(value, str) and value.lower() == "auto":
                return None
            raise TrainingError(f"no checkpoint to resume from in {output_dir}", output_dir=output_dir)
        return found
    path = Path(str(value))
    if not path.is_dir():
        raise TrainingError(f"checkpoint to resume from not found: {path}", checkpoint=str(path))
    return str(path)


def versions() -> dict[str, str]:
    """Versions of grvl-sdk and the training libraries installed (recorded in the run's settings file)."""
    import importlib.metadata as metadata

    found: dict[str, str] = {}
    for name in ("grvl-sdk", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def last_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir``, or ``None``."""
    if not Path(output_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir))


def run_recorder(output_dir: str | os.PathLike[str], *, title: str = "R-SFT") -> Any:
    """A ``TrainerCallback`` writing ``metrics.jsonl`` and ``loss.png`` in ``output_dir`` (main process only).

    It also makes the trainer log the last step, whatever ``logging_steps``: every run has a loss curve."""
    transformers = require("transformers", extra="train")

    class RunRecorder(transformers.TrainerCallback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.directory = Path(output_dir)
            self.metrics = self.directory / METRICS_FILE
            self.plot = self.directory / PLOT_FILE

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.directory.mkdir(parents=True, exist_ok=True)
                _trim_metrics(self.metrics, state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The last step is always logged, so a run shorter than logging_steps still has a loss curve.
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            row = stamp("training-metrics", {"step": state.global_step, "epoch": state.epoch, **_plain(logs)})
            with self.metrics.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self._plot()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self._plot()

        def _plot(self) -> None:
            try:
                write_loss_plot(self.metrics, self.plot, title=title)
            except Exception as exc:  # a plotting failure must not stop training
                logger.warning("could not draw the loss curve: %s", exc)

    return RunRecorder()


def _plain(logs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in logs.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        elif hasattr(value, "item"):
            out[key] = value.item()
        else:
            out[key] = str(value)
    return out
