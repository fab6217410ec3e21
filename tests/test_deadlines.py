"""The deadline matrix: {sync, async, batch, micro-batched} × {hanging, trickling, slow-headers,
huge-output} backends and servers. Every check ends by its deadline (plus a generous margin for shared
CI machines; the precise overshoot is measured by ``benchmarks/bench_deadlines.py``), and a guard that
could not answer in time is never read as "allow"."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from grvl_sdk import Guard, Verdict
from grvl_sdk.backends.remote import MAX_RESPONSE_BYTES
from grvl_sdk.testing import ScriptedBackend, guard_output
from grvl_sdk.testing.faults import FaultServer, completion

DEADLINE = 0.5
#: Allowed lateness on a loaded 2-core CI machine (measured overshoot is a few milliseconds).
MARGIN = 0.75
FAILED = {"deadline_exceeded", "unparseable_output", "remote_error", "circuit_open"}


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown, so a hung backend thread ends with the test."""
    event = threading.Event()
    yield event
    event.set()


def _hanging(release: threading.Event) -> Guard:
    def hang(item):
        release.wait()
        return guard_output("unharmful")

    return Guard(ScriptedBackend(hang), cache_size=0)


def _huge_scripted(release: threading.Event) -> Guard:
    # A model writing "Request:" and then nothing but spaces: a quadratic regex took 7-12 s on this.
    return Guard(ScriptedBackend("<think>x</think><result>Request:" + " " * 20_000), cache_size=0)


def _huge_scripted_big(release: threading.Event) -> Guard:
    return Guard(ScriptedBackend("Request: " * 3_000_000), cache_size=0)


SCRIPTED: dict[str, Callable[[threading.Event], Guard]] = {
    "hanging-backend": _hanging,
    "huge-output-backend": _huge_scripted,
    "huge-output-50MB-backend": _huge_scripted_big,
}

SERVERS: dict[str, Callable[[], FaultServer]] = {
    "hanging-server": lambda: FaultServer("hang"),
    "trickling-server": lambda: FaultServer("trickle", body=completion(guard_output("unharmful")), interval=0.05),
    "slow-headers-server": lambda: FaultServer("slow-headers", body=completion(guard_output("unharmful"))),
    "huge-output-server": lambda: FaultServer("body", body=completion("x" * (MAX_RESPONSE_BYTES + 10))),
    "quadratic-output-server": lambda: FaultServer("body", body=completion("Request:" + " " * 20_000)),
}


def _run(guard: Guard, how: str) -> tuple[float, list[Verdict]]:
    policy = {"deadline": DEADLINE}
    started = time.monotonic()
    if how == "sync":
        verdicts = [guard.check("hello", policy=policy)]
    elif how == "async":
        verdicts = [asyncio.run(guard.acheck("hello", policy=policy))]
    elif how == "batch":
        verdicts = guard.check_batch([{"text": "a"}, {"text": "b"}, {"text": "c"}], policy=policy)
    else:  # micro-batched: concurrent callers coalesced by the guard's micro-batcher
        results: list[Verdict] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(guard.check(f"hello {i}", policy=policy)))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DEADLINE + 10)
        verdicts = results
        assert len(verdicts) == 4, "a micro-batched caller did not return"
    return time.monotonic() - started, verdicts


def _assert_bounded(elapsed: float, verdicts: list[Verdict]) -> None:
    assert elapsed <= DEADLINE + MARGIN, f"took {elapsed:.2f} s under a {DEADLINE} s deadline"
    for verdict in verdicts:
        assert verdict.failed and verdict.error.code in FAILED, verdict.error
        assert verdict.decision == "error-blocked" and verdict.blocked


@pytest.mark.parametrize("how", ["sync", "async", "batch", "micro-batched"])
@pytest.mark.parametrize("kind", sorted(SCRIPTED))
def test_scripted_backends_end_by_the_deadline(kind, how, release):
    guard = SCRIPTED[kind](release)
    if how == "micro-batched":
        guard = Guard(guard.backend, cache_size=0, micro_batching=True)
    _assert_bounded(*_run(guard, how))


@pytest.mark.parametrize("how", ["sync", "async", "batch", "micro-batched"])
@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_misbehaving_servers_end_by_the_deadline(kind, how):
    with SERVERS[kind]() as server:
        guard = Guard.from_server(
            server.base_url, model="m", cache_size=0, max_retries=0, micro_batching=how == "micro-batched"
        )
        try:
            _assert_bounded(*_run(guard, how))
        finally:
            guard.close()


def test_a_late_answer_is_never_used(release):
    """A backend that answers "unharmful" after the deadline: the caller already has its failed verdict,
    and the late answer does not reach the cache either."""
    answered = threading.Event()

    def late(item):
        time.sleep(DEADLINE + 0.2)
        answered.set()
        return guard_output("unharmful")

    guard = Guard(ScriptedBackend(late))
    verdict = guard.check("hello", policy={"deadline": DEADLINE})
    assert verdict.error.code == "deadline_exceeded"
    assert answered.wait(5)
    time.sleep(0.05)
    assert len(guard.cache) == 0


def test_image_loading_counts_against_the_deadline(tmp_path):
    """Ten large PNGs under a short deadline: the call ends by the deadline (loading is inside it)."""
    from PIL import Image

    path = tmp_path / "big.png"
    Image.effect_noise((3000, 3000), 64).convert("RGB").save(path, compress_level=1)
    guard = Guard(ScriptedBackend(guard_output("unharmful")), cache_size=0)
    started = time.monotonic()
    verdict = guard.check("look", images=[path] * 10, policy={"deadline": 0.2})
    elapsed = time.monotonic() - started
    assert verdict.error.code == "deadline_exceeded" and verdict.decision == "error-blocked"
    assert elapsed <= 0.2 + MARGIN
    started = time.monotonic()
    verdict = asyncio.run(guard.acheck("look", images=[path] * 10, policy={"deadline": 0.2}))
    assert verdict.error.code == "deadline_exceeded" and time.monotonic() - started <= 0.2 + MARGIN
