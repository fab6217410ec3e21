"""The run directory: resolved config, data summary, metrics (JSONL) and the loss curve.

Layout of ``output_dir`` after :func:`grvl_sdk.trainer.train_rsft`::

    config.json, model.safetensors, tokenizer..., preprocessor_config.json   the final guard
    adapter/                      the LoRA adapter (LoRA/QLoRA with merge_lora)
    checkpoint-N/                 trainer checkpoints (resume from the last one)
    rsft_config.yaml              the resolved settings, batch plan, versions
    data_summary.json             counts per modality and label, dropped samples
    metrics.jsonl                 one line per logging step (loss, grad norm, lr, token accuracy...)
    loss.png                      the loss curve (train and eval)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require

__all__ = ["METRICS_FILE", "PLOT_FILE", "last_checkpoint", "read_metrics", "run_recorder", "write_loss_plot"]

logger = logging.getLogger("grvl_sdk")

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CONFIG_FILE = "rsft_config.yaml"
SUMMARY_FILE = "data_summary.json"


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metric lines of a run (a torn last line, from an interrupted write, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for raw in path.read_text(encoding="utf-8").split("\n"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
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
        axis.plot([s for s, _ in train], [v for _, v in train], label="train loss", linewidth=1.5)
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


def last_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir``, or ``None``."""
    if not Path(output_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir))


def run_recorder(output_dir: str | os.PathLike[str], *, title: str = "R-SFT") -> Any:
    """A ``TrainerCallback`` writing ``metrics.jsonl`` and ``loss.png`` in ``output_dir`` (main process only)."""
    transformers = require("transformers", extra="train")

    class RunRecorder(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.directory = Path(output_dir)
            self.metrics = self.directory / METRICS_FILE
            self.plot = self.directory / PLOT_FILE

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.directory.mkdir(parents=True, exist_ok=True)
                _trim_metrics(self.metrics, state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": state.epoch, **_plain(logs)}
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
