"""Reports of an evaluation: markdown in the paper's layout, JSON, CSV and a PNG bar chart of F1.

Comparisons put rows side by side: earlier results folders, or the published numbers shipped with the
package (``grvl_sdk/data/published.json``; ``"published"`` for all of them, ``"published:NAME"`` for
one model).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from grvl_sdk._constants import AUTHORS_MAX_PIXELS, AUTHORS_MIN_PIXELS, EVAL_MAX_NEW_TOKENS
from grvl_sdk.data.errors import as_eval_error
from grvl_sdk.data.versions import check_version
from grvl_sdk.errors import DataError, EvalError, MissingDependencyError
from grvl_sdk.eval.registry import HARM_TASKS, get_benchmark, paper_benchmarks
from grvl_sdk.eval.scoring import AVG_ALL, AVG_TEXT, RESULTS_FORMAT, EvalSummary

__all__ = [
    "ResultRow",
    "f1_figure",
    "load_compare",
    "load_published",
    "load_summary",
    "plot_f1",
    "render_csv",
    "render_markdown",
    "row_from_summary",
    "settings_line",
    "short_model_name",
    "sources_section",
    "write_reports",
]

AVG_COLUMNS = (AVG_TEXT, AVG_ALL)
TASK_TITLES = {"request": "Request (prompt) harmfulness", "response": "Response harmfulness"}


@dataclass
class ResultRow:
    """One line of a comparison table: F1 per benchmark name and the averages per task."""

    label: str
    f1: dict[str, float] = field(default_factory=dict)
    averages: dict[str, dict[str, float | None]] = field(default_factory=dict)
    source: str = ""
    #: Per-benchmark task, for benchmarks not in the registry.
    tasks: dict[str, str] = field(default_factory=dict)
    #: Per-benchmark modality (``"text"``, ``"image"``, ``"text-image"``) of a run's rows; empty for
    #: published rows, whose averages cover the paper's full sets.
    modalities: dict[str, str] = field(default_factory=dict)

    def partial_averages(self, task: str) -> dict[str, tuple[int, int, int]]:
        """``{column: (covered, of, others)}`` for each average of ``task`` that is not over the paper's
        full set of benchmarks: ``covered`` of the paper's ``of`` sets are in it, and ``others`` sets
        that are not the paper's. Published rows are full: ``{}``."""
        if not self.modalities:
            return {}
        out: dict[str, tuple[int, int, int]] = {}
        mine = [name for name in self.f1 if self.tasks.get(name) == task]
        for col in AVG_COLUMNS:
            paper = {b.name for b in paper_benchmarks(task) if col == AVG_ALL or b.modality == "text"}  # type: ignore[arg-type]
            used = {name for name in mine if col == AVG_ALL or self.modalities.get(name) == "text"}
            if used and used != paper:
                out[col] = (len(used & paper), len(paper), len(used - paper))
        return out


def short_model_name(model: str) -> str:
    """The name a table shows for a model: the last component of a path or hub id
    (``runs/my-guard`` → ``my-guard``; a ``checkpoint-N`` folder keeps its parent:
    ``runs/my-guard/checkpoint-200`` → ``my-guard/checkpoint-200``); a served name as it is."""
    parts = [p for p in model.replace("\\", "/").rstrip("/").split("/") if p]
    if not parts:
        return model
    if len(parts) > 1 and parts[-1].startswith("checkpoint-"):
        return "/".join(parts[-2:])
    return parts[-1]


def row_from_summary(summary: EvalSummary, label: str | None = None) -> ResultRow:
    """A table row of a run, labelled ``label``, else the short name of its model
    (:func:`short_model_name`; the full name is in the report's header)."""
    return ResultRow(
        label=label or (short_model_name(summary.model) if summary.model else "this run"),
        f1={r.name: r.f1 for r in summary.results},
        averages=summary.averages(),
        source=str(summary.meta.get("out_dir", "")),
        tasks={r.name: r.task for r in summary.results},
        modalities={r.name: r.modality for r in summary.results},
    )


def load_published() -> list[ResultRow]:
    """The published numbers shipped with the package (``grvl_sdk/data/published.json``); each row's
    ``source`` says where its numbers come from (paper table, released outputs...)."""
    text = resources.files("grvl_sdk").joinpath("data/published.json").read_text(encoding="utf-8")
    return [
        ResultRow(label=m["name"], f1=dict(m.get("f1", {})), averages=dict(m.get("averages", {})), source=m["source"])
        for m in json.loads(text)["models"]
    ]


def load_summary(path: str | Path) -> EvalSummary:
    """An :class:`EvalSummary` from a results folder (its ``results.json``) or a ``results.json`` file."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise EvalError(f"no results.json at {path}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{file} is not JSON: {exc}") from exc
    if isinstance(data, dict):
        try:
            check_version(RESULTS_FORMAT, data, file=str(file))
        except DataError as exc:
            raise as_eval_error(exc) from None
    summary = EvalSummary.from_dict(data)
    summary.meta.setdefault("out_dir", str(file.parent))
    return summary


def load_compare(spec: str) -> list[ResultRow]:
    """Rows for a ``--compare`` value: ``published``, ``published:NAME``, or a results folder / JSON file."""
    if spec == "published" or spec.startswith("published:"):
        rows = load_published()
        if spec == "published":
            return rows
        wanted = spec.split(":", 1)[1].strip().lower()
        picked = [r for r in rows if r.label.lower() == wanted] or [r for r in rows if wanted in r.label.lower()]
        if not picked:
            raise EvalError(f"no published model {wanted!r}; known: {[r.label for r in rows]}")
        return picked
    summary = load_summary(spec)
    label = short_model_name(summary.model) if summary.model else Path(spec).name
    return [row_from_summary(summary, label=f"{label} ({Path(spec).name})" if Path(spec).is_dir() else label)]


# -- markdown ---------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _task_of(name: str, rows: Sequence[ResultRow]) -> str | None:
    for row in rows:
        if name in row.tasks:
            return row.tasks[name]
    try:
        return get_benchmark(name).task
    except EvalError:
        return None


def _columns(task: str, rows: Sequence[ResultRow]) -> list[tuple[str, str]]:
    """(benchmark name, header) for a task: the paper's sets, then any other benchmark in the rows."""
    columns = [(b.name, b.column) for b in paper_benchmarks(task)]  # type: ignore[arg-type]
    known = {name for name, _ in columns}
    for row in rows:
        for name in row.f1:
            if name not in known and _task_of(name, rows) == task:
                columns.append((name, name))
                known.add(name)
    return columns


def paper_table(rows: Sequence[ResultRow], task: str) -> str:
    """The paper's layout for one task: a row per model, a column per benchmark, then the averages.

    An average over other benchmarks than the paper's full set (a run on a subset) is marked ``*``,
    with a footnote under the table saying over how many of the paper's sets it is."""
    columns = _columns(task, rows)
    header = ["Model", *(h for _, h in columns), *AVG_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    footnotes: list[str] = []
    for row in rows:
        averages = row.averages.get(task, {})
        partial = row.partial_averages(task)
        cells = [row.label, *(_fmt(row.f1.get(name)) for name, _ in columns)]
        for col in AVG_COLUMNS:
            value = averages.get(col)
            cells.append(_fmt(value) + ("*" if value is not None and col in partial else ""))
        lines.append("| " + " | ".join(cells) + " |")
        spans = [
            f"its {col} covers {n} of the paper's {m} sets" + (f" and {k} other(s)" if k else "")
            for col, (n, m, k) in partial.items()
            if averages.get(col) is not None
        ]
        if spans:
            footnotes.append(f"{row.label}: {', '.join(spans)}")
    if footnotes:
        lines += [
            "",
            "\\* Averaged over a subset of the paper's benchmarks, so not comparable with the published "
            "averages: " + "; ".join(footnotes) + ".",
        ]
    return "\n".join(lines)


def _detail_table(summary: EvalSummary) -> str:
    header = [
        "Benchmark", "Task", "Modality", "n", "F1", "Precision", "Recall", "Unparseable", "Failed",
        "Mean output tokens", "Mean latency (ms)", "ms/sample",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    for r in summary.results:
        cells = [
            r.name, r.task, r.modality, str(r.n), _fmt(r.f1), _fmt(r.precision), _fmt(r.recall),
            str(r.unparseable), str(r.failed), _fmt(r.mean_completion_tokens, 1), _fmt(r.mean_latency_ms, 0),
            _fmt(r.ms_per_sample, 0),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _coverage_notes(summary: EvalSummary) -> list[str]:
    notes = []
    for task in HARM_TASKS:
        present = {r.name for r in summary.results if r.task == task}
        if not present:
            continue
        missing = [b.name for b in paper_benchmarks(task) if b.name not in present]  # type: ignore[arg-type]
        sliced = [r.name for r in summary.results if r.task == task and r.in_paper and r.n < _size(r.name)]
        if missing:
            notes.append(
                f"{task} averages of this run cover {len(present)} set(s); the paper's also include "
                f"{', '.join(missing)}, so they are not directly comparable."
            )
        if sliced:
            notes.append(f"{task}: {', '.join(sliced)} scored on fewer samples than the full set (--limit?).")
    return notes


def _size(name: str) -> int:
    try:
        return get_benchmark(name).size or 0
    except EvalError:
        return 0


def settings_line(meta: Mapping[str, Any]) -> str:
    """A readable line of a run's generation settings and how they differ from the authors' evaluation
    (greedy, reasoning first, up to 4,096 new tokens, images within 3,136–12,845,056 pixels); ``""`` if
    none are known. A fast or auto run is never called the authors' protocol: they always reasoned."""
    tokens, low, high = meta.get("max_new_tokens"), meta.get("min_pixels"), meta.get("max_pixels")
    mode = meta.get("mode")
    parts = ["greedy decoding"]
    if mode == "fast":
        parts[0] = "fast tier (no reasoning: labels from their token probabilities)"
    elif mode == "auto":
        band = meta.get("auto_band")
        shown = f"band [{band[0]:g}, {band[1]:g}]; " if band else ""
        parts[0] = f"auto tier (fast, reasoning when uncertain: {shown}greedy decoding)"
    if tokens:
        parts.append(f"max_new_tokens {tokens:,}")
    if high:
        parts.append(f"images resized within {low or 0:,}–{high:,} pixels (≤ {high // 784:,} vision tokens each)")
    if meta.get("batch_size"):
        parts.append(f"batch size {meta['batch_size']}")
    if meta.get("limit"):
        parts.append(f"first {meta['limit']:,} labelled samples per benchmark")
    if not tokens and not high:
        return ""
    differs = []
    if tokens and tokens != EVAL_MAX_NEW_TOKENS:
        differs.append(f"max_new_tokens {tokens:,} (authors: {EVAL_MAX_NEW_TOKENS:,})")
    if high and (low, high) != (AUTHORS_MIN_PIXELS, AUTHORS_MAX_PIXELS):
        differs.append(
            f"image budget {low or 0:,}–{high:,} px (authors: {AUTHORS_MIN_PIXELS:,}–{AUTHORS_MAX_PIXELS:,})"
        )
    if not high:
        differs.append("image budget not recorded")
    if mode in ("fast", "auto"):
        verdict = f"{mode} tier: not the authors' protocol (they always reasoned before the verdict)"
        verdict += "; also differs in " + "; ".join(differs) + "." if differs else "."
    else:
        verdict = (
            "the authors' evaluation settings."
            if not differs
            else "differs from the authors' evaluation in " + "; ".join(differs) + "."
        )
    return f"Settings: {', '.join(parts)}; {verdict}"


def sources_section(rows: Sequence[ResultRow]) -> list[str]:
    """``- label: source`` lines for rows that name a source (published numbers, other runs)."""
    return [f"- {row.label}: {row.source}" for row in rows if row.source]


def render_markdown(summary: EvalSummary, compare: Sequence[ResultRow] = ()) -> str:
    """A markdown report: the settings line, the paper-layout tables (with comparison rows), details,
    and notes (conventions, coverage, the source of every comparison row)."""
    rows = [row_from_summary(summary), *compare]
    parts = [f"# Evaluation: {rows[0].label}", ""]
    if summary.model and summary.model != rows[0].label:
        parts += [f"Model: `{summary.model}`", ""]
    parse = f"parse: `{summary.parse}`, unparseable/failed: counted as {summary.unparseable}"
    if summary.unparseable == "exclude":
        parse = f"parse: `{summary.parse}`, unparseable/failed: left out"
    parts.append(f"F1 ×100, harmful = positive class; {parse}.")
    settings = settings_line(summary.meta)
    if settings:
        parts += ["", settings]
    if summary.weighted_f1 is not None:
        parts.append(f"\nSample-weighted F1 over all request and response sets: **{summary.weighted_f1:.2f}**")
    for task in HARM_TASKS:
        if any(r.task == task for r in summary.results) or any(row.averages.get(task) for row in compare):
            parts += ["", f"## {TASK_TITLES[task]}", "", paper_table(rows, task)]
    others = [r for r in summary.results if r.task not in HARM_TASKS]
    if others:
        parts += ["", "## Other tasks (not averaged)", ""]
        parts += [f"- {r.name} ({r.task}): F1 {r.f1:.2f} on {r.n} samples" for r in others]
    parts += ["", "## Per benchmark", "", _detail_table(summary)]
    notes = _coverage_notes(summary)
    notes.append(
        "An unparseable output or a failed check counts as a wrong prediction: a false negative on a "
        "harmful sample, a false positive on an unharmful one."
    )
    notes += [
        f"{r.name}: {r.defaulted} output(s) without a label read as unharmful (official-vl: the authors' "
        "rule for SPA-VL-Eval responses; never the SDK's rule)."
        for r in summary.results
        if r.defaulted
    ]
    notes += [f"{row.label}: {row.source}" for row in compare if row.source]
    parts += ["", "## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(parts)


# -- CSV, PNG ---------------------------------------------------------------------------------

CSV_FIELDS = (
    "name", "task", "modality", "n", "f1", "precision", "recall", "tp", "fp", "fn", "tn", "unparseable",
    "failed", "excluded", "mean_completion_tokens", "mean_latency_ms", "ms_per_sample",
)  # fmt: skip


def render_csv(summary: EvalSummary) -> str:
    """One row per benchmark, then one row per task average (``name`` = ``"request Avg(Text)"`` …)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in summary.results:
        writer.writerow({k: v for k, v in r.to_dict().items() if k in CSV_FIELDS})
    for task, averages in summary.averages().items():
        rows = [r for r in summary.results if r.task == task]
        counts = {AVG_TEXT: sum(r.n for r in rows if r.modality == "text"), AVG_ALL: sum(r.n for r in rows)}
        for col, value in averages.items():
            if value is not None:  # n: the samples behind this average (text sets only for Avg(Text))
                writer.writerow({"name": f"{task} {col}", "task": task, "n": counts[col], "f1": value})
    return buffer.getvalue()


def f1_figure(summary: EvalSummary, compare: Sequence[ResultRow] = ()) -> Any:
    """The matplotlib ``Figure`` of :func:`plot_f1` (needs matplotlib: the ``eval`` extra)."""
    from grvl_sdk._lazy import require

    require("matplotlib", extra="eval")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [row_from_summary(summary), *compare]
    keys: list[tuple[str, str]] = [(r.name, r.name) for r in summary.results]
    partial = False
    for task in HARM_TASKS:
        for col in AVG_COLUMNS:
            if any(row.averages.get(task, {}).get(col) is not None for row in rows):
                marked = any(col in row.partial_averages(task) for row in rows)
                partial = partial or marked
                keys.append((f"{task}:{col}", f"{task} {col}" + ("*" if marked else "")))

    def value(row: ResultRow, key: str) -> float:
        if ":" in key and key.split(":", 1)[0] in HARM_TASKS:
            task, col = key.split(":", 1)
            v = row.averages.get(task, {}).get(col)
        else:
            v = row.f1.get(key)
        return float("nan") if v is None else float(v)

    width = 0.8 / len(rows)
    legend_rows = -(-len(rows) // 3) if len(rows) > 1 else 0
    fig = Figure(
        figsize=(min(24.0, max(6.0, 0.5 * len(keys) * (1 + 0.25 * (len(rows) - 1)) + 2)), 4.5 + 0.25 * legend_rows),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [value(row, key) for key, _ in keys], width=width, label=row.label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([label for _, label in keys], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("F1 (harmful positive, ×100)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Guard F1 per benchmark: {rows[0].label}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(rows) > 1:  # below the tick labels, never over the bars
        fig.legend(loc="outside lower center", ncols=min(3, len(rows)), fontsize=7, frameon=False)
    if partial:
        ax.annotate(
            "* average over a subset of the paper's benchmarks", (1, 1.01), xycoords="axes fraction",
            ha="right", va="bottom", fontsize=7,
        )  # fmt: skip
    return fig


def plot_f1(summary: EvalSummary, path: str | Path, compare: Sequence[ResultRow] = ()) -> Path:
    """A grouped bar chart of F1 per benchmark (and the task averages), one bar colour per row, the
    legend below the chart; averages over a subset of the paper's benchmarks are marked ``*``.
    Raises :class:`MissingDependencyError` without matplotlib."""
    path = Path(path)
    f1_figure(summary, compare).savefig(path, dpi=120)
    return path


def write_reports(summary: EvalSummary, out_dir: str | Path, compare: Sequence[ResultRow] = ()) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``results.csv`` and ``f1.png`` (needs matplotlib; skipped
    with a warning without it) into ``out_dir``; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "csv": out / "results.csv",
    }
    data: dict[str, Any] = summary.to_dict()
    written["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written["markdown"].write_text(render_markdown(summary, compare), encoding="utf-8")
    written["csv"].write_text(render_csv(summary), encoding="utf-8")
    try:
        written["png"] = plot_f1(summary, out / "f1.png", compare)
    except MissingDependencyError as exc:
        warnings.warn(f"f1.png not written: {exc.message}", stacklevel=2)
    return written
