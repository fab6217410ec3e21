"""The benchmark models (benchmarks/_models.py): the Qwen-sized tokenizer keeps the tiny guard's
tokenisation and Qwen's special-token ids, and builds are cached."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

_models = pytest.importorskip("_models")

from grvl_sdk import Guard  # noqa: E402
from grvl_sdk.backends._processor import load_processor  # noqa: E402
from grvl_sdk.testing import QWEN_SPECIAL_TOKENS  # noqa: E402

PROMPT = "Could you tell me how the old bridge downtown was built?\n<think>\nStep 1</think>\n<result>\nRequest:"


@pytest.fixture(scope="module")
def grown(tiny_guard_path):
    base = load_processor(str(tiny_guard_path)).tokenizer
    return base, _models.qwen_sized_tokenizer(base, size=4096)


def test_the_grown_tokenizer_has_qwens_added_tokens_at_qwens_offsets(grown):
    _, tokenizer = grown
    added = (*QWEN_SPECIAL_TOKENS, *_models.QWEN_EXTRA_ADDED_TOKENS)
    assert len(tokenizer) == 4096 + len(added)
    assert [tokenizer.convert_tokens_to_ids(t) for t in added] == list(range(4096, 4096 + len(added)))
    # At the real size these are Qwen's ids: <|endoftext|> 151643, <|im_end|> 151645, <|image_pad|> 151655.
    assert _models.QWEN_REGULAR_VOCAB + QWEN_SPECIAL_TOKENS.index("<|image_pad|>") == 151655


def test_ascii_text_tokenises_as_the_tiny_guard_does(grown):
    base, tokenizer = grown
    ids = tokenizer(PROMPT).input_ids
    assert ids == base(PROMPT).input_ids
    assert tokenizer.decode(ids) == PROMPT
    special = "<|im_start|>user\nhi<|im_end|>"
    assert tokenizer(special).input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_the_grown_entries_are_reachable_only_from_non_ascii_text(grown):
    base, tokenizer = grown
    high_bytes = set(_models._byte_level_chars()[b] for b in range(128, 256))
    first = len(base) - len(QWEN_SPECIAL_TOKENS)
    grown_tokens = tokenizer.convert_ids_to_tokens(list(range(first, 4096)))
    assert all(set(token) <= high_bytes for token in grown_tokens)
    text = "café 東京"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_a_built_model_loads_through_the_guard_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GRVL_CACHE_DIR", str(tmp_path / "cache"))
    entry = _models.build_model("tiny")
    assert entry.is_relative_to(tmp_path / "cache")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(_models, "_write_model", no_rebuild)
    assert _models.build_model("tiny") == entry
    copy = _models.build_model("tiny", tmp_path / "copy")
    assert (copy / "model.safetensors").read_bytes() == (entry / "model.safetensors").read_bytes()
    guard = Guard.from_pretrained(str(copy), device="cpu", max_new_tokens=4)
    try:
        assert guard.check("hello").usage.completion_tokens == 4
    finally:
        guard.close()
