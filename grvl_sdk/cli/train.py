"""``grvl train``: fine-tune your own guard.

``grvl train summary``     load and validate data, print counts per modality and label
``grvl train synthesize``  add teacher reasoning to labelled data (OpenAI-compatible teacher; resumable)
``grvl train sft``         reasoning SFT from a YAML config (single process, or under ``accelerate launch``)
``grvl train sample``      rejection sampling: the samples the R-SFT guard still gets wrong become RL data
``grvl train augment``     safety-aware concatenation: add joined samples to RL data
``grvl train rl``          GRPO with the length-aware reward and dynamic clipping, from a YAML config
``grvl train pipeline``    the whole recipe (synthesize → R-SFT → sample → augment → RL → evaluate), resumable
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
_ADAPTER_KIND = "LoRA adapter (`grvl train merge {out} {out}-merged` makes a guard checkpoint of it)"


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
    sft.add_argument("--no-progress", action="store_true", help="no progress bars and no per-step lines")
    _verbose_argument(sft)
    sft.set_defaults(func=_sft)

    _register_rl(sub)

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
    _verbose_argument(merge)
    merge.set_defaults(func=_merge)


def _register_rl(sub: Any) -> None:
    sample = sub.add_parser(
        "sample",
        help="rejection sampling: keep the samples the R-SFT guard still gets wrong (RL data)",
        description="The guard answers every sample K times; a sample no attempt got right (each label against its "
        "own gold) is hard. Writes OUT/attempts.jsonl, OUT/train.jsonl, OUT/validation.jsonl and "
        "OUT/sampling_summary.json; re-running resumes without regenerating finished samples. Exit codes: 0 done, "
        "1 some samples failed (re-run to retry), 2 bad input, 3 model not loadable.",
    )
    _data_arguments(sample)
    sample.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it exists)")
    guard = sample.add_mutually_exclusive_group(required=True)
    guard.add_argument("--model", help="the R-SFT guard (local folder or hub id): batched local generation")
    guard.add_argument("--server", metavar="URL", help="an OpenAI-compatible server (vLLM, SGLang): n=K per request")
    sample.add_argument("--server-model", help="the served model name (with --server)")
    sample.add_argument("--api-key", help="bearer token for --server (default: $GRVL_API_KEY)")
    sample.add_argument("--device", help="local generation device (default: cuda when available)")
    sample.add_argument("-k", "--attempts", type=int, default=4, help="answers per sample (default 4)")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-p", type=float, default=0.95)
    sample.add_argument("--max-new-tokens", type=int, default=3072)
    sample.add_argument("--batch-size", type=int, default=16, help="samples per generate call / requests in flight")
    sample.add_argument("--keep-image-only", action="store_true", help="also keep every image-only sample (authors)")
    sample.add_argument("--cap", type=int, default=12_000, help="most samples kept (seeded draw; default 12000)")
    sample.add_argument("--validation", type=float, default=0.2, help="validation fraction (default 0.2)")
    sample.add_argument("--seed", type=int, default=42)
    sample.add_argument("--keep-outputs", action="store_true", help="store every raw answer in attempts.jsonl")
    sample.add_argument("--no-progress", action="store_true")
    _verbose_argument(sample)
    sample.set_defaults(func=_sample)

    augment = sub.add_parser(
        "augment",
        help="add concatenated samples (two samples joined, OR-merged labels) to RL data",
        description="Reads DATA/train.jsonl (and validation.jsonl) as `grvl train sample` wrote them; writes "
        "OUT/train.jsonl with the originals and the augmented samples, OUT/validation.jsonl (copied) and "
        "OUT/augment_summary.json.",
    )
    augment.add_argument("data", metavar="DATA", help="RL data folder (or its train.jsonl)")
    augment.add_argument("--out", required=True, metavar="DIR")
    augment.add_argument("--share", type=float, default=0.2, help="augmented share of the train set (default 0.2)")
    augment.add_argument("--seed", type=int, default=42)
    augment.add_argument("--bound", type=int, default=1024, help="joined images fit BOUND×BOUND pixels")
    augment.set_defaults(func=_augment)

    rl = sub.add_parser(
        "rl",
        help="GRPO from a YAML config (length-aware reward, dynamic clipping)",
        description="Online RL from the R-SFT guard. Multi-GPU: accelerate launch --config_file "
        "accelerate/deepspeed_zero3.yaml -m grvl_sdk.cli train rl --config rl.yaml",
    )
    rl.add_argument("--config", metavar="YAML", help="GuardRLConfig settings (default: the preset's)")
    rl.add_argument("--preset", choices=["standard", "eco"], help="apply a preset first")
    rl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (YAML value)")
    rl.add_argument("--output-dir", help="override output_dir")
    rl.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    rl.add_argument("--no-progress", action="store_true")
    _verbose_argument(rl)
    rl.set_defaults(func=_rl)

    pipeline = sub.add_parser(
        "pipeline",
        help="run the whole recipe in one run folder (each stage skipped when done, resumed when interrupted)",
    )
    pipeline.add_argument("--config", required=True, metavar="YAML", help="PipelineConfig settings")
    pipeline.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    pipeline.add_argument("--until", help="stop after this stage (synthesize, rsft, sample, augment, rl, evaluate)")
    _verbose_argument(pipeline)
    pipeline.set_defaults(func=_pipeline)


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


def _verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show library logs, progress bars of loading and saving, warnings (and per-step lines with --no-progress)",
    )


def _quiet(args: argparse.Namespace, methods: tuple[Any, ...] = ()) -> None:
    """Third-party noise off unless ``-v``; bitsandbytes not even imported when no stage quantises (``methods``)
    and the command owns its process (one command, one run): importing it costs seconds and, on some CPUs,
    prints a kernel warning."""
    from grvl_sdk.cli._output import quiet_third_party

    quiet_third_party(getattr(args, "verbose", False))
    if getattr(args, "owns_process", False) and "qlora" not in methods and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # `import bitsandbytes` fails: not installed


def _check_model(model: str, config_file: str | None) -> None:
    """Fail in seconds, with the CLI's advice, when the base model can neither be found nor downloaded."""
    from grvl_sdk.backends._loading import resolve_model

    edit = (
        f"edit model_name_or_path in {config_file} (a relative path is relative to its folder), or "
        if config_file
        else ""
    )
    resolve_model(
        model, advice=f"Point at a local checkpoint folder: {edit}add --set model_name_or_path=/path/to/model."
    )


def _fresh_or_resume(args: argparse.Namespace, config: Any) -> Any:
    """Without ``--resume`` (and no ``resume_from_checkpoint`` in the config), say how to continue when the output
    folder already holds checkpoints, then start afresh (the trainer's own note gives Python advice)."""
    from grvl_sdk.trainer.runs import last_checkpoint

    if args.resume or config.resume_from_checkpoint is not None or last_checkpoint(config.output_dir) is None:
        return config
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(
            f"note: {config.output_dir} already holds checkpoints; this run starts afresh and replaces them as it "
            "saves. Add --resume to continue from them.",
            file=sys.stderr,
        )
    return config.replace(resume_from_checkpoint=False)


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
    if report.records_path is not None and report.records_path.is_file():
        print(f"Records: {report.records_path}", file=sys.stderr)
    else:
        print(f"Records: none kept, so {report.records_path} was not written", file=sys.stderr)
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


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a training command's flags override: ``--set``, then ``--preset`` (where the command
    has it), ``--output-dir``, ``--resume`` and ``--no-progress``."""
    overrides = _parse_overrides(args.set)
    if getattr(args, "preset", None):
        overrides["preset"] = args.preset
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.resume:
        overrides["resume_from_checkpoint"] = True
    if args.no_progress:
        overrides["progress"] = False
    return overrides


def _sft(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.rsft_config import RSFTConfig

    try:
        config = RSFTConfig.from_yaml(args.config, **_run_overrides(args))
        _quiet(args, (config.method,))
        _check_model(config.model_name_or_path, args.config)
        config = _fresh_or_resume(args, config)
        from grvl_sdk.trainer.console import step_printer
        from grvl_sdk.trainer.rsft_trainer import train_rsft

        result = train_rsft(config, callbacks=[step_printer()] if args.verbose and not config.progress else ())
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        kind = "guard checkpoint" if result.merged else _ADAPTER_KIND.format(out=result.output_dir)
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        done = f"R-SFT done: {result.global_step} steps, train loss {loss}"
        print(f"{done}; {kind} in {result.output_dir}", file=sys.stderr)
    return EXIT_OK


def _sample(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.sampling import sample_hard

    _quiet(args)
    try:
        samples, skipped = _load(args)
        if skipped:
            print(f"skipped {skipped} malformed record(s)", file=sys.stderr)
        report = sample_hard(
            samples,
            args.out,
            model=args.model,
            server=args.server,
            server_model=args.server_model,
            api_key=args.api_key,
            device=args.device,
            k=args.attempts,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            keep_image_only=args.keep_image_only,
            cap=args.cap,
            validation_fraction=args.validation,
            seed=args.seed,
            keep_outputs=args.keep_outputs,
            progress=not args.no_progress,
        )
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    print(report, file=sys.stderr)
    print(f"RL data: {report.train_path} · {report.validation_path}", file=sys.stderr)
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


def _augment(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.augment import augment_data

    try:
        report = augment_data(args.data, args.out, share=args.share, seed=args.seed, bound=args.bound)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    print(report, file=sys.stderr)
    return EXIT_OK


def _rl(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.grpo_config import GuardRLConfig

    try:
        overrides = _run_overrides(args)
        if args.config:
            config = GuardRLConfig.from_yaml(args.config, **overrides)
        else:
            config = GuardRLConfig.from_dict(overrides)
        _quiet(args, (config.method,))
        _check_model(config.model_name_or_path, args.config)
        config = _fresh_or_resume(args, config)
        from grvl_sdk.trainer.grpo_trainer import train_rl

        result = train_rl(config)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        kind = "guard checkpoint" if result.merged else _ADAPTER_KIND.format(out=result.output_dir)
        print(f"GRPO done: {result.global_step} optimizer steps; {kind} in {result.output_dir}", file=sys.stderr)
    return EXIT_OK


def _pipeline(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.pipeline import PipelineConfig, run_pipeline

    try:
        config = PipelineConfig.from_yaml(args.config, **_parse_overrides(args.set))
        _quiet(args, (config.rsft.get("method"), config.rl.get("method")))
        result = run_pipeline(config, until=args.until)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    for stage, status in result.status.items():
        print(f"{stage:<11} {status}", file=sys.stderr)
    if result.evaluation is not None:
        print(result.evaluation.read_text(encoding="utf-8"))
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    from grvl_sdk.trainer.rsft_config import RSFTConfig

    target = Path(args.dir)
    try:
        config = RSFTConfig.preset(args.preset, method=args.method, train_data=["synth/records.jsonl"])
        # Paths in the file are relative to its folder: keep them pointing where they do from here.
        config = config.replace(
            train_data=[os.path.relpath(p, target) for p in config.train_data],
            output_dir=os.path.relpath(config.output_dir, target),
        )
    except GRVLError as exc:
        return _handle(exc)
    files: dict[Path, Path | None] = {target / "rsft.yaml": None}
    files.update({target / "accelerate" / p.name: p for p in sorted((_CONFIGS / "accelerate").glob("*.yaml"))})
    existing = [str(p) for p in files if p.exists()]
    if existing and not args.force:
        return _fail(f"would overwrite {', '.join(existing)} (use --force)")
    (target / "accelerate").mkdir(parents=True, exist_ok=True)
    header = (
        f"# Reasoning SFT ({args.preset} preset, {args.method}): grvl train sft --config {target / 'rsft.yaml'}\n"
        "# Multi-GPU: accelerate launch --config_file accelerate/deepspeed_zero3.yaml -m grvl_sdk.cli train sft "
        "--config rsft.yaml\n# Replace train_data with your data (see docs/training.md). Relative paths (train_data, "
        "output_dir, a model folder) are\n# relative to this file's folder. model_name_or_path is a hub id: "
        "offline, set it to a local checkpoint folder.\n"
    )
    (target / "rsft.yaml").write_text(header + config.to_yaml(), encoding="utf-8")
    for destination, source in files.items():
        if source is not None:
            shutil.copyfile(source, destination)
    print(f"wrote {', '.join(str(p) for p in files)}", file=sys.stderr)
    return EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    _quiet(args)
    try:
        from grvl_sdk.trainer.checkpoints import merge_adapter

        out = merge_adapter(args.adapter, args.out, base_model=args.base_model, dtype=args.dtype)
    except (GRVLError, KeyboardInterrupt) as exc:
        return _handle(exc)
    print(f"merged guard written to {out}", file=sys.stderr)
    return EXIT_OK
