"""Label scores: locating the label the parser read, the harmful/unharmful branch mass, and the real
model path (local top-k capture inside ``generate``, and a server's ``top_logprobs``)."""

from __future__ import annotations

import math

import pytest

from grvl_sdk import Guard, TokenLogprobs
from grvl_sdk.backends.local import LocalBackend
from grvl_sdk.scores import label_scores
from tests._forcing import forced_output


def _logprobs(tokens: list[str], alternatives: dict[int, dict[str, float]]) -> TokenLogprobs:
    return TokenLogprobs(tokens=tokens, alternatives=lambda step: alternatives.get(step, {tokens[step]: 0.0}))


def test_scores_from_branch_mass():
    tokens = [
        "<think>",
        "ok",
        "</think>",
        "<result>",
        "Request",
        ":",
        " harmful",
        "\n",
        "Response",
        ":",
        " un",
        "harmful",
        "</result>",
    ]
    alternatives = {
        6: {" harmful": math.log(0.8), " un": math.log(0.15), " The": math.log(0.05)},
        # " h" starts "harmful" too; "un" without the leading space is another prefix: ignored.
        10: {" un": math.log(0.6), " harmful": math.log(0.3), " h": math.log(0.05), "un": math.log(0.05)},
    }
    request, response = label_scores(_logprobs(tokens, alternatives))
    assert request == pytest.approx(0.8 / 0.95)
    assert response == pytest.approx(0.35 / 0.95)


def test_scores_read_the_label_the_parser_reads():
    # A label inside <think> is not the verdict; the one in <result> is.
    tokens = ["<think>", "Request", ":", " unharmful", "?", "</think>"]
    tokens += ["<result>", "Request", ":", " harmful", "</result>"]
    alternatives = {
        3: {" unharmful": math.log(0.99), " harmful": math.log(0.01)},
        9: {" harmful": math.log(0.7), " unharmful": math.log(0.3)},
    }
    assert label_scores(_logprobs(tokens, alternatives)) == (pytest.approx(0.7), None)


def test_label_inside_a_token_and_missing_alternatives():
    # The label starts inside a token (": harmful"): only alternatives with the same prefix count.
    tokens = ["<think>x</think><result>Request", ": harmful", "\nResponse: None</result>"]
    alternatives = {1: {": harmful": math.log(0.9), ": unharmful": math.log(0.05), " harmful": math.log(0.05)}}
    assert label_scores(_logprobs(tokens, alternatives)) == (pytest.approx(0.9 / 0.95), None)
    # The other branch outside the kept top-k: the score is 1.0.
    assert label_scores(_logprobs(tokens, {1: {": harmful": -0.01}}))[0] == 1.0
    assert label_scores(None) == (None, None)
    assert label_scores(_logprobs(["no", " label"], {})) == (None, None)


# -- the real model path ---------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


OUTPUT = "<think>\nreasons\n</think>\n<result>\nRequest: harmful\nResponse: unharmful\n</result>"


def test_local_scores_are_the_models_probability_at_the_label(tiny_guard):
    guard = Guard(tiny_guard.backend, micro_batching=False, cache_size=0, max_new_tokens=64)
    with forced_output(tiny_guard.backend, OUTPUT, [(30.0, 29.0), (27.0, 30.0)]):
        verdict = guard.check("hello", response="hi there")
    assert (verdict.request_label, verdict.response_label) == ("harmful", "unharmful")
    assert verdict.request_score == pytest.approx(_sigmoid(1.0), abs=1e-5)
    assert verdict.response_score == pytest.approx(_sigmoid(-3.0), abs=1e-5)
    # Without a response there is no response score, and scores can be turned off.
    with forced_output(tiny_guard.backend, OUTPUT, [(30.0, 29.0), (27.0, 30.0)]):
        request_only = guard.check("hello")
    assert request_only.response_score is None and request_only.request_score == pytest.approx(_sigmoid(1.0))
    # Only the steps that may start a label are kept (after ":", "*" or whitespace): scoring is cheap.
    with forced_output(tiny_guard.backend, OUTPUT, [(30.0, 29.0), (27.0, 30.0)]):
        generation = tiny_guard.backend.generate([tiny_guard.prepare("hello")], max_new_tokens=64)[0]
    tokens = generation.logprobs.tokens
    kept = [i for i in range(len(tokens)) if generation.logprobs.alternatives(i)]
    assert [i for i in kept if tokens[i] in (" harmful", " unharmful")] == [
        i for i, t in enumerate(tokens) if t in (" harmful", " unharmful")
    ]
    assert all(tokens[i - 1].rstrip().endswith((":", "*")) or not tokens[i - 1].strip() for i in kept)
    assert len(kept) < len(tokens) / 2
    unscored = LocalBackend(tiny_guard.backend.model, tiny_guard.backend.processor, score_top_k=0)
    with forced_output(unscored, OUTPUT, [(30.0, 29.0), (27.0, 30.0)]):
        plain = Guard(unscored, micro_batching=False).check("hello", response="hi there")
    assert plain.request_label == "harmful" and plain.request_score is None


def test_captured_logprobs_match_a_forward_pass(tiny_guard):
    import torch

    backend = LocalBackend(tiny_guard.backend.model, tiny_guard.backend.processor, score_every_step=True)
    item = tiny_guard.prepare("What is two plus two?")
    generation = backend.generate([item], max_new_tokens=4)[0]
    batch = backend.encoder.encode_batch([item], device="cpu", pixel_dtype=backend._pixel_dtype())
    with torch.inference_mode():
        logits = backend.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, -1]
    best = torch.log_softmax(logits.float(), -1).topk(backend.score_top_k)
    expected: dict[str, float] = {}
    for value, index in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        text = backend.tokenizer.decode([index])
        expected[text] = math.log(math.exp(expected.get(text, float("-inf"))) + math.exp(value))
    got = generation.logprobs.alternatives(0)
    assert got.keys() == expected.keys()
    assert all(got[text] == pytest.approx(expected[text], abs=1e-4) for text in expected)
    assert "".join(generation.logprobs.tokens) == generation.text


def test_remote_scores_from_server_logprobs_match_local(tiny_guard):
    pytest.importorskip("fastapi")
    from grvl_sdk.testing.server import LoopbackServer

    local = Guard(tiny_guard.backend, micro_batching=False, cache_size=0, max_new_tokens=64)
    with LoopbackServer(tiny_guard.backend) as server:
        remote = Guard.from_server(server.base_url, model=server.model_name, max_new_tokens=64, cache_size=0)
        with forced_output(tiny_guard.backend, OUTPUT, [(30.0, 29.0), (27.0, 30.0)]):
            from_server = remote.check("hello", response="hi there")
            from_local = local.check("hello", response="hi there")
        remote.close()
    assert from_server.raw_output == from_local.raw_output
    assert from_server.request_score == pytest.approx(from_local.request_score, abs=1e-6)
    assert from_server.response_score == pytest.approx(from_local.response_score, abs=1e-6)
    assert from_server.request_score == pytest.approx(_sigmoid(1.0), abs=1e-5)
