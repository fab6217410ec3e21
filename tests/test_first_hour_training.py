"""What a new user meets when training (issue 14): offline fast-fail, config-relative paths, a quiet CLI,
advice in the caller's terms, typed errors for a merged folder, the guard's own model card, synthesis
folders that move and read back, and a loss curve for every run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from grvl_sdk.errors import DataError, ModelLoadError
from grvl_sdk.trainer import RSFTConfig, TrainingSample, sample_to_record

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
NOISE = (
    "FutureWarning",
    "DeprecationWarning",
    "Loading weights",
    "Writing model shards",
    "pin_memory",
    "gemm_4bit",
    "{'train_runtime'",
    "{'loss'",
)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: connections are refused


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No HF_HUB_OFFLINE, an empty cache, and a hub endpoint nothing listens on."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    return env


def grvl_process(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300):
    """``grvl ARGS`` in a fresh process that owns it (as the installed script does); the last stdout line
    says whether bitsandbytes was imported."""
    code = (
        "import sys; sys.argv = ['grvl', *sys.argv[1:]]\n"
        "from grvl_sdk.cli import main\n"
        "code = main()\n"
        "module = sys.modules.get('bitsandbytes')\n"
        "print('bitsandbytes imported:', getattr(module, '__file__', None) is not None)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


def write_records(folder: Path, image_name: str = "red.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (84, 56), (200, 0, 0)).save(folder / image_name)
    records = []
    for i in range(2):
        text = TrainingSample(request=f"bomb {i}", request_label="harmful", reasoning="Bad.")
        records.append(sample_to_record(text, []))
        image = TrainingSample(
            request=None, images=(str(folder / image_name),), request_label="harmful", reasoning="Red."
        )
        records.append(sample_to_record(image, [image_name]))
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# -- 1. offline with the hub id `grvl train init` writes --------------------------------------------------------
def test_offline_sft_with_the_default_hub_id_fails_fast_with_cli_guidance(tmp_path):
    from grvl_sdk.cli import main as grvl

    env = offline_env(tmp_path)
    assert grvl(["train", "init", str(tmp_path / "my-run")]) == 0  # the config a new user starts from
    done = grvl_process(["train", "sft", "--config", "my-run/rsft.yaml"], cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "cannot load model 'Qwen/Qwen2.5-VL-3B-Instruct'" in done.stderr
    assert "hub cannot be reached" in done.stderr
    assert "edit model_name_or_path in my-run/rsft.yaml" in done.stderr and "--set model_name_or_path=" in done.stderr
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr


def test_offline_train_rsft_fails_fast_with_python_guidance(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from grvl_sdk.trainer.rsft_trainer import train_rsft

    monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    samples = [TrainingSample(request="bomb", request_label="harmful", reasoning="Bad.")]
    config = RSFTConfig(output_dir=str(tmp_path / "run"), use_cpu=True, progress=False)
    with pytest.raises(ModelLoadError) as info:
        train_rsft(config, train_samples=samples)
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in info.value.message and "hub cannot be reached" in info.value.message
    assert "RSFTConfig(model_name_or_path=" in info.value.message and "--set" not in info.value.message
    assert info.value.code == "model_load_failed"
    assert not (tmp_path / "run").exists()


# -- 2. relative paths in config files ------------------------------------------------------------------------
def test_relative_paths_in_a_config_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    from grvl_sdk.trainer.grpo_config import GuardRLConfig
    from grvl_sdk.trainer.pipeline import PipelineConfig

    folder = tmp_path / "configs" / "exp"
    (folder / "model").mkdir(parents=True)
    (folder / "local-guard").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (folder / "rsft.yaml").write_text(
        "model_name_or_path: ./model\n"
        "train_data: [data/records.jsonl, {path: ../tables/t.csv, image_root: imgs}, /abs/data.jsonl]\n"
        "eval_data: held-out.jsonl\n"
        "output_dir: runs/out\n"
        "resume_from_checkpoint: runs/out/checkpoint-4\n",
        encoding="utf-8",
    )
    config = RSFTConfig.from_yaml(folder / "rsft.yaml", eval_data=["cwd-relative.jsonl"])
    assert config.model_name_or_path == str(folder / "model")
    assert config.train_data == [
        str(folder / "data" / "records.jsonl"),
        {"path": str(tmp_path / "configs" / "tables" / "t.csv"), "image_root": str(folder / "imgs")},
        "/abs/data.jsonl",
    ]
    assert config.eval_data == ["cwd-relative.jsonl"]  # overrides (--set, Python) are taken as given
    assert config.output_dir == str(folder / "runs" / "out")
    assert config.resume_from_checkpoint == str(folder / "runs" / "out" / "checkpoint-4")

    # A hub id stays a hub id; a folder beside the config is found without "./".
    (folder / "rl.yaml").write_text("model_name_or_path: local-guard\ntrain_data: [rl-data]\n", encoding="utf-8")
    (folder / "hub.yaml").write_text("model_name_or_path: Qwen/Qwen2.5-VL-3B-Instruct\n", encoding="utf-8")
    assert GuardRLConfig.from_yaml(folder / "rl.yaml").model_name_or_path == str(folder / "local-guard")
    assert GuardRLConfig.from_yaml(folder / "rl.yaml").train_data == [str(folder / "rl-data")]
    assert RSFTConfig.from_yaml(folder / "hub.yaml").model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"

    # The pipeline's file, its stage sections included; benchmark names stay names.
    (folder / "bench.json").write_text("[]", encoding="utf-8")
    (folder / "pipeline.yaml").write_text(
        "output_dir: runs/pipe\nmodel_name_or_path: ./model\ntrain_data: [labelled.jsonl]\n"
        "rsft: {eval_data: [held.jsonl]}\n"
        "evaluate: {benchmarks: [ToxicChat, bench.json], data_dir: ../data}\n",
        encoding="utf-8",
    )
    pipeline = PipelineConfig.from_yaml(folder / "pipeline.yaml")
    assert pipeline.output_dir == str(folder / "runs" / "pipe")
    assert pipeline.model_name_or_path == str(folder / "model")
    assert pipeline.train_data == [str(folder / "labelled.jsonl")]
    assert pipeline.rsft == {"eval_data": [str(folder / "held.jsonl")]}
    assert pipeline.evaluate == {
        "benchmarks": ["ToxicChat", str(folder / "bench.json")],
        "data_dir": str(tmp_path / "configs" / "data"),
    }


def test_a_missing_data_file_is_named_by_its_resolved_path(tmp_path, monkeypatch, tiny_guard_path):
    from grvl_sdk.trainer.rsft_trainer import train_rsft

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "rsft.yaml").write_text(
        f"model_name_or_path: {tiny_guard_path}\ntrain_data: [records.jsonl]\nuse_cpu: true\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        train_rsft(RSFTConfig.from_yaml("cfg/rsft.yaml"))
    assert str(tmp_path / "cfg" / "records.jsonl") in str(info.value)


# -- 3, 4, 6, 8: a 2-step LoRA run from the CLI -------------------------------------------------------------------
def test_cli_two_step_lora_run_is_quiet_has_a_curve_a_model_card_and_cli_resume_advice(
    tmp_path, tiny_guard_path, capsys
):
    config_dir = tmp_path / "exp"
    write_records(config_dir)
    (config_dir / "tiny").symlink_to(tiny_guard_path)
    (config_dir / "rsft.yaml").write_text(
        "model_name_or_path: ./tiny\ntrain_data: [records.jsonl]\noutput_dir: run\nmethod: lora\nmax_steps: 2\n"
        "effective_batch_size: 2\nper_device_train_batch_size: 2\nuse_cpu: true\nlora_r: 4\nlora_alpha: 8\n"
        "save_steps: 2\n",
        encoding="utf-8",
    )  # logging_steps stays 10, more than the run's steps; gradient checkpointing on (the default)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = grvl_process(["train", "sft", "--config", "exp/rsft.yaml", "--no-progress"], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert not [noise for noise in NOISE if noise in output], output
    assert first.stdout.strip() == "bitsandbytes imported: False"
    assert "R-SFT done: 2 steps" in first.stderr

    run = config_dir / "run"  # relative to the config file, not to the working directory
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # the first and the last step; logging_steps is 10
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    card = (run / "README.md").read_text(encoding="utf-8")
    assert "[None]" not in card and "pipeline(" not in card
    assert f"base_model: {config_dir / 'tiny'}" in card and f'Guard.from_pretrained("{run}")' in card
    assert "| method | lora (rank 4, alpha 8) |" in card and "2 optimizer steps" in card
    assert "| text | 2 | 2 | 0 | 0 | 0 |" in card and "| image | 2 | 2 | 0 | 0 | 0 |" in card
    assert "last logged train loss (step 2)" in card
    adapter_card = (run / "adapter" / "README.md").read_text(encoding="utf-8")
    assert f'load_adapter_guard("{run / "adapter"}")' in adapter_card and "library_name: peft" in adapter_card

    # Again into the same folder: the note speaks CLI (the run then stops on data that is not there).
    from grvl_sdk.cli import main as grvl

    config = str(config_dir / "rsft.yaml")
    assert grvl(["train", "sft", "--config", config, "--set", "train_data=[nowhere.jsonl]"]) == 2
    printed = capsys.readouterr().err
    assert "already holds checkpoints" in printed and "Add --resume" in printed
    assert "resume_from_checkpoint=True" not in printed and "nowhere.jsonl" in printed


def test_train_rsft_note_about_existing_checkpoints_speaks_python(tiny_guard_path, tmp_path, capsys):
    from grvl_sdk.trainer.rsft_trainer import train_rsft

    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text("{}", encoding="utf-8")
    settings = {
        "model_name_or_path": str(tiny_guard_path),
        "output_dir": str(out),
        "max_steps": 1,
        "effective_batch_size": 2,
        "per_device_train_batch_size": 2,
        "use_cpu": True,
        "progress": False,
        "gradient_checkpointing": False,
        "method": "lora",
        "merge_lora": False,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    samples = [TrainingSample(request=f"bomb {i}", request_label="harmful", reasoning="Bad.") for i in range(2)]
    from grvl_sdk.trainer.console import step_printer

    result = train_rsft(RSFTConfig(**settings), train_samples=samples, callbacks=[step_printer()])
    printed = capsys.readouterr()
    assert "Pass resume_from_checkpoint=True to continue" in printed.err and "--resume" not in printed.err
    assert printed.out == ""  # no per-step dicts without progress...
    assert "step 1: loss" in printed.err  # ...unless asked for (the CLI's -v with --no-progress)
    assert (out / "loss.png").is_file()  # 1 step, logging_steps 10: still a curve (one point)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "load_adapter_guard(" in card and "library_name: peft" in card

    # 5. The adapter folder loads as an adapter; a merged folder is refused with what to do instead.
    import warnings

    from grvl_sdk.trainer import load_adapter_guard

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no library deprecation noise on an inference call
        guard = load_adapter_guard(result.output_dir, device="cpu", max_new_tokens=2, cache_size=0)
    guard.close()
    merged = tmp_path / "merged"
    from grvl_sdk.trainer import merge_adapter

    merge_adapter(result.output_dir, merged)
    (merged / "adapter").mkdir()
    (merged / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelLoadError) as info:
        load_adapter_guard(merged, device="cpu")
    message = info.value.message
    assert "holds a full guard checkpoint, not a LoRA adapter" in message
    assert f"Guard.from_pretrained({str(merged)!r})" in message
    assert f"load_adapter_guard({str(merged / 'adapter')!r})" in message
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_adapter_guard(tmp_path / "nope", device="cpu")
