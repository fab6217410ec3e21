"""``grvl train``: fine-tune your own guard.

``grvl train summary``     load and validate data, print counts per modality and label
``grvl train synthesize``  add teacher reasoning to labelled data (OpenAI-compatible teacher; resumable)
``grvl train sft``         reasoning SFT from a YAML config (single process, or under ``accelerate launch``)
``grvl train init``        write a starter config and the accelerate (DeepSpeed ZeRO-3 / FSDP / DDP) configs
``grvl train merge``       merge a LoRA adapter into its base model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from grvl_sdk.errors import GRVLError, MissingDependencyError, ModelLoadError

__all__ = ["register"]

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # synthesize: some samples failed on HTTP errors (re-run to retry them)
EXIT_INPUT = 2
EXIT_LOAD = 3
EXIT_INTERRUPTED = 130

_CONFIGS = Path(__file__).resolve().parent.parent / "trainer" / "configs"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a guard: validate data, synthesize reasoning, reasoning SFT",
        description="Train your own GuardReasoner-VL guard (stage 1 of the recipe: reasoning SFT).",
    )
    sub = parser.add_subparsers(dest="train_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _usage(parser))

    summary = sub.add_parser("summary", help="load and validate data; print counts per modality and label")
    _data_arguments(summary)
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.set_defaults(func=_summary)

    synth = sub.add_parser(
        "synthesize",
        help="ask an OpenAI-compatible teacher for reasoning consistent with the gold labels",
        description="Writes OUT/records.jsonl (GuardReasoner-VLTrain records for `grvl train sft`) and "
        "OUT/dropped.jsonl; re-running the same command resumes without redoing finished samples. Exit codes: "
        "0 all samples finished, 1 some failed on HTTP errors (re-run to retry), 2 bad input.",
    )
    _data_arguments(synth)
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it exists)")
    synth.add_argument("--teacher-url", required=True, metavar="URL", help="e.g. http://localhost:8000/v1")
    synth.add_argument("--teacher-model", required=True, metavar="NAME", help="the served model name")
    synth.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY)")
    synth.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    synth.add_argument("--max-attempts", type=int, default=3, help="answers asked per sample before dropping it")
    synth.add_argument("--max-http-retries", type=int, default=3, help="retries of a failed request (5xx, 429...)")
    synth.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    synth.add_argument("--temperature", type=float, default=0.7)
    synth.add_argument("--max-tokens", type=int, default=2048)
    synth.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    synth.add_argument("--retry-dropped", action="store_true", help="ask again for samples dropped before")
    synth.add_argument("--no-progress", action="store_true")
    synth.set_defaults(func=_synthesize)

    sft = sub.add_parser(
        "sft",
        help="reasoning SFT from a YAML config",
        description="Reasoning SFT (full, LoRA or QLoRA). Multi-GPU: accelerate launch --config_file "
        "accelerate/deepspeed_zero3.yaml -m grvl_sdk.cli train sft --config rsft.yaml",
    )
    sft.add_argument("--config", required=True, metavar="YAML", help="RSFTConfig settings (see `grvl train init`)")
    sft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (YAML value)")
    sft.add_argument("--output-dir", help="override output_dir")
    sft.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    sft.add_argument("--no-progress", action="store_true")
    sft.set_defaults(func=_sft)

    init = sub.add_parser("init", help="write a starter rsft.yaml and the accelerate configs into a folder")
    init.add_argument("dir", help="folder to write into")
    init.add_argument("--preset", default="3b", help="3b or 7b (default 3b)")
    init.add_argument("--method", choices=["full", "lora", "qlora"], default="full")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=_init)

    merge = sub.add_parser("merge", help="merge a LoRA adapter into its base and save a full guard checkpoint")
    merge.add_argument("adapter", help="adapter folder (adapter_config.json)")
    merge.add_argument("out", help="output folder")
    merge.add_argument("--base-model", help="default: the adapter's base_model_name_or_path")
    merge.add_argument("--dtype", help="bfloat16, float16 or float32 (default: the base's)")
    merge.set_defaults(func=_merge)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA", help="data files or folders (format detected)")
    parser.add_argument("--format", choices=["vltrain", "benchmark", "jsonl", "csv"], help="force the format")
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="plain tables: the column holding ROLE (request, response, images, request_label, "
        "response_label, reasoning, id); repeatable",
    )
    parser.add_argument("--image-root", help="folder relative image paths start from (default: the file's)")
    parser.add_argument("--task", choices=["auto", "request", "response"], help="benchmarks: what a bare label means")
    parser.add_argument("--limit", type=int, help="only the first N samples of each source")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed records (counted) instead of failing")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_INPUT


def _fail(message: str, code: int = EXIT_INPUT) -> int:
    print(f"grvl train: error: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace) -> tuple[list[Any], int]:
    from grvl_sdk.errors import DataError
    from grvl_sdk.trainer.loaders import load_data

    columns: dict[str, str] = {}
    for item in args.column:
        role, sep, name = item.partition("=")
        if not sep or not role:
            raise DataError(f"--column takes ROLE=NAME, got {item!r}", field="columns")
        columns[role.strip()] = name.strip()
    errors: list[DataError] = []
    samples: list[Any] = []
    for path in args.data:
        spec: dict[str, Any] = {"path": path}
        for key, value in (("format", args.format), ("image_root", args.image_root), ("task", args.task)):
            if value:
                spec[key] = value
        if columns:
            spec["columns"] = columns
        if args.limit is not None:
            spec["limit"] = args.limit
        samples.extend(load_data(spec, on_error="skip" if args.skip_bad else "raise", errors=errors))
    return samples, len(errors)


def _handle(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        print("grvl train: interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, ModelLoadError):
        return _fail(exc.message, EXIT_LOAD)
    if isinstance(exc, (MissingDependencyError, GRVLError)):
        return _fail(exc.message)
    raise exc


def _summary(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.summary import summarize

    try:
        samples, skipped = _load(args)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    summary = summarize(samples)
    if args.json:
        print(json.dumps({**summary.to_dict(), "skipped_bad_records": skipped}, indent=2))
    else:
        print(summary)
        if skipped:
            print(f"skipped {skipped} malformed record(s)")
    return EXIT_OK


def _synthesize(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.synthesize import synthesize

    try:
        samples, skipped = _load(args)
        if skipped:
            print(f"skipped {skipped} malformed record(s)", file=sys.stderr)
        report = synthesize(
            samples,
            args.out,
            base_url=args.teacher_url,
            model=args.teacher_model,
            api_key=args.api_key,
            concurrency=args.concurrency,
            max_attempts=args.max_attempts,
            max_http_retries=args.max_http_retries,
            backoff=args.backoff,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            timeout=args.timeout,
            retry_dropped=args.retry_dropped,
            progress=not args.no_progress,
        )
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    print(report, file=sys.stderr)
    print(f"Records: {report.records_path}", file=sys.stderr)
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    from grvl_sdk._lazy import require
    from grvl_sdk.errors import TrainingConfigError

    yaml = require("yaml", extra="train")
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TrainingConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise TrainingConfigError(f"--set {key}: not a YAML value: {exc}") from exc
    return overrides


def _sft(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.rsft_config import RSFTConfig

    try:
        overrides = _parse_overrides(args.set)
        if args.output_dir:
            overrides["output_dir"] = args.output_dir
        if args.resume:
            overrides["resume_from_checkpoint"] = True
        if args.no_progress:
            overrides["progress"] = False
        config = RSFTConfig.from_yaml(args.config, **overrides)
        from grvl_sdk.trainer.rsft_trainer import train_rsft

        result = train_rsft(config)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        kind = "guard checkpoint" if result.merged else "LoRA adapter (load with grvl_sdk.trainer.load_adapter_guard)"
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        done = f"R-SFT done: {result.global_step} steps, train loss {loss}"
        print(f"{done}; {kind} in {result.output_dir}", file=sys.stderr)
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.rsft_config import RSFTConfig

    try:
        config = RSFTConfig.preset(args.preset, method=args.method, train_data=["synth/records.jsonl"])
    except GRVLError as exc:
        return _handle(exc)
    target = Path(args.dir)
    files: dict[Path, Path | None] = {target / "rsft.yaml": None}
    files.update({target / "accelerate" / p.name: p for p in sorted((_CONFIGS / "accelerate").glob("*.yaml"))})
    existing = [str(p) for p in files if p.exists()]
    if existing and not args.force:
        return _fail(f"would overwrite {', '.join(existing)} (use --force)")
    (target / "accelerate").mkdir(parents=True, exist_ok=True)
    header = (
        f"# Reasoning SFT ({args.preset} preset, {args.method}): grvl train sft --config {target / 'rsft.yaml'}\n"
        "# Multi-GPU: accelerate launch --config_file accelerate/deepspeed_zero3.yaml -m grvl_sdk.cli train sft "
        "--config rsft.yaml\n# Replace train_data with your data (see docs/training.md).\n"
    )
    (target / "rsft.yaml").write_text(header + config.to_yaml(), encoding="utf-8")
    for destination, source in files.items():
        if source is not None:
            shutil.copyfile(source, destination)
    print(f"wrote {', '.join(str(p) for p in files)}", file=sys.stderr)
    return EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    try:
        from grvl_sdk.trainer.checkpoints import merge_adapter

        out = merge_adapter(args.adapter, args.out, base_model=args.base_model, dtype=args.dtype)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    print(f"merged guard written to {out}", file=sys.stderr)
    return EXIT_OK
