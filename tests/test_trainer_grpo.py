"""GRPO (spec 4.5–4.6): the config and its presets, the dynamic clipping schedule, and — on the tiny guard — a
learning run whose loss uses the scheduled clip range, and Eco against standard."""

from __future__ import annotations

import itertools
import json
import math
import statistics

import pytest

from grvl_sdk.errors import TrainingConfigError
from grvl_sdk.trainer import GuardRLConfig, clip_schedule
from grvl_sdk.trainer.clipping import rollout_step

# -- config ---------------------------------------------------------------------------------------


def test_defaults_are_the_papers():
    config = GuardRLConfig()
    assert (config.num_generations, config.temperature, config.learning_rate) == (16, 1.2, 1e-6)
    assert (config.lr_scheduler_type, config.weight_decay, config.beta, config.num_train_epochs) == (
        "constant",
        0.01,
        0.0,
        1.0,
    )
    assert (config.max_prompt_length, config.max_completion_length) == (3072, 3072)
    assert (config.epsilon, config.clip_schedule, config.reward_beta) == (0.2, "product", 1.0)
    assert config.effective_batch_size == 128 * 16 and not config.freeze_vision_tower
    plan = config.rollout_plan(8)
    assert plan.updates_per_rollout == 4 and plan.clipping_acts
    assert (plan.batch.per_device, plan.batch.accumulation, plan.steps_per_generation) == (16, 16, 64)
    assert plan.completions_per_rollout == 512 * 16
    assert "4 optimizer update(s) per rollout" in str(plan)


def test_presets_and_yaml_round_trip(tmp_path):
    eco = GuardRLConfig.preset("eco", model_name_or_path="runs/rsft")
    assert eco.reward_beta == pytest.approx(1 / 6) and eco.output_dir == "runs/grpo-eco"
    assert GuardRLConfig.preset("standard").reward_beta == 1.0
    path = tmp_path / "rl.yaml"
    path.write_text("preset: eco\nlearning_rate: 2.0e-6\nclip_floor: 0.02\n")
    read = GuardRLConfig.from_yaml(path)
    assert (read.reward_beta, read.learning_rate, read.clip_floor) == (pytest.approx(1 / 6), 2e-6, 0.02)
    assert read.reward_normaliser == 3072
    assert GuardRLConfig(reward_length_unit="characters", max_completion_length=512).reward_normaliser == 3072
    # PyYAML reads "1e-6" (no dot) as a string: it is still a learning rate, and a word is a typed error.
    path.write_text("learning_rate: 1e-6\nepsilon: 2e-1\n")
    assert (GuardRLConfig.from_yaml(path).learning_rate, GuardRLConfig.from_yaml(path).epsilon) == (1e-6, 0.2)
    path.write_text("learning_rate: fast\n")
    with pytest.raises(TrainingConfigError, match="learning_rate must be a number"):
        GuardRLConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompts_per_rollout": 100}, "prompts_per_rollout"),  # not a multiple of 128
        ({"num_generations": 1}, "num_generations"),
        ({"effective_batch_size": 192}, "effective_batch_size"),
        ({"reward_beta": 0.0}, "reward_beta"),
        ({"reward_min_length": 0}, "reward_min_length"),
        ({"reward_min_length": 4000}, "reward_min_length"),  # above the 3072 normaliser
        ({"clip_schedule": "exponential"}, "clip_schedule"),
        ({"use_vllm": "maybe"}, "use_vllm"),
        ({"unknown_key": 1}, "unknown_key"),
        # not numbers, or not finite: a typed error, not a TypeError in a comparison or a NaN loss
        ({"temperature": None}, "temperature"),
        ({"learning_rate": [1e-6]}, "learning_rate"),
        ({"reward_beta": None}, "reward_beta"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"clip_floor": float("inf")}, "clip_floor"),
        ({"top_p": True}, "top_p"),
        ({"epsilon_high": {"a": 1}}, "epsilon_high"),
        # cispo reads epsilon_high as a ratio cap: the schedule shrinking it to 0 would zero the loss
        ({"loss_type": "cispo"}, "loss_type"),
        ({"loss_type": "sapo"}, "loss_type"),
        # integers: TRL's config takes any value unchecked and fails mid-run
        ({"max_steps": "abc"}, "max_steps"),
        ({"max_steps": 0}, "max_steps"),
        ({"seed": 2.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"save_total_limit": 0}, "save_total_limit"),
        ({"dataloader_num_workers": -1}, "dataloader_num_workers"),
    ],
)
def test_impossible_settings_are_refused(changes, field):
    with pytest.raises(TrainingConfigError) as caught:
        GuardRLConfig.from_dict(changes)
    assert caught.value.details.get("field") == field


def test_one_update_per_rollout_means_clipping_cannot_act():
    plan = GuardRLConfig(prompts_per_rollout=128, prompts_per_update=128).rollout_plan(1)
    assert plan.updates_per_rollout == 1 and not plan.clipping_acts
    assert (
        GuardRLConfig(prompts_per_rollout=128, prompts_per_update=128, num_iterations=2).rollout_plan(1).clipping_acts
    )


# -- dynamic clipping -------------------------------------------------------------------------------


def test_product_schedule_values_for_23_steps():
    values = [clip_schedule(s, 23) for s in range(1, 24)]
    assert values[0] == pytest.approx(0.2 * 22 / 23)  # 0.1913
    assert values[0] == pytest.approx(0.191, abs=5e-4)
    assert values[4] == pytest.approx(0.098, abs=5e-4)
    assert values[11] == pytest.approx(0.003, abs=3e-4)
    assert values[21] < 1e-9 and values[22] == 0.0  # "0 at steps 22-23" (spec 6.3), to 3 decimals
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert clip_schedule(23, 23, floor=0.02) == 0.02 and clip_schedule(1, 23, floor=0.02) == values[0]
    assert clip_schedule(40, 23) == 0.0  # past the end: the last step's value


def test_ablation_schedules():
    assert clip_schedule(7, 10, kind="constant") == 0.2
    assert clip_schedule(5, 10, kind="linear") == pytest.approx(0.1)
    assert clip_schedule(5, 10, kind="cosine") == pytest.approx(0.1)
    assert clip_schedule(10, 10, kind="cosine") == pytest.approx(0.0, abs=1e-12)
    for bad in ({"step": 0, "total_steps": 5}, {"step": 1, "total_steps": 0}):
        with pytest.raises(ValueError):
            clip_schedule(**bad)
    with pytest.raises(ValueError):
        clip_schedule(1, 5, kind="exponential")


def test_rollout_steps_share_their_clip_range():
    assert [rollout_step(g, 4) for g in range(9)] == [1, 1, 1, 1, 2, 2, 2, 2, 3]


# -- training on the tiny guard -----------------------------------------------------------------------

pytest.importorskip("trl")

from tests.test_trainer_rl_support import greedy_accuracy, rl_task, rsft_guard, toy_task  # noqa: E402


def rl_config(start, out, **changes) -> GuardRLConfig:
    settings = {
        "model_name_or_path": str(start),
        "output_dir": str(out),
        "learning_rate": 1e-3,
        "num_generations": 4,
        "prompts_per_rollout": 16,
        "prompts_per_update": 8,
        "per_device_train_batch_size": 32,
        "max_completion_length": 40,
        # The shortest well-formed answer of the toy task is 14 tokens: the floor bounds the penalty of a
        # near-empty sample at -(40/12)^2 instead of -40^2, so one such sample cannot swing a rollout's mean.
        "reward_min_length": 12,
        "temperature": 1.0,
        "max_steps": 16,
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "progress": False,
        "save_steps": 1000,
        "seed": 0,
        **changes,
    }
    return GuardRLConfig(**settings)


def rollout_rows(result) -> list[dict]:
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    return [r for r in rows if r.get("reward") is not None]


@pytest.fixture(scope="module")
def start_guard():
    return rsft_guard()


@pytest.fixture(scope="module")
def standard_run(start_guard, tmp_path_factory):
    """One GRPO run with the standard reward, and the held-out greedy accuracy before and after."""
    from grvl_sdk.trainer import train_rl

    held_out = toy_task(64, seed=99, response_rate=1.0)
    _, before = greedy_accuracy(start_guard, held_out)
    out = tmp_path_factory.mktemp("grpo-standard")
    result = train_rl(rl_config(start_guard, out), train_samples=rl_task(400, seed=5))
    _, after = greedy_accuracy(result.output_dir, held_out)
    return result, before, after


def test_grpo_raises_the_reward_keeps_accuracy_and_the_loss_uses_the_schedule(standard_run, capsys):
    result, before, after = standard_run
    rows = rollout_rows(result)
    rewards = [r["reward"] for r in rows]
    first, last = statistics.mean(rewards[:3]), statistics.mean(rewards[-3:])
    with capsys.disabled():
        print(
            f"\n[grpo] reward first 3 rollouts {first:.2f} → last 3 {last:.2f}; rollout accuracy "
            f"{rows[0]['accuracy']:.2f} → {rows[-1]['accuracy']:.2f}; held-out greedy accuracy {before:.3f} → "
            f"{after:.3f}"
        )
    assert last > first
    assert after >= before

    # The clip range the loss read, at every micro-batch, is the schedule's for that optimizer step:
    # 2 updates per rollout, S = 8 rollouts.
    assert result.plan.updates_per_rollout == 2
    expected = {g: clip_schedule(g // 2 + 1, 8) for g in range(16)}
    assert {g for g, _, _ in result.clip_trace} == set(range(16))
    for step, low, high in result.clip_trace:
        assert low == pytest.approx(expected[step]) and high == pytest.approx(expected[step])
    logged = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    by_step = {r["step"]: r for r in logged if "clip_range/low" in r}
    assert all(by_step[g + 1]["clip_range/low"] == pytest.approx(expected[g]) for g in range(16))
    # Several updates per rollout: the second update of a rollout clips tokens.
    assert any(r.get("clip_ratio/region_mean", 0) > 0 for r in logged)
    assert (result.output_dir / "rl_curves.png").is_file() and (result.output_dir / "grpo_config.yaml").is_file()
    assert not result.reference_model_loaded
    assert not math.isnan(last)


def test_eco_answers_are_shorter_at_similar_accuracy(standard_run, start_guard, tmp_path, capsys):
    from grvl_sdk.trainer import train_rl

    standard = rollout_rows(standard_run[0])
    eco = rollout_rows(
        train_rl(rl_config(start_guard, tmp_path / "eco", reward_beta=1 / 6), train_samples=rl_task(400, seed=5))
    )

    def tail(rows, key):
        return statistics.mean(r[key] for r in rows[-3:])

    lengths = tail(standard, "completions/mean_length"), tail(eco, "completions/mean_length")
    accuracy = tail(standard, "accuracy"), tail(eco, "accuracy")
    with capsys.disabled():
        print(
            f"\n[eco vs standard] mean completion length (last 3 rollouts) standard {lengths[0]:.1f}, eco "
            f"{lengths[1]:.1f} tokens; rollout accuracy standard {accuracy[0]:.2f}, eco {accuracy[1]:.2f}"
        )
    assert lengths[1] < lengths[0] - 1.0
    assert abs(accuracy[1] - accuracy[0]) < 0.25


def test_warmup_ratio_reaches_the_trainer_as_a_share_of_the_steps():
    """transformers >= 5 has no ``warmup_ratio``: a float ``warmup_steps`` below 1 is the ratio. 0.1 of 200
    optimizer steps is 20 warm-up steps, in both stages."""
    pytest.importorskip("trl")
    from grvl_sdk.trainer.grpo_trainer import _grpo_args
    from grvl_sdk.trainer.rsft_config import RSFTConfig
    from grvl_sdk.trainer.rsft_trainer import _sft_args

    rl = GuardRLConfig(output_dir="/tmp/never-written", use_cpu=True, warmup_ratio=0.1)
    args = _grpo_args(rl, rl.rollout_plan(1), bf16=False, use_vllm=False, has_eval=False)
    assert args.get_warmup_steps(200) == 20
    sft = RSFTConfig(output_dir="/tmp/never-written", use_cpu=True, warmup_ratio=0.1)
    assert _sft_args(sft, sft.batch_plan(1), bf16=False, has_eval=False).get_warmup_steps(200) == 20
    assert _sft_args(sft.replace(warmup_ratio=0.0), sft.batch_plan(1), False, False).get_warmup_steps(200) == 0
