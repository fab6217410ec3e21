"""The RL run's curves (``rl_curves.png``) from its ``metrics.jsonl``: reward, accuracy, length, clipping, KL.

Panels, against the optimizer step: reward mean ± std; accuracy (both labels right) and format rate of
the rollouts; mean completion length (tokens); the clip range the loss used (from inside the loss, see
:mod:`grvl_sdk.trainer.grpo_trainer`) and the fraction of tokens clipped; the KL to the reference model
when its coefficient is not 0.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.trainer.runs import METRICS_FILE, read_metrics

__all__ = ["CURVES_FILE", "curves_recorder", "write_rl_curves"]

logger = logging.getLogger("grvl_sdk")

CURVES_FILE = "rl_curves.png"
_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward (mean ± std)", ("reward",)),
    ("rollout accuracy / format rate", ("accuracy", "format_rate")),
    ("mean completion length (tokens)", ("completions/mean_length",)),
    ("clip range in the loss / clipped fraction", ("clip_range/low", "clip_range/high", "clip_ratio/region_mean")),
    ("KL to the reference", ("kl",)),
)


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    points = {int(r["step"]): float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r}
    return sorted(points.items())


def write_rl_curves(
    metrics: str | os.PathLike[str], png: str | os.PathLike[str], *, title: str = "GRPO"
) -> Path | None:
    """Draw the RL curves of a ``metrics.jsonl`` into ``png``; ``None`` when nothing was logged."""
    rows = [r for r in read_metrics(metrics) if not any(k.startswith("eval_") for k in r)]
    panels = [(name, [(k, _series(rows, k)) for k in keys]) for name, keys in _PANELS]
    panels = [(name, [(k, s) for k, s in series if s]) for name, series in panels]
    panels = [(name, series) for name, series in panels if series]
    if not panels:
        return None
    matplotlib = require("matplotlib", extra="train")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), dpi=100, sharex=True, squeeze=False)
    for axis, (name, series) in zip(axes[:, 0], panels, strict=True):
        for key, points in series:
            steps, values = [s for s, _ in points], [v for _, v in points]
            axis.plot(steps, values, "-", marker="." if len(points) < 40 else None, label=key, linewidth=1.3)
            if key == "reward":
                std = dict(_series(rows, "reward_std"))
                low = [v - std.get(s, 0.0) for s, v in points]
                high = [v + std.get(s, 0.0) for s, v in points]
                axis.fill_between(steps, low, high, alpha=0.2)
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=7)
    axes[-1, 0].set_xlabel("optimizer step")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    png = Path(png)
    figure.savefig(png)
    plt.close(figure)
    return png


def curves_recorder(output_dir: str | os.PathLike[str], *, title: str = "GRPO") -> Any:
    """A ``TrainerCallback`` redrawing ``rl_curves.png`` at every save and at the end (main process)."""
    transformers = require("transformers", extra="train")

    class CurvesRecorder(transformers.TrainerCallback):  # type: ignore[name-defined]
        def _draw(self, state: Any) -> None:
            if not state.is_world_process_zero:
                return
            directory = Path(output_dir)
            try:
                write_rl_curves(directory / METRICS_FILE, directory / CURVES_FILE, title=title)
            except Exception as exc:  # a plotting failure must not stop training
                logger.warning("could not draw the RL curves: %s", exc)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._draw(state)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._draw(state)

    return CurvesRecorder()
