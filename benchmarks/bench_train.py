"""R-SFT step time and peak memory for LoRA and QLoRA on a random model of a real Qwen2.5-VL shape.

    python benchmarks/bench_train.py --shape 3b            # on a GPU: the figures for docs/performance.md
    python benchmarks/bench_train.py --shape tiny --cpu    # smoke run of the same code path on CPU

Builds a randomly initialised Qwen2.5-VL with the chosen shape (no download: the tokenizer is the tiny
guard's, whose ids all fit the real vocabulary), saves it, and runs ``train_rsft`` for
``--warmup + --steps`` optimizer steps per method on synthetic text+image samples. Reports the median
optimizer-step time after warm-up and the peak GPU memory (``torch.cuda.max_memory_allocated``).
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

from grvl_sdk.trainer import RSFTConfig, TrainingSample, train_rsft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import SHAPES, build_model


def samples(count: int) -> list[TrainingSample]:
    reasoning = " ".join(["The request asks about the picture and the text; nothing in it is dangerous."] * 6)
    out = []
    for index in range(count):
        image = Image.new("RGB", (448, 448), (index * 37 % 255, 90, 160))
        out.append(
            TrainingSample(
                request="What does this sign say, and is it safe to follow? " * 4,
                images=(image,),
                response="It says to keep left; that is safe.",
                request_label="unharmful",
                response_label="unharmful",
                reasoning=reasoning,
            )
        )
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
    parser.add_argument("--methods", nargs="+", default=["lora", "qlora"], choices=["full", "lora", "qlora"])
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (one optimizer step = one batch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(args.shape, Path(tmp) / "base", device)
        data = samples(args.batch * (args.warmup + args.steps))
        for method in args.methods:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            timer = StepTimer()
            config = RSFTConfig(
                model_name_or_path=str(base),
                output_dir=str(Path(tmp) / method),
                method=method,
                merge_lora=False,
                max_steps=args.warmup + args.steps,
                effective_batch_size=args.batch,
                per_device_train_batch_size=args.batch,
                gradient_checkpointing=args.gradient_checkpointing,
                use_cpu=device == "cpu",
                bf16=device == "cuda",
                save_steps=10_000,
                logging_steps=1,
                progress=False,
            )
            result = train_rsft(config, train_samples=data, callbacks=[timer])
            measured = timer.times[args.warmup :]
            row = {
                "shape": args.shape,
                "method": method,
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "per_device_batch": args.batch,
                "gradient_checkpointing": args.gradient_checkpointing,
                "tokens_per_sample": None,
                "step_s_median": round(statistics.median(measured), 4),
                "step_s_min": round(min(measured), 4),
                "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
                "final_loss": round(result.train_loss, 4) if result.train_loss is not None else None,
            }
            metrics = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
            tokens = [m["num_tokens"] for m in metrics if "num_tokens" in m]
            if tokens:
                row["tokens_per_sample"] = round(tokens[0] / args.batch)
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| shape | method | device | batch | tokens/sample | step (median) | peak GPU memory |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        memory = f"{row['peak_gpu_mem_gib']} GiB" if row["peak_gpu_mem_gib"] is not None else "n/a"
        print(
            f"| {row['shape']} | {row['method']} | {row['device']} | {row['per_device_batch']} | "
            f"{row['tokens_per_sample']} | {row['step_s_median']} s | {memory} |"
        )


if __name__ == "__main__":
    main()
