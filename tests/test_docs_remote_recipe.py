"""The vLLM / SGLang recipe of docs/remote-backend.md cannot drift from the SDK: its numbers are the SDK's
defaults, and its client block runs (against the loopback OpenAI-compatible server, which stands in for
vLLM: no GPU here)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs_blocks import ROOT, blocks

from grvl_sdk._constants import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    MAX_IMAGES_PER_CHECK,
    SCORE_TOP_K,
)
from grvl_sdk.backends._fast_remote import FAST_TOP_LOGPROBS

PAGE = ROOT / "docs" / "remote-backend.md"
TOKEN_PIXELS = 28 * 28  # one vision token after the 2x2 merge


def _block(marker: str, kind: str) -> str:
    found = [b.code for b in blocks(PAGE) if b.kind == kind and marker in b.code]
    assert len(found) == 1, f"expected one {kind} block with {marker!r} in {PAGE.name}, found {len(found)}"
    return found[0]


def _flags(command: str) -> tuple[dict[str, str], list[str]]:
    """(``--flag value`` pairs and bare ``--flags``, leading ``NAME=value`` environment words)."""
    words = shlex.split(command.replace("\\\n", " "))
    env = [w for w in words[: words.index(next(w for w in words if "=" not in w))] if "=" in w]
    flags: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else ""
            flags[word] = value
    return flags, env


def test_vllm_recipe_matches_the_sdk_defaults():
    flags, _ = _flags(_block("vllm serve", "shell"))
    assert "--enable-prefix-caching" in flags
    assert json.loads(flags["--mm-processor-kwargs"]) == {
        "min_pixels": DEFAULT_MIN_PIXELS,
        "max_pixels": DEFAULT_MAX_PIXELS,
    }
    limits = json.loads(flags["--limit-mm-per-prompt"])
    assert limits == {"image": MAX_IMAGES_PER_CHECK, "video": 0}
    assert int(flags["--max-logprobs"]) >= max(FAST_TOP_LOGPROBS, SCORE_TOP_K)
    vision = MAX_IMAGES_PER_CHECK * (DEFAULT_MAX_PIXELS // TOKEN_PIXELS)
    assert int(flags["--max-model-len"]) >= vision + DEFAULT_MAX_NEW_TOKENS + 2048  # + system prompt and text
    assert int(flags["--max-num-seqs"]) >= 1


def test_sglang_recipe_matches_the_vllm_one():
    vllm, _ = _flags(_block("vllm serve", "shell"))
    sglang, env = _flags(_block("sglang.launch_server", "shell"))
    assert f"SGLANG_IMAGE_MAX_PIXELS={DEFAULT_MAX_PIXELS}" in env
    assert sglang["--context-length"] == vllm["--max-model-len"]
    assert sglang["--max-running-requests"] == vllm["--max-num-seqs"]
    assert "--disable-radix-cache" not in sglang


def test_client_block_uses_the_servers_numbers():
    vllm, _ = _flags(_block("vllm serve", "shell"))
    client = _block("max_connections=", "python")
    assert re.search(rf"min_pixels={DEFAULT_MIN_PIXELS}\b", client)
    assert re.search(rf"max_pixels={DEFAULT_MAX_PIXELS}\b", client)
    assert re.search(rf"max_connections={vllm['--max-num-seqs']}\b", client)


def test_the_prose_and_the_options_table_give_the_sdk_defaults():
    text = PAGE.read_text(encoding="utf-8")
    assert f'| {DEFAULT_MIN_PIXELS:,}, {DEFAULT_MAX_PIXELS:,}, `"PNG"` |' in text
    assert f"{DEFAULT_MAX_PIXELS:,} pixels: at most {DEFAULT_MAX_PIXELS // TOKEN_PIXELS:,} vision tokens" in text


def test_client_block_runs_against_an_openai_compatible_server(trained_tiny_guard, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from grvl_sdk.testing import LoopbackServer

    client = _block("max_connections=", "python")
    monkeypatch.chdir(ROOT / "examples")  # docs blocks run in a copy of examples/
    # the tiny guard trained on the toy rule: short outputs that close the verdict block, label tokens
    with LoopbackServer(trained_tiny_guard.backend) as server:
        code = client.replace('"http://localhost:8000/v1"', repr(server.base_url)).replace(
            'model="yueliu1999/GuardReasoner-VL-Eco-3B"', f"model={server.model_name!r}"
        )
        assert code.count(server.base_url) == 1 and code != client
        namespace: dict = {}
        exec(compile(code, "remote-backend.md client recipe", "exec"), namespace)
    verdict, quick = namespace["verdict"], namespace["quick"]
    assert not verdict.failed, verdict.error
    assert not quick.failed and quick.tier is not None and quick.tier.path == "fast", quick.error
    assert capsys.readouterr().out.split() == [verdict.decision, quick.decision]
