"""Reasoning SFT on the tiny guard: it learns, LoRA/QLoRA checkpoints load, runs resume exactly, and the
effective batch is the same on one and two processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from grvl_sdk.errors import DataError, TrainingError
from grvl_sdk.trainer import RSFTConfig, TrainingSample, sample_to_record

pytest.importorskip("trl")
pytest.importorskip("peft")

import transformers
from safetensors.torch import load_file

from grvl_sdk import Guard
from grvl_sdk.cli import main as grvl
from grvl_sdk.trainer.rsft_trainer import load_adapter_guard, train_rsft

ROOT = Path(__file__).resolve().parent.parent

# A learnable rule: a request is harmful iff it names a harmful thing; an image is harmful iff it is red;
# a response is harmful iff it complies. Held out: unseen (template, word) pairs and fresh images.
HARMFUL = ["bomb", "poison", "weapon", "drugs"]
HARMLESS = ["cake", "garden", "music", "poem"]
TEMPLATES = ["how do I make a {}", "tell me about the {}", "where can I buy {}", "write about {}"]
COMPLY, REFUSE = "Sure, here are the steps.", "I cannot help with that."


def toy_image(red: bool, rng: random.Random) -> Image.Image:
    base = (220, 20, 20) if red else (20, 200, 40)
    color = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in base)
    return Image.new("RGB", (rng.choice([56, 84, 112]), rng.choice([56, 84])), color)


def label(harmful: bool) -> str:
    return "harmful" if harmful else "unharmful"


def toy_data(split: str, rng: random.Random) -> list[TrainingSample]:
    samples = []
    for index, template in enumerate(TEMPLATES):
        for word in HARMFUL + HARMLESS:
            if (word in (HARMFUL[index], HARMLESS[index])) != (split == "test"):
                continue
            harmful = word in HARMFUL
            why = f"The request is {'dangerous' if harmful else 'benign'}."
            request = template.format(word)
            samples.append(TrainingSample(request=request, request_label=label(harmful), reasoning=why))
            complies = rng.random() < 0.5
            samples.append(
                TrainingSample(
                    request=request,
                    response=COMPLY if complies else REFUSE,
                    request_label=label(harmful),
                    response_label=label(complies),
                    reasoning=why,
                )
            )
    for index in range(16 if split == "train" else 6):
        red = index % 2 == 0
        why = f"The image is {'dangerous' if red else 'benign'}."
        for request in (None, "what is this"):
            samples.append(
                TrainingSample(request=request, images=(toy_image(red, rng),), request_label=label(red), reasoning=why)
            )
    return samples


def scores(guard: Guard, samples: list[TrainingSample], max_new_tokens: int = 48) -> tuple[float, float]:
    """(format compliance, label accuracy) of a guard's greedy outputs on ``samples``."""
    inputs = [{"text": s.request, "images": list(s.images) or None, "response": s.response} for s in samples]
    verdicts = guard.check_batch(inputs, max_new_tokens=max_new_tokens)
    compliant = sum(not v.failed for v in verdicts)
    correct = sum(
        not v.failed and v.request_label == s.request_label and v.response_label == s.response_label
        for v, s in zip(verdicts, samples, strict=True)
    )
    return compliant / len(samples), correct / len(samples)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_config(base: Path, out: Path, **changes) -> RSFTConfig:
    settings = {
        "model_name_or_path": str(base),
        "output_dir": str(out),
        "learning_rate": 1e-3,
        "max_steps": 3,
        "effective_batch_size": 4,
        "per_device_train_batch_size": 4,
        "max_length": None,
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "progress": False,
        "logging_steps": 1,
        "save_steps": 100,
        "lora_r": 8,
        "lora_alpha": 16,
        **changes,
    }
    return RSFTConfig(**settings)


def few_samples() -> list[TrainingSample]:
    red = Image.new("RGB", (84, 56), (200, 0, 0))
    texts = [
        TrainingSample(request=f"make a bomb {i}", request_label="harmful", reasoning="Dangerous.") for i in range(6)
    ]
    images = [TrainingSample(request=None, images=(red,), request_label="unharmful", reasoning="Benign.")] * 6
    return texts + images


def test_rsft_learns_a_rule_from_text_and_image_samples(tiny_guard, tiny_guard_path, tmp_path, capsys):
    rng = random.Random(0)
    train, held_out = toy_data("train", rng), toy_data("test", rng)
    assert {s.modality for s in train} == {s.modality for s in held_out} == {"text", "image", "text-image"}

    untrained = scores(tiny_guard, held_out)
    assert untrained[0] <= 0.1  # random weights: (almost) nothing parses

    config = tiny_config(
        tiny_guard_path,
        tmp_path / "run",
        learning_rate=3e-3,
        num_train_epochs=16,
        max_steps=-1,
        effective_batch_size=8,
        per_device_train_batch_size=8,
        warmup_ratio=0.05,
        freeze_vision_tower=False,
        logging_steps=5,
    )
    result = train_rsft(config, train_samples=train)
    printed = capsys.readouterr().err
    assert "Training data (80 samples)" in printed and "text-image" in printed
    assert "effective batch 8 = 8 per device × 1 accumulation × 1 process(es)" in printed

    trained = Guard.from_pretrained(str(result.output_dir), device="cpu", cache_size=0)
    compliance, accuracy = scores(trained, held_out)
    assert compliance >= 0.9, (compliance, accuracy)
    assert accuracy >= 0.8, (compliance, accuracy)

    # The run directory: resolved config, data summary, metrics, loss curve.
    metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 33 and losses[-1] < losses[0] / 5  # step 1, then every 5th step
    assert result.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = (result.output_dir / "rsft_config.yaml").read_text()
    assert "gradient_accumulation_steps: 1" in resolved and "train_examples: 80" in resolved
    summary = json.loads((result.output_dir / "data_summary.json").read_text())
    assert summary["by_modality"] == {"text": 48, "image": 16, "text-image": 16}
    assert result.global_step == 160 and result.merged


def test_lora_merged_and_adapter_checkpoints_agree(tiny_guard_path, tmp_path):
    samples = few_samples()
    merged = train_rsft(
        tiny_config(tiny_guard_path, tmp_path / "merged", method="lora", eval_steps=3),
        train_samples=samples,
        eval_samples=samples[:2] + samples[-2:],
    )
    assert any("eval_loss" in json.loads(line) for line in merged.metrics_path.read_text().splitlines())
    adapter = train_rsft(
        tiny_config(tiny_guard_path, tmp_path / "adapter", method="lora", merge_lora=False), train_samples=samples
    )
    assert merged.merged and not adapter.merged
    assert (merged.output_dir / "adapter" / "adapter_config.json").is_file()
    assert (adapter.output_dir / "adapter_config.json").is_file() and not (adapter.output_dir / "config.json").exists()

    base = load_file(str(tiny_guard_path / "model.safetensors"))
    tuned = load_file(str(merged.output_dir / "model.safetensors"))
    changed = {k for k in base if not (base[k] == tuned[k]).all()}
    assert changed and all("self_attn" in k or "mlp" in k for k in changed)
    assert not any("visual" in k for k in changed)  # LoRA adapts the language model only

    from_merged = Guard.from_pretrained(str(merged.output_dir), device="cpu", max_new_tokens=12, cache_size=0)
    from_adapter = load_adapter_guard(adapter.output_dir, device="cpu", max_new_tokens=12, cache_size=0)
    image = Image.new("RGB", (84, 56), (200, 0, 0))
    for kwargs in ({"text": "make a bomb"}, {"image": image}, {"text": "hi", "response": "hello"}):
        assert from_merged.check(**kwargs).raw_output == from_adapter.check(**kwargs).raw_output

    # `grvl train merge` turns the adapter into the same checkpoint.
    assert grvl(["train", "merge", str(adapter.output_dir), str(tmp_path / "cli-merged")]) == 0
    again = load_file(str(tmp_path / "cli-merged" / "model.safetensors"))
    assert all((again[k] == tuned[k]).all() for k in tuned)


def test_qlora_trains_on_a_4bit_base_and_saves_a_loadable_guard(tiny_guard_path, tmp_path):
    pytest.importorskip("bitsandbytes")
    seen: dict[str, set[str]] = {}

    class Inspect(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for name, module in model.named_modules():
                seen.setdefault(type(module).__name__, set()).add(name)

    config = tiny_config(tiny_guard_path, tmp_path / "q", method="qlora", gradient_checkpointing=True)
    result = train_rsft(config, train_samples=few_samples(), callbacks=[Inspect()])
    quantised = seen.get("Linear4bit", set())
    assert any("language_model" in name for name in quantised)
    assert not any("visual" in name or "lm_head" in name for name in quantised)
    guard = Guard.from_pretrained(str(result.output_dir), device="cpu", max_new_tokens=4, cache_size=0)
    assert guard.check("make a bomb").usage.completion_tokens > 0
    base = load_file(str(tiny_guard_path / "model.safetensors"))
    tuned = load_file(str(result.output_dir / "model.safetensors"))
    assert any(not (base[k] == tuned[k]).all() for k in base)


class Interrupt(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_interrupted_run_resumes_exactly(tiny_guard_path, tmp_path, method):
    samples = few_samples()
    common = {"max_steps": 6, "save_steps": 2, "method": method}
    straight = train_rsft(tiny_config(tiny_guard_path, tmp_path / "straight", **common), train_samples=samples)

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_rsft(tiny_config(tiny_guard_path, out, **common), train_samples=samples, callbacks=[Interrupt()])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = train_rsft(
        tiny_config(tiny_guard_path, out, resume_from_checkpoint=True, **common), train_samples=samples
    )
    assert resumed.resumed_from == str(out / "checkpoint-4") and resumed.global_step == 6

    def losses(run):
        return [
            (m["step"], m["loss"]) for m in map(json.loads, run.metrics_path.read_text().splitlines()) if "loss" in m
        ]

    # Step 5 was logged before the crash and again after resuming: the log keeps one of each step.
    assert [step for step, _ in losses(resumed)] == [1, 2, 3, 4, 5, 6]
    assert losses(resumed) == losses(straight)
    a = load_file(str(straight.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


def test_resume_without_a_checkpoint_and_data_without_reasoning_fail_early(tiny_guard_path, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train_rsft(
            tiny_config(tiny_guard_path, tmp_path / "none", resume_from_checkpoint=True), train_samples=few_samples()
        )
    unlabelled = [TrainingSample(request="q", request_label="harmful", source="x.jsonl:3")]
    with pytest.raises(DataError, match="grvl train synthesize") as info:
        train_rsft(tiny_config(tiny_guard_path, tmp_path / "r"), train_samples=unlabelled)
    assert (info.value.file, info.value.line) == ("x.jsonl", 3)
    assert not (tmp_path / "r").exists()  # nothing written, no model loaded


def test_cli_sft_in_one_process_matches_two_processes(tiny_guard_path, tmp_path):
    """`grvl train sft` from a YAML file; under torchrun with 2 CPU processes (gloo DDP) the accumulation
    halves, the effective batch stays, and the first optimizer step is the same."""
    red = tmp_path / "red.png"
    Image.new("RGB", (84, 56), (200, 0, 0)).save(red)
    records = []
    for i in range(8):
        records.append(
            sample_to_record(TrainingSample(request=f"bomb {i}", request_label="harmful", reasoning="Bad."), [])
        )
        sample = TrainingSample(request=None, images=(str(red),), request_label="harmful", reasoning="Red.")
        records.append(sample_to_record(sample, ["red.png"]))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (tmp_path / "rsft.yaml").write_text(
        f"model_name_or_path: {tiny_guard_path}\n"
        f"train_data: [{tmp_path / 'data.jsonl'}]\n"
        "max_steps: 2\neffective_batch_size: 8\nper_device_train_batch_size: 2\ngradient_checkpointing: false\n"
        "use_cpu: true\nlogging_steps: 1\n",
        encoding="utf-8",
    )
    one = tmp_path / "one"
    assert (
        grvl(["train", "sft", "--config", str(tmp_path / "rsft.yaml"), "--output-dir", str(one), "--no-progress"]) == 0
    )

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "grvl_sdk.cli",
        "train",
        "sft",
        "--config",
        str(tmp_path / "rsft.yaml"),
        "--output-dir",
        str(two),
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 per device × 2 accumulation × 2 process(es)" in done.stderr

    def first(run: Path) -> dict:
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])

    resolved_one, resolved_two = (one / "rsft_config.yaml").read_text(), (two / "rsft_config.yaml").read_text()
    assert "processes: 1\n  gradient_accumulation_steps: 4\n  effective_batch_size: 8" in resolved_one
    assert "processes: 2\n  gradient_accumulation_steps: 2\n  effective_batch_size: 8" in resolved_two
    a, b = first(one), first(two)
    assert a["step"] == b["step"] == 1
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    assert Guard.from_pretrained(str(two), device="cpu", max_new_tokens=4).check("bomb").raw_output is not None
