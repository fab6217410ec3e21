"""Choosing ``mode="auto"``'s band from a fast run and a think run of the same benchmarks.

``grvl eval run --mode fast`` and ``--mode think`` write one prediction per sample, the fast one with its
score (the probability of ``harmful``). Auto mode with band ``[low, high]`` answers a sample from the
think run when its fast score lies in the band (or the fast check gave no label or no score), else from
the fast run — so every band can be simulated exactly from the two folders, without running the model
again. :func:`calibrate_band` tries the bands centred on 0.5 (``[0.5 - w, 0.5 + w]``, ``w`` in steps
of ``step``) and picks the narrowest — the fewest escalations, the lowest cost — whose sample-weighted
F1 (harmful positive, x100, over the benchmarks both runs share) is within ``max_f1_drop`` points of
the think run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grvl_sdk.errors import EvalError
from grvl_sdk.eval.metrics import f1_score, weighted_average
from grvl_sdk.eval.predictions import PredictionRecord, folder_records

__all__ = ["BandChoice", "calibrate_band"]


@dataclass(frozen=True)
class BandChoice:
    """One simulated band: its F1 (x100, sample-weighted), the share of samples it escalates, and the
    mean per-sample latency it implies (fast latency plus think latency where escalated; ``None`` when
    the runs recorded none)."""

    low: float
    high: float
    f1: float
    escalated: float
    mean_latency_ms: float | None


def _per_sample_ms(record: PredictionRecord) -> float | None:
    if record.latency_ms is None:
        return None
    return record.latency_ms / (record.batch_size or 1)


def calibrate_band(
    fast_dir: str | Path, think_dir: str | Path, *, max_f1_drop: float = 1.0, step: float = 0.01
) -> tuple[BandChoice, BandChoice, list[BandChoice]]:
    """(the chosen band, the think run as a band ``[0, 1]`` for reference, every band tried). Raises
    :class:`EvalError` when the folders share no sample or ``step`` is not in (0, 0.5]."""
    if not 0 < step <= 0.5 or max_f1_drop < 0:
        raise EvalError(f"need 0 < step <= 0.5 and max_f1_drop >= 0, got {step}, {max_f1_drop}")
    fast_runs, think_runs = folder_records(fast_dir), folder_records(think_dir)
    pairs: dict[str, list[tuple[PredictionRecord, PredictionRecord]]] = {}
    for name, fast in fast_runs.items():
        think = think_runs.get(name, {})
        shared = [(fast[i], think[i]) for i in fast if i in think and fast[i].gold]
        if shared:
            pairs[name] = shared
    if not pairs:
        raise EvalError(f"{fast_dir} and {think_dir} share no sample: run both on the same benchmarks")

    def simulate(low: float, high: float) -> BandChoice:
        scores, escalated, latencies, total = [], 0, [], 0
        for records in pairs.values():
            gold, predicted = [], []
            for fast, think in records:
                score = fast.score
                escalate = fast.status != "ok" or score is None or low <= score <= high
                chosen = think if escalate else fast
                escalated += escalate
                gold.append(fast.gold == "harmful")
                predicted.append(None if chosen.status != "ok" else chosen.predicted == "harmful")
                fast_ms, think_ms = _per_sample_ms(fast), _per_sample_ms(think)
                if fast_ms is not None and think_ms is not None:
                    latencies.append(fast_ms + (think_ms if escalate else 0.0))
            scores.append((100 * f1_score(gold, predicted), len(records)))
            total += len(records)
        f1 = weighted_average(scores) or 0.0
        latency = sum(latencies) / len(latencies) if latencies else None
        return BandChoice(round(low, 6), round(high, 6), f1, escalated / total, latency)

    steps = round(0.5 / step)
    tried = [simulate(0.5 - k * step, 0.5 + k * step) for k in range(steps + 1)]
    reference = simulate(0.0, 1.0)
    think_ms = [ms for records in pairs.values() for _, think in records if (ms := _per_sample_ms(think)) is not None]
    always_think = BandChoice(0.0, 1.0, reference.f1, 1.0, sum(think_ms) / len(think_ms) if think_ms else None)
    target = always_think.f1 - max_f1_drop
    chosen = next((band for band in tried if band.f1 >= target), tried[-1])
    return chosen, always_think, tried
