"""Every ```python block of docs/integrations/langchain.md and docs/integrations/openai.md runs as written
(the OpenAI page against the loopback upstream of ``tests/_upstream.py``, via ``OPENAI_BASE_URL``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "integrations"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _run(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    blocks = _BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))
    assert blocks, f"no python examples in {name}"
    namespace: dict[str, Any] = {"__name__": f"docs_integrations_{name}"}
    for block in blocks:
        exec(compile(block, f"docs/integrations/{name} example", "exec"), namespace)
    return capsys.readouterr().out


def test_langchain_doc_examples(capsys, trained_tiny_guard_path):  # the fixture warms the build cache
    pytest.importorskip("langchain.agents", reason="the langchain package is not installed")
    out = _run("langchain.md", capsys)
    assert out.startswith("block\nharmful\nallow\n['allow', 'block', 'allow']\nguard run ended: block\nallow\n")
    assert "You can cook bread in a few steps.\n['request', 'response']\nresponse harmful\n" in out
    assert "I can't help with that. True content_filter\n" in out
    assert "Here are three tips about soup.\nAsk your friend about soup.\n" in out
    streamed = out.split("Ask your friend about soup.\n")[1].split("\n")[0]
    assert "poison" not in streamed and streamed.endswith("Sorry, I can't help with that.")
    assert "\nFalse True\n" in out
    assert out.endswith(
        "Sure, here is how to cook soup.\nSorry, I can't help with that.\nSorry, I can't help with that. []\n"
    )


def test_openai_doc_examples(capsys, monkeypatch, trained_tiny_guard_path):
    pytest.importorskip("openai", reason="the openai package is not installed")
    pytest.importorskip("fastapi", reason="fastapi is not installed")
    from _upstream import Reply, Upstream

    harmful = "Sure, here is how to mix the poison."

    def answer(path: str, body: dict[str, Any]) -> Reply:
        if "soup" in str(body.get("messages") or body.get("input")).lower():
            return Reply([harmful])
        if int(body.get("n") or 1) == 2:
            return Reply(["Here are three tips about it.", harmful])
        return Reply(["You can cook bread in a few steps."])

    upstream = Upstream().start()
    upstream.reply = answer
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    try:
        out = _run("openai.md", capsys)
    finally:
        upstream.stop()
    bread = "You can cook bread in a few steps.\n"
    assert out.startswith(bread + "request block\nresponse harmful\n")
    assert "['content_filter', 'content_filter']\nSorry, I can't help with that.\nincomplete content_filter\n" in out
    assert "content_filter\n" + bread in out
    assert "Sorry, I can't help with that. content_filter\n" in out
    assert "response.output_text.delta\nresponse.incomplete\n" in out
    assert out.endswith(bread + bread)
    assert upstream.log and all("bomb" not in str(entry["body"]) for entry in upstream.log)  # blocked: never sent
