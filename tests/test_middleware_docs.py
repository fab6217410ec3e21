"""The examples of docs/middleware.md and docs/remote-backend.md run as written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _docs_blocks import blocks as page_blocks

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _run(name: str, capsys) -> str:
    """Every python block of the page not marked ``<!-- not-run: ... -->`` (see tests/_docs_blocks.py)."""
    blocks = [b.code for b in page_blocks(DOCS / name) if b.kind == "python" and b.not_run is None]
    assert blocks, f"no python examples in {name}"
    namespace: dict = {"__name__": f"docs_{name}"}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        for block in blocks:
            exec(compile(block, f"{name} example", "exec"), namespace)
    finally:
        root.handlers[:], root.level = handlers, level
        logging.getLogger("grvl_sdk").setLevel(logging.NOTSET)
    return capsys.readouterr().out


def test_middleware_doc_examples(capsys):
    out = _run("middleware.md", capsys)
    assert "request block" in out and "error-blocked backend_error" in out
    assert "error-allowed deadline_exceeded" in out and "False True 1" in out
    assert "Counter({'block': 1, 'allow': 1})" in out
    assert "block\nallow\n" in out
    # the passthrough example is cut mid-way: the harmful chunk reached the caller, the last one never did
    assert "cut at stage stream after ['Start by boiling water, ', 'then add the poison, ']" in out


def test_remote_doc_examples(capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("transformers")
    out = _run("remote-backend.md", capsys)
    assert "remote_error" in out
