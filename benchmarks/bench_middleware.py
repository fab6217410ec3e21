"""Middleware throughput and overhead, on the tiny offline guard (CPU by default).

(a) micro-batching: 16 concurrent ``acheck`` callers over 16 sequential ``check`` calls (throughput
    ratio, target >= 2.5x);
(b) verdict-cache hit latency (target < 1 ms), text-only and with a 320x240 image;
(c) remote backend overhead per call over the server's own handling time, against the loopback
    OpenAI-compatible server on 127.0.0.1 (target p50 < 5 ms).

    .venv/bin/python benchmarks/bench_middleware.py [--model PATH] [--repeats 10] [--new-tokens 32]

Prints a markdown table of measured figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time

from PIL import Image


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_micro_batching(guard, sequential, texts: list[str], repeats: int) -> tuple[float, float, float]:
    """(median sequential s, median concurrent s, generate calls per concurrent round)."""

    async def concurrent() -> None:
        await asyncio.gather(*(guard.acheck(text) for text in texts))

    seq_times, conc_times, batches = [], [], []
    for _ in range(repeats):  # interleaved, so load changes on the machine hit both alike
        started = time.perf_counter()
        for text in texts:
            sequential.check(text)
        seq_times.append(time.perf_counter() - started)
        before = guard.batcher.batches
        started = time.perf_counter()
        asyncio.run(concurrent())
        conc_times.append(time.perf_counter() - started)
        batches.append(guard.batcher.batches - before)
    return statistics.median(seq_times), statistics.median(conc_times), statistics.median(batches)


def bench_cache_hits(guard, image: Image.Image, hits: int) -> tuple[float, float]:
    """Median cache-hit latency in ms: text only, and text + image."""
    results = []
    for kwargs in ({"text": "How do I bake bread?"}, {"text": "What is this?", "image": image}):
        guard.check(**kwargs)  # fill the cache
        samples = []
        for _ in range(hits):
            started = time.perf_counter()
            verdict = guard.check(**kwargs)
            samples.append((time.perf_counter() - started) * 1000)
        assert verdict.cached
        results.append(statistics.median(samples))
    return results[0], results[1]


def bench_remote(backend, image: Image.Image, calls: int, new_tokens: int) -> dict[str, tuple[float, float, float]]:
    """Per case: (p50 overhead ms, p95 overhead ms, p50 server ms)."""
    from grvl_sdk import Guard
    from grvl_sdk.testing_server import LoopbackServer

    out = {}
    with LoopbackServer(backend) as server:
        remote = Guard.from_server(server.base_url, model=server.model_name, max_new_tokens=new_tokens, cache_size=0)
        for name, kwargs in (
            ("text", {"text": "How do I bake bread?"}),
            ("text + image", {"text": "What?", "image": image}),
        ):
            remote.check(**kwargs)  # warm the connection
            overheads, server_ms = [], []
            for _ in range(calls):
                started = time.perf_counter()
                remote.check(**kwargs)
                total = (time.perf_counter() - started) * 1000
                own = server.state.process_ms[-1]
                overheads.append(total - own)
                server_ms.append(own)
            out[name] = (_percentile(overheads, 0.5), _percentile(overheads, 0.95), statistics.median(server_ms))
        remote.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="guard checkpoint (default: a freshly built tiny guard)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--remote-calls", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    from grvl_sdk import Guard
    from grvl_sdk.testing import ScriptedBackend, build_tiny_guard, guard_output

    model_path = args.model or str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))
    common = {"device": args.device, "max_new_tokens": args.new_tokens, "cache_size": 0}
    batched = Guard.from_pretrained(model_path, max_batch_size=args.callers, max_wait_ms=5, **common)
    sequential = Guard.from_pretrained(model_path, micro_batching=False, **common)
    image = Image.new("RGB", (320, 240), (120, 90, 60))
    texts = [f"Request {i}: how do I " + "really " * (i % 4) + "bake bread?" for i in range(args.callers)]
    for text in texts[:2]:  # warm-up
        sequential.check(text)
        batched.check(text)

    seq, conc, batches = bench_micro_batching(batched, sequential, texts, args.repeats)
    # The tiny guard's random outputs are failed verdicts, which are never cached: the cache path
    # (image loading, hashing, lookup, policy, logging) does not depend on the backend, so a scripted one is used.
    cached = Guard(ScriptedBackend(guard_output("unharmful")), max_new_tokens=args.new_tokens, cache_size=1024)
    hit_text, hit_image = bench_cache_hits(cached, image, args.hits)
    remote = bench_remote(sequential.backend, image, args.remote_calls, args.new_tokens)

    print("| measurement | measured | target |\n|---|---|---|")
    print(f"| {args.callers} sequential `check` calls, median | {seq * 1000:.0f} ms | |")
    print(f"| {args.callers} concurrent `acheck` callers (micro-batched), median | {conc * 1000:.0f} ms | |")
    print(f"| generate calls per {args.callers} concurrent checks, median | {batches:.0f} | < {args.callers} |")
    print(f"| (a) micro-batched throughput / sequential | **{seq / conc:.2f}x** | >= 2.5x |")
    print(f"| (b) cache hit, text only, median | **{hit_text:.3f} ms** | < 1 ms |")
    print(f"| (b) cache hit, text + 320x240 image, median | **{hit_image:.3f} ms** | < 1 ms |")
    for name, (p50, p95, own) in remote.items():
        print(
            f"| (c) remote overhead per call, {name}: p50 / p95 (server's own time p50 {own:.1f} ms) "
            f"| **{p50:.2f}** / {p95:.2f} ms | p50 < 5 ms |"
        )


if __name__ == "__main__":
    main()
