"""RSFTConfig: the paper's defaults, presets, YAML, and how the effective batch maps onto processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from grvl_sdk.errors import TrainingConfigError
from grvl_sdk.trainer import PRESETS, RSFTConfig

CONFIGS = Path(__file__).resolve().parent.parent / "grvl_sdk" / "trainer" / "configs"


def test_defaults_are_the_papers():
    config = RSFTConfig()
    assert config.method == "full"
    assert config.learning_rate == 5e-5
    assert config.lr_scheduler_type == "cosine" and config.warmup_ratio == 0.0
    assert config.num_train_epochs == 3
    assert config.effective_batch_size == 192 and config.per_device_train_batch_size == 6
    assert config.max_length == 2048 and config.max_grad_norm == 1.0
    assert config.optim.startswith("adamw") and config.bf16 is None
    assert config.max_pixels == 768 * 768


@pytest.mark.parametrize(("processes", "accumulation"), [(1, 32), (2, 16), (4, 8), (8, 4), (16, 2), (32, 1)])
def test_effective_batch_is_kept_on_any_number_of_processes(processes, accumulation):
    plan = RSFTConfig().batch_plan(processes)
    assert (plan.per_device, plan.accumulation, plan.processes, plan.effective) == (6, accumulation, processes, 192)
    assert str(plan) == f"effective batch 192 = 6 per device × {accumulation} accumulation × {processes} process(es)"


def test_batch_sizes_that_do_not_divide_are_refused():
    with pytest.raises(TrainingConfigError, match="not a multiple"):
        RSFTConfig().batch_plan(5)
    with pytest.raises(TrainingConfigError, match="differs"):
        RSFTConfig(gradient_accumulation_steps=4).batch_plan(4)
    explicit = RSFTConfig(effective_batch_size=None, gradient_accumulation_steps=4).batch_plan(3)
    assert explicit.effective == 72
    with pytest.raises(TrainingConfigError):
        RSFTConfig(effective_batch_size=None, gradient_accumulation_steps=None)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "dora"}, "method"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
        ({"max_length": -1}, "max_length"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"min_pixels": 10_000, "max_pixels": 100}, "min_pixels"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ],
)
def test_bad_settings_raise_naming_the_field(changes, field):
    with pytest.raises(TrainingConfigError) as info:
        RSFTConfig(**changes)
    assert info.value.details["field"] == field and isinstance(info.value, ValueError)


def test_presets_and_dicts():
    assert set(PRESETS) == {"3b", "7b"}
    seven = RSFTConfig.preset("7b", method="qlora")
    assert seven.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct" and seven.method == "qlora"
    assert seven.learning_rate == 5e-5 and seven.effective_batch_size == 192
    assert RSFTConfig.from_dict({"preset": "3b"}).model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    with pytest.raises(TrainingConfigError, match="unknown preset"):
        RSFTConfig.preset("70b")
    with pytest.raises(TrainingConfigError, match="learnig_rate"):
        RSFTConfig.from_dict({"learnig_rate": 1e-5})
    single = RSFTConfig(train_data="data.jsonl", report_to="none")
    assert single.train_data == ["data.jsonl"] and single.report_to == []
    paths = RSFTConfig(train_data=[Path("a.jsonl"), {"path": Path("b.csv")}], output_dir=Path("runs/x"))
    assert (paths.train_data, paths.output_dir) == (["a.jsonl", {"path": "b.csv"}], "runs/x")
    with pytest.raises(TrainingConfigError, match="train_data"):
        RSFTConfig(train_data=[3])


def test_yaml_round_trip_and_overrides(tmp_path):
    pytest.importorskip("yaml")
    config = RSFTConfig.preset("3b", method="lora", train_data=[{"path": "a.csv", "columns": {"request": "q"}}])
    path = tmp_path / "rsft.yaml"
    path.write_text(config.to_yaml(), encoding="utf-8")
    # Relative paths in a file are relative to its folder.
    in_folder = {"train_data": [{"path": str(tmp_path / "a.csv"), "columns": {"request": "q"}}]}
    assert RSFTConfig.from_yaml(path) == config.replace(**in_folder, output_dir=str(tmp_path / config.output_dir))
    assert RSFTConfig.from_yaml(path, learning_rate=1e-4).learning_rate == 1e-4
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(TrainingConfigError, match="mapping"):
        RSFTConfig.from_yaml(path)
    path.write_text("learning_rate: [unclosed\n", encoding="utf-8")
    with pytest.raises(TrainingConfigError, match="not valid YAML"):
        RSFTConfig.from_yaml(path)


def test_shipped_configs_load():
    pytest.importorskip("yaml")
    example = RSFTConfig.from_yaml(CONFIGS / "rsft.example.yaml")
    assert example.model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert example.batch_plan(4).accumulation == 8
    accelerate_config = pytest.importorskip("accelerate.commands.config.config_args")
    kinds = {}
    for path in sorted((CONFIGS / "accelerate").glob("*.yaml")):
        loaded = accelerate_config.load_config_from_file(str(path))
        kinds[path.name] = (str(loaded.distributed_type.value), loaded.mixed_precision)
    assert kinds == {
        "deepspeed_zero3.yaml": ("DEEPSPEED", "bf16"),
        "fsdp.yaml": ("FSDP", "bf16"),
        "multi_gpu.yaml": ("MULTI_GPU", "bf16"),
    }
    zero3 = accelerate_config.load_config_from_file(str(CONFIGS / "accelerate" / "deepspeed_zero3.yaml"))
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.deepspeed_config["zero3_save_16bit_model"] is True


def test_trainer_arguments_carry_the_settings():
    pytest.importorskip("trl")
    from grvl_sdk.trainer.rsft_trainer import _sft_args

    config = RSFTConfig(output_dir="/tmp/never-written", use_cpu=True, extra_args={"logging_first_step": True})
    args = _sft_args(config, config.batch_plan(4), bf16=False, has_eval=False)
    assert args.learning_rate == 5e-5 and args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0
    assert args.num_train_epochs == 3 and args.max_grad_norm == 1.0
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (6, 8)
    assert args.remove_unused_columns is False and args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert args.logging_first_step is True
    with pytest.raises(TrainingConfigError, match="invalid trainer arguments"):
        _sft_args(config.replace(extra_args={"not_an_argument": 1}), config.batch_plan(1), False, False)


def test_missing_training_extra_is_named(monkeypatch, tmp_path):
    import sys

    from grvl_sdk.errors import MissingDependencyError
    from grvl_sdk.trainer import train_rsft

    monkeypatch.setitem(sys.modules, "trl", None)  # as if TRL were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'grvl-sdk\[train\]'"):
        train_rsft(RSFTConfig(output_dir=str(tmp_path / "never"), train_data=["x.jsonl"]))
    assert not (tmp_path / "never").exists()
