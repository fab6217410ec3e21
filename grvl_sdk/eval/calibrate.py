"""Choosing ``mode="auto"``'s band from a fast run and a think run of the same benchmarks.

``grvl eval run --mode fast`` and ``--mode think`` write one prediction per sample, the fast one with its
score (the probability of ``harmful``). Auto mode with band ``[low, high]`` answers a sample from the
think run when its fast score lies in the band (or the fast check gave no label or no score), else from
the fast run — so every band can be simulated exactly from the two folders, without running the model
again. :func:`calibrate_band` tries the bands centred on 0.5 (``[0.5 - w, 0.5 + w]``, ``w`` in steps
of ``step``) and picks the narrowest — the fewest escalations, the lowest cost — whose sample-weighted
F1 (harmful positive, x100, over the benchmarks both runs share) is within ``max_f1_drop`` points of
the think run's. The two runs themselves are reported alongside as :class:`TierRun` rows: the fast run
answering every sample (no escalation; a failed fast check stays failed) and the think run (reasoning on
every sample, at think's own latency — no fast pass before it, unlike auto with band ``[0, 1]``).

Each folder must record the mode it was run in (``run.json`` or ``results.json``): the first must be a
``fast`` run, the second a ``think`` run (a folder written before runs recorded a mode counts as think);
anything else raises :class:`~grvl_sdk.errors.EvalModeError`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grvl_sdk._constants import EVAL_MAX_NEW_TOKENS, EVAL_MAX_PIXELS, EVAL_MIN_PIXELS
from grvl_sdk.errors import EvalError, EvalModeError
from grvl_sdk.eval.metrics import f1_score, weighted_average
from grvl_sdk.eval.predictions import PredictionRecord, folder_records

__all__ = ["BandChoice", "Calibration", "TierRun", "calibrate_band", "recorded_mode"]


@dataclass(frozen=True)
class BandChoice:
    """One simulated auto band ``[low, high]``: its F1 (x100, sample-weighted), the share of samples it
    escalates to reasoning (0..1), and the mean per-sample latency it implies, milliseconds (fast latency
    plus think latency where escalated; ``None`` when the runs recorded none)."""

    low: float
    high: float
    f1: float
    escalated: float
    mean_latency_ms: float | None


@dataclass(frozen=True)
class TierRun:
    """One of the two measured runs on the shared samples: ``mode`` (``"fast"`` or ``"think"``), its F1
    (x100, sample-weighted), the share of samples answered by reasoning (0 for fast, 1 for think) and its
    own mean per-sample latency, milliseconds (``None`` when not recorded)."""

    mode: str
    f1: float
    reasoned: float
    mean_latency_ms: float | None


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibrate_band`: the ``chosen`` band, the ``fast`` and ``think`` runs for
    reference, every band ``tried`` (narrowest first), and ``command``, the ``grvl eval run ... --mode auto
    --auto-band LOW HIGH`` line that measures the chosen band on the same benchmarks."""

    chosen: BandChoice
    fast: TierRun
    think: TierRun
    tried: list[BandChoice]
    command: str = field(default="")


def recorded_mode(folder: str | Path) -> str | None:
    """The latency tier a results folder records: ``run.json``'s ``mode``, else ``results.json``'s
    ``meta.mode``; ``None`` when neither records one (folders written before modes existed) or neither
    file is readable."""
    base = Path(folder)
    for name, keys in (("run.json", ("mode",)), ("results.json", ("meta", "mode"))):
        try:
            value: Any = json.loads((base / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value:
            return str(value)
    return None


def _check_mode(folder: str | Path, expected: str, role: str) -> None:
    recorded = recorded_mode(folder)
    effective = recorded or "think"  # a folder from before modes were recorded was a think run
    if effective == expected:
        return
    shown = f"mode {recorded!r}" if recorded else "no mode (a run from before modes were recorded: think)"
    hint = (
        " — the folders look swapped: give the fast run first, then the think run"
        if expected == "fast" and effective == "think"
        else ""
    )
    raise EvalModeError(
        f"{role} must be a results folder of `grvl eval run --mode {expected}`, but {folder} records {shown}{hint}",
        folder=str(folder),
        recorded=recorded,
        expected=expected,
    )


def _per_sample_ms(record: PredictionRecord) -> float | None:
    if record.latency_ms is None:
        return None
    return record.latency_ms / (record.batch_size or 1)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _run_state(folder: str | Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(folder) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def auto_command(think_dir: str | Path, benchmarks: list[str], band: BandChoice) -> str:
    """The ``grvl eval run`` line measuring ``band`` in auto mode on ``benchmarks`` with the think run's
    model, data files and generation settings (from its ``run.json``; names only when it has none)."""
    state = _run_state(think_dir)
    recorded = state.get("benchmarks") or {}
    specs = []
    for name in benchmarks:
        info = recorded.get(name) or {}
        if not info.get("path"):
            specs.append(name)
        elif info.get("registered", True):
            specs.append(f"{name}={info['path']}")
        else:
            specs.append(f"{name}:{info.get('task')}:{info.get('modality', 'text')}={info['path']}")
    parts = ["grvl", "eval", "run", *specs]
    if state.get("model"):
        parts += ["--model", str(state["model"])]
    for flag, key, default in (
        ("--max-new-tokens", "max_new_tokens", EVAL_MAX_NEW_TOKENS),
        ("--min-pixels", "min_pixels", EVAL_MIN_PIXELS),
        ("--max-pixels", "max_pixels", EVAL_MAX_PIXELS),
    ):
        if state.get(key) not in (None, default):
            parts += [flag, str(state[key])]
    parts += ["--mode", "auto", "--auto-band", f"{band.low:g}", f"{band.high:g}", "--out", "RESULTS_AUTO"]
    return " ".join(shlex.quote(p) for p in parts)


def calibrate_band(
    fast_dir: str | Path, think_dir: str | Path, *, max_f1_drop: float = 1.0, step: float = 0.01
) -> Calibration:
    """Simulate auto mode's bands from a fast and a think results folder (see the module docstring).

    Raises :class:`EvalError` when ``step`` is not in (0, 0.5], ``max_f1_drop`` < 0, a folder is not a
    results folder or the two share no sample; :class:`~grvl_sdk.errors.EvalModeError` (code
    ``eval_mode_mismatch``) when ``fast_dir`` does not record mode ``fast`` or ``think_dir`` records a
    mode other than ``think``."""
    if not 0 < step <= 0.5 or max_f1_drop < 0:
        raise EvalError(f"need 0 < step <= 0.5 and max_f1_drop >= 0, got {step}, {max_f1_drop}")
    fast_runs, think_runs = folder_records(fast_dir), folder_records(think_dir)
    _check_mode(fast_dir, "fast", "FAST_RESULTS (the first folder)")
    _check_mode(think_dir, "think", "THINK_RESULTS (the second folder)")
    pairs: dict[str, list[tuple[PredictionRecord, PredictionRecord]]] = {}
    for name, fast in fast_runs.items():
        think = think_runs.get(name, {})
        shared = [(fast[i], think[i]) for i in fast if i in think and fast[i].gold]
        if shared:
            pairs[name] = shared
    if not pairs:
        raise EvalError(f"{fast_dir} and {think_dir} share no sample: run both on the same benchmarks")

    def simulate(low: float, high: float) -> tuple[float, float, float | None]:
        """(F1, escalated share, mean ms/sample) of auto with band ``[low, high]``; ``low > high``: never
        escalate (the fast run alone, failed checks included)."""
        scores, escalated, latencies, total = [], 0, [], 0
        for records in pairs.values():
            gold, predicted = [], []
            for fast, think in records:
                score = fast.score
                escalate = low <= high and (fast.status != "ok" or score is None or low <= score <= high)
                chosen = think if escalate else fast
                escalated += escalate
                gold.append(fast.gold == "harmful")
                predicted.append(None if chosen.status != "ok" else chosen.predicted == "harmful")
                fast_ms, think_ms = _per_sample_ms(fast), _per_sample_ms(think)
                if fast_ms is not None and think_ms is not None:
                    latencies.append(fast_ms + (think_ms if escalate else 0.0))
            scores.append((100 * f1_score(gold, predicted), len(records)))
            total += len(records)
        return weighted_average(scores) or 0.0, escalated / total, _mean(latencies)

    def band(low: float, high: float) -> BandChoice:
        return BandChoice(round(low, 6), round(high, 6), *simulate(low, high))

    steps = round(0.5 / step)
    tried = [band(0.5 - k * step, 0.5 + k * step) for k in range(steps + 1)]
    fast_f1, _, fast_ms = simulate(1.0, 0.0)
    think_f1 = simulate(0.0, 1.0)[0]  # every sample answered by the think run
    think_ms = _mean([ms for rows in pairs.values() for _, think in rows if (ms := _per_sample_ms(think)) is not None])
    fast_run = TierRun("fast", fast_f1, 0.0, fast_ms)
    think_run = TierRun("think", think_f1, 1.0, think_ms)
    target = think_run.f1 - max_f1_drop
    chosen = next((b for b in tried if b.f1 >= target), tried[-1])
    return Calibration(chosen, fast_run, think_run, tried, auto_command(think_dir, list(pairs), chosen))
