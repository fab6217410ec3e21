"""GRPO step time and peak memory on a random model of a real Qwen2.5-VL shape, group size 16.

    python benchmarks/bench_grpo_gpu.py --shape 3b             # on a GPU: the figures for docs/performance.md
    python benchmarks/bench_grpo_gpu.py --shape tiny --cpu     # smoke run of the same code path on CPU

Builds a randomly initialised Qwen2.5-VL with the chosen shape (``benchmarks/_models.py``: no download; the
tokenizer is the tiny guard's), writes synthetic RL prompts (a 448×448 image and ~100 words of text each),
and runs ``train_rl`` for ``--warmup + --steps`` optimizer steps per method with the paper's group size
(16 answers per prompt), ``--prompts`` prompts per rollout split into two policy updates (so clipping acts),
and transformers generation (no vLLM). A random model never writes ``<|im_end|>``: every answer runs to
``--max-completion`` tokens, the worst case for generation. Reports, per method, the median time of an
optimizer step after warm-up (a rollout step generates, so steps alternate between "generate + update" and
"update"; both are listed) and the peak GPU memory (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from PIL import Image

from grvl_sdk.trainer import GuardRLConfig, RLSample, TrainingSample, train_rl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import SHAPES, build_model


def prompts(count: int) -> list[RLSample]:
    text = "Please look at the picture and tell me whether the steps written on this sign are safe to follow. " * 5
    out = []
    for index in range(count):
        image = Image.new("RGB", (448, 448), (index * 37 % 255, 90, 160))
        sample = TrainingSample(
            request=f"{text} ({index})",
            images=(image,),
            response="It says to keep left; that is safe.",
            request_label="unharmful",
            response_label="unharmful",
            id=f"bench-{index}",
        )
        out.append(RLSample.from_training_sample(sample))
    return out


class StepTimer(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["full", "lora", "qlora"])
    parser.add_argument("--group", type=int, default=16, help="answers per prompt (the paper's 16)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per rollout (two updates of half)")
    parser.add_argument("--per-device", type=int, default=16, help="completions per micro-batch")
    parser.add_argument("--max-completion", type=int, default=256, help="tokens per answer (all reach it)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if args.prompts % 2:
        parser.error("--prompts must be even (two policy updates per rollout)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(args.shape, Path(tmp) / "base", device)
        total = args.warmup + args.steps
        data = prompts(args.prompts * (total // 2 + 2))
        for method in args.methods:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            timer = StepTimer()
            config = GuardRLConfig(
                model_name_or_path=str(base),
                output_dir=str(Path(tmp) / method),
                method=method,
                merge_lora=False,
                num_generations=args.group,
                prompts_per_rollout=args.prompts,
                prompts_per_update=args.prompts // 2,
                per_device_train_batch_size=args.per_device,
                max_completion_length=args.max_completion,
                max_steps=total,
                gradient_checkpointing=args.gradient_checkpointing,
                use_cpu=device == "cpu",
                bf16=device == "cuda",
                use_vllm=False,
                save_steps=10_000,
                logging_steps=1,
                progress=False,
            )
            started = time.perf_counter()
            result = train_rl(config, train_samples=data, callbacks=[timer])
            wall = time.perf_counter() - started
            measured = timer.times[args.warmup :]
            rollout, update = measured[0::2], measured[1::2]
            metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
            lengths = [m["completions/mean_length"] for m in metrics if m.get("completions/mean_length")]
            row = {
                "shape": args.shape,
                "method": method,
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "group": args.group,
                "prompts_per_rollout": args.prompts,
                "completions_per_update": result.plan.batch.effective,
                "mean_completion_tokens": round(statistics.mean(lengths), 1) if lengths else None,
                "step_s_median": round(statistics.median(measured), 3),
                "rollout_step_s_median": round(statistics.median(rollout), 3) if rollout else None,
                "update_step_s_median": round(statistics.median(update), 3) if update else None,
                "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
                "wall_s": round(wall, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| shape | method | device | group | completions/update | tokens/answer | rollout step | update step "
          "| peak GPU memory |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        memory = f"{row['peak_gpu_mem_gib']} GiB" if row["peak_gpu_mem_gib"] is not None else "n/a"
        print(
            f"| {row['shape']} | {row['method']} | {row['device']} | {row['group']} | {row['completions_per_update']} "
            f"| {row['mean_completion_tokens']} | {row['rollout_step_s_median']} s | {row['update_step_s_median']} s "
            f"| {memory} |"
        )


if __name__ == "__main__":
    main()
