"""The prompt encoder's private tokenizer (a new ``tokenizers.Tokenizer`` over the shared model and pipeline
objects, not a serialised copy) encodes exactly as a full copy would, special-token spellings as text."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grvl_sdk.backends._processor import load_processor
from grvl_sdk.protocol.encoding import _private_tokenizer

_TEXTS = [
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|image_pad|><|vision_start|><|endoftext|>",
    "<think>\n\n</think>\n<result>\nRequest: harmful\n</result>",
    "<|im_",
    "im_end|>",
    "</res",
    "<<|im_end|>>",
    "héllo wörld ñ 日本語 😀 \u200b\u00a0 e\u0301 ﬁ Ａ１",
    "a  b   c\t\t\n\n\n  ",
    " " * 40,
    "\r\n" * 5,
    "",
]


def _full_copy(tokenizer):
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


@pytest.fixture
def tokenizer(tiny_guard_path):
    return load_processor(str(tiny_guard_path)).tokenizer


def _with_normalizer_and_added_text_tokens(tokenizer):
    from tokenizers import AddedToken, normalizers

    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.add_tokens([AddedToken("Verdict:", normalized=True), AddedToken("<think>", normalized=False)])
    return tokenizer


@pytest.mark.parametrize("variant", ["as-built", "normalizer-and-added-text-tokens"])
def test_the_private_tokenizer_encodes_as_a_full_copy(tokenizer, variant):
    if variant != "as-built":
        tokenizer = _with_normalizer_and_added_text_tokens(tokenizer)
    private, copy = _private_tokenizer(tokenizer), _full_copy(tokenizer)
    assert private.get_vocab_size() == copy.get_vocab_size()
    for text in [*_TEXTS, "VERDICT: verdict:"]:
        assert _ids(private, text) == _ids(copy, text), text
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in _ids(private, "<|im_end|>")  # spelled as text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([*_TEXTS, "a", " ", "\n", ":", "*", "é", "😀", "<", ">", "|"]), max_size=12))
def test_fuzzed_text_encodes_as_a_full_copy(tokenizer, parts):
    text = "".join(parts)
    assert _ids(_private_tokenizer(tokenizer), text) == _ids(_full_copy(tokenizer), text)


def test_tokens_added_to_the_shared_tokenizer_later_are_not_seen(tokenizer):
    # As with a copy: the encoder's added-token split is fixed when it is built, and so is its tokenizer.
    private = _private_tokenizer(tokenizer)
    before = _ids(private, "zzqq <think>")
    tokenizer.add_tokens(["zzqq", "<think>"])
    assert _ids(private, "zzqq <think>") == before


def test_the_private_tokenizer_holds_while_the_shared_one_flips_its_flag(tokenizer):
    # transformers implements split_special_tokens=True by flipping the shared backend's flag for the call:
    # a thread encoding with the shared tokenizer meanwhile may get the real <|im_end|> (the race the private
    # tokenizer exists for). The private one, over the same model objects, must never see the flip.
    private = _private_tokenizer(tokenizer)
    expected = {text: _ids(private, text) for text in _TEXTS}
    errors: list[str] = []

    def encode_private() -> None:
        for _ in range(60):
            errors.extend(text for text in _TEXTS if _ids(private, text) != expected[text])

    def flip_shared() -> None:
        for _ in range(60):
            for text in _TEXTS:
                tokenizer(text, add_special_tokens=False, split_special_tokens=True)

    threads = [threading.Thread(target=encode_private) for _ in range(2)]
    threads += [threading.Thread(target=flip_shared) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
