"""``grvl eval``: run a guard over benchmarks, re-score saved outputs, and compare results.

``grvl eval run``     run a guard over benchmark files into a results folder (resumable)
``grvl eval score``   re-score prediction files (grvl-sdk runs or GuardReasoner outputs) without generating
``grvl eval report``  re-write a results folder's reports, optionally with comparisons
``grvl eval compare`` print results folders and published numbers side by side
``grvl eval list``    the registered benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from grvl_sdk._constants import (
    DEFAULT_MODEL,
    EVAL_MAX_NEW_TOKENS,
    EVAL_MAX_PIXELS,
    EVAL_MIN_PIXELS,
    MODEL_ENV_VAR,
)
from grvl_sdk.errors import BackendError, EvalError, GRVLError, InputError, MissingDependencyError, ModelLoadError

__all__ = ["register"]

EXIT_OK = 0
EXIT_INPUT = 2
EXIT_LOAD = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130
DATA_ENV_VAR = "GRVL_EVAL_DATA"

_SPEC_HELP = (
    "benchmarks: a registered NAME found in --data-dir (e.g. ToxicChat), a file or folder named after "
    "benchmarks, NAME=PATH, or NAME:TASK[:MODALITY]=PATH for your own data"
)
_COMPARE_HELP = "a results folder, a results.json, 'published' or 'published:MODEL' (repeatable)"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a guard on benchmarks (the paper's F1 table), re-score outputs, compare",
        description="Evaluate guards the way the GuardReasoner-VL paper did: F1 with harmful as the positive "
        "class (x100), sample-weighted averages by task and modality.",
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _usage(parser))

    run = sub.add_parser("run", help="run a guard over benchmark files into a results folder (resumable)")
    run.add_argument("benchmarks", nargs="+", metavar="BENCHMARK", help=_SPEC_HELP)
    run.add_argument(
        "--model",
        help=f"hub id or local folder (default: ${MODEL_ENV_VAR} or {DEFAULT_MODEL}); with --server, the served name",
    )
    run.add_argument("--server", metavar="URL", help="evaluate a guard server (OpenAI-compatible, e.g. vLLM) instead")
    run.add_argument("--out", required=True, metavar="DIR", help="results folder (resumed if it exists)")
    run.add_argument("--data-dir", default=os.environ.get(DATA_ENV_VAR), help=f"where to find NAMEs (${DATA_ENV_VAR})")
    run.add_argument("--limit", type=int, help="only the first N labelled samples of each benchmark")
    run.add_argument("--batch-size", type=int, help="samples per check_batch call (default: the guard's, 16)")
    run.add_argument(
        "--max-new-tokens",
        type=int,
        default=EVAL_MAX_NEW_TOKENS,
        help=f"generation cap (default {EVAL_MAX_NEW_TOKENS}, the authors' setting; a Guard's own default is 1024)",
    )
    run.add_argument(
        "--max-failure-rate",
        type=float,
        default=0.5,
        help="stop (exit 4) when more than this share of checks fail to run (default 0.5; all of the first "
        "batch failing always stops)",
    )
    run.add_argument("--no-resume", action="store_true", help="start the listed benchmarks afresh")
    run.add_argument(
        "--quantization",
        choices=["auto", "none", "4bit", "8bit"],
        default="none",
        help="bitsandbytes quantisation (default none: the paper's numbers are unquantised; auto: 4bit on CUDA)",
    )
    run.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    run.add_argument("--dtype", help="bfloat16, float16 or float32")
    run.add_argument(
        "--max-pixels",
        type=int,
        default=EVAL_MAX_PIXELS,
        help=f"image budget, pixels (default {EVAL_MAX_PIXELS:,} = 16384*28*28, the authors' setting: up to 16,384 "
        "vision tokens per image; a Guard's own default is 1280*28*28)",
    )
    run.add_argument(
        "--min-pixels",
        type=int,
        default=EVAL_MIN_PIXELS,
        help=f"smallest image size, pixels (default {EVAL_MIN_PIXELS:,} = 4*28*28, the authors' setting)",
    )
    run.add_argument(
        "--vl-images",
        metavar="DIR",
        help="the GuardReasoner-VLTest image folder for HarmImageTest/SPA_VL_Eval (default: the test file's folder)",
    )
    run.add_argument(
        "--mode",
        choices=["think", "fast", "auto"],
        default="think",
        help="latency tier: think (reasoning, the paper's protocol; default), fast (the verdict without "
        "reasoning) or auto (fast, reasoning when uncertain); compare tiers with --compare on their folders",
    )
    run.add_argument(
        "--auto-band",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="with --mode auto: reason when a fast score lies in [LOW, HIGH] (0 <= LOW <= HIGH <= 1; default "
        "the guard's, 0.2 0.8); `grvl eval calibrate` suggests one",
    )
    run.add_argument("--compare", action="append", default=[], metavar="X", help=_COMPARE_HELP)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the results as JSON")
    run.set_defaults(func=_run)

    score = sub.add_parser("score", help="re-score prediction files without generating")
    score.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a results folder of `grvl eval run`, prediction files (named after benchmarks, or NAME=PATH), "
        "or folders of them (e.g. GuardReasoner's prompt/label/predict JSONL)",
    )
    score.add_argument(
        "--parse",
        choices=["sdk", "official-text", "official-vl", "recorded"],
        help="sdk: grvl-sdk's parser (default for prediction files); official-text: the text GuardReasoner's "
        "evaluation (first label in the last 300 characters); official-vl: the GuardReasoner-VL harness (first "
        "label anywhere; an unparseable SPA-VL response counts as unharmful); recorded: the labels stored with "
        "the predictions (default for results folders; the VL harness's predict/predict_res)",
    )
    score.add_argument(
        "--unparseable",
        choices=["wrong", "exclude"],
        default="wrong",
        help="wrong (default): an unparseable/failed prediction counts once as wrong; exclude: leave it out",
    )
    score.add_argument("--name", help="model name for the report (default: the folder name)")
    score.add_argument("--out", metavar="DIR", help="also write results.json/.md/.csv and f1.png here")
    score.add_argument("--compare", action="append", default=[], metavar="X", help=_COMPARE_HELP)
    score.add_argument("--json", action="store_true", help='print {"results": [...], "weighted_f1": ...}')
    score.set_defaults(func=_score)

    calibrate = sub.add_parser(
        "calibrate",
        help="pick mode='auto''s band from a fast and a think results folder of the same benchmarks",
        description="Simulates mode='auto' for every band [0.5-w, 0.5+w] from the predictions of a --mode fast "
        "and a --mode think run (no model is run) and picks the narrowest band whose F1 is within --max-f1-drop "
        "points of the think run's.",
    )
    calibrate.add_argument("fast", metavar="FAST_RESULTS", help="results folder of `grvl eval run --mode fast`")
    calibrate.add_argument("think", metavar="THINK_RESULTS", help="results folder of `grvl eval run --mode think`")
    calibrate.add_argument("--max-f1-drop", type=float, default=1.0, help="F1 points below think allowed (default 1)")
    calibrate.add_argument("--step", type=float, default=0.01, help="band width step (default 0.01)")
    calibrate.add_argument("--json", action="store_true", help="print the choice and every band tried as JSON")
    calibrate.set_defaults(func=_calibrate)

    report = sub.add_parser("report", help="re-write a results folder's reports (markdown printed)")
    report.add_argument("results", metavar="RESULTS", help="a results folder (or its results.json)")
    report.add_argument("--compare", action="append", default=[], metavar="X", help=_COMPARE_HELP)
    report.add_argument("--out", metavar="DIR", help="where to write (default: the results folder)")
    report.set_defaults(func=_report)

    compare = sub.add_parser(
        "compare",
        help="print results side by side in the paper's layout, and each results folder's mode, output tokens, "
        "latency and (auto) escalations",
    )
    compare.add_argument("items", nargs="+", metavar="X", help=_COMPARE_HELP)
    compare.add_argument("--png", metavar="FILE", help="also draw the F1 bar chart (first item is the main run)")
    compare.set_defaults(func=_compare)

    lister = sub.add_parser("list", help="the registered benchmarks")
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(func=_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INPUT


def _fail(message: str, code: int = EXIT_INPUT) -> int:
    print(f"grvl eval: error: {message}", file=sys.stderr)
    return code


def _quantization(choice: str) -> str | None:
    if choice != "auto":
        return None if choice == "none" else choice
    try:
        import torch
    except ImportError:
        return None
    return "4bit" if torch.cuda.is_available() else None


def _load_guard(args: argparse.Namespace) -> Any:
    from grvl_sdk.guard import Guard

    if args.server:
        from_server = getattr(Guard, "from_server", None)
        if from_server is None:
            raise InputError("this grvl-sdk has no remote backend (Guard.from_server); use --model")
        kwargs: dict[str, Any] = {
            "max_new_tokens": args.max_new_tokens,
            "min_pixels": args.min_pixels,
            "max_pixels": args.max_pixels,
            "mode": args.mode,
        }
        if args.auto_band is not None:
            kwargs["auto_band"] = tuple(args.auto_band)
        if args.model:
            kwargs["model"] = args.model
        return from_server(args.server, **kwargs)
    model = args.model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
    quantization = _quantization(args.quantization)
    band: dict[str, Any] = {} if args.auto_band is None else {"auto_band": tuple(args.auto_band)}
    print(f"Loading guard model {model} (quantization: {quantization or 'none'})...", file=sys.stderr, flush=True)
    return Guard.from_pretrained(
        model,
        quantization=quantization,
        device=args.device,
        dtype=args.dtype,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_new_tokens=args.max_new_tokens,
        mode=args.mode,
        **band,
    )


def _compare_rows(items: list[str]) -> list[Any]:
    from grvl_sdk.eval.report import load_compare

    return [row for item in items for row in load_compare(item)]


def _score_json(summary: Any) -> dict[str, Any]:
    keys = ("name", "task", "modality", "n", "f1", "precision", "recall", "unparseable", "failed", "excluded")
    return {
        "model": summary.model,
        "parse": summary.parse,
        "unparseable_policy": summary.unparseable,
        "results": [{k: getattr(r, k) for k in keys} for r in summary.results],
        "averages": summary.averages(),
        "weighted_f1": summary.weighted_f1,
    }


def _resume_refusal(args: argparse.Namespace, settings: dict[str, Any]) -> str | None:
    """Why ``--out`` cannot be resumed with these settings (with the CLI's advice), or ``None``."""
    from grvl_sdk.eval.runner import resume_conflicts, resume_error

    if args.no_resume:
        return None
    try:
        changes = resume_conflicts(args.out, settings)
    except GRVLError as exc:
        return exc.message
    if not changes:
        return None
    advice = "give another --out folder, or add --no-resume to start over in this one (its results are dropped)"
    return resume_error(args.out, changes, advice).message


def _auto_band_error(mode: str, band: list[float] | None) -> str | None:
    """Why ``--auto-band`` cannot be used with these flags, or ``None``."""
    if band is None:
        return None
    if mode != "auto":
        return f"--auto-band applies to --mode auto only (got --mode {mode})"
    low, high = band
    if not 0.0 <= low <= high <= 1.0:  # NaN fails too
        return f"--auto-band needs 0 <= LOW <= HIGH <= 1, got {low:g} {high:g}"
    return None


def _run(args: argparse.Namespace) -> int:
    from grvl_sdk.eval.formats import load_benchmark
    from grvl_sdk.eval.report import settings_line, write_reports
    from grvl_sdk.eval.runner import run_eval
    from grvl_sdk.eval.sources import resolve_sources
    from grvl_sdk.options import GuardOptions

    try:
        sources = resolve_sources(args.benchmarks, data_dir=args.data_dir)
        for source in sources:  # unreadable data is reported before a model is loaded
            load_benchmark(source.path, source.benchmark, image_folder=args.vl_images)
        compare = _compare_rows(args.compare)
    except GRVLError as exc:
        return _fail(exc.message)
    if args.max_new_tokens < 1 or args.min_pixels < 1 or args.max_pixels < args.min_pixels:
        return _fail("need --max-new-tokens >= 1 and 1 <= --min-pixels <= --max-pixels")
    band_error = _auto_band_error(args.mode, args.auto_band)
    if band_error:
        return _fail(band_error)
    meta: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
        "mode": args.mode,
    }
    if args.mode == "auto":  # the band the run answers with: the flag's, else the guard's default
        meta["auto_band"] = list(args.auto_band or GuardOptions().auto_band)
    model = None if args.server else args.model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
    refusal = _resume_refusal(args, {"model": model, **meta} if model else meta)  # before loading anything
    if refusal:
        return _fail(refusal)
    print(settings_line(meta), file=sys.stderr, flush=True)
    try:
        guard = _load_guard(args)
        if args.server:  # a dead server is no terrible model: say so before running anything
            guard.backend.list_models()
            refusal = _resume_refusal(args, {"model": guard.model_id, **meta})
            if refusal:
                guard.close()
                return _fail(refusal)
    except (ModelLoadError, MissingDependencyError) as exc:
        return _fail(exc.message, EXIT_LOAD)
    except GRVLError as exc:
        return _fail(exc.message, EXIT_BACKEND if isinstance(exc, BackendError) else EXIT_INPUT)
    try:
        summary = run_eval(
            guard,
            sources,
            args.out,
            image_folder=args.vl_images,
            limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            resume=not args.no_resume,
            progress=not args.no_progress,
            write_reports=False,
            max_failure_rate=args.max_failure_rate,
        )
    except KeyboardInterrupt:
        print(
            f"\ngrvl eval: interrupted; finished samples are saved in {args.out}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except GRVLError as exc:
        return _fail(exc.message, EXIT_BACKEND if isinstance(exc, BackendError) else EXIT_INPUT)
    finally:
        close = getattr(guard, "close", None)
        if close is not None:
            close()
    written = write_reports(summary, args.out, compare)
    _print_summary(summary, args.json, compare)
    failed, first = summary.meta.get("failed_this_call") or 0, summary.meta.get("first_error")
    print(f"Failed checks: {failed}" + (f"; first error: {first}" if first else ""), file=sys.stderr)
    print(f"Results: {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return EXIT_OK


def _print_summary(summary: Any, as_json: bool, compare: list[Any]) -> None:
    from grvl_sdk.eval.report import render_markdown

    if as_json:
        print(json.dumps(_score_json(summary), indent=2))
    else:
        print(render_markdown(summary, compare))


def _calibrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from grvl_sdk.eval.calibrate import calibrate_band

    try:
        result = calibrate_band(args.fast, args.think, max_f1_drop=args.max_f1_drop, step=args.step)
    except GRVLError as exc:
        return _fail(exc.message)
    chosen = result.chosen
    if args.json:
        print(json.dumps({**asdict(result), "tried": [asdict(b) for b in result.tried]}))
        return EXIT_OK

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    # Every row is what answering the shared samples that way costs: the fast run alone, the chosen auto
    # band (fast pass, plus think where escalated), the think run alone (no fast pass before it).
    print("| run | band | F1 | answered by reasoning | ms/sample |\n|---|---|---|---|---|")
    print(f"| fast only (no escalation) | - | {result.fast.f1:.1f} | 0.0% | {ms(result.fast.mean_latency_ms)} |")
    print(
        f"| auto (chosen) | [{chosen.low:.2f}, {chosen.high:.2f}] | {chosen.f1:.1f} | "
        f"{100 * chosen.escalated:.1f}% | {ms(chosen.mean_latency_ms)} |"
    )
    print(f"| think only | - | {result.think.f1:.1f} | 100.0% | {ms(result.think.mean_latency_ms)} |")
    print(f"\nGuard(..., mode='auto', auto_band=({chosen.low}, {chosen.high}))  "
          f"# F1 within {args.max_f1_drop} point(s) of think")  # fmt: skip
    print(f"Measure it: {result.command}")
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    from grvl_sdk.eval.report import write_reports

    try:
        summary = _score_inputs(args.inputs, args.parse, args.unparseable, args.name)
        compare = _compare_rows(args.compare)
    except GRVLError as exc:
        return _fail(exc.message)
    if args.out:
        write_reports(summary, args.out, compare)
    _print_summary(summary, args.json, compare)
    return EXIT_OK


def _score_inputs(inputs: list[str], parse: str | None, unparseable: str, name: str | None) -> Any:
    from grvl_sdk.eval.predictions import load_predictions
    from grvl_sdk.eval.registry import HARM_TASKS, PREDICTIONS_FILE
    from grvl_sdk.eval.runner import is_run_dir, load_run
    from grvl_sdk.eval.scoring import EvalSummary, score_records
    from grvl_sdk.eval.sources import parse_spec

    results = []
    models = []
    for item in inputs:
        if is_run_dir(item):
            run = load_run(item, parse=parse or "recorded", unparseable=unparseable)  # type: ignore[arg-type]
            results.extend(run.results)
            models.append(run.model)
            continue
        for source in parse_spec(item):
            records = load_predictions(source.path, source.benchmark)
            mode = parse or "sdk"
            if mode == "sdk" and source.benchmark.task not in HARM_TASKS:
                print(
                    f"grvl eval: {source.benchmark.name}: {source.benchmark.task} labels read with the "
                    "official-text parse (the SDK parser reads harm labels only)",
                    file=sys.stderr,
                )
                mode = "official-text"
            results.append(score_records(records, source.benchmark, parse=mode, unparseable=unparseable))  # type: ignore[arg-type]
            authors_layout = source.path.name == PREDICTIONS_FILE  # {model}/{Benchmark}/generated_predictions.jsonl
            models.append(source.path.parent.parent.name if authors_layout else source.path.parent.name)
    names = [r.name for r in results]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalError(f"benchmark(s) scored twice: {dupes}")
    model = name or ", ".join(dict.fromkeys(m for m in models if m))
    meta = {"inputs": [str(Path(i)) for i in inputs]}
    return EvalSummary(model=model, results=results, parse=parse or "auto", unparseable=unparseable, meta=meta)


def _report(args: argparse.Namespace) -> int:
    from grvl_sdk.eval.report import load_summary, render_markdown, write_reports

    try:
        summary = load_summary(args.results)
        compare = _compare_rows(args.compare)
    except GRVLError as exc:
        return _fail(exc.message)
    out = args.out or (args.results if Path(args.results).is_dir() else str(Path(args.results).parent))
    written = write_reports(summary, out, compare)
    print(render_markdown(summary, compare))
    print(f"Results: {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from grvl_sdk.eval.report import TASK_TITLES, load_summary, paper_table, plot_f1, sources_section

    try:
        rows = _compare_rows(args.items)
    except GRVLError as exc:
        return _fail(exc.message)
    for task, title in TASK_TITLES.items():
        print(f"## {title}\n\n{paper_table(rows, task)}\n")
    folders = [item for item in args.items if not item.startswith("published")]
    if folders:
        from grvl_sdk.eval.tiers_table import cost_table

        try:
            table = cost_table(folders)
        except GRVLError as exc:
            return _fail(exc.message)
        print(f"## Cost per run (mode, output tokens, latency)\n\n{table}\n")
    sources = sources_section(rows)
    if sources:
        print("## Sources\n\n" + "\n".join(sources) + "\n")
    if args.png:
        first = args.items[0]
        if first.startswith("published"):
            return _fail("--png needs a results folder as the first item")
        try:
            plot_f1(load_summary(first), args.png, rows[1:])
        except GRVLError as exc:
            return _fail(exc.message)
        print(f"Chart: {args.png}", file=sys.stderr)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from grvl_sdk.eval.registry import BENCHMARKS

    if args.json:
        keys = ("name", "task", "modality", "size", "files", "in_paper")
        print(json.dumps([{k: getattr(b, k) for k in keys} for b in BENCHMARKS], indent=2))
        return EXIT_OK
    print(f"{'benchmark':24s} {'task':9s} {'modality':11s} {'samples':>7s}  files")
    for b in BENCHMARKS:
        size = f"{b.size:,}" if b.size else "-"
        note = "" if b.in_paper else "  (not in the paper's table)"
        print(f"{b.name:24s} {b.task:9s} {b.modality:11s} {size:>7s}  {', '.join(b.files) or '-'}{note}")
    return EXIT_OK
