"""``run_eval``: run a guard over benchmark files, resumably, and score it.

A results folder holds::

    run.json                       format version, model, settings (max_new_tokens, image pixel bounds,
                                   mode; auto_band in auto mode), and per benchmark its file and selected
                                   sample ids
    predictions/<benchmark>.jsonl  one PredictionRecord per line (with its format version), appended batch
                                   by batch
    results.json / results.md / results.csv / f1.png   (see grvl_sdk.eval.report)

Predictions are flushed after every batch, so an interrupted run resumes where it stopped: samples
with a prediction (labelled or unparseable) are not generated again; samples whose check *failed*
(the guard raised, e.g. a server error) are retried. Benchmarks read from one file (SPA-VL-Eval's
request and response sets) share their checks: each sample is generated once and scored for both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from grvl_sdk.data.samples import Sample
from grvl_sdk.errors import BackendError, EvalError, GRVLError, InputError
from grvl_sdk.eval._runfiles import Progress, chunks, finished_records, quiet_verdict_logs, read_json, write_json
from grvl_sdk.eval.formats import load_benchmark
from grvl_sdk.eval.predictions import PredictionRecord, load_predictions
from grvl_sdk.eval.registry import HARM_TASKS, Benchmark, get_benchmark
from grvl_sdk.eval.scoring import EvalSummary, ParseMode, UnparseablePolicy, score_records, sdk_label
from grvl_sdk.eval.sources import BenchmarkSource, resolve_sources
from grvl_sdk.verdict import ErrorInfo, Verdict

__all__ = [
    "SupportsCheckBatch",
    "image_bounds",
    "is_run_dir",
    "load_run",
    "predictions_path",
    "resume_conflicts",
    "resume_error",
    "run_eval",
]

RUN_FILE = "run.json"
PREDICTIONS_DIR = "predictions"
#: The format of ``run.json`` (its ``version``; :mod:`grvl_sdk.data.versions`).
RUN_FORMAT = "eval-run"


class SupportsCheckBatch(Protocol):
    """What ``run_eval`` needs of a guard: :meth:`grvl_sdk.Guard.check_batch` (and ideally ``model_id``)."""

    def check_batch(
        self, inputs: Sequence[Mapping[str, Any]], *, max_new_tokens: int | None = None, batch_size: int | None = None
    ) -> list[Verdict]: ...


def predictions_path(out_dir: str | Path, name: str) -> Path:
    """Where the predictions of benchmark ``name`` are written in a results folder."""
    return Path(out_dir) / PREDICTIONS_DIR / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.jsonl"


# -- records ----------------------------------------------------------------------------------


def _record(sample: Sample, index: int, bench: Benchmark, verdict: Verdict, batch_size: int) -> PredictionRecord:
    task = bench.task
    error = verdict.error
    record = PredictionRecord(
        id=str(sample.id),
        gold=sample.gold(task) or "",
        raw_output=verdict.raw_output,
        benchmark=bench.name,
        task=task,
        index=index,
        error=error.model_dump() if error is not None else None,
        prompt_tokens=verdict.usage.prompt_tokens,
        completion_tokens=verdict.usage.completion_tokens,
        latency_ms=verdict.usage.latency_ms,
        batch_size=batch_size,
        score=verdict.request_score if task == "request" else verdict.response_score,
        tier=verdict.tier.path if verdict.tier is not None else None,
        escalation=verdict.tier.escalation if verdict.tier is not None else None,
    )
    if error is not None and error.code != "unparseable_output":
        record.status = "failed"
        return record
    label: str | None = None
    if error is None:
        label = verdict.request_label if task == "request" else verdict.response_label
    if label is None and verdict.raw_output:
        # e.g. a request set whose output lacks only the response label: the request label still counts.
        label = sdk_label(verdict.raw_output, task)
    record.predicted = label
    record.status = "ok" if label is not None else "unparseable"
    return record


def _failed(sample: Sample, index: int, bench: Benchmark, exc: BaseException) -> PredictionRecord:
    return PredictionRecord(
        id=str(sample.id),
        gold=sample.gold(bench.task) or "",
        benchmark=bench.name,
        task=bench.task,
        index=index,
        status="failed",
        error=ErrorInfo.from_exception(exc).model_dump(),
    )


Outcome = tuple[Verdict | GRVLError, int]


def _check(guard: SupportsCheckBatch, chunk: Sequence[tuple[int, Sample]], max_new_tokens: int | None) -> list[Outcome]:
    """Check a batch: ``(verdict or error, batch size)`` per sample. A bad input fails alone, a backend
    error fails the batch; other errors propagate."""
    try:
        verdicts = guard.check_batch(
            [s.check_input() for _, s in chunk], max_new_tokens=max_new_tokens, batch_size=len(chunk)
        )
    except InputError as exc:
        if len(chunk) == 1:
            return [(exc, 1)]
        return [outcome for item in chunk for outcome in _check(guard, [item], max_new_tokens)]
    except GRVLError as exc:
        return [(exc, len(chunk))] * len(chunk)
    if len(verdicts) != len(chunk):
        raise EvalError(f"the guard returned {len(verdicts)} verdicts for {len(chunk)} inputs")
    return [(verdict, len(chunk)) for verdict in verdicts]


def _failure(outcome: Verdict | GRVLError) -> str | None:
    """``"code: message"`` when the guard could not run for this sample (an unparseable output is the
    model's answer, not a failure to run)."""
    if isinstance(outcome, GRVLError):
        return f"{outcome.code}: {outcome.message}"
    if outcome.error is not None and outcome.error.code != "unparseable_output":
        return f"{outcome.error.code}: {outcome.error.message}"
    return None


def _stop_when_failing(failed: int, generated: int, last: int, size: int, rate: float, first_error: str | None) -> None:
    if rate >= 1:  # stopping turned off
        return
    if generated == last and failed == last:
        raise BackendError(
            f"all {last} checks of the first batch failed, so nothing more was run; is the guard reachable "
            f"and loaded? First error: {first_error}"
        )
    if generated >= 2 * size and failed > rate * generated:
        raise BackendError(
            f"{failed} of {generated} checks failed, over the allowed {rate:.0%}; stopped. First error: {first_error}"
        )


def _outcome_record(
    sample: Sample, index: int, bench: Benchmark, outcome: Verdict | GRVLError, batch: int
) -> PredictionRecord:
    if isinstance(outcome, Verdict):
        return _record(sample, index, bench, outcome, batch)
    return _failed(sample, index, bench, outcome)


def _selected(samples: list[Sample], bench: Benchmark, limit: int | None) -> tuple[list[tuple[int, Sample]], int]:
    """(index, sample) pairs with a gold label for the task, the first ``limit`` of them; and the count
    of samples without one."""
    labelled = [(i, s) for i, s in enumerate(samples) if s.gold(bench.task) is not None]
    skipped = len(samples) - len(labelled)
    return (labelled[:limit] if limit is not None else labelled), skipped


def image_bounds(guard: Any) -> tuple[int, int] | None:
    """``(min_pixels, max_pixels)`` the guard's images are resized within, or ``None`` if unknown."""
    bounds = getattr(getattr(guard, "backend", None), "image_bounds", None)
    return (int(bounds[0]), int(bounds[1])) if bounds else None


def resume_conflicts(
    out_dir: str | Path, settings: Mapping[str, Any], state: Mapping[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
    """``(setting, recorded, now)`` for each setting in ``settings`` (``model``, ``max_new_tokens``,
    ``min_pixels``, ``max_pixels``, ``mode``, ``auto_band``)
    that differs from the run recorded in ``out_dir``'s ``run.json``
    (``state``: that file's content, if already read). Settings the folder did not record are not
    compared; an empty or new folder has none. Raises :class:`DataFormatError` on an unreadable
    ``run.json``."""
    if state is None:
        run_file = Path(out_dir) / RUN_FILE
        state = read_json(run_file, RUN_FORMAT) if run_file.exists() else {}
    return [(k, state[k], v) for k, v in settings.items() if k in state and state[k] != v]


def resume_error(out_dir: str | Path, changes: Sequence[tuple[str, Any, Any]], advice: str) -> EvalError:
    """The :class:`EvalError` refusing to resume ``out_dir`` with other settings: one readable line per
    change (``changes`` from :func:`resume_conflicts`), then ``advice`` (what the caller can do: the
    API and the CLI say it differently). ``details["changes"]`` holds the changed setting names."""

    def show(value: Any) -> str:
        return "not set" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    lines = "; ".join(f"{k}: {show(old)} → {show(new)}" for k, old, new in changes)
    return EvalError(
        f"{out_dir} holds a run with other settings ({lines}), so it cannot be resumed: {advice}.",
        changes=", ".join(k for k, _, _ in changes),
    )


@dataclass
class _Planned:
    """One benchmark of a run: its source, the samples selected, and the records already finished."""

    source: BenchmarkSource
    chosen: list[tuple[int, Sample]]
    done: dict[str, PredictionRecord]

    @property
    def todo(self) -> set[int]:
        return {i for i, s in self.chosen if s.id not in self.done}


def _groups(plan: list[_Planned]) -> list[list[_Planned]]:
    """Benchmarks read from the same file (SPA-VL-Eval's two tasks), in order of first appearance: each
    of their samples is checked once and scored for all of them."""
    groups: dict[Path, list[_Planned]] = {}
    for item in plan:
        groups.setdefault(item.source.path.resolve(), []).append(item)
    return list(groups.values())


def run_eval(
    guard: SupportsCheckBatch,
    benchmarks: Sequence[str | Path | BenchmarkSource],
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    image_folder: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    resume: bool = True,
    progress: bool = True,
    write_reports: bool = True,
    max_failure_rate: float = 0.5,
) -> EvalSummary:
    """Run ``guard`` over ``benchmarks`` and write a results folder at ``out_dir``; return the summary.

    ``benchmarks``: specs (``"ToxicChat"`` found in ``data_dir``, a path, ``"NAME=PATH"``, see
    :mod:`grvl_sdk.eval.sources`) or :class:`BenchmarkSource` objects. ``limit`` keeps the first N
    labelled samples of each. ``batch_size`` samples go to each ``check_batch`` call (default: the guard's
    ``batch_size``, else 16). ``max_new_tokens``: the generation cap (default: the guard's; the authors
    allowed 4096, which ``grvl eval run`` uses). Images are resized within the guard's own pixel bounds
    (build it with ``min_pixels``/``max_pixels``); they are recorded in ``run.json`` and the report.
    ``image_folder``: the GuardReasoner-VLTest image folder for the authors' VL test files (default: the
    test file's folder). With ``resume`` (default) finished samples in ``out_dir`` are kept and not
    generated again; a folder holding another model's run, or one with other settings, is refused;
    ``resume=False`` starts the listed benchmarks afresh.

    Failed checks (the guard could not run: backend or server errors, deadlines) are recorded and count
    as wrong — but a dead guard is not a terrible model: when every check of the first batch fails, or
    more than ``max_failure_rate`` of the checks so far (after two batches) failed, the run stops
    (``max_failure_rate=1`` never stops) with a :class:`~grvl_sdk.errors.BackendError` naming the count
    and the first error (finished batches are saved). The summary's ``meta`` holds
    ``failed_this_call`` and ``first_error``. Any other exception (including ``KeyboardInterrupt``)
    stops the run with every finished batch saved.
    """
    if not 0 <= max_failure_rate <= 1:
        raise EvalError(f"max_failure_rate must be in [0, 1], got {max_failure_rate}")
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be >= 1, got {limit}")
    sources = resolve_sources(benchmarks, data_dir=data_dir)
    for source in sources:
        if source.benchmark.task not in HARM_TASKS:
            raise EvalError(
                f"{source.benchmark.name} is a {source.benchmark.task} set; a GuardReasoner-VL guard "
                "judges harm only (score existing text-guard outputs with `grvl eval score`)"
            )
    size = batch_size or int(getattr(guard, "batch_size", 0) or 16)
    if size < 1:
        raise EvalError(f"batch_size must be >= 1, got {size}")
    out = Path(out_dir)
    (out / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)
    model = str(getattr(guard, "model_id", "") or type(guard).__name__)
    tokens = max_new_tokens or getattr(guard, "max_new_tokens", None)
    bounds = image_bounds(guard)
    settings: dict[str, Any] = {
        "model": model,
        "max_new_tokens": tokens,
        "min_pixels": bounds[0] if bounds else None,
        "max_pixels": bounds[1] if bounds else None,
        # The latency tier (GuardOptions.mode): runs of different tiers never mix in one folder.
        "mode": str(getattr(getattr(guard, "options", None), "mode", "think")),
    }
    if settings["mode"] == "auto":  # the band is part of the tier: another band is another run
        band = getattr(getattr(guard, "options", None), "auto_band", None)
        settings["auto_band"] = [float(v) for v in band] if band is not None else None

    run_file = out / RUN_FILE
    state: dict[str, Any] = read_json(run_file, RUN_FORMAT) if run_file.exists() else {}
    changes = resume_conflicts(out, settings, state)
    if changes:
        if resume:
            raise resume_error(out, changes, "pass another out_dir, or resume=False to start over there")
        state["benchmarks"] = {}  # another model's results are not this run's
    state.update(settings)
    state.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    state.setdefault("benchmarks", {})

    plan: list[_Planned] = []
    for source in sources:
        bench = source.benchmark
        samples = load_benchmark(source.path, bench, image_folder=image_folder)
        chosen, skipped = _selected(samples, bench, limit)
        path = predictions_path(out, bench.name)
        if not resume and path.exists():
            path.unlink()
        plan.append(_Planned(source, chosen, {r.id: r for r in finished_records(path)}))
        state["benchmarks"][bench.name] = {
            "task": bench.task,
            "modality": bench.modality,
            "registered": bench.registered,
            "path": str(source.path),
            "skipped_no_gold": skipped,
            "ids": [s.id for _, s in chosen],
        }
    write_json(run_file, state, RUN_FORMAT)

    groups = _groups(plan)
    total = sum(len({i for item in group for i, _ in item.chosen}) for group in groups)
    pending = [sorted({i: s for item in group for i, s in item.chosen if i in item.todo}.items()) for group in groups]
    bar = Progress(progress, total, total - sum(len(todo) for todo in pending))
    started = time.perf_counter()
    generated = failed = 0
    first_error: str | None = None
    with quiet_verdict_logs(), contextlib.closing(bar), contextlib.ExitStack() as files:
        for group, todo in zip(groups, pending, strict=True):
            bar.describe(" + ".join(item.source.benchmark.name for item in group))
            wanted = [item.todo for item in group]
            sinks = [
                files.enter_context(predictions_path(out, it.source.benchmark.name).open("a", encoding="utf-8"))
                for it in group
            ]
            for chunk in chunks(todo, size):
                outcomes = _check(guard, chunk, max_new_tokens)
                for item, want, sink in zip(group, wanted, sinks, strict=True):
                    records = [
                        _outcome_record(sample, index, item.source.benchmark, outcome, batch)
                        for (index, sample), (outcome, batch) in zip(chunk, outcomes, strict=True)
                        if index in want
                    ]
                    sink.write("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
                    sink.flush()
                    os.fsync(sink.fileno())
                    for record in records:
                        item.done[record.id] = record
                generated += len(chunk)
                errors = [_failure(outcome) for outcome, _ in outcomes]
                failed += sum(error is not None for error in errors)
                first_error = first_error or next((e for e in errors if e is not None), None)
                bar.update(len(chunk), failed)
                _stop_when_failing(failed, generated, len(chunk), size, max_failure_rate, first_error)

    scored = {
        item.source.benchmark.name: score_records(
            [item.done[str(s.id)] for _, s in item.chosen], item.source.benchmark, parse="recorded"
        )
        for item in plan
    }
    # Benchmarks finished in this folder by earlier calls belong to the same results.
    for name in state["benchmarks"]:
        if name not in scored:
            with contextlib.suppress(EvalError):
                scored[name] = load_run(out, benchmarks=[name]).results[0]
    results = [scored[name] for name in state["benchmarks"] if name in scored]
    meta = {
        "max_new_tokens": tokens,
        "min_pixels": settings["min_pixels"],
        "max_pixels": settings["max_pixels"],
        "mode": settings["mode"],
        "auto_band": settings.get("auto_band"),
        "batch_size": size,
        "limit": limit,
        "generated_this_call": generated,
        "failed_this_call": failed,
        "first_error": first_error,
        "elapsed_s_this_call": round(time.perf_counter() - started, 3),
        "out_dir": str(out),
    }
    summary = EvalSummary(model=model, results=results, parse="recorded", meta=meta)
    if write_reports:
        from grvl_sdk.eval.report import write_reports as _write

        _write(summary, out)
    return summary


def load_run(
    out_dir: str | Path,
    *,
    parse: ParseMode = "recorded",
    unparseable: UnparseablePolicy = "wrong",
    benchmarks: Sequence[str] | None = None,
) -> EvalSummary:
    """Re-score a results folder from its predictions (no generation), optionally with another parser."""
    out = Path(out_dir)
    state = read_json(out / RUN_FILE, RUN_FORMAT)
    results = []
    for name, info in (state.get("benchmarks") or {}).items():
        if benchmarks is not None and name not in benchmarks:
            continue
        if info.get("registered", True):
            bench = get_benchmark(name)
        else:
            bench = Benchmark.custom(name, info["task"], info.get("modality", "text"))
        path = predictions_path(out, name)
        records = load_predictions(path, bench) if path.exists() else []
        ids = info.get("ids")
        if ids is not None:
            by_id = {r.id: r for r in records}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise EvalError(
                    f"{name}: {len(missing)} of {len(ids)} samples have no prediction in {out} "
                    "(an unfinished run: rerun it to resume)"
                )
            records = [by_id[i] for i in ids]
        results.append(score_records(records, bench, parse=parse, unparseable=unparseable))
    if not results:
        raise EvalError(f"{out} holds no benchmark results")
    meta = {
        "out_dir": str(out),
        **{k: state.get(k) for k in ("max_new_tokens", "min_pixels", "max_pixels", "mode", "auto_band")},
    }
    return EvalSummary(
        model=str(state.get("model", "")), results=results, parse=parse, unparseable=unparseable, meta=meta
    )


def is_run_dir(path: str | Path) -> bool:
    """True for a folder written by :func:`run_eval`."""
    return (Path(path) / RUN_FILE).is_file()
