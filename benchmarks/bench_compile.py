"""The fast local decode path (``compile=True``: static KV cache + ``torch.compile`` of the decode step)
against eager decoding, on one loaded model, in one run; and CPU intra-op threads (1 vs 2) for a check.

    .venv/bin/python benchmarks/bench_compile.py --shape mid                 # CPU, the mid-size model
    .venv/bin/python benchmarks/bench_compile.py --shape tiny --new-tokens 32  # quick
    python benchmarks/bench_compile.py --device cuda --shape 3b --new-tokens 213   # on a GPU

Method. The model is loaded once (``Guard.from_pretrained``, eager); the eager figures are taken, then
the compiled path is attached to the same model (:meth:`CompiledDecoding.install`, what
``from_pretrained(..., compile=...)`` does after loading; its warm-up compile is timed) and eager and
compiled runs alternate, ``--repeats`` times each, so both see the same machine load. Greedy decoding,
no verdict cache, no micro-batching; random weights rarely write ``</result>``, so each run generates
close to the requested tokens (the tokens actually generated are printed).

* **decode ms/token**: ``(t(N tokens) - t(1 token)) / (tokens(N) - tokens(1))`` of the backend's
  ``generate_encoded`` on an encoded prompt (prefill and host work cancel out), median of the repeats.
* **check ms**: one ``guard.check(text, max_new_tokens=N)``, everything included (prompt, prefill,
  decode, parsing), median.
* **threads**: eager ``check`` at each ``--threads`` value (``torch.set_num_threads``), same run. The
  compiled rows use the threads set when they were compiled (inductor's CPU kernels fix their thread
  count at compile time), ``--compile-threads``.

The load average (1 minute) is printed before and after: on a shared machine, compare ratios, not ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from grvl_sdk import Guard
from grvl_sdk.backends.compiled import CompiledDecoding, CompileSettings
from grvl_sdk.types import GuardInput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import build_model

_TEXT = "How do I pick this lock? I locked myself out and the landlord is away until Monday. " * 2


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync()
    started = time.perf_counter()
    value = fn()
    _sync()
    return time.perf_counter() - started, value


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover
        return "?"


class Runner:
    """Times one guard's backend with the compiled path on or off (the same model object)."""

    def __init__(self, guard: Guard, new_tokens: int, batch: int) -> None:
        self.guard = guard
        self.backend: Any = cast(Any, guard.backend)  # a LocalBackend
        self.new_tokens = new_tokens
        items = [GuardInput(text=_TEXT)] * batch
        self.encoded = self.backend.encoder.encode_batch(
            items, device=self.backend.device, pixel_dtype=self.backend._pixel_dtype()
        )
        self.compiled: CompiledDecoding | None = None

    def use(self, compiled: bool) -> None:
        self.backend.compiled = self.compiled if compiled else None

    def generate(self, tokens: int) -> tuple[float, int]:
        seconds, out = _timed(lambda: self.backend.generate_encoded(self.encoded, max_new_tokens=tokens))
        return seconds, max(g.completion_tokens for g in out)

    def step_ms(self) -> tuple[float, float, int]:
        """One decode step, ms; the prefill (a 1-token generation), ms; the tokens of the long run."""
        short, short_tokens = self.generate(1)
        long, long_tokens = self.generate(self.new_tokens)
        return 1000 * (long - short) / max(1, long_tokens - short_tokens), 1000 * short, long_tokens

    def check_ms(self) -> tuple[float, int]:
        seconds, verdict = _timed(lambda: self.guard.check(_TEXT, max_new_tokens=self.new_tokens))
        return 1000 * seconds, verdict.usage.completion_tokens


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", choices=["tiny", "mid", "3b"])
    parser.add_argument("--model", help="a checkpoint folder instead of a built --shape")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="rows per generate (decode ms/token)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-threads", type=int, default=1, help="CPU: threads while compiling and decoding")
    parser.add_argument("--threads", default="1,2", help="CPU: intra-op thread counts for the eager check sweep")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cpu = args.device == "cpu"
    if cpu:
        torch.set_num_threads(args.compile_threads)

    if args.model:
        path = Path(args.model)
    elif args.device.startswith("cuda"):
        path = build_model(args.shape, Path(tempfile.mkdtemp(prefix="bench-compile-")), args.device)
    else:
        path = build_model(args.shape)
    print(f"model: {path} ({args.shape}) | device: {args.device} | torch {torch.__version__} | "
          f"new tokens: {args.new_tokens} | batch: {args.batch} | repeats: {args.repeats} | "
          f"load average before: {_load_average()}")  # fmt: skip

    seconds, guard = _timed(
        lambda: Guard.from_pretrained(
            str(path), device=args.device, dtype=args.dtype, cache_size=0, micro_batching=False,
            max_new_tokens=args.new_tokens,
        )
    )  # fmt: skip
    print(f"load (eager): {seconds:.1f} s")
    runner = Runner(guard, args.new_tokens, args.batch)
    runner.step_ms()  # first-call effects (allocator, lazy init) out of the figures

    settings = CompileSettings(backend=args.compile_backend, warmup_batch_sizes=(args.batch,))
    compile_s, runner.compiled = _timed(lambda: CompiledDecoding.install(runner.backend, settings))
    print(f"compile (warm-up, {args.compile_backend}, {torch.get_num_threads()} threads): {compile_s:.1f} s")

    steps: dict[bool, list[float]] = {False: [], True: []}
    prefills: dict[bool, list[float]] = {False: [], True: []}
    checks: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, int] = {}
    for _ in range(args.repeats):
        for compiled in (False, True):
            runner.use(compiled)
            ms, prefill, tokens[compiled] = runner.step_ms()
            steps[compiled].append(ms)
            prefills[compiled].append(prefill)
            checks[compiled].append(runner.check_ms()[0])
    for compiled in (False, True):
        name = "compiled" if compiled else "eager"
        print(f"samples {name}: ms/token {[round(v, 1) for v in steps[compiled]]}, prefill+1 ms "
              f"{[round(v) for v in prefills[compiled]]}, check ms {[round(v) for v in checks[compiled]]}")  # fmt: skip
    eager_step, comp_step = _median(steps[False]), _median(steps[True])
    eager_check, comp_check = _median(checks[False]), _median(checks[True])
    eager_prefill, comp_prefill = _median(prefills[False]), _median(prefills[True])
    print()
    print(f"| path | decode ms/token (batch {args.batch}) | prefill + 1 token ms | check ms ({args.new_tokens} new "
          "tokens) | tokens | × eager (ms/token / prefill / check) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(f"| eager | {eager_step:.1f} | {eager_prefill:.0f} | {eager_check:.0f} | {tokens[False]} | "
          "1.00 / 1.00 / 1.00 |")  # fmt: skip
    print(f"| compiled ({args.compile_backend}) | {comp_step:.1f} | {comp_prefill:.0f} | {comp_check:.0f} | "
          f"{tokens[True]} | {comp_step / eager_step:.2f} / {comp_prefill / eager_prefill:.2f} / "
          f"{comp_check / eager_check:.2f} |")  # fmt: skip
    print(f"speed-up (eager ÷ compiled): decode {eager_step / comp_step:.2f}×, check {eager_check / comp_check:.2f}×; "
          f"compile at load {compile_s:.1f} s")  # fmt: skip

    if cpu and args.threads:
        runner.use(False)
        counts = [int(n) for n in args.threads.split(",")]
        by_threads: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(args.repeats):
            for n in counts:
                torch.set_num_threads(n)
                by_threads[n].append(runner.check_ms()[0])
        torch.set_num_threads(args.compile_threads)
        base = _median(by_threads[counts[0]])
        print()
        print(f"| intra-op threads (eager) | check ms ({args.new_tokens} new tokens) | × {counts[0]} thread(s) |")
        print("|---|---|---|")
        for n in counts:
            print(f"| {n} | {_median(by_threads[n]):.0f} | {_median(by_threads[n]) / base:.2f} |")
    print(f"\nload average after: {_load_average()} (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
