"""``grvl check``: judge one request (text and/or images) and an optional response."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from typing import Any

from grvl_sdk._constants import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PIXELS, DEFAULT_MODEL, MODEL_ENV_VAR
from grvl_sdk.cli._output import quiet_third_party, safe_text, shorten
from grvl_sdk.errors import BackendError, GRVLError, InputError, MissingDependencyError, ModelLoadError
from grvl_sdk.images import load_images

__all__ = ["EXIT_BACKEND", "EXIT_FLAGGED", "EXIT_INPUT", "EXIT_LOAD", "EXIT_OK", "register"]

EXIT_OK = 0
EXIT_FLAGGED = 1  # only with --fail-on-harmful: harmful or failed verdict
EXIT_INPUT = 2
EXIT_LOAD = 3
EXIT_BACKEND = 4


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a request (text and/or image) and an optional response",
        description="Judge a request and an optional AI response with a GuardReasoner-VL guard.",
        epilog=f"The model defaults to ${MODEL_ENV_VAR} or {DEFAULT_MODEL}. Exit codes: 0 check completed, "
        "1 harmful or failed verdict (with --fail-on-harmful), 2 bad input, 3 model not loadable, 4 backend error.",
    )
    parser.add_argument("text", nargs="?", help="the user's request text ('-' reads standard input)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeatable)")
    parser.add_argument("--response", help="the AI assistant's response to judge as well")
    parser.add_argument("--model", help=f"hub id or local folder (default: ${MODEL_ENV_VAR} or {DEFAULT_MODEL})")
    parser.add_argument(
        "--quantization",
        choices=["auto", "none", "4bit", "8bit"],
        default="auto",
        help="bitsandbytes quantisation (auto: 4bit on CUDA, none on CPU)",
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="vision budget per image")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode with a static KV cache and torch.compile (compiles at load: slower start, faster decode; "
        "with --quantization auto it loads unquantised)",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--show-raw", action="store_true", help="print the whole raw model output (human mode)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs, progress bars, warnings")
    parser.add_argument(
        "--fail-on-harmful", action="store_true", help="exit 1 when the verdict is harmful or the check failed"
    )
    parser.set_defaults(func=run)


def _quantization(choice: str, *, compile: bool = False) -> str | None:
    """The ``--quantization`` choice: ``auto`` is 4-bit on CUDA and none on CPU, and none with
    ``--compile`` (quantised weights cannot be compiled)."""
    if choice == "auto":
        if compile:
            return None
        try:
            import torch

            return "4bit" if torch.cuda.is_available() else None
        except ImportError:
            return None
    return None if choice == "none" else choice


def _error(message: str, code: int, as_json: bool, error: GRVLError | None = None) -> int:
    if as_json:
        payload = error.to_dict() if error is not None else {"code": "usage", "message": message}
        print(json.dumps({"error": payload}))
    print(f"grvl: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    quiet_third_party(args.verbose)
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text and not args.image and args.response is None:
        return _error("give a request TEXT, an --image, a --response, or several", EXIT_INPUT, args.json)
    try:  # inputs and settings first: nothing is loaded for a call that cannot run
        images = load_images(images=args.image) if args.image else None
        if args.max_new_tokens < 1 or args.max_pixels < 1:
            raise InputError("--max-new-tokens and --max-pixels must be >= 1")
    except InputError as exc:
        return _error(exc.message, EXIT_INPUT, args.json, exc)
    model = args.model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
    quantization = _quantization(args.quantization, compile=args.compile)
    from grvl_sdk.guard import Guard

    print(f"Loading guard model {model} (quantization: {quantization or 'none'})...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        guard = Guard.from_pretrained(
            model,
            quantization=quantization,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            max_pixels=args.max_pixels,
            compile=args.compile,
        )
    except (ModelLoadError, MissingDependencyError) as exc:
        return _error(exc.message, EXIT_LOAD, args.json, exc)
    except InputError as exc:
        return _error(exc.message, EXIT_INPUT, args.json, exc)
    print(f"Loaded in {time.perf_counter() - started:.1f} s; checking...", file=sys.stderr, flush=True)
    try:
        verdict = guard.check(text or None, images=images, response=args.response)
    except InputError as exc:
        return _error(exc.message, EXIT_INPUT, args.json, exc)
    except BackendError as exc:
        return _error(exc.message, EXIT_BACKEND, args.json, exc)
    if verdict.error is not None and verdict.error.code != "unparseable_output":
        # The guard could not run (backend, server, deadline): check() reports it as a failed verdict.
        return _error(verdict.error.message, EXIT_BACKEND, args.json, BackendError(verdict.error.message))
    if args.json:
        extra = {"failed": verdict.failed, "blocked": verdict.blocked}
        print(json.dumps({**verdict.model_dump(mode="json"), **extra}, ensure_ascii=False))
    else:
        print(_human(verdict, show_raw=args.show_raw))
    if args.fail_on_harmful and (verdict.harmful or verdict.failed):
        return EXIT_FLAGGED
    return EXIT_OK


def _human(verdict: Any, *, show_raw: bool = False) -> str:
    """The verdict for a terminal: labels, scores, decision, timing, reasoning; raw output shortened
    (``show_raw`` for all of it) and every non-printable character escaped."""
    lines = []
    if verdict.failed:
        closed = "fail-closed" if verdict.fail_mode == "block" else "fail-open"
        lines.append(
            f"Verdict:   FAILED ({verdict.error.code}): the guard could not judge; {verdict.decision} ({closed})"
        )
        lines.append(f"Error:     {safe_text(verdict.error.message)}")
    else:
        lines.append(f"Verdict:   {'HARMFUL' if verdict.harmful else 'unharmful'} ({verdict.decision})")
    if verdict.request_label is not None or not verdict.failed:
        lines.append(f"Request:   {verdict.request_label or '- (not judged)'}{_score(verdict.request_score)}")
    if verdict.response_label is not None or not verdict.failed:
        lines.append(f"Response:  {verdict.response_label or '- (no response given)'}{_score(verdict.response_score)}")
    usage = verdict.usage
    lines.append(f"Model:     {safe_text(verdict.model)}")
    lines.append(
        f"Time:      {usage.latency_ms:.0f} ms ({usage.prompt_tokens} prompt + {usage.completion_tokens} output tokens)"
    )
    if verdict.reasoning:
        lines.append("Reasoning:")
        lines.extend(textwrap.indent(safe_text(verdict.reasoning.strip()), "  ").splitlines())
    elif verdict.failed and verdict.raw_output:
        raw = verdict.raw_output.strip()
        lines.append("Raw output:")
        lines.extend(textwrap.indent(safe_text(raw if show_raw else shorten(raw)), "  ").splitlines())
    return "\n".join(lines)


def _score(score: float | None) -> str:
    return "" if score is None else f"   (P(harmful) = {score:.3f})"
