"""Streaming moderation is bounded: the check schedule (grvl_sdk.middleware.schedule) and its leak window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grvl_sdk import Guard, GuardBlocked
from grvl_sdk.middleware.schedule import CheckSchedule
from grvl_sdk.testing import ScriptedBackend, guard_output


def _counting_guard(seen: list[tuple[str | None, int]], flag: str | None = None) -> Guard:
    """Records every judged response and its length; flags a response holding ``flag``."""

    def reply(item):
        seen.append((item.response, len(item.response or "")))
        harmful = flag is not None and flag in (item.response or "")
        return guard_output("unharmful", "harmful" if harmful else "unharmful")

    return Guard(ScriptedBackend(reply), cache_size=0)


def _words(n_chars: int, chunk: int = 7) -> list[str]:
    text = ("lorem ipsum dolor sit amet " * (n_chars // 27 + 1))[:n_chars]
    return [text[i : i + chunk] for i in range(0, len(text), chunk)]


def test_default_schedule_offsets_and_cap():
    schedule = CheckSchedule(first=400)
    assert (schedule.growth, schedule.max_checks) == (4.0, 3)
    offsets = []
    for length in range(1, 100_000):
        if schedule.due(length):
            schedule.mark(length)
            offsets.append(length)
    assert offsets == [400, 1600] and schedule.next_offset() is None and schedule.leak_window() is None
    fixed = CheckSchedule(first=400, growth=1, max_checks=None)
    for length in range(1, 2001):
        if fixed.due(length):
            fixed.mark(length)
    assert fixed.checks == 5 and fixed.leak_window() == 400  # the old behaviour: every 400 characters


@pytest.mark.parametrize("n_chars", [300, 2_000, 8_000, 50_000])
def test_a_long_stream_costs_at_most_the_cap_and_always_gets_its_final_check(n_chars):
    seen: list = []
    guard = _counting_guard(seen)
    verdicts: list = []
    guard.add_hook(verdicts.append)

    @guard.wrap(policy={"check": "response"})
    def chat(prompt):
        yield from _words(n_chars)

    assert len("".join(chat("q"))) == n_chars
    assert 1 <= len(seen) <= 3, [n for _, n in seen]
    assert verdicts[-1].stage == "response" and seen[-1][1] == n_chars  # the final check saw it all
    # the work bound: the intermediate checks' text is at most 4/3 of the final one's
    assert sum(n for _, n in seen[:-1]) <= 4 / 3 * n_chars


def test_an_uncapped_geometric_schedule_grows_with_the_logarithm():
    seen: list = []
    guard = _counting_guard(seen)

    @guard.wrap(policy={"check": "response", "stream_check_growth": 2, "stream_max_checks": None})
    def chat(prompt):
        yield from _words(8_000, chunk=1)

    list(chat("q"))
    assert [n for _, n in seen] == [400, 800, 1600, 3200, 6400, 8000]  # 6 generations, was 21


async def test_async_streams_use_the_same_schedule():
    seen: list = []
    guard = _counting_guard(seen)

    @guard.wrap(policy={"check": "response"})
    async def chat(prompt):
        for part in _words(8_000, chunk=1):
            yield part

    assert len("".join([c async for c in chat("q")])) == 8_000
    assert [n for _, n in seen] == [400, 1600, 8000]


@settings(max_examples=60, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=6_000),
    chunk=st.integers(min_value=1, max_value=50),
    first=st.integers(min_value=10, max_value=500),
    growth=st.sampled_from([1.0, 1.5, 2.0, 4.0]),
    cap=st.sampled_from([None, 2, 3, 5]),
)
def test_the_passthrough_leak_window_bound_holds(position, chunk, first, growth, cap):
    """Harmful text at ``position`` is cut at the first check after it: what was delivered past it is
    within the schedule's window (the gap after the last passing check, plus one chunk), or — the cap
    spent — the final check blocks the stream."""
    seen: list = []
    guard = _counting_guard(seen, flag="POISON")
    text = "".join(_words(position, chunk=10**9)) + "POISON" + "x" * 6_000
    parts = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    policy = {"check": "response", "stream_mode": "passthrough", "stream_check_every": first,
              "stream_check_growth": growth, "stream_max_checks": cap}  # fmt: skip

    @guard.wrap(policy=policy)
    def chat(prompt):
        yield from parts

    delivered: list[str] = []
    with pytest.raises(GuardBlocked) as info:
        for part in chat("q"):
            delivered.append(part)
    end = position + len("POISON")
    lengths = [n for _, n in seen]
    # replay the schedule: the last passing check before the harmful text was complete
    schedule = CheckSchedule(first=first, growth=growth, max_checks=cap)
    passing = [n for n in lengths if n < end]
    for n in passing:
        schedule.mark(n)
    window = schedule.leak_window()
    if info.value.stage == "stream":
        assert len("".join(delivered)) == lengths[-1]
        assert window is not None and lengths[-1] - schedule.checked < window + chunk
        assert lengths[-1] - end < window + chunk  # delivered past the harmful text: within the window
    else:  # the cap was spent before the harmful text arrived; the final check cut it
        assert window is None and lengths[-1] == len(text)
    assert len(lengths) <= (cap if cap is not None else len(lengths))


def test_every_stream_path_shares_the_schedule():
    """``guard.call(...).stream`` (used by wrap, the integrations and the server) follows the policy."""
    seen: list = []
    guard = _counting_guard(seen)
    call = guard.call("hi", policy={"check": "response", "stream_check_every": 100})
    out = list(call.stream(iter(_words(5_000, chunk=1))))
    assert len(out) == 5_000 and [n for _, n in seen] == [100, 400, 5_000]
    assert [v.stage for v in call.verdicts] == ["stream", "stream", "response"]


def test_fixed_interval_is_still_available():
    seen: list = []
    guard = _counting_guard(seen)
    policy = {"check": "response", "stream_check_growth": 1, "stream_max_checks": None, "stream_check_every": 400}
    list(guard.wrap(lambda p: iter(_words(8_000, chunk=1)), policy=policy)("q"))
    assert len(seen) == 21  # 20 intermediate + final: the quadratic cost the default avoids


def test_bad_schedule_settings_are_input_errors():
    from grvl_sdk import InputError

    for bad in ({"stream_check_growth": 0.5}, {"stream_max_checks": 0}, {"stream_check_growth": float("inf")}):
        with pytest.raises(InputError):
            Guard(ScriptedBackend(guard_output()), policy=bad)
