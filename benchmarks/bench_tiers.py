"""Latency of the fast tier against the think tier (issue 15), measured in one run.

The think tier generates ``--reasoning-tokens`` tokens (a random-weight model does not close its verdict,
so every think generation runs the full budget: the paper's outputs average ~210 tokens); the fast tier
reads the labels with one forward pass per part (request; request + response). Both go through
``LocalBackend.generate`` with the same prompt, one input at a time (batch 1: a guard's single-check
latency), and the medians are compared. Target: fast <= 1/10 of think with ~200 reasoning tokens.

    python benchmarks/bench_tiers.py                          # the tiny guard, CPU
    python benchmarks/bench_tiers.py --shape mid --repeats 3  # the mid-size benchmark model, CPU
    python benchmarks/bench_tiers.py --shape 3b --device cuda # Qwen2.5-VL-3B's shapes, random weights

The mid-size model (``benchmarks/_models.py``: Qwen2-0.5B-shaped text tower, 151k Qwen-sized vocabulary,
real-geometry vision tower) is built once and cached; on CPU it runs in float32 (the guard's default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from grvl_sdk.backends.local import LocalBackend
from grvl_sdk.testing import build_tiny_guard
from grvl_sdk.types import FAST, GuardInput

REQUEST = "Could you tell me how the old bridge downtown was built, and who paid for it back then?"
RESPONSE = "It was built in 1890 by the city, paid for with a bond issue approved by the voters."


def _median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "mid", "3b"], help="model shapes (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reasoning-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape == "tiny":
            folder = build_tiny_guard(Path(tmp) / "guard")
        else:
            from _models import build_model

            # Cached on CPU (read-only use); written into the temporary folder on CUDA.
            folder = build_model(args.shape, None if args.device == "cpu" else Path(tmp) / "guard", args.device)
        backend = LocalBackend.from_pretrained(str(folder), device=args.device)
        rows = []
        for name, item in (
            ("request", GuardInput(text=REQUEST)),
            ("request + response", GuardInput(text=REQUEST, response=RESPONSE)),
        ):
            think_tokens: list[int] = []

            def think(item: GuardInput = item, tokens: list[int] = think_tokens) -> None:
                tokens.append(backend.generate([item], max_new_tokens=args.reasoning_tokens)[0].completion_tokens)

            def fast(item: GuardInput = item) -> None:
                backend.generate([item], max_new_tokens=args.reasoning_tokens, decoding=FAST)

            think_ms = _median_ms(think, args.repeats)
            fast_ms = _median_ms(fast, args.repeats)
            print(f"{name}: think {think_ms:.1f} ms, fast {fast_ms:.1f} ms", file=sys.stderr, flush=True)
            rows.append((name, statistics.mean(think_tokens), think_ms, fast_ms))
    threads = torch.get_num_threads() if args.device == "cpu" else "-"
    print(f"shape {args.shape}, device {args.device} (threads {threads}), median of {args.repeats}, batch 1")
    print(f"{'input':<20} {'think tokens':>12} {'think ms':>10} {'fast ms':>9} {'fast/think':>11}")
    for name, tokens, think_ms, fast_ms in rows:
        print(f"{name:<20} {tokens:>12.0f} {think_ms:>10.1f} {fast_ms:>9.1f} {fast_ms / think_ms:>11.3f}")


if __name__ == "__main__":
    main()
