"""``grvl build-tiny-guard [--trained] PATH``: write a tiny guard checkpoint for offline tests.

Without ``--trained`` the weights are random (verdicts meaningless, built in about a second). With
``--trained`` the guard is trained on CPU to follow the toy rule of :mod:`grvl_sdk.testing.toy_rule`
("bomb"/"poison" ⇒ harmful); the build is cached (``$GRVL_CACHE_DIR``, else ``~/.cache/grvl-sdk``) and
needs ``pip install 'grvl-sdk[train]'``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build-tiny-guard",
        help="write a tiny Qwen2.5-VL guard for offline tests (random, or --trained on a toy rule)",
        description=(
            "Write a tiny Qwen2.5-VL guard checkpoint. Random weights by default (verdicts are meaningless); "
            "--trained trains it in seconds on CPU to flag requests and responses containing 'bomb' or "
            "'poison' (case-insensitive) as harmful, and caches the build."
        ),
    )
    parser.add_argument("path", help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (and of the training data)")
    parser.add_argument(
        "--trained",
        action="store_true",
        help="train it on the toy rule ('bomb'/'poison' => harmful); needs grvl-sdk[train]; cached",
    )
    parser.add_argument(
        "--fast-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="with --trained: share of training samples without reasoning, so the guard also answers in "
        "mode='fast' (e.g. 0.5; default 0: trained to reason first, its fast-mode labels mean nothing)",
    )
    parser.add_argument(
        "--cache-dir",
        help="cache folder of trained builds (default: $GRVL_CACHE_DIR, else ~/.cache/grvl-sdk)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the checkpoint; exit 0, or 1 with the error on stderr (a missing extra, a failed training)."""
    from grvl_sdk.errors import GRVLError
    from grvl_sdk.testing import build_tiny_guard

    if not 0.0 <= args.fast_fraction <= 1.0 or (args.fast_fraction and not args.trained):
        print("grvl build-tiny-guard: error: --fast-fraction must be in [0, 1] and needs --trained", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        path = build_tiny_guard(
            args.path, seed=args.seed, trained=args.trained, cache_dir=args.cache_dir, fast_fraction=args.fast_fraction
        )
    except GRVLError as exc:
        print(f"grvl build-tiny-guard: error: {exc.message}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    if args.trained:
        tiers = f"; fast share {args.fast_fraction:g}: answers in mode='fast' too" if args.fast_fraction else ""
        print(f"trained tiny guard written to {path} in {elapsed:.1f} s (toy rule: 'bomb'/'poison' => harmful{tiers})")
    else:
        print(f"tiny guard written to {path} (random weights: verdicts are meaningless)")
    return 0
