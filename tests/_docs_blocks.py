"""The code blocks of the README and of every page under docs/, and the runner that executes one page's
blocks in order (``python tests/_docs_blocks.py BLOCKS.json``, in a fresh process, in the folder the
page's commands are run from).

A fenced block is code when its language is ``python`` or ``bash``/``sh``/``shell``; every other fence
(``text``, ``yaml``, ``toml``, ``json``, ``dockerfile``, untagged) is output, a file's content or a
diagram and is not run. A code block that cannot run here is marked in the page, on the line right
before its fence, with the reason: ``<!-- not-run: needs a GPU -->``.

A page's python blocks share one namespace, run as a notebook runs cells (a top-level ``await`` is
allowed); a shell block runs as one ``bash -euo pipefail`` script. Both run in the page's folder: a copy
of the checkout's ``examples/`` with ``.venv`` beside it.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
DATA = {"", "text", "yaml", "toml", "json", "dockerfile"}
_FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$", re.S)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the checkout, e.g. "docs/api.md"
    line: int  # of the opening fence
    lang: str  # as written after the fence
    code: str
    not_run: str | None  # the reason given in the page, or None

    @property
    def kind(self) -> str:
        """``"python"``, ``"shell"`` or ``"data"``."""
        return CODE.get(self.lang, "data")

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every docs/**/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order, with the not-run reason written right before each."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = _NOT_RUN.search(before)
        found.append(
            Block(
                page=page.relative_to(ROOT).as_posix(),
                line=text.count("\n", 0, match.start()) + 1,
                lang=match.group(1).lower(),
                code=match.group(2),
                not_run=reason.group(1) if reason else None,
            )
        )
    return found


# -- the runner (a fresh process per page) ------------------------------------------------------


def _run_python(block: Block, namespace: dict, loop: asyncio.AbstractEventLoop) -> None:
    code = compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        loop.run_until_complete(result)


def _run_shell(block: Block) -> None:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], check=False)
    if done.returncode != 0:
        raise SystemExit(f"shell block exited with {done.returncode}")


def main(spec: str) -> int:
    todo = [Block(**b) for b in json.loads(Path(spec).read_text(encoding="utf-8"))]
    namespace: dict = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    for block in todo:
        print(f"=== {block.where} ({block.kind})", flush=True)
        try:
            if block.kind == "python":
                _run_python(block, namespace, loop)
            else:
                _run_shell(block)
        except BaseException as exc:
            sys.stdout.flush()
            traceback.print_exc()
            print(f"FAILED {block.where}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def to_json(todo: list[Block]) -> str:
    return json.dumps([asdict(b) for b in todo])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
