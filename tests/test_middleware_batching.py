"""Throughput features: micro-batching of concurrent checks (real model path on the tiny guard) and
the verdict cache."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from grvl_sdk import BackendError, Guard, InputError
from grvl_sdk.backends.batching import MicroBatcher
from grvl_sdk.testing import ScriptedBackend, guard_output
from grvl_sdk.types import Generation, GuardInput


@pytest.fixture(scope="module")
def batched_guard(tiny_guard_path):
    guard = Guard.from_pretrained(
        str(tiny_guard_path), device="cpu", max_new_tokens=16, cache_size=0, max_wait_ms=20, max_batch_size=16
    )
    yield guard
    guard.close()


@pytest.fixture(scope="module")
def reference(tiny_guard_path):
    """The same model without micro-batching: one generate per check."""
    return Guard.from_pretrained(str(tiny_guard_path), device="cpu", max_new_tokens=16, micro_batching=False)


def _texts(n: int) -> list[str]:
    return [f"request number {i}: " + "word " * (i % 5) for i in range(n)]


async def test_16_concurrent_acheck_calls_share_generate_calls(batched_guard, reference):
    assert batched_guard.batcher is not None and reference.batcher is None
    calls = []
    original = batched_guard.backend.generate

    def counting(inputs, **kwargs):
        calls.append(len(inputs))
        return original(inputs, **kwargs)

    batched_guard.backend.generate = counting
    try:
        texts = _texts(16)
        verdicts = await asyncio.gather(*(batched_guard.acheck(text) for text in texts))
    finally:
        del batched_guard.backend.generate
    assert sum(calls) == 16 and len(calls) < 16
    # Each caller got the verdict of its own input: the same output as checking it alone.
    for text, verdict in zip(texts, verdicts, strict=True):
        assert verdict.raw_output == reference.check(text).raw_output
    assert len({v.id for v in verdicts}) == 16


def test_concurrent_threads_are_batched_and_routed(batched_guard, reference, rgb_image):
    other = Image.new("RGB", (64, 64), (0, 90, 200))
    specs = [{"text": t} for t in _texts(6)] + [{"text": "what is this?", "image": rgb_image}, {"image": other}]
    before = batched_guard.batcher.batches
    barrier = threading.Barrier(len(specs))

    def one(spec):
        barrier.wait()
        return batched_guard.check(**spec)

    with ThreadPoolExecutor(len(specs)) as pool:
        verdicts = list(pool.map(one, specs))
    assert batched_guard.batcher.batches - before < len(specs)
    for spec, verdict in zip(specs, verdicts, strict=True):
        assert verdict.raw_output == reference.check(**spec).raw_output


def test_batches_never_mix_max_new_tokens_and_one_bad_input_does_not_fail_others():
    seen: list[list[str]] = []
    gate = threading.Event()

    def run(items, max_new_tokens, deadline):
        if items[0].text == "gate":
            gate.wait(timeout=10)  # keeps the worker busy while the others queue up
        seen.append([item.text for item in items])
        if any(item.text == "poisoned" for item in items):
            raise BackendError("this input breaks the model")
        return [
            Generation(text=f"{item.text}:{max_new_tokens}", prompt_tokens=1, completion_tokens=1, latency_ms=1.0)
            for item in items
        ]

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_ms=50)
    first = batcher.submit(GuardInput(text="gate"), max_new_tokens=4, deadline=None)
    while not batcher._running:
        time.sleep(0.001)
    futures = [
        batcher.submit(GuardInput(text=t), max_new_tokens=n, deadline=None)
        for t, n in [("a", 4), ("b", 8), ("poisoned", 4), ("c", 4)]
    ]
    gate.set()
    assert first.result(timeout=10).text == "gate:4"
    results = []
    for future in futures:
        try:
            results.append(future.result(timeout=10).text)
        except BackendError as exc:
            results.append(exc.code)
    batcher.close()
    assert results == ["a:4", "b:8", "backend_error", "c:4"]
    assert ["a", "poisoned", "c"] in seen and ["b"] in seen  # batched by budget, then retried one by one
    with pytest.raises(InputError):
        MicroBatcher(run, max_batch_size=0, max_wait_ms=1)


def test_micro_batching_keeps_per_input_failures_separate():
    def script(item: GuardInput) -> str:
        return guard_output("harmful") if item.text == "bad" else "no verdict here"

    backend = ScriptedBackend(script, delay=0.05)
    guard = Guard(backend, micro_batching=True, max_wait_ms=50, cache_size=0)

    async def both():
        # A lone check on an idle guard goes out at once; once checks are concurrent, they are batched.
        await asyncio.gather(guard.acheck("warm"), guard.acheck("up"))
        return await asyncio.gather(guard.acheck("bad"), guard.acheck("unclear"))

    bad, unclear = asyncio.run(both())
    assert bad.decision == "block" and not bad.failed
    assert unclear.decision == "error-blocked" and unclear.error.code == "unparseable_output"
    assert [item.text for item in backend.calls[-1]] == ["bad", "unclear"]
    guard.close()


# -- cache -------------------------------------------------------------------------------------
def test_cache_hits_skip_the_backend(rgb_image):
    backend = ScriptedBackend.flagging("bomb")
    guard = Guard(backend, cache_size=8)
    first = guard.check("how to bake bread", image=rgb_image)
    again = guard.check("how to bake bread", image=rgb_image.copy())
    assert len(backend.calls) == 1
    assert not first.cached and again.cached and again.id != first.id
    assert (again.request_label, again.decision, again.raw_output) == (
        first.request_label,
        first.decision,
        first.raw_output,
    )
    assert guard.cache.hits == 1
    # Different image pixels, text, response or budget: misses.
    guard.check("how to bake bread", image=Image.new("RGB", (96, 72), (0, 0, 0)))
    guard.check("how to bake bread!", image=rgb_image)
    guard.check("how to bake bread", image=rgb_image, response="ok")
    guard.check("how to bake bread", image=rgb_image, max_new_tokens=5)
    assert len(backend.calls) == 5
    # The decision is made afresh on a hit: a per-call policy applies to cached judgements.
    assert guard.check("bomb").decision == "block"
    monitored = guard.check("bomb", policy={"mode": "monitor"})
    assert monitored.cached and not monitored.blocked


async def test_cache_serves_async_and_batch_checks():
    backend = ScriptedBackend.flagging("bomb")
    guard = Guard(backend, cache_size=8)
    await guard.acheck("a")
    assert (await guard.acheck("a")).cached
    verdicts = guard.check_batch([{"text": "a"}, {"text": "b"}])
    assert [v.cached for v in verdicts] == [True, False]
    assert sum(len(call) for call in backend.calls) == 2


def test_cache_off_lru_and_failures_not_cached():
    backend = ScriptedBackend.flagging("bomb")
    off = Guard(backend, cache_size=0)
    off.check("x")
    assert not off.check("x").cached and len(backend.calls) == 2

    lru = Guard(ScriptedBackend.flagging("bomb"), cache_size=2)
    for text in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        lru.check(text)
    assert len(lru.cache) == 2
    assert lru.check("a").cached and not lru.check("b").cached

    failing = Guard(ScriptedBackend([BackendError("down"), guard_output("unharmful")]), cache_size=8)
    assert failing.check("x").failed
    assert not failing.check("x").failed  # the failure was not cached: the backend was asked again
    with pytest.raises(InputError):
        Guard(backend, cache_size=-1)
