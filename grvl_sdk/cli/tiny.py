"""``grvl build-tiny-guard PATH``: write a tiny random guard checkpoint for offline tests."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build-tiny-guard",
        help="write a tiny random Qwen2.5-VL guard (for offline tests; its verdicts are meaningless)",
    )
    parser.add_argument("path", help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from grvl_sdk.testing import build_tiny_guard

    path = build_tiny_guard(args.path, seed=args.seed)
    print(f"tiny guard written to {path} (random weights: verdicts are meaningless)")
    return 0
