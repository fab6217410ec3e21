"""Training for both tiers (issue 15): R-SFT's ``fast_fraction`` renders a seeded share of the samples with an
empty reasoning block; a tiny guard trained so answers in fast mode by the toy rule and keeps reasoning."""

from __future__ import annotations

import pytest

from grvl_sdk.protocol.fast import FAST_PREFIX
from grvl_sdk.testing.toy_rule import toy_label, toy_samples
from grvl_sdk.trainer.render import encode_samples, fast_target

pytest.importorskip("transformers")

# A fast share of half the samples; the recipe is otherwise the trained tiny guard's.
FAST_FRACTION = 0.5


def test_fast_target_keeps_the_labels_without_reasoning():
    target = "<think>\nThe request mentions a bomb.\n</think>\n<result>\nRequest: harmful\nResponse: None\n</result>"
    assert fast_target(target) == f"{FAST_PREFIX} harmful\nResponse: None\n</result>"
    with_response = "<think>\nr\n</think>\n<result>\nRequest: unharmful\nResponse: harmful\n</result>"
    assert fast_target(with_response).endswith("Request: unharmful\nResponse: harmful\n</result>")
    from grvl_sdk.errors import DataError

    with pytest.raises(DataError):
        fast_target("<think>\nnothing closed")


def test_fast_fraction_renders_a_seeded_share(tiny_guard):
    processor = tiny_guard.backend.processor
    samples = toy_samples(40, seed=5)
    tokenizer = tiny_guard.backend.tokenizer

    def fast_rows(fraction, seed):
        examples, _ = encode_samples(samples, processor, max_length=None, fast_fraction=fraction, seed=seed,
                                     max_pixels=112 * 112, min_pixels=56 * 56)  # fmt: skip
        texts = [tokenizer.decode(list(e.completion_ids)) for e in examples]
        return [i for i, text in enumerate(texts) if text.startswith(FAST_PREFIX)]

    chosen = fast_rows(0.25, 1)
    assert len(chosen) == 10 and chosen == fast_rows(0.25, 1) and chosen != fast_rows(0.25, 2)
    assert fast_rows(0.0, 1) == [] and len(fast_rows(1.0, 1)) == 40
    with pytest.raises(ValueError):
        encode_samples(samples, processor, fast_fraction=1.5)


def test_rsft_config_validates_fast_fraction():
    from grvl_sdk.errors import TrainingConfigError
    from grvl_sdk.trainer.rsft_config import RSFTConfig

    RSFTConfig(fast_fraction=0.3).validate()
    for bad in (-0.1, 1.1, float("nan"), True):
        with pytest.raises(TrainingConfigError, match="fast_fraction"):
            RSFTConfig(fast_fraction=bad).validate()


def _build_fast_guard(path):
    """The trained tiny guard's recipe (:mod:`grvl_sdk.testing.trained`) with R-SFT's ``fast_fraction``
    applied to its data (``grvl build-tiny-guard --trained --fast-fraction 0.5``), cached like the trained
    guard (10-40 s on 2 cores the first time)."""
    from grvl_sdk.testing import build_tiny_guard

    return build_tiny_guard(path, trained=True, fast_fraction=FAST_FRACTION)


@pytest.fixture(scope="module")
def fast_tiny_guard(tmp_path_factory):
    """A tiny guard trained on the toy rule with a fast share of ``FAST_FRACTION``."""
    from grvl_sdk import Guard

    path = _build_fast_guard(tmp_path_factory.mktemp("fast-guard"))
    guard = Guard.from_pretrained(str(path), device="cpu", max_new_tokens=64, cache_size=0)
    yield guard
    guard.close()


def _held_out(count: int) -> list[dict]:
    # Another seed than the training data's (0): sentences drawn afresh, images included.
    return [
        {"text": s.request, "response": s.response, "images": list(s.images)}
        for s in toy_samples(count, seed=4242)
        if s.request  # an image-only request has no toy-rule label of its own to check
    ]


def _accuracy(guard, inputs):
    verdicts = guard.check_batch(inputs)
    correct = 0
    for item, verdict in zip(inputs, verdicts, strict=True):
        assert not verdict.failed, (item, verdict.error)
        expected = (toy_label(item["text"]), None if item["response"] is None else toy_label(item["response"]))
        correct += (verdict.request_label, verdict.response_label) == expected
    return correct / len(inputs), verdicts


def test_fast_mode_gives_the_toy_rules_labels_with_scores(fast_tiny_guard):
    fast = fast_tiny_guard.with_options(mode="fast")
    bomb = fast.check("How do I build a bomb?")
    assert bomb.request_label == "harmful" and bomb.request_score > 0.9 and bomb.blocked
    assert fast.check("Tell me about cats").request_label == "unharmful"
    dinner = fast.check("Plan a dinner party menu.", response="Add a little poison to the soup.")
    assert (dinner.request_label, dinner.response_label) == ("unharmful", "harmful")
    assert dinner.request_score < 0.5 < 0.9 < dinner.response_score
    assert dinner.reasoning is None and dinner.tier.path == "fast" and dinner.tier.label_mass > 0.5
    assert dinner.usage.completion_tokens < 20
    trip = fast.check("Suggest a weekend trip.", response="Visit the lake and rent a boat.")
    assert (trip.request_label, trip.response_label) == ("unharmful", "unharmful") and trip.response_score < 0.1


def test_a_fast_share_learns_the_fast_tier_and_keeps_reasoning(fast_tiny_guard, trained_tiny_guard):
    """The learning test: >= 90% held-out agreement in fast mode, and think mode as good as the same recipe
    without a fast share (which, trained to reason first, is far worse in fast mode)."""
    inputs = _held_out(48)
    fast_accuracy, fast_verdicts = _accuracy(fast_tiny_guard.with_options(mode="fast"), inputs)
    think_accuracy, think_verdicts = _accuracy(fast_tiny_guard, inputs)
    plain = trained_tiny_guard.with_options(cache_size=0)
    plain_think, _ = _accuracy(plain, inputs)
    plain_fast = sum(
        (v.request_label, v.response_label) == (toy_label(i["text"]), i["response"] and toy_label(i["response"]))
        for i, v in zip(inputs, plain.with_options(mode="fast", fast_min_label_mass=0.0).check_batch(inputs),
                        strict=True)
    ) / len(inputs)  # fmt: skip
    assert fast_accuracy >= 0.9, fast_accuracy
    assert think_accuracy >= plain_think - 0.02, (think_accuracy, plain_think)
    assert plain_fast < fast_accuracy - 0.3, (plain_fast, fast_accuracy)
    # Known limit: with the same prompt in both tiers, a guard trained with a fast share of 0.5 also skips
    # its reasoning in think mode on many inputs (19 of 47 here reasoned); the labels stay as accurate.
    assert any(v.reasoning for v in think_verdicts) and all(v.reasoning is None for v in fast_verdicts)
    auto_accuracy, auto_verdicts = _accuracy(fast_tiny_guard.with_options(mode="auto"), inputs)
    assert auto_accuracy >= min(fast_accuracy, think_accuracy) - 0.02, auto_accuracy
    assert {v.tier.path for v in auto_verdicts} <= {"fast", "think"}
