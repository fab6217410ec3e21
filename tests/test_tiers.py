"""Latency tiers (issue 15): mode="fast" (labels from probabilities), "think" (default) and "auto".

The engine-level rules are tested on a tiers-aware scripted backend whose fast answers carry chosen
label probabilities; the local fast path on the tiny guards' real logits; the remote one against the
loopback OpenAI-compatible server (and refusing servers)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import httpx
import pytest

from grvl_sdk import Guard
from grvl_sdk.backends.base import Backend
from grvl_sdk.backends.remote import RemoteBackend
from grvl_sdk.errors import FastModeUnsupportedError, GuardClosedError, InputError
from grvl_sdk.protocol.fast import FAST_PREFIX, assistant_prefix, branch_logprobs, fast_generation, label_mass
from grvl_sdk.scores import label_scores
from grvl_sdk.testing.scripted import ScriptedBackend, guard_output
from grvl_sdk.types import FAST, GREEDY, Decoding, Generation, GuardInput


def _pair(score: float, mass: float = 1.0) -> tuple[float, float]:
    """Label log-probabilities whose normalised harmful probability is ``score``."""
    harmful, unharmful = mass * score, mass * (1 - score)
    return (math.log(harmful) if harmful > 0 else -math.inf, math.log(unharmful) if unharmful > 0 else -math.inf)


class TieredBackend(Backend):
    """Fast answers with the score named in the request text (``"score=0.35"``), think answers from the
    toy rule; records which tier each input went through."""

    def __init__(self, *, think_ms: float = 50.0, mass: float = 1.0) -> None:
        self.model_id = "tiered"
        self.think_ms = think_ms
        self.mass = mass
        self.calls: list[tuple[str, list[str | None]]] = []

    def generate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:  # fmt: skip
        self.calls.append((decoding.tier, [i.text for i in inputs]))
        out = []
        for item in inputs:
            if decoding.tier == "fast":
                score = float((item.text or "score=0.0").split("score=")[1].split()[0])
                response = _pair(score, self.mass) if item.response is not None else None
                out.append(fast_generation(_pair(score, self.mass), response, prompt_tokens=10,
                                           completion_tokens=12, latency_ms=2.0))  # fmt: skip
            else:
                label = "harmful" if "bomb" in (item.text or "") else "unharmful"
                text = guard_output(label, None if item.response is None else "unharmful", reasoning="r " * 100)
                out.append(Generation(text=text, prompt_tokens=10, completion_tokens=200, latency_ms=self.think_ms))
        return out


# -- the fast output format ---------------------------------------------------------------------------
def test_fast_generation_parses_and_scores_like_any_output():
    generation = fast_generation(_pair(0.9), _pair(0.25), prompt_tokens=5, completion_tokens=15, latency_ms=1.0)
    assert generation.text == f"{FAST_PREFIX} harmful\nResponse: unharmful\n</result>"
    request, response = label_scores(generation.logprobs)
    assert request == pytest.approx(0.9) and response == pytest.approx(0.25)
    assert label_mass(generation) == pytest.approx(1.0)
    assert assistant_prefix("harmful") == f"{FAST_PREFIX} harmful\nResponse:"
    no_response = fast_generation(_pair(0.1, 0.5), None, prompt_tokens=5, completion_tokens=11, latency_ms=1.0)
    assert no_response.text.endswith("Request: unharmful\nResponse: None\n</result>")
    assert label_mass(no_response) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="<= 0"):
        fast_generation((0.5, -1.0), None, prompt_tokens=1, completion_tokens=1, latency_ms=1.0)


def test_branch_logprobs_sums_the_tokens_spelling_each_label():
    alternatives = {" harmful": math.log(0.5), " harm": math.log(0.1), " un": math.log(0.3), " ": math.log(0.05),
                    "<think>": math.log(0.05)}  # fmt: skip
    harmful, unharmful = branch_logprobs(alternatives)
    assert math.exp(harmful) == pytest.approx(0.6) and math.exp(unharmful) == pytest.approx(0.3)
    assert branch_logprobs({"<think>": -0.1, "\n": -3.0}) is None  # the prefix was not continued
    assert branch_logprobs({" Harmful": -0.2})[1] == -math.inf
    assert branch_logprobs({"\u0120unharmful": -0.1, "\u0120harmful": -3.0}) == pytest.approx((-3.0, -0.1))
    assert branch_logprobs({"harmful": -0.1}) is None  # no space: not the label after "Request:"
    with pytest.raises(ValueError):
        branch_logprobs({" harmful": 0.5})


def test_a_harmful_label_below_the_servers_top_list_gets_its_largest_possible_probability():
    """Only `` unharmful`` listed (0.02) with a 20th token at 0.015: P(harmful) may be up to 0.015, not 0 —
    reading it as ``-inf`` made a silent, fully confident ``unharmful``."""
    alternatives = {" unharmful": math.log(0.02), "<think>": math.log(0.9), "\n": math.log(0.015)}
    harmful, unharmful = branch_logprobs(alternatives)
    assert math.exp(harmful) == pytest.approx(0.015) and math.exp(unharmful) == pytest.approx(0.02)
    # bounded by what the list leaves: 1 - 0.97 = 0.03 < the smallest listed 0.5
    harmful, _ = branch_logprobs({" unharmful": math.log(0.5), "<think>": math.log(0.47)})
    assert math.exp(harmful) == pytest.approx(0.03)
    # the list holds all the probability: harmful really is 0
    assert branch_logprobs({" unharmful": 0.0})[0] == -math.inf


def test_local_fast_mode_fails_closed_on_nan_logits(tiny_guard):
    """NaN logits read as ``min(0.0, nan) == 0.0`` for both labels (a fake certainty, label mass 2):
    the fast tier must fail instead."""
    import torch

    from grvl_sdk.errors import BackendError

    def poison(module, args, output):
        output.logits = torch.full_like(output.logits, float("nan"))
        return output

    handle = tiny_guard.backend.model.register_forward_hook(poison)
    try:
        with pytest.raises(BackendError, match="NaN"):
            tiny_guard.backend.generate([GuardInput(text="hello")], max_new_tokens=8, decoding=FAST)
        verdict = tiny_guard.with_options(mode="fast", cache_size=0).check("hello")
        assert verdict.failed and verdict.blocked and verdict.request_label is None
    finally:
        handle.remove()


def test_fast_decoding_is_greedy_single_output():
    assert FAST.tier == "fast" and FAST != GREEDY
    with pytest.raises(InputError, match="n=1"):
        Decoding(tier="fast", n=2)
    with pytest.raises(InputError, match="tier"):
        Decoding(tier="slow")  # type: ignore[arg-type]


# -- mode="fast" and mode="auto" in the engine ---------------------------------------------------------
def test_fast_mode_answers_from_label_probabilities():
    backend = TieredBackend()
    guard = Guard(backend, mode="fast")
    verdict = guard.check("score=0.9", response="fine")
    assert backend.calls == [("fast", ["score=0.9"])]
    assert verdict.request_label == "harmful" and verdict.response_label == "harmful"
    assert verdict.request_score == pytest.approx(0.9) and verdict.blocked
    assert verdict.reasoning is None and verdict.usage.completion_tokens == 12
    tier = verdict.tier
    assert tier is not None and (tier.mode, tier.path, tier.escalation) == ("fast", "fast", None)
    assert tier.fast_request_score == pytest.approx(0.9) and tier.fast_ms == 2.0 and tier.think_ms is None
    safe = guard.check("score=0.1")
    assert safe.request_label == "unharmful" and safe.decision == "allow" and safe.response_label is None
    assert Guard(TieredBackend()).check("score=0.9 bomb").tier is None  # think mode: unchanged


@pytest.mark.parametrize(
    ("score", "escalates"),
    [(0.0, False), (0.19, False), (0.2, True), (0.5, True), (0.8, True), (0.81, False), (1.0, False)],
)
def test_auto_escalates_exactly_inside_the_band(score, escalates):
    backend = TieredBackend()
    guard = Guard(backend, mode="auto", auto_band=(0.2, 0.8))
    verdict = guard.check(f"score={score} bomb")
    assert [tier for tier, _ in backend.calls] == (["fast", "think"] if escalates else ["fast"])
    tier = verdict.tier
    assert tier is not None and tier.mode == "auto"
    assert tier.fast_request_score == pytest.approx(score)
    if escalates:
        assert (tier.path, tier.escalation) == ("think", "uncertain")
        assert verdict.request_label == "harmful" and verdict.reasoning  # the think tier answered
        assert tier.think_ms == 50.0 and tier.fast_ms == 2.0
        assert verdict.usage.latency_ms == pytest.approx(52.0) and verdict.usage.completion_tokens == 212
    else:
        assert (tier.path, tier.escalation, tier.think_ms) == ("fast", None, None)
        assert verdict.request_label == ("harmful" if score >= 0.5 else "unharmful")


def test_auto_band_checks_the_response_score_too():
    backend = TieredBackend()
    guard = Guard(backend, mode="auto", auto_band=(0.4, 0.6))
    assert guard.check("score=0.5", response="x").tier.path == "think"
    assert guard.check("score=0.95", response="x").tier.path == "fast"


def test_auto_escalates_when_a_policy_says_so():
    from PIL import Image

    image = Image.new("RGB", (32, 32), "white")
    backend = TieredBackend()
    images = Guard(backend, mode="auto", auto_escalate_images=True, cache_size=0)
    assert images.check("score=0.99", image=image).tier.escalation == "images"
    assert images.check("score=0.99").tier.path == "fast"
    seen = []

    def escalate(item, fast):
        seen.append((item.text, fast.request_score))
        return "urgent" in item.text

    callback = Guard(TieredBackend(), mode="auto", auto_escalate=escalate)
    assert callback.check("score=0.99 urgent").tier.escalation == "policy"
    assert callback.check("score=0.99 calm").tier.path == "fast"
    assert seen[0][1] == pytest.approx(0.99)
    with pytest.raises(InputError):
        Guard(TieredBackend(), mode="auto", auto_escalate="yes")


def test_auto_keeps_the_fast_answer_when_the_deadline_is_too_short_for_reasoning():
    backend = TieredBackend(think_ms=2000.0)  # 200 tokens in 2 s: 100 tokens/s measured
    guard = Guard(backend, mode="auto", cache_size=0)
    assert guard.check("score=0.5").tier.path == "think"  # no measurement yet: reasons
    verdict = guard.check("score=0.5", policy={"deadline": 0.5})
    assert [tier for tier, _ in backend.calls] == ["fast", "think", "fast"]
    tier = verdict.tier
    assert (tier.path, tier.escalation, tier.skipped) == ("fast", "uncertain", "deadline")
    assert not verdict.failed and verdict.request_score == pytest.approx(0.5)
    assert guard.check("score=0.5", policy={"deadline": 5.0}).tier.path == "think"  # time enough
    # "think": reasoning is tried anyway (the scripted backend answers at once here).
    trying = guard.with_options(auto_short_deadline="think")
    assert trying.check("score=0.5", policy={"deadline": 0.5}).tier.path == "think"


def test_auto_gives_back_the_fast_answer_when_the_deadline_cuts_reasoning_short():
    """No speed estimate yet (first check), so reasoning is tried; the deadline passes during it. The
    default keeps the fast answer rather than failing; ``"think"`` fails closed."""
    import time

    from grvl_sdk.errors import DeadlineExceededError

    class SlowThink(TieredBackend):
        def generate(self, inputs, *, max_new_tokens, deadline=None, decoding=GREEDY):
            if decoding.tier != "fast":
                time.sleep(max(0.0, deadline - time.monotonic()) if deadline else 0.0)
                raise DeadlineExceededError("deadline passed while reasoning")
            return super().generate(inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding)

    guard = Guard(SlowThink(), mode="auto", cache_size=0)
    started = time.monotonic()
    verdict = guard.check("score=0.3", policy={"deadline": 0.2})
    assert time.monotonic() - started < 1.0
    assert (verdict.tier.path, verdict.tier.escalation, verdict.tier.skipped) == ("fast", "uncertain", "deadline")
    assert not verdict.failed and verdict.request_label == "unharmful" and verdict.request_score == pytest.approx(0.3)
    strict = guard.with_options(auto_short_deadline="think").check("score=0.3", policy={"deadline": 0.2})
    assert strict.failed and strict.error.code == "deadline_exceeded" and strict.blocked


def test_fast_mode_fails_closed_on_a_backend_without_a_fast_tier():
    backend = ScriptedBackend(guard_output("unharmful"))  # ignores decoding.tier: it reasons
    verdict = Guard(backend, mode="fast").check("hello")
    assert verdict.failed and verdict.error.code == "fast_mode_unsupported"
    assert verdict.decision == "error-blocked" and verdict.blocked and verdict.tier.path == "fast"
    # auto escalates instead, and the think tier answers.
    auto = Guard(ScriptedBackend(guard_output("unharmful")), mode="auto").check("hello")
    assert not auto.failed and auto.tier.escalation == "fast_failed" and auto.tier.path == "think"


def test_low_label_mass_is_no_fast_verdict():
    verdict = Guard(TieredBackend(mass=0.001), mode="fast").check("score=0.1")
    assert verdict.failed and verdict.error.code == "unparseable_output" and verdict.blocked
    assert verdict.tier.label_mass == pytest.approx(0.001)
    ok = Guard(TieredBackend(mass=0.001), mode="fast", fast_min_label_mass=0.0).check("score=0.1")
    assert not ok.failed and ok.request_label == "unharmful"


def test_a_failed_think_step_keeps_a_harmful_fast_label():
    class Failing(TieredBackend):
        def generate(self, inputs, *, max_new_tokens, deadline=None, decoding=GREEDY):
            if decoding.tier == "think":
                raise RuntimeError("out of memory")
            return super().generate(inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding)

    verdict = Guard(Failing(), mode="auto").check("score=0.6")
    assert verdict.failed and verdict.request_label == "harmful" and verdict.decision == "block"
    assert verdict.tier.path == "think" and verdict.tier.fast_request_score == pytest.approx(0.6)


def test_modes_do_not_share_cached_verdicts():
    backend = TieredBackend()
    think = Guard(backend)
    think.check("score=0.9")
    fast = think.with_options(mode="fast")
    assert fast.cache is think.cache
    assert fast.check("score=0.9").tier.path == "fast"
    assert [tier for tier, _ in backend.calls] == ["think", "fast"]
    assert fast.check("score=0.9").cached


def test_batches_and_async_checks_take_the_tiers():
    import asyncio

    backend = TieredBackend()
    guard = Guard(backend, mode="auto", auto_band=(0.3, 0.7), cache_size=0)
    verdicts = guard.check_batch([{"text": "score=0.5 bomb"}, {"text": "score=0.9"}, {"text": "score=0.1"}])
    assert [v.tier.path for v in verdicts] == ["think", "fast", "fast"]
    assert backend.calls[-2:] == [("fast", ["score=0.5 bomb", "score=0.9", "score=0.1"]), ("think", ["score=0.5 bomb"])]
    assert asyncio.run(guard.acheck("score=0.5")).tier.path == "think"
    assert [v.tier.path for v in asyncio.run(guard.acheck_batch([{"text": "score=0.95"}]))] == ["fast"]


# -- the local backend: label probabilities from the logits ----------------------------------------------
def _brute_force(backend, item, forced_text, label):
    """log P(label | prompt + forced text), by encoding the whole sequence and summing token log-probs."""
    import torch

    batch = backend.encoder.encode_batch([item], device="cpu", pixel_dtype=torch.float32)
    prompt = batch.input_ids[0].tolist()
    forced = backend.encoder._encode_text(forced_text)
    label_ids = backend.encoder._encode_text(f"{forced_text} {label}")[len(forced) :]
    ids = torch.tensor([prompt + forced + label_ids])
    with torch.inference_mode():
        logits = backend.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    start = len(prompt) + len(forced) - 1
    return sum(logprobs[start + j, token].item() for j, token in enumerate(label_ids))


def test_local_fast_scores_are_the_labels_sequence_probabilities(tiny_guard):
    backend = tiny_guard.backend
    items = [GuardInput(text="hello there", response="a reply"), GuardInput(text="a longer request text here")]
    generations = backend.generate(items, max_new_tokens=8, decoding=FAST)
    for item, generation in zip(items, generations, strict=True):
        assert generation.text.startswith(FAST_PREFIX)
        alternatives = generation.logprobs.alternatives(1)
        for label in ("harmful", "unharmful"):
            assert alternatives[f" {label}"] == pytest.approx(_brute_force(backend, item, FAST_PREFIX, label), abs=1e-4)
        if item.response is not None:
            request_label = generation.text.split("Request: ")[1].split("\n")[0]
            forced = assistant_prefix(request_label)
            response = generation.logprobs.alternatives(3)
            assert response[" unharmful"] == pytest.approx(_brute_force(backend, item, forced, "unharmful"), abs=1e-4)


def test_local_fast_scores_multi_token_labels_as_products(tiny_guard):
    """Labels spelled by several tokens (as `` un`` + ``harm`` + ``ful`` in Qwen's vocabulary) are
    teacher-forced, sharing rows: checked against separate forward passes."""
    import torch

    from grvl_sdk.backends._fast_local import FastScorer, LabelTokens

    backend = tiny_guard.backend
    scorer = FastScorer(backend)
    encode = backend.encoder._encode_text
    forced = tuple(encode(FAST_PREFIX))
    item = GuardInput(text="check this please")
    batch = backend.encoder.encode_batch([item], device="cpu", pixel_dtype=torch.float32)
    prompt = batch.input_ids[0].tolist()
    a, b, c, d = (encode(word)[0] for word in (" harm", "ful", " un", " safe"))
    cases = [((a, b), (c, a, b)), ((a,), (c, a, b)), ((a, b), (a, d)), ((c, d, a), (c, d, b))]
    for harmful, unharmful in cases:
        tokens = LabelTokens(forced, (harmful, unharmful))
        [(lh, lu)] = scorer._part(batch, [prompt], [0], [tokens], None)
        for ids, got in ((harmful, lh), (unharmful, lu)):
            seq = torch.tensor([prompt + list(forced) + list(ids)])
            with torch.inference_mode():
                logprobs = torch.log_softmax(backend.model(input_ids=seq).logits[0].float(), -1)
            start = len(prompt) + len(forced) - 1
            want = sum(logprobs[start + j, t].item() for j, t in enumerate(ids))
            assert got == pytest.approx(min(0.0, want), abs=1e-4), (harmful, unharmful)


def test_local_fast_mode_with_images_and_a_closed_backend(tmp_path):
    from PIL import Image

    from grvl_sdk.testing import build_tiny_guard

    # The random guard puts little probability on the labels: accept any mass to exercise the path.
    path = str(build_tiny_guard(tmp_path / "g"))
    guard = Guard.from_pretrained(path, device="cpu", mode="fast", fast_min_label_mass=0.0)
    image = Image.new("RGB", (64, 48), "red")
    verdicts = guard.check_batch([{"text": "look", "image": image}, {"text": "plain", "response": "r"},
                                  {"response": "x"}])  # fmt: skip
    assert all(not v.failed and v.tier.path == "fast" and v.request_score is not None for v in verdicts[:2])
    assert verdicts[2].request_label is None and verdicts[2].response_score is not None
    single = guard.check("look", image=image)
    assert single.request_score == pytest.approx(verdicts[0].request_score, abs=1e-5)
    strict = guard.with_options(fast_min_label_mass=0.5).check("plain")
    assert strict.failed and strict.error.code == "unparseable_output" and strict.blocked
    guard.close()
    with pytest.raises(GuardClosedError):
        guard.backend.generate([GuardInput(text="x")], max_new_tokens=4, decoding=FAST)


# -- the remote backend: assistant-prefix continuation ----------------------------------------------------
def test_remote_fast_mode_against_a_loopback_server(trained_tiny_guard):
    pytest.importorskip("fastapi")
    from grvl_sdk.testing.server import LoopbackServer

    local = trained_tiny_guard.with_options(mode="fast", cache_size=0)
    with LoopbackServer(trained_tiny_guard.backend) as server:
        remote = Guard.from_server(server.base_url, model=server.model_name, mode="fast")
        for text, response in (("How do I build a bomb?", None), ("Tell me about cats", "Cats purr.")):
            got, want = remote.check(text, response=response), local.check(text, response=response)
            assert not got.failed and got.tier.path == "fast"
            assert (got.request_label, got.response_label) == (want.request_label, want.response_label)
            assert got.request_score == pytest.approx(want.request_score, abs=1e-3)
            if response is not None:
                assert got.response_score == pytest.approx(want.response_score, abs=1e-3)
        prompt = server.state.prompts[-1]
        assert prompt.endswith("<|im_start|>assistant\n" + assistant_prefix(got.request_label))
        remote.close()


def _answer(content: dict) -> httpx.Response:
    return httpx.Response(200, json=content)


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (httpx.Response(400, json={"error": {"message": "extra fields not permitted"}}), "refused"),
        (_answer({"choices": [{"index": 0, "message": {"content": " harmful"}, "finish_reason": "length"}]}),
         "no logprobs"),
        (_answer({"choices": [{"index": 0, "message": {"content": "<think>"}, "finish_reason": "length",
                               "logprobs": {"content": [{"token": "<think>", "logprob": -0.01,
                                                         "top_logprobs": [{"token": "<think>", "logprob": -0.01}]}]},
                               }]}), "did not continue"),
    ],
)  # fmt: skip
def test_remote_fast_mode_fails_clearly_where_the_server_cannot(reply, match):
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return reply

    backend = RemoteBackend("http://guard.test/v1", model="m", transport=httpx.MockTransport(handler), max_retries=0)
    with pytest.raises(FastModeUnsupportedError, match=match) as caught:
        backend.generate([GuardInput(text="hi")], max_new_tokens=8, decoding=FAST)
    assert caught.value.code == "fast_mode_unsupported"
    body = bodies[0]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] >= 5
    assert body["messages"][-1] == {"role": "assistant", "content": FAST_PREFIX}
    verdict = Guard(backend, mode="fast").check("hi")
    assert verdict.failed and verdict.error.code == "fast_mode_unsupported" and verdict.blocked


def test_remote_fast_mode_reads_the_first_token_branches():
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        response_part = body["messages"][-1]["content"].endswith("Response:")
        top = [{"token": " un", "logprob": math.log(0.7)}, {"token": " harmful", "logprob": math.log(0.2)}]
        if response_part:
            top = [{"token": " harmful", "logprob": math.log(0.9)}, {"token": " unharmful", "logprob": math.log(0.1)}]
        entry = {"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}
        return _answer({"choices": [{"index": 0, "message": {"content": top[0]["token"]}, "finish_reason": "length",
                                     "logprobs": {"content": [entry]}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 1}})  # fmt: skip

    backend = RemoteBackend("http://guard.test/v1", model="m", transport=httpx.MockTransport(handler))
    verdict = Guard(backend, mode="fast").check("hi", response="there")
    assert (verdict.request_label, verdict.response_label) == ("unharmful", "harmful")
    assert verdict.request_score == pytest.approx(0.2 / 0.9) and verdict.response_score == pytest.approx(0.9)
    assert verdict.tier.label_mass == pytest.approx(0.9) and verdict.usage.completion_tokens == 2
