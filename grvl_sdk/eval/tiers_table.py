"""The cost side of ``grvl eval compare``: results folders side by side with their latency tier.

:func:`cost_table` gives one row per results folder and benchmark — the folder's ``mode`` (``think``,
``fast`` or ``auto``), ``n``, F1, mean output tokens, mean verdict latency, generation ms per sample —
and how many samples were answered by reasoning: all of them in think mode, none in fast mode, and in
auto mode the ones it escalated (each prediction records ``tier`` and ``escalation``), with the reasons.
A last row per folder sums its benchmarks (sample-weighted F1 over the request and response sets).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from grvl_sdk.eval.predictions import PredictionRecord, folder_records
from grvl_sdk.eval.report import load_summary

__all__ = ["cost_table"]

_HEADER = (
    "| Run | Mode | Benchmark | n | F1 | Mean output tokens | Mean latency (ms) | ms/sample | Answered by reasoning |",
    "|---|---|---|---:|---:|---:|---:|---:|---|",
)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _reasoned(mode: str, records: Sequence[PredictionRecord]) -> str:
    """``all``/``none`` for think/fast runs; for auto, ``k/n (p%)`` and the escalation reasons."""
    if mode == "think":
        return "all"
    if mode == "fast":
        return "none"
    known = [r for r in records if r.tier is not None]
    if not known:
        return "– (not recorded)"
    escalated = [r for r in known if r.tier == "think"]
    text = f"{len(escalated)}/{len(known)} ({100 * len(escalated) / len(known):.0f}%)"
    reasons = Counter(r.escalation or "?" for r in escalated)
    if reasons:
        text += ": " + ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    return text


def _run_mode(folder: Path) -> str:
    """The mode ``run.json`` records (a ``results.json`` written before it kept the mode has none)."""
    try:
        return str(json.loads((folder / "run.json").read_text(encoding="utf-8")).get("mode") or "think")
    except (OSError, ValueError, AttributeError):
        return "think"


def cost_table(folders: Sequence[str | Path]) -> str:
    """The markdown table of :mod:`grvl_sdk.eval.tiers_table` for results folders (or their ``results.json``).

    Latencies are milliseconds: ``Mean latency`` is the mean verdict latency (a batched local check's is the
    batch's generate time), ``ms/sample`` that divided by the batch size. Raises
    :class:`~grvl_sdk.errors.EvalError` for a path that is not a results folder.
    """
    lines = list(_HEADER)
    for folder in folders:
        path = Path(folder)
        summary = load_summary(path)
        base = path if path.is_dir() else path.parent
        mode = str(summary.meta.get("mode") or _run_mode(base))
        records = folder_records(base)
        label = base.name
        every: list[PredictionRecord] = []
        for result in summary.results:
            rows = list(records.get(result.name, {}).values())
            every += rows
            lines.append(
                f"| {label} | {mode} | {result.name} | {result.n} | {result.f1:.2f} | "
                f"{_fmt(result.mean_completion_tokens, 1)} | {_fmt(result.mean_latency_ms, 0)} | "
                f"{_fmt(result.ms_per_sample, 0)} | {_reasoned(mode, rows)} |"
            )
        if len(summary.results) > 1:
            ran = [r for r in every if r.status != "failed"]  # as the per-benchmark means count them
            tokens = _mean([float(r.completion_tokens) if r.completion_tokens is not None else None for r in ran])
            latency = _mean([r.latency_ms for r in ran])
            per_sample = _mean([r.latency_ms / r.batch_size if r.latency_ms and r.batch_size else None for r in ran])
            weighted = summary.weighted_f1
            lines.append(
                f"| {label} | {mode} | **all** (weighted F1) | {sum(r.n for r in summary.results)} | "
                f"{_fmt(weighted, 2)} | {_fmt(tokens, 1)} | {_fmt(latency, 0)} | {_fmt(per_sample, 0)} | "
                f"{_reasoned(mode, every)} |"
            )
    return "\n".join(lines)
