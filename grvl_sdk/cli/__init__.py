"""The ``grvl`` command line. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from grvl_sdk import __version__

__all__ = ["build_parser", "main"]

# Sub-command modules; each exposes ``register(subparsers)`` that sets ``func`` on its parser.
_COMMANDS = ("grvl_sdk.cli.check", "grvl_sdk.cli.tiny", "grvl_sdk.cli.eval", "grvl_sdk.cli.train", "grvl_sdk.cli.serve")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="grvl", description="GuardReasoner-VL guardrail SDK")
    parser.add_argument("--version", action="version", version=f"grvl-sdk {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. ``argv=None`` reads ``sys.argv``: the command owns the process (the ``grvl`` script,
    ``python -m grvl_sdk.cli``), so it may change process-wide state (``args.owns_process``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    args.owns_process = argv is None
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
