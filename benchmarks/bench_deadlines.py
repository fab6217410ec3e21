"""How late a check returns after its deadline, against misbehaving backends and servers.

For each of {sync, async, batch, micro-batched} × {hanging backend, huge-output backend, hanging
server, trickling server, slow-headers server, huge-body server}: ``repeats`` checks under a
``--deadline`` (default 0.3 s); prints the overshoot (time past the deadline when the call returned)
as p50 / max in milliseconds, and the error codes seen. Target: every call ends within deadline + 250 ms.

    .venv/bin/python benchmarks/bench_deadlines.py [--deadline 0.3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grvl_sdk import Guard
from grvl_sdk.backends.remote import MAX_RESPONSE_BYTES
from grvl_sdk.testing import ScriptedBackend, guard_output
from tests._fault_server import FaultServer, completion


def _guard_factories(release: threading.Event) -> dict:
    def hang(item):
        release.wait()
        return guard_output()

    return {
        "hanging backend": lambda mb: Guard(ScriptedBackend(hang), cache_size=0, micro_batching=mb),
        "huge-output backend": lambda mb: Guard(
            ScriptedBackend("<think>x</think><result>Request:" + " " * 20_000), cache_size=0, micro_batching=mb
        ),
    }


SERVERS = {
    "hanging server": lambda: FaultServer("hang"),
    "trickling server": lambda: FaultServer("trickle", body=completion(guard_output()), interval=0.05),
    "slow-headers server": lambda: FaultServer("slow-headers", body=completion(guard_output())),
    "huge-body server": lambda: FaultServer("body", body=completion("x" * (MAX_RESPONSE_BYTES + 10))),
}


def _once(guard: Guard, how: str, deadline: float) -> tuple[float, set[str]]:
    policy = {"deadline": deadline}
    started = time.monotonic()
    if how == "sync":
        verdicts = [guard.check("hello", policy=policy)]
    elif how == "async":
        verdicts = [asyncio.run(guard.acheck("hello", policy=policy))]
    elif how == "batch":
        verdicts = guard.check_batch([{"text": "a"}, {"text": "b"}], policy=policy)
    else:
        verdicts = []
        threads = [threading.Thread(target=lambda: verdicts.append(guard.check("x", policy=policy))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.monotonic() - started
    return elapsed - deadline, {v.error.code if v.error else v.decision for v in verdicts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    release = threading.Event()
    modes = ["sync", "async", "batch", "micro-batched"]
    rows = []
    worst = 0.0
    for name, make in _guard_factories(release).items():
        for how in modes:
            guard = make(how == "micro-batched")
            runs = [_once(guard, how, args.deadline) for _ in range(args.repeats)]
            rows.append((name, how, runs))
    for name, start in SERVERS.items():
        with start() as server:
            for how in modes:
                guard = Guard.from_server(
                    server.base_url, model="m", cache_size=0, max_retries=0, micro_batching=how == "micro-batched"
                )
                runs = [_once(guard, how, args.deadline) for _ in range(args.repeats)]
                guard.close()
                rows.append((name, how, runs))
    release.set()
    print(f"deadline {args.deadline * 1000:.0f} ms, {args.repeats} calls each; overshoot = return time - deadline\n")
    print("| backend / server | call | overshoot p50 (ms) | overshoot max (ms) | outcomes |")
    print("|---|---|---|---|---|")
    for name, how, runs in rows:
        over = [max(0.0, o) * 1000 for o, _ in runs]
        codes = sorted(set().union(*(c for _, c in runs)))
        worst = max(worst, max(over))
        print(f"| {name} | {how} | {statistics.median(over):.1f} | {max(over):.1f} | {', '.join(codes)} |")
    print(f"\nworst overshoot: {worst:.1f} ms (target <= 250 ms)")


if __name__ == "__main__":
    main()
