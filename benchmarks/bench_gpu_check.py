"""One check's latency and ``check_batch`` throughput on a random model of a real Qwen2.5-VL shape,
bf16 vs 4-bit vs 8-bit, against the decode roofline (weight bytes / memory bandwidth per token).

    python benchmarks/bench_gpu_check.py --shape 3b                 # on a GPU: figures for docs/performance.md
    python benchmarks/bench_gpu_check.py --shape tiny --cpu --new-tokens 16 --quantization none   # smoke run

Each check generates exactly ``--new-tokens`` tokens (random weights almost never write ``</result>`` or
an end-of-turn token; the script reports the count it got). The decode time per token is
``(t(N tokens) - t(1 token)) / (N - 1)``; the roofline per token is the model's weight footprint over
the memory bandwidth (``--bandwidth-gbs``; default from the device name: H100 3350, H200 4800 GB/s).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from grvl_sdk import Guard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import SHAPES, build_model

_BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0}


def _bandwidth(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in _BANDWIDTH_GBS.items() if key in name), None)


def _timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(path: Path, quantization: str | None, args: argparse.Namespace, device: str) -> dict:
    guard = Guard.from_pretrained(
        str(path), quantization=quantization, device=device, max_new_tokens=args.new_tokens, cache_size=0
    )
    image = Image.new("RGB", (448, 448), (120, 90, 60))
    text = "How do I pick this lock? " * 4

    def one(tokens: int) -> int:
        return guard.check(text, image=image, max_new_tokens=tokens).usage.completion_tokens

    got = one(args.new_tokens)  # warm-up
    one(1)
    latency = _timed(lambda: one(args.new_tokens), args.repeats)
    prefill = _timed(lambda: one(1), args.repeats)
    batch = [{"text": f"{text} #{i}", "image": image} for i in range(args.batch)]
    guard.check_batch(batch[:2])
    batch_s = _timed(lambda: guard.check_batch(batch, batch_size=args.batch), max(1, args.repeats // 2))
    footprint = guard.backend.model.get_memory_footprint()
    guard.close()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "quantization": quantization or ("bf16" if device.startswith("cuda") else "fp32"),
        "tokens": got,
        "latency_s": latency,
        "per_token_ms": (latency - prefill) / max(1, args.new_tokens - 1) * 1000,
        "batch_tok_s": args.batch * got / batch_s,
        "footprint_gb": footprint / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--new-tokens", type=int, default=213, help="the paper's mean output length")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quantization", nargs="+", default=["none", "4bit", "8bit"])
    parser.add_argument("--bandwidth-gbs", type=float)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    bandwidth = _bandwidth(device, args.bandwidth_gbs)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args.shape, Path(tmp) / "model", device)
        rows = [measure(path, None if q == "none" else q, args, device) for q in args.quantization]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name} | shape: {args.shape} | new tokens: {args.new_tokens} | bandwidth: {bandwidth} GB/s")
    print()
    print("| weights | tokens | one check | decode / token | roofline / token | of roofline | check_batch |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        roofline = row["footprint_gb"] / bandwidth * 1000 if bandwidth else None
        share = f"{roofline / row['per_token_ms']:.0%}" if roofline else "n/a"
        print(
            f"| {row['quantization']} ({row['footprint_gb']:.2f} GB) | {row['tokens']} | {row['latency_s']:.3f} s | "
            f"{row['per_token_ms']:.2f} ms | {f'{roofline:.2f} ms' if roofline else 'n/a'} | {share} | "
            f"{row['batch_tok_s']:.0f} tok/s (batch {args.batch}) |"
        )


if __name__ == "__main__":
    main()
