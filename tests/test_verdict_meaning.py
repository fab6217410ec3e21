"""Verdict meaning: ``harmful`` (judged harmful), ``failed`` (could not judge), ``decision``/``blocked``
(what the policy did) — the whole table of judgement × fail mode × policy mode × checked parts, against
an expectation written out independently of ``Policy.decide``; and ``GuardOptions`` in one place."""

from __future__ import annotations

import itertools
import typing

import pytest

from grvl_sdk import Guard, GuardOptions, InputError, Policy
from grvl_sdk.options import GuardOptionsKwargs
from grvl_sdk.testing import ScriptedBackend, guard_output

# judgement -> (scripted output, has a response)
JUDGEMENTS = {
    "request harmful": (guard_output("harmful", "unharmful"), True),
    "response harmful": (guard_output("unharmful", "harmful"), True),
    "both harmful": (guard_output("harmful", "harmful"), True),
    "nothing harmful": (guard_output("unharmful", "unharmful"), True),
    "failed": ("I cannot tell.", True),
    "failed, request read harmful": ("<think>x</think><result>\nRequest: harmful\n</result>", True),
    "failed, response read harmful": ("<think>x</think><result>\nResponse: harmful\nRequest: harm", True),
}


def _expected(judgement: str, on_error: str, mode: str, check: str) -> tuple[str, bool, bool, bool]:
    """(decision, blocked, harmful, failed), written out from the documented table."""
    request_harmful = judgement in ("request harmful", "both harmful", "failed, request read harmful")
    response_harmful = judgement in ("response harmful", "both harmful", "failed, response read harmful")
    failed = judgement.startswith("failed")
    counts = (request_harmful and check in ("request", "both")) or (response_harmful and check in ("response", "both"))
    if counts:
        decision = "block"
    elif failed:
        decision = "error-blocked" if on_error == "block" else "error-allowed"
    else:
        decision = "allow"
    blocked = mode == "enforce" and decision in ("block", "error-blocked")
    return decision, blocked, request_harmful or response_harmful, failed


@pytest.mark.parametrize(
    ("judgement", "on_error", "mode", "check"),
    list(itertools.product(JUDGEMENTS, ["block", "allow"], ["enforce", "monitor"], ["request", "response", "both"])),
)
def test_the_decision_table(judgement, on_error, mode, check):
    output, _ = JUDGEMENTS[judgement]
    guard = Guard(ScriptedBackend(output), cache_size=0, policy={"on_error": on_error, "mode": mode, "check": check})
    verdict = guard.check("request text", response="response text")
    decision, blocked, harmful, failed = _expected(judgement, on_error, mode, check)
    assert (verdict.decision, verdict.blocked, verdict.harmful, verdict.failed) == (decision, blocked, harmful, failed)
    assert verdict.fail_mode == (on_error if decision.startswith("error") else None)
    assert verdict.mode == mode


def test_failed_verdicts_are_not_harmful_but_still_blocked_by_default():
    verdict = Guard(ScriptedBackend("no verdict here")).check("hello")
    assert verdict.failed and not verdict.harmful and verdict.blocked and verdict.decision == "error-blocked"
    allowed = Guard(ScriptedBackend("no verdict here"), policy={"on_error": "allow"}).check("hello")
    assert allowed.failed and not allowed.harmful and not allowed.blocked  # an adapter can tell the two apart


# -- options ----------------------------------------------------------------------------------------------
def test_the_keyword_arguments_type_is_the_options_model():
    hints = typing.get_type_hints(GuardOptionsKwargs)
    assert set(hints) == set(GuardOptions.model_fields)


def test_with_options_shares_the_backend_cache_and_batcher():
    backend = ScriptedBackend(guard_output("unharmful"))
    guard = Guard(backend, micro_batching=True, cache_size=16)
    strict = guard.with_options(policy={"deadline": 5.0}, max_new_tokens=64)
    assert strict.backend is guard.backend and strict.cache is guard.cache and strict.batcher is guard.batcher
    assert strict.policy.deadline == 5.0 and guard.policy.deadline is None and strict.max_new_tokens == 64
    no_cache = guard.with_options(cache_size=0)
    assert no_cache.cache is not guard.cache and no_cache.backend is guard.backend
    assert strict.check("hello").decision == "allow"
    strict.close()  # releases only what it does not share
    assert guard.check("hello again").decision == "allow"
    guard.close()
    with pytest.raises(Exception, match="closed"):
        no_cache.check("x")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 0}, {"cache_size": -1}, {"batch_size": True}, {"policy": {"mode": "x"}}, {"nope": 1}],
)
def test_options_are_validated_once_for_every_constructor(kwargs, tiny_guard_path):
    with pytest.raises(InputError):
        Guard(ScriptedBackend("x"), **kwargs)
    with pytest.raises(InputError):
        Guard(ScriptedBackend("x")).with_options(**kwargs)
    if "nope" not in kwargs:  # unknown keys go to transformers for from_pretrained
        with pytest.raises(InputError):
            Guard.from_pretrained(str(tiny_guard_path), device="cpu", **kwargs)
        with pytest.raises(InputError):
            Guard.from_server("http://127.0.0.1:9/v1", model="m", **kwargs)


def test_zero_values_are_kept_not_replaced_by_defaults():
    budgets: list[int] = []
    backend = ScriptedBackend(guard_output("unharmful"))
    guard = Guard(backend, cache_size=0, context_chars=0, policy={"max_new_tokens": 7})
    guard.check("a")
    guard.check("b", max_new_tokens=3)
    budgets = backend.max_new_tokens
    assert budgets == [7, 3]
    chat = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "now"},
    ]
    assert guard.prepare_conversation(chat).text == "now"  # context_chars=0: no context, not the default 2000
    assert Policy(deadline=0.5).deadline == 0.5
