"""The micro-batcher keeps a burst of concurrent callers together, also after an idle period."""

from __future__ import annotations

import threading
import time

from grvl_sdk.backends.batching import MicroBatcher
from grvl_sdk.types import Generation, GuardInput


def _batcher(sizes: list[int], max_wait_ms: float) -> MicroBatcher:
    def run(items, budget, deadline):
        sizes.append(len(items))
        time.sleep(0.02)  # a generation: later arrivals would queue behind it
        return [Generation(text=f"out {item.text}") for item in items]

    return MicroBatcher(run, max_batch_size=16, max_wait_ms=max_wait_ms)


def _burst(batcher: MicroBatcher, n: int) -> list[str]:
    barrier = threading.Barrier(n)
    results: list[str] = [""] * n

    def caller(index: int) -> None:
        barrier.wait()
        time.sleep(0.003 * index)  # a real burst is spread a little: callers arrive 3 ms apart
        results[index] = batcher.submit(GuardInput(text=str(index)), max_new_tokens=8, deadline=None).result().text

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_burst_of_8_after_an_idle_period_is_one_batch():
    sizes: list[int] = []
    batcher = _batcher(sizes, max_wait_ms=400)  # generous: a loaded CI machine starts 8 threads slowly
    try:
        for round_ in range(2):
            sizes.clear()
            batcher._last_concurrent = float("-inf")  # idle for longer than the concurrency window
            assert _burst(batcher, 8) == [f"out {i}" for i in range(8)]
            assert sizes == [8], (round_, sizes)
    finally:
        batcher.close()


def test_a_lone_check_on_an_idle_guard_waits_only_the_grace():
    sizes: list[int] = []
    batcher = _batcher(sizes, max_wait_ms=400)
    try:
        assert batcher.submit(GuardInput(text="a"), max_new_tokens=8, deadline=None).result().text == "out a"
        assert sizes == [1]
    finally:
        batcher.close()
