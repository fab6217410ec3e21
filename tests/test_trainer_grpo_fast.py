"""The RL stage's ``fast_fraction`` (issue 15): a seeded share of the GRPO prompts is pre-filled with the fast
tier's forced prefix, the policy samples only the labels, and the reward judges prefix + completion without its
length term. The run tests use a real TRL ``GRPOTrainer`` for two steps on the tiny guard trained with a fast
share (cached beside the trained guard)."""

from __future__ import annotations

import json
import math

import pytest

from grvl_sdk.errors import TrainingConfigError
from grvl_sdk.protocol.fast import FAST_PREFIX
from grvl_sdk.trainer import GuardRLConfig
from grvl_sdk.trainer.rewards import SafetyReward, judge, prefill

# -- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "half", None])
def test_fast_fraction_is_validated(bad):
    with pytest.raises(TrainingConfigError, match="fast_fraction") as caught:
        GuardRLConfig.from_dict({"fast_fraction": bad})
    assert caught.value.details.get("field") == "fast_fraction"
    from grvl_sdk.trainer import RSFTConfig

    with pytest.raises(TrainingConfigError, match="fast_fraction"):
        RSFTConfig.from_dict({"fast_fraction": bad})


def test_fast_fraction_through_the_cli_set_flag(tmp_path, capsys):
    from grvl_sdk.cli import main

    config = tmp_path / "rl.yaml"
    config.write_text(f"model_name_or_path: {tmp_path / 'missing'}\n")
    assert main(["train", "rl", "--config", str(config), "--set", "fast_fraction=1.5"]) != 0
    assert "fast_fraction must be a number in [0, 1], got 1.5" in capsys.readouterr().err
    assert GuardRLConfig.from_yaml(config, fast_fraction=0.25).fast_fraction == 0.25


# -- the reward on pre-filled rows --------------------------------------------------------------------

_THINK = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
_FAST = [*_THINK, {"role": "assistant", "content": [{"type": "text", "text": FAST_PREFIX}]}]


def _reward(beta=1.0, **kwargs):
    return SafetyReward(max_length=40, beta=beta, min_length=1, **kwargs)


def test_prefilled_rows_are_judged_on_prefix_and_completion_without_the_length_term():
    right = " harmful\nResponse: None\n</result>"
    wrong = " unharmful\nResponse: harmful\n</result>"
    half = " harmful\nResponse: harmful\n</result>"
    assert prefill(_FAST) == FAST_PREFIX and prefill(_THINK) == "" and prefill("plain text prompt") == ""
    logged: dict[str, float] = {}
    rewards = _reward(tier_metrics=True)(
        [_FAST, _FAST, _FAST, _THINK, _THINK],
        [[{"role": "assistant", "content": text}] for text in (right, wrong, half, wrong, "no verdict")],
        [[1] * 6, [1] * 7, [1] * 6, [1] * 10, [1] * 40],
        request_label=["harmful"] * 5,
        response_label=[None] * 5,
        log_metric=logged.__setitem__,
    )
    # Fast rows: r_safety - 1 (l counts as the cut-off, here 1), whatever the completion's length.
    assert rewards[:3] == [0.0, -1.0, -0.5]
    # A think row keeps the spec's formula: the same 10-token answer has no <result> of its own (I_format = 0),
    # and its penalty grows as the output shortens; the full-length unformatted one scores -1.
    assert rewards[3] == pytest.approx(-((40 / 10) ** 2)) and rewards[4] == -1.0
    assert judge(FAST_PREFIX + right, request_label="harmful", response_label=None).correct
    assert not judge(right, request_label="harmful", response_label=None).format_ok
    assert logged["fast_accuracy"] == pytest.approx(1 / 3) and logged["think_accuracy"] == 0.0
    assert logged["format_rate"] == pytest.approx(3 / 5)
    # Eco: the constant term is 1/β², the penalty of a think answer at or past the cut-off.
    assert _reward(beta=1 / 6)([_FAST], [wrong], [[1] * 7], request_label=["harmful"], response_label=[None]) == [
        pytest.approx(-36.0)
    ]
    # Without tier metrics (fast_fraction 0), no per-tier keys.
    quiet: dict[str, float] = {}
    _reward()(
        [_THINK], [right], [[1] * 6], request_label=["harmful"], response_label=[None], log_metric=quiet.__setitem__
    )
    assert "fast_accuracy" not in quiet and "think_accuracy" not in quiet


@pytest.mark.parametrize(
    "completion",
    [
        " <think>\nThe request mentions a bomb.\n</think>\n<result>\nRequest: harmful\nResponse: None\n</result>",
        "<think>\nreasoning\n</think>\n<result>\nRequest: harmful\nResponse: None\n</result>",
        " unharmful\nResponse: None\n</result>\n<result>\nRequest: harmful\nResponse: None\n</result>",
        " \nResponse: None\nRequest: harmful\n</result>",
        " harmful\nResponse: None\n</result> and then some more text",
        "harmful\nResponse: None\n</result>",  # no space: not the token fast mode reads
    ],
    ids=["reopens-think", "reopens-think-no-space", "second-result", "labels-reordered", "trailing-text", "no-space"],
)
def test_a_prefilled_row_is_formatted_only_in_the_fast_form(completion):
    # The lenient parser reads every one of these (prefix + completion) as a correct verdict: rewarded 0
    # (the best), RL would teach the fast tier to write reasoning where mode="fast" reads its label.
    assert judge(FAST_PREFIX + completion, request_label="harmful", response_label=None).format_ok
    logged: dict[str, float] = {}
    rewards = _reward(tier_metrics=True)(
        [_FAST, _FAST, _THINK],
        [completion, " harmful\nResponse: None\n</result>\n", completion],
        [[1] * 20, [1] * 7, [1] * 40],
        request_label=["harmful"] * 3,
        response_label=[None] * 3,
        log_metric=logged.__setitem__,
    )
    assert rewards[0] == -1.0 and rewards[1] == 0.0  # the fast form (trailing newline allowed) is still right
    assert logged["fast_accuracy"] == 0.5
    # A think row keeps the parser's reading (its own rules are the inference parser's).
    think = judge(completion, request_label="harmful", response_label=None)
    assert rewards[2] == (0.0 if think.correct else -1.0 + think.r_safety)


# -- a real GRPO run ------------------------------------------------------------------------------------

pytest.importorskip("trl")

# Pixel bounds of the tiny guard's vision training (grvl_sdk.testing.trained): the prompts RL sends equal the
# guard's own at inference.
_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}


@pytest.fixture(scope="module")
def fast_guard(tmp_path_factory):
    from tests.test_tiers_training import _build_fast_guard

    return _build_fast_guard(tmp_path_factory.mktemp("fast-guard"))


def _samples():
    import dataclasses

    from grvl_sdk.testing.toy_rule import toy_label, toy_samples
    from grvl_sdk.trainer.rl_data import RLSample

    chosen = [s for s in toy_samples(40, seed=11) if s.request][:8]
    assert any(s.images for s in chosen) and any(not s.images for s in chosen)  # both batch kinds
    labelled = [
        dataclasses.replace(s, request_label=toy_label(s.request), response_label=s.response and toy_label(s.response))
        for s in chosen
    ]
    return labelled, [RLSample.from_training_sample(s) for s in labelled]


def _prompt_ids(path, originals):
    """(think ids, fast ids) of each sample as the guard itself encodes them: the local backend's prompt encoder,
    then the forced prefix as ``mode="fast"`` appends it."""
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.trainer.render import image_token_count, prompt_encoder
    from grvl_sdk.types import GuardInput

    encoder = prompt_encoder(load_processor(str(path)), **_PIXELS)
    patch = int(encoder.image_processor.patch_size)
    prefix = encoder._encode_text(FAST_PREFIX)
    out = []
    for sample in originals:
        item = GuardInput(text=sample.request, response=sample.response, images=tuple(sample.images))
        counts = [
            image_token_count(i, patch_size=patch, merge_size=encoder.merge_size, **_PIXELS) for i in sample.images
        ]
        think = encoder.token_ids(item, counts)
        out.append((tuple(think), tuple(think + prefix)))
    return out


class _Spy:
    """Records what reaches ``model.generate`` (prompt ids without padding) through a real trainer callback."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Recorder(TrainerCallback):
            def __init__(self) -> None:
                self.rows: list[tuple[int, ...]] = []

            def on_train_begin(self, args, state, control, model=None, **kwargs):
                original = model.generate

                def generate(*a, input_ids=None, attention_mask=None, **kw):
                    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
                        self.rows.append(tuple(i for i, m in zip(ids, mask, strict=True) if m))
                    return original(*a, input_ids=input_ids, attention_mask=attention_mask, **kw)

                model.generate = generate

        return Recorder()


def test_a_seeded_share_of_prompts_is_prefilled_and_scored_on_prefix_plus_completion(fast_guard, tmp_path, monkeypatch):
    from grvl_sdk.trainer import train_rl
    from grvl_sdk.trainer.render import fast_rows

    originals, samples = _samples()
    expected = _prompt_ids(fast_guard, originals)
    chosen = fast_rows(len(samples), 0.5, 3)
    assert len(chosen) == 4 and chosen != fast_rows(len(samples), 0.5, 4)

    scored: list[tuple[str, str, float, str, str | None]] = []
    original = SafetyReward.__call__

    def spy(self, prompts, completions, completion_ids=None, **kwargs):
        rewards = original(self, prompts, completions, completion_ids, **kwargs)
        texts = [c[-1]["content"] for c in completions]
        gold = kwargs["request_label"], kwargs["response_label"]
        scored.extend(zip([prefill(p) for p in prompts], texts, rewards, *gold, strict=True))
        return rewards

    monkeypatch.setattr(SafetyReward, "__call__", spy)
    recorder = _Spy()
    config = GuardRLConfig(
        model_name_or_path=str(fast_guard), output_dir=str(tmp_path / "rl"), fast_fraction=0.5, seed=3,
        num_generations=2, prompts_per_rollout=8, prompts_per_update=8, per_device_train_batch_size=16,
        max_completion_length=16, max_steps=1, learning_rate=1e-4, temperature=1.0, bf16=False,
        gradient_checkpointing=False, use_cpu=True, progress=False, save_steps=1000, **_PIXELS,
    )  # fmt: skip
    result = train_rl(config, train_samples=samples, callbacks=[recorder])

    # What reached generation: every prompt of the dataset (one rollout of 8 prompts × 2 answers), the seeded share
    # with the forced prefix appended exactly as mode="fast" appends it, the others as the guard's own prompt.
    assert len(recorder.rows) == 16
    want = {expected[i][1] if i in chosen else expected[i][0] for i in range(len(samples))}
    assert set(recorder.rows) == want
    assert sum(row in {e[1] for e in expected} for row in recorder.rows) == 8

    # The reward saw the prefix of each pre-filled row and judged prefix + completion, without a length term.
    fast = [row for row in scored if row[0]]
    assert len(scored) == 16 and len(fast) == 8 and all(row[0] == FAST_PREFIX for row in fast)
    for prefix, text, reward, request, response in fast:
        verdict = judge(prefix + text, request_label=request, response_label=response)
        assert reward == -1.0 + verdict.r_safety, (text, reward)
    # The fast-trained guard writes the labels after the prefix: judged with the prefix, its answers are
    # well-formed (judged alone, none could be: the verdict block opens in the prefix).
    assert sum(judge(p + t, request_label=q, response_label=r).format_ok for p, t, _, q, r in fast) >= 6
    assert not any(judge(t, request_label=q, response_label=r).format_ok for _, t, _, q, r in fast)
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert any(r.get("fast_accuracy") is not None for r in logged)
    summary = json.loads((result.output_dir / "data_summary.json").read_text())
    assert summary["train"]["fast_prompts"] == 4
    assert not any(math.isnan(row[2]) for row in scored)
