"""``run_eval``: run a guard over benchmark files, resumably, and score it.

A results folder holds::

    run.json                       model, settings, and per benchmark its file and selected sample ids
    predictions/<benchmark>.jsonl  one PredictionRecord per line, appended batch by batch
    results.json / results.md / results.csv / f1.png   (see grvl_sdk.eval.report)

Predictions are flushed after every batch, so an interrupted run resumes where it stopped: samples
with a prediction (labelled or unparseable) are not generated again; samples whose check *failed*
(the guard raised, e.g. a server error) are retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from grvl_sdk.errors import EvalError, GRVLError, InputError
from grvl_sdk.eval.formats import PredictionRecord, Sample, load_benchmark, load_predictions
from grvl_sdk.eval.registry import HARM_TASKS, Benchmark, get_benchmark
from grvl_sdk.eval.scoring import EvalSummary, ParseMode, UnparseablePolicy, score_records, sdk_label
from grvl_sdk.eval.sources import BenchmarkSource, resolve_sources
from grvl_sdk.verdict import ErrorInfo, Verdict

__all__ = ["SupportsCheckBatch", "is_run_dir", "load_run", "predictions_path", "run_eval"]

RUN_FILE = "run.json"
PREDICTIONS_DIR = "predictions"


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
        id=sample.id,
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
    )
    if error is not None and error.code != "unparseable_output":
        record.status = "failed"
        return record
    label = None if error is not None else (verdict.request_label if task == "request" else verdict.response_label)
    if label is None and verdict.raw_output:
        # e.g. a request set whose output lacks only the response label: the request label still counts.
        label = sdk_label(verdict.raw_output, task)
    record.predicted = label
    record.status = "ok" if label is not None else "unparseable"
    return record


def _failed(sample: Sample, index: int, bench: Benchmark, exc: BaseException) -> PredictionRecord:
    return PredictionRecord(
        id=sample.id,
        gold=sample.gold(bench.task) or "",
        benchmark=bench.name,
        task=bench.task,
        index=index,
        status="failed",
        error=ErrorInfo.from_exception(exc).model_dump(),
    )


def _check(
    guard: SupportsCheckBatch,
    chunk: Sequence[tuple[int, Sample]],
    bench: Benchmark,
    max_new_tokens: int | None,
) -> list[PredictionRecord]:
    """Check a batch; a bad input fails alone, a backend error fails the batch. Other errors propagate."""
    try:
        verdicts = guard.check_batch(
            [s.check_input() for _, s in chunk], max_new_tokens=max_new_tokens, batch_size=len(chunk)
        )
    except InputError as exc:
        if len(chunk) == 1:
            return [_failed(chunk[0][1], chunk[0][0], bench, exc)]
        return [rec for item in chunk for rec in _check(guard, [item], bench, max_new_tokens)]
    except GRVLError as exc:
        return [_failed(sample, index, bench, exc) for index, sample in chunk]
    if len(verdicts) != len(chunk):
        raise EvalError(f"the guard returned {len(verdicts)} verdicts for {len(chunk)} inputs")
    return [_record(s, i, bench, v, len(chunk)) for (i, s), v in zip(chunk, verdicts, strict=True)]


# -- the run folder ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalError(f"{path} is not a JSON object")
    return data


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finished_records(path: Path) -> list[PredictionRecord]:
    """Records of an earlier run worth keeping (labelled or unparseable); rewrites the file without the
    rest (failed checks, a line cut by an interruption)."""
    if not path.exists():
        return []
    keep: list[PredictionRecord] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            record = PredictionRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, GRVLError, TypeError, AttributeError):
            dropped += 1
            continue
        if record.status in ("ok", "unparseable"):
            keep.append(record)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, path)
    return keep


class _Progress:
    """A tqdm bar with ETA over all samples of the run, or nothing."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self._bar: Any = None
        if enabled and total > initial:
            from grvl_sdk._lazy import require

            tqdm = require("tqdm", extra="eval").tqdm
            self._bar = tqdm(total=total, initial=initial, unit="sample", dynamic_ncols=True, file=sys.stderr)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def update(self, n: int, failed: int) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if failed:
                self._bar.set_postfix(failed=failed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _DropVerdictRecords(logging.Filter):
    """Drops the guard's per-verdict log lines (they carry ``grvl_decision``); the predictions file has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "grvl_decision")


@contextlib.contextmanager
def _quiet_verdict_logs() -> Iterator[None]:
    logger = logging.getLogger("grvl_sdk")
    dropper = _DropVerdictRecords()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _selected(samples: list[Sample], bench: Benchmark, limit: int | None) -> tuple[list[tuple[int, Sample]], int]:
    """(index, sample) pairs with a gold label for the task, the first ``limit`` of them; and the count
    of samples without one."""
    labelled = [(i, s) for i, s in enumerate(samples) if s.gold(bench.task) is not None]
    skipped = len(samples) - len(labelled)
    return (labelled[:limit] if limit is not None else labelled), skipped


def run_eval(
    guard: SupportsCheckBatch,
    benchmarks: Sequence[str | Path | BenchmarkSource],
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    resume: bool = True,
    progress: bool = True,
    write_reports: bool = True,
) -> EvalSummary:
    """Run ``guard`` over ``benchmarks`` and write a results folder at ``out_dir``; return the summary.

    ``benchmarks``: specs (``"ToxicChat"`` found in ``data_dir``, a path, ``"NAME=PATH"``, see
    :mod:`grvl_sdk.eval.sources`) or :class:`BenchmarkSource` objects. ``limit`` keeps the first N
    labelled samples of each. ``batch_size`` samples go to each ``check_batch`` call (default: the guard's
    ``batch_size``, else 16). With ``resume`` (default) finished samples in ``out_dir`` are kept and not
    generated again; ``resume=False`` starts the listed benchmarks afresh.

    Failed checks (the guard raised a :class:`~grvl_sdk.errors.GRVLError`) are recorded and count as wrong;
    any other exception (including ``KeyboardInterrupt``) stops the run with every finished batch saved.
    """
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
    settings = {"model": model, "max_new_tokens": tokens}

    run_file = out / RUN_FILE
    state: dict[str, Any] = _read_json(run_file) if run_file.exists() else {}
    before = {k: state.get(k) for k in settings}
    if state and before != settings:
        if resume:
            raise EvalError(
                f"{out} holds a run with {before}, not {settings}: use another output folder, or resume=False "
                "(--no-resume) to start over"
            )
        state["benchmarks"] = {}  # another model's results are not this run's
    state.update(settings)
    state.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    state.setdefault("benchmarks", {})

    plan: list[tuple[BenchmarkSource, list[tuple[int, Sample]], dict[str, PredictionRecord]]] = []
    for source in sources:
        bench = source.benchmark
        chosen, skipped = _selected(load_benchmark(source.path, bench), bench, limit)
        path = predictions_path(out, bench.name)
        if not resume and path.exists():
            path.unlink()
        done = {r.id: r for r in _finished_records(path)}
        plan.append((source, chosen, done))
        state["benchmarks"][bench.name] = {
            "task": bench.task,
            "modality": bench.modality,
            "registered": bench.registered,
            "path": str(source.path),
            "skipped_no_gold": skipped,
            "ids": [s.id for _, s in chosen],
        }
    _write_json(run_file, state)

    total = sum(len(chosen) for _, chosen, _ in plan)
    initial = sum(sum(1 for _, s in chosen if s.id in done) for _, chosen, done in plan)
    bar = _Progress(progress, total, initial)
    started = time.perf_counter()
    generated = failed = 0
    with _quiet_verdict_logs(), contextlib.closing(bar):
        for source, chosen, done in plan:
            bench = source.benchmark
            bar.describe(bench.name)
            todo = [(i, s) for i, s in chosen if s.id not in done]
            with predictions_path(out, bench.name).open("a", encoding="utf-8") as sink:
                for chunk in _chunks(todo, size):
                    records = _check(guard, chunk, bench, max_new_tokens)
                    sink.write("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
                    sink.flush()
                    os.fsync(sink.fileno())
                    for record in records:
                        done[record.id] = record
                    generated += len(records)
                    failed += sum(r.status == "failed" for r in records)
                    bar.update(len(records), failed)

    scored = {
        source.benchmark.name: score_records([done[s.id] for _, s in chosen], source.benchmark, parse="recorded")
        for source, chosen, done in plan
    }
    # Benchmarks finished in this folder by earlier calls belong to the same results.
    for name in state["benchmarks"]:
        if name not in scored:
            with contextlib.suppress(EvalError):
                scored[name] = load_run(out, benchmarks=[name]).results[0]
    results = [scored[name] for name in state["benchmarks"] if name in scored]
    meta = {
        "max_new_tokens": tokens,
        "batch_size": size,
        "limit": limit,
        "generated_this_call": generated,
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
    state = _read_json(out / RUN_FILE)
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
    meta = {"out_dir": str(out), "max_new_tokens": state.get("max_new_tokens")}
    return EvalSummary(
        model=str(state.get("model", "")), results=results, parse=parse, unparseable=unparseable, meta=meta
    )


def is_run_dir(path: str | Path) -> bool:
    """True for a folder written by :func:`run_eval`."""
    return (Path(path) / RUN_FILE).is_file()
