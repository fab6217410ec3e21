"""Policy decisions: enforce/monitor, fail-closed/fail-open on backend errors, unparseable outputs and
deadlines (sync and async, scripted and real backends), per-call overrides."""

from __future__ import annotations

import asyncio
import threading

import pytest

from grvl_sdk import (
    BackendError,
    Generation,
    Guard,
    GuardBlocked,
    InputError,
    Policy,
    Verdict,
)
from grvl_sdk.testing import ScriptedBackend, guard_output


class BlockingBackend(ScriptedBackend):
    """Never answers until released: a hung model or server, without sleeping in tests."""

    def __init__(self) -> None:
        super().__init__(guard_output("unharmful"))
        self.release = threading.Event()

    def generate(self, inputs, *, max_new_tokens):
        self.release.wait(timeout=30)
        return super().generate(inputs, max_new_tokens=max_new_tokens)


@pytest.fixture
def hung():
    backend = BlockingBackend()
    yield backend
    backend.release.set()


def test_policy_validates_and_merges():
    policy = Policy()
    assert (policy.mode, policy.on_error, policy.check, policy.on_block) == ("enforce", "block", "both", "raise")
    assert policy.merged(None) is policy
    merged = policy.merged({"deadline": 0.5, "on_error": "allow"})
    assert merged.deadline == 0.5 and merged.on_error == "allow" and merged.mode == "enforce"
    replacement = Policy(mode="monitor")
    assert policy.merged(replacement) is replacement
    for bad in ({"deadline": 0}, {"deadline": -1}, {"on_error": "maybe"}, {"typo": 1}, {"stream_check_every": 0}):
        with pytest.raises(InputError):
            policy.merged(bad)
    with pytest.raises(InputError):
        policy.merged("enforce")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_label", "response_label", "check", "decision"),
    [
        ("harmful", None, "both", "block"),
        ("unharmful", None, "both", "allow"),
        ("unharmful", "harmful", "both", "block"),
        ("harmful", "unharmful", "both", "block"),
        # check="response": a harmful request answered with a safe refusal is let through.
        ("harmful", "unharmful", "response", "allow"),
        ("unharmful", "harmful", "response", "block"),
        ("unharmful", "unharmful", "request", "allow"),
    ],
)
def test_decision_from_labels(request_label, response_label, check, decision):
    guard = Guard(ScriptedBackend(guard_output(request_label, response_label)), policy={"check": check})
    verdict = guard.check("hi", response=None if response_label is None else "an answer")
    assert verdict.decision == decision
    assert verdict.mode == "enforce" and verdict.fail_mode is None and verdict.fail_reason is None
    assert verdict.blocked is (decision == "block")


def test_monitor_mode_records_but_never_blocks():
    guard = Guard(ScriptedBackend(guard_output("harmful")), policy={"mode": "monitor"})
    verdict = guard.check("bad")
    assert verdict.decision == "block" and verdict.mode == "monitor" and not verdict.blocked
    failing = Guard(ScriptedBackend(BackendError("down")), policy={"mode": "monitor"})
    failed = failing.check("x")
    assert failed.decision == "error-blocked" and not failed.blocked and failed.failed


def _failures() -> list[tuple[str, object]]:
    return [
        ("backend_error", RuntimeError("CUDA error: device-side assert")),
        ("backend_error", BackendError("out of memory")),
        ("unparseable_output", "I think this is fine."),
        ("unparseable_output", Generation(text="<think>step one", completion_tokens=64, finished=False)),
    ]


@pytest.mark.parametrize(("code", "reply"), _failures())
@pytest.mark.parametrize(("on_error", "decision"), [("block", "error-blocked"), ("allow", "error-allowed")])
def test_fail_modes_on_backend_exception_and_unparseable_output(code, reply, on_error, decision):
    guard = Guard(ScriptedBackend(reply), policy={"on_error": on_error})
    verdict = guard.check("hello")
    assert verdict.failed and verdict.error.code == code
    assert verdict.harmful is False  # nothing was judged harmful: the fail mode decides instead
    assert verdict.request_label is None and verdict.response_label is None
    assert verdict.decision == decision and verdict.fail_mode == on_error
    assert verdict.fail_reason.startswith(code)
    assert verdict.blocked is (on_error == "block")
    assert verdict.request_label is None


@pytest.mark.parametrize(("on_error", "decision"), [("block", "error-blocked"), ("allow", "error-allowed")])
def test_fail_modes_on_deadline_sync_and_async(hung, on_error, decision):
    guard = Guard(hung, policy={"on_error": on_error, "deadline": 0.05})
    verdict = guard.check("hello")
    assert verdict.error.code == "deadline_exceeded"
    assert verdict.decision == decision and verdict.fail_mode == on_error

    async def late() -> Verdict:
        result = await guard.acheck("hello")
        hung.release.set()  # let the abandoned worker thread finish before the loop closes
        return result

    averdict = asyncio.run(late())
    assert averdict.error.code == "deadline_exceeded" and averdict.decision == decision


def test_deadline_with_micro_batching(hung):
    guard = Guard(hung, micro_batching=True, policy={"deadline": 0.05})
    assert guard.check("queued").error.code == "deadline_exceeded"
    assert asyncio.run(guard.acheck("queued too")).error.code == "deadline_exceeded"


def test_deadline_stops_local_generation(tiny_guard_path):
    import time

    from grvl_sdk import DeadlineExceededError

    guard = Guard.from_pretrained(str(tiny_guard_path), device="cpu", max_new_tokens=400, micro_batching=False)
    item = guard.prepare("hello")
    full = guard.backend.generate([item], max_new_tokens=400)[0]
    assert full.completion_tokens > 2
    # The backend stops generating at the first step after the deadline, and says so.
    with pytest.raises(DeadlineExceededError, match="after"):
        guard.backend.generate([item], max_new_tokens=400, deadline=time.monotonic())
    verdict = guard.check("hello", policy={"deadline": 0.001})
    assert verdict.error.code == "deadline_exceeded" and verdict.decision == "error-blocked"
    fail_open = asyncio.run(guard.acheck("hello", policy={"deadline": 0.001, "on_error": "allow"}))
    assert fail_open.error.code == "deadline_exceeded" and fail_open.decision == "error-allowed"
    # Without a deadline the same guard answers (the tiny guard's output is unparseable, not late).
    assert guard.check("hello", max_new_tokens=4).error.code == "unparseable_output"


def test_per_call_policy_override_and_max_new_tokens_budget():
    backend = ScriptedBackend(guard_output("harmful"))
    budgets = []
    original = backend.generate

    def spy(inputs, *, max_new_tokens):
        budgets.append(max_new_tokens)
        return original(inputs, max_new_tokens=max_new_tokens)

    backend.generate = spy  # type: ignore[method-assign]
    guard = Guard(backend, max_new_tokens=100, cache_size=0, policy={"max_new_tokens": 50})
    assert guard.check("x").decision == "block"
    assert guard.check("x", policy={"mode": "monitor"}).blocked is False
    guard.check("x", policy=Policy(max_new_tokens=7))
    guard.check("x", max_new_tokens=3)
    assert budgets == [50, 50, 7, 3]
    assert guard.policy.mode == "enforce"  # overrides do not stick


def test_check_batch_applies_policy_and_survives_backend_failure():
    guard = Guard(ScriptedBackend(RuntimeError("boom")), policy={"on_error": "allow"})
    verdicts = guard.check_batch([{"text": "a"}, {"text": "b"}])
    assert [v.decision for v in verdicts] == ["error-allowed", "error-allowed"]
    assert len({v.id for v in verdicts}) == 2
    ok = Guard(ScriptedBackend([guard_output("harmful"), guard_output("unharmful")]))
    assert [v.decision for v in ok.check_batch([{"text": "a"}, {"text": "b"}])] == ["block", "allow"]


def test_acheck_batch_decisions():
    guard = Guard(ScriptedBackend.flagging("bomb"), cache_size=0)
    verdicts = asyncio.run(guard.acheck_batch([{"text": "a bomb"}, {"text": "bread"}], policy={"on_error": "allow"}))
    assert [v.decision for v in verdicts] == ["block", "allow"]


def test_bad_input_still_raises_instead_of_failing_open():
    guard = Guard(ScriptedBackend(guard_output("unharmful")), policy={"on_error": "allow"})
    with pytest.raises(InputError):
        guard.check(None)
    with pytest.raises(InputError):
        guard.check("hi", image=b"not an image")


def test_guard_blocked_carries_the_verdict():
    verdict = Guard(ScriptedBackend(guard_output("harmful"))).check("x")
    error = GuardBlocked(verdict, stage="request")
    assert error.verdict is verdict and error.stage == "request" and error.code == "guard_blocked"
    assert "request" in str(error) and "block" in str(error)
    assert error.to_dict()["stage"] == "request"


def test_verdict_fields_roundtrip_and_blocked_without_decision():
    verdict = Guard(ScriptedBackend(guard_output("unharmful"))).check("x")
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict
    assert Verdict(request_label="harmful").blocked is True and Verdict(request_label="unharmful").blocked is False
    assert Verdict(error={"code": "backend_error", "type": "X", "message": "m"}).blocked is True  # fail-closed
