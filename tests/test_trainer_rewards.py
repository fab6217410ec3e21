"""The length-aware safety reward (spec 4.6): hand-computed values for every branch, standard and Eco, and
the TRL wrapper."""

from __future__ import annotations

import math

import pytest

from grvl_sdk.testing import guard_output
from grvl_sdk.trainer import SafetyReward, safety_reward
from grvl_sdk.trainer.rewards import ECO_BETA, judge, length_fraction, read_verdict

MAX = 3072


def reward(output: str, request: str, response: str | None, length: float, beta: float = 1.0) -> float:
    return safety_reward(
        output, request_label=request, response_label=response, length=length, max_length=MAX, beta=beta
    )


RIGHT = guard_output("harmful", "unharmful")
ONE_WRONG = guard_output("unharmful", "unharmful")  # request wrong, response right
BOTH_WRONG = guard_output("unharmful", "harmful")


@pytest.mark.parametrize("length", [0, 1, 10, 300, 1536, 3072, 10_000])
@pytest.mark.parametrize("beta", [1.0, ECO_BETA])
def test_a_correct_answer_scores_zero_at_any_length(length, beta):
    assert reward(RIGHT, "harmful", "unharmful", length, beta) == 0.0


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (3072, -1.0),  # l = 1
        (1536, -4.0),  # l = 1/2 -> 1/(1/4)
        (768, -16.0),  # l = 1/4
        (307.2, -100.0),  # l = 1/10
        (6144, -1.0),  # longer than the maximum: l clamped to 1 (the authors' code gave -0.25)
    ],
)
def test_both_labels_wrong_at_several_lengths(length, expected):
    assert reward(BOTH_WRONG, "harmful", "unharmful", length) == pytest.approx(expected)


def test_one_wrong_label_costs_half():
    assert reward(ONE_WRONG, "harmful", "unharmful", 1536) == pytest.approx(-2.0)  # -0.5 / (1/2)^2
    assert reward(ONE_WRONG, "harmful", "unharmful", 3072) == pytest.approx(-0.5)
    response_wrong = guard_output("harmful", "harmful")
    assert reward(response_wrong, "harmful", "unharmful", 768) == pytest.approx(-8.0)  # -0.5 / (1/4)^2


@pytest.mark.parametrize(
    "output",
    [
        "Request: harmful\nResponse: unharmful",  # untagged: no verdict block
        "<think>\nreasoning\n</think>\nRequest: harmful\nResponse: unharmful",  # no <result>
        "<think>\n<result>\nRequest: harmful\nResponse: unharmful\n</result>\n",  # reasoning never closed
        "<think>\nx\n</think>\n<result>\nRequest: harmful\nResponse: unharmful\n",  # block never closed
        "<think>\n<result>Request: harmful\nResponse: unharmful</result>\n</think>\nnothing",  # only inside think
    ],
)
def test_no_verdict_block_after_the_reasoning_means_no_format(output):
    assert read_verdict(output) == (False, None, None)
    assert reward(output, "harmful", "unharmful", 1536) == pytest.approx(-4.0)  # r_safety = 0


def test_an_empty_output_is_finite_with_the_one_unit_floor():
    assert length_fraction(0, MAX) == 1 / MAX
    assert reward("", "harmful", None, 0) == pytest.approx(-(MAX**2))
    assert math.isfinite(reward("", "harmful", None, 0, ECO_BETA))
    assert reward("", "harmful", None, 0, ECO_BETA) == pytest.approx(-(MAX**2))  # min(1/3072, 1/6)


def test_a_raised_floor_bounds_the_penalty_of_short_outputs_only():
    # min_length = 64 tokens of 3072: anything shorter counts as 64 tokens -> l = 1/48, r = -48^2 = -2304.
    def floored(output: str, length: float, beta: float = 1.0) -> float:
        return safety_reward(
            output,
            request_label="harmful",
            response_label=None,
            length=length,
            max_length=MAX,
            beta=beta,
            min_length=64,
        )

    assert length_fraction(0, MAX, 64) == length_fraction(10, MAX, 64) == 64 / MAX
    assert floored("", 0) == pytest.approx(-2304.0) and floored(BOTH_WRONG, 10) == pytest.approx(-2304.0)
    assert floored(BOTH_WRONG, 768) == reward(BOTH_WRONG, "harmful", None, 768) == pytest.approx(-16.0)  # unchanged
    assert floored(ONE_WRONG, 0) == pytest.approx(-1152.0)  # one label right: half the penalty
    assert floored("", 0, ECO_BETA) == pytest.approx(-2304.0)  # min(1/48, 1/6) = 1/48
    assert SafetyReward(max_length=48, min_length=12)(
        [None], [""], [[7]], request_label=["harmful"], response_label=[None]
    ) == pytest.approx([-16.0])  # -(48/12)^2
    for bad in (0, -1, MAX + 1):
        with pytest.raises(ValueError):
            length_fraction(5, MAX, bad)


def test_eco_cut_off():
    # Past beta * max_length, length earns nothing: -1/beta^2 = -36 for a wrong answer.
    for length in (512, 1000, 3072, 9000):
        assert reward(BOTH_WRONG, "harmful", "unharmful", length, ECO_BETA) == pytest.approx(-36.0)
    assert reward(ONE_WRONG, "harmful", "unharmful", 3072, ECO_BETA) == pytest.approx(-18.0)
    # Below the cut-off it is the standard reward.
    assert reward(BOTH_WRONG, "harmful", "unharmful", 307.2, ECO_BETA) == pytest.approx(-100.0)
    assert reward(BOTH_WRONG, "harmful", "unharmful", 307.2, ECO_BETA) == reward(
        BOTH_WRONG, "harmful", "unharmful", 307.2
    )


def test_a_missing_response_counts_as_unharmful_on_both_sides():
    no_response = guard_output("harmful", None)  # "Response: None"
    assert judge(no_response, request_label="harmful", response_label=None).correct
    assert judge(no_response, request_label="harmful", response_label="unharmful").correct
    assert not judge(no_response, request_label="harmful", response_label="harmful").response_correct
    assert judge(guard_output("harmful", "unharmful"), request_label="harmful", response_label=None).correct
    assert not judge(guard_output("harmful", "harmful"), request_label="harmful", response_label=None).correct
    no_line = "<think>\nx\n</think>\n<result>\nRequest: harmful\n</result>"
    assert judge(no_line, request_label="harmful", response_label=None).correct


def test_each_label_is_compared_with_its_own_gold():
    # The authors' sampling compared the response prediction with the request gold (bug 4): not here.
    verdict = judge(guard_output("harmful", "unharmful"), request_label="harmful", response_label="unharmful")
    assert verdict.request_correct and verdict.response_correct and verdict.r_safety == 1.0


def test_bad_settings_and_gold_labels_raise():
    with pytest.raises(ValueError):
        reward(RIGHT, "harmful", None, 10, beta=0.0)
    with pytest.raises(ValueError):
        reward(RIGHT, "harmful", None, 10, beta=1.5)
    with pytest.raises(ValueError):
        reward(RIGHT, None, None, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        safety_reward(RIGHT, request_label="harmful", response_label=None, length=1, max_length=0)


def test_the_trl_wrapper_reads_gold_columns_counts_tokens_and_logs_metrics():
    fn = SafetyReward(max_length=100, beta=1.0)
    completions = [[{"role": "assistant", "content": text}] for text in (RIGHT, BOTH_WRONG, ONE_WRONG, "garbage")]
    ids = [[0] * 50, [0] * 50, [0] * 100, [0] * 25]
    logged: dict[str, float] = {}
    rewards = fn(
        prompts=[None] * 4,
        completions=completions,
        completion_ids=ids,
        request_label=["harmful"] * 4,
        response_label=["unharmful"] * 4,
        log_metric=logged.__setitem__,
        trainer_state=None,
    )
    assert rewards == pytest.approx([0.0, -4.0, -0.5, -16.0])
    assert logged["accuracy"] == 0.25 and logged["format_rate"] == 0.75
    assert fn.__name__ == "safety_reward"


def test_the_trl_wrapper_can_count_characters_as_the_authors_did():
    fn = SafetyReward(max_length=3072, beta=1.0, unit="characters")
    text = BOTH_WRONG + " " * (1536 - len(BOTH_WRONG))
    assert fn([None], [text], None, request_label=["harmful"], response_label=["unharmful"]) == pytest.approx([-4.0])
    with pytest.raises(ValueError):
        SafetyReward(max_length=10, unit="words")  # type: ignore[arg-type]
