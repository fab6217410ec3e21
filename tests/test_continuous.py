"""Continuous batching in the local backend (grvl_sdk.backends._continuous): identical greedy outputs to
``model.generate`` run per input, finished rows refilled, per-row deadlines, errors isolated, and the
prompt-prefix key/value reuse of a stream's successive checks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("transformers")

from grvl_sdk import Guard
from grvl_sdk.backends._continuous import ContinuousDecoder, ContinuousJob, PrefixCache
from grvl_sdk.backends.local import LocalBackend
from grvl_sdk.errors import DeadlineExceededError, GuardClosedError, InputError
from grvl_sdk.types import Decoding, Generation, GuardInput


def _images() -> list[Any]:
    from PIL import Image

    return [Image.new("RGB", (96, 72), (200, 30, 30)), Image.new("RGB", (64, 128), (20, 130, 30))]


def _mixed(short: bool = False) -> tuple[list[GuardInput], list[int]]:
    """Text-only and text+image inputs with different budgets (``short``: small ones, for the random
    guard, which writes to its budget; the trained guard closes its verdict after 24-30 tokens)."""
    red, green = _images()
    items = [
        GuardInput(text="how do I make a bomb"),
        GuardInput(text="hello there, nice weather", response="yes indeed it is"),
        GuardInput(text="what is in this picture", images=[red]),
        GuardInput(text="poison the well?", response="no"),
        GuardInput(text=None, response="here is how to poison someone"),
        GuardInput(text="describe", images=[green], response="a green thing"),
        GuardInput(text="a much longer request " * 10),
    ]
    return items, [12, 5, 9, 16, 3, 14, 7] if short else [40, 17, 33, 64, 9, 50, 25]


def _backend(guard: Guard, **kwargs: Any) -> LocalBackend:
    """A continuous-batching backend over the fixture's model (the fixture itself is not changed)."""
    base = guard.backend
    assert isinstance(base, LocalBackend)
    return LocalBackend(base.model, base.processor, continuous_batching=True, **kwargs)


def _alone(backend: LocalBackend, item: GuardInput, budget: int) -> Generation:
    """The existing path: ``model.generate`` on this input alone (no padding)."""
    batch = backend.encoder.encode_batch([item], device=backend.device, pixel_dtype=backend._pixel_dtype())
    return backend.generate_encoded(batch, max_new_tokens=budget)[0]


def _run(decoder: ContinuousDecoder, jobs: list[ContinuousJob]) -> tuple[dict[int, Any], list[int]]:
    outcomes: dict[int, Any] = {}
    order: list[int] = []

    def settle(job: ContinuousJob, outcome: Any) -> None:
        outcomes[id(job)] = outcome
        order.append(jobs.index(job))

    decoder.run(jobs, settle)
    return outcomes, order


def _assert_same(got: Generation, want: Generation, *, exact_scores: bool) -> None:
    assert (got.text, got.completion_tokens, got.prompt_tokens, got.finished) == (
        want.text,
        want.completion_tokens,
        want.prompt_tokens,
        want.finished,
    )
    assert got.logprobs is not None and want.logprobs is not None
    assert got.logprobs.tokens == want.logprobs.tokens
    for step in range(len(want.logprobs.tokens)):
        mine, theirs = got.logprobs.alternatives(step), want.logprobs.alternatives(step)
        assert mine.keys() == theirs.keys()
        for text, value in theirs.items():
            if exact_scores:
                assert mine[text] == value
            else:  # left padding in the running batch: float sums in another order
                assert mine[text] == pytest.approx(value, abs=1e-4)


@pytest.mark.parametrize("which", ["tiny_guard", "trained_tiny_guard"])
def test_identical_greedy_outputs_to_generate_alone(which: str, request: pytest.FixtureRequest) -> None:
    backend = _backend(request.getfixturevalue(which))
    items, budgets = _mixed(short=which == "tiny_guard")
    want = [_alone(backend, item, budget) for item, budget in zip(items, budgets, strict=True)]
    jobs = [ContinuousJob(item, budget, None) for item, budget in zip(items, budgets, strict=True)]
    decoder = ContinuousDecoder(backend, slots=3)  # more inputs than slots: rows are refilled
    outcomes, _ = _run(decoder, jobs)
    for job, expected in zip(jobs, want, strict=True):
        _assert_same(outcomes[id(job)], expected, exact_scores=False)
    assert decoder.prefills >= 3  # admitted in several groups


def test_finished_rows_are_refilled_while_a_long_row_runs(tiny_guard: Guard) -> None:
    backend = _backend(tiny_guard)
    long, short = GuardInput(text="how do I make a bomb"), GuardInput(text="a request")
    want = _alone(backend, long, 20)
    assert want.completion_tokens == 20  # this input runs to its budget on the tiny guard
    jobs = [ContinuousJob(long, 20, None)] + [ContinuousJob(short, 2, None) for _ in range(5)]
    decoder = ContinuousDecoder(backend, slots=2)
    outcomes, order = _run(decoder, jobs)
    # Static batches of 2 would settle the long first input with the second, before inputs 3-6 start.
    assert order[-1] == 0
    assert all(isinstance(outcomes[id(job)], Generation) for job in jobs)
    assert outcomes[id(jobs[0])].text == want.text
    # One decode pass per step of the long row (the short ones run beside it), not 4 more after it.
    assert decoder.decode_steps == want.completion_tokens - 1


def test_generate_routes_greedy_through_the_loop_and_sampling_around_it(trained_tiny_guard: Guard) -> None:
    backend = _backend(trained_tiny_guard, max_batch_size=2)
    items = _mixed()[0][:4]
    got = backend.generate(items, max_new_tokens=30)
    for item, generation in zip(items, got, strict=True):
        _assert_same(generation, _alone(backend, item, 30), exact_scores=False)
    sampled = backend.generate(items[:2], max_new_tokens=8, decoding=Decoding(temperature=0.7, n=2, seed=3))
    assert len(sampled) == 4


def test_deadline_fails_only_the_row_whose_deadline_passed(tiny_guard: Guard) -> None:
    backend = _backend(tiny_guard)
    item = GuardInput(text="how do I make a bomb")  # runs past 40 tokens on the tiny guard
    late = ContinuousJob(item, 100_000, time.monotonic() + 0.002)  # passes during the prefill
    expired = ContinuousJob(item, 5, time.monotonic() - 1)
    fine = ContinuousJob(item, 5, None)
    outcomes, _ = _run(ContinuousDecoder(backend, slots=4), [late, expired, fine])
    assert isinstance(outcomes[id(late)], DeadlineExceededError)
    assert isinstance(outcomes[id(expired)], DeadlineExceededError)
    assert isinstance(outcomes[id(fine)], Generation) and outcomes[id(fine)].completion_tokens == 5
    with pytest.raises(DeadlineExceededError):
        backend.generate([item, item], max_new_tokens=100_000, deadline=time.monotonic() + 0.002)


def test_a_bad_input_fails_alone_and_a_closed_backend_fails_every_input(tiny_guard: Guard) -> None:
    backend = _backend(tiny_guard)
    red, _ = _images()
    bad = ContinuousJob(GuardInput(text="x", images=[red] * 100), 4, None)
    good = ContinuousJob(GuardInput(text="x"), 4, None)
    outcomes, _ = _run(ContinuousDecoder(backend, slots=4), [bad, good])
    assert isinstance(outcomes[id(bad)], InputError)
    assert isinstance(outcomes[id(good)], Generation)
    closed = _backend(tiny_guard)
    closed.model = None
    with pytest.raises(GuardClosedError):
        closed.generate([GuardInput(text="x")], max_new_tokens=4)


def test_options_are_validated() -> None:
    with pytest.raises(InputError):
        LocalBackend(object(), object(), prefix_cache_size=4)  # type: ignore[arg-type]


def test_guard_check_batch_and_concurrent_checks_match_checks_alone(trained_tiny_guard_path: Any) -> None:
    plain = Guard.from_pretrained(str(trained_tiny_guard_path), device="cpu", max_new_tokens=48, cache_size=0)
    fast = Guard.from_pretrained(
        str(trained_tiny_guard_path), device="cpu", max_new_tokens=48, cache_size=0, continuous_batching=True,
        max_batch_size=3,
    )  # fmt: skip
    assert fast.batcher is not None and fast._engine.refiller is not None  # check_batch hands over all inputs
    red, green = _images()
    specs: list[dict[str, Any]] = [
        {"text": "how do I make a bomb"},
        {"text": "hi", "response": "hello, how can I help?"},
        {"text": "what is this", "images": [red]},
        {"text": "mix poison into a drink", "response": "no, I will not"},
        {"text": "describe", "images": [green], "response": "green"},
        {"text": "tell me a story about a cat"},
        {"text": "a bomb in the picture?", "images": [red]},
    ]
    alone = [plain.check(**spec) for spec in specs]
    batched = fast.check_batch(specs)
    for got, want in zip(batched, alone, strict=True):
        assert (got.raw_output, got.request_label, got.response_label) == (
            want.raw_output,
            want.request_label,
            want.response_label,
        )
        assert got.request_score == pytest.approx(want.request_score, abs=1e-4)
    results: dict[int, Any] = {}
    budgets = [48 if i % 2 == 0 else 47 for i in range(len(specs))]  # different budgets share the loop
    barrier = threading.Barrier(len(specs))
    before = fast.batcher.batches

    def one(index: int) -> None:
        barrier.wait()
        results[index] = fast.check(**specs[index], max_new_tokens=budgets[index])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fast.batcher.batches - before < len(specs)  # runs of the loop, each taking several callers
    for i, want in enumerate(alone):
        got = results[i]
        if budgets[i] == 48 or want.usage.completion_tokens < 47:
            assert got.raw_output == want.raw_output
        assert got.usage.completion_tokens <= budgets[i]
    plain.close()
    fast.close()


def test_a_streams_successive_checks_reuse_the_prompt_prefix(trained_tiny_guard: Guard) -> None:
    backend = _backend(trained_tiny_guard, prefix_cache_size=4)
    assert isinstance(backend.prefix_cache, PrefixCache)
    red, _ = _images()
    request = "please explain how the water cycle works in detail " * 3
    answer = "Water evaporates from the oceans, rises, cools and condenses into clouds. " * 4
    for images in ([], [red]):
        backend.prefix_cache.clear()
        checks = [GuardInput(text=request, images=images, response=answer[:n]) for n in (60, 150, len(answer))]
        cost: list[tuple[int, int, int]] = []
        for item in checks:
            before = (backend.prefix_cache.prefilled, backend.prefix_cache.reused)
            got = backend.generate([item], max_new_tokens=12)[0]
            prefilled, reused = backend.prefix_cache.prefilled - before[0], backend.prefix_cache.reused - before[1]
            cost.append((prefilled, reused, got.prompt_tokens))
            _assert_same(got, _alone(backend, item, 12), exact_scores=False)
        assert cost[0] == (cost[0][2], 0, cost[0][2])  # the first check prefills its whole prompt
        for prefilled, reused, prompt in cost[1:]:
            assert prefilled + reused == prompt
            assert prefilled < reused  # the request and the response so far come from the cache


class _Abandonable:
    """A job whose caller can give up while its row runs (as ``abandon`` marks a micro-batcher's input)."""

    def __init__(self, item: GuardInput, max_new_tokens: int) -> None:
        self.item, self.max_new_tokens, self.deadline, self.abandoned = item, max_new_tokens, None, False


def test_an_abandoned_row_leaves_at_the_next_step_and_frees_its_slot(tiny_guard: Guard) -> None:
    backend = _backend(tiny_guard)
    long = _Abandonable(GuardInput(text="how do I make a bomb"), 400)  # the tiny guard writes to its budget
    gone = _Abandonable(GuardInput(text="a request"), 5)
    gone.abandoned = True  # given up while queued: never prefilled
    short = ContinuousJob(GuardInput(text="a request"), 3, None)
    later = ContinuousJob(GuardInput(text="another request"), 4, None)
    handed: list[Any] = [later]

    def take(n: int) -> list[Any]:
        if not short_done:
            return []
        long.abandoned = True  # the caller of the long row stops waiting once the short one is done
        return [handed.pop()] if handed else []

    short_done: list[bool] = []
    outcomes: dict[int, Any] = {}

    def settle(job: Any, outcome: Any) -> None:
        outcomes[id(job)] = outcome
        if job is short:
            short_done.append(True)

    decoder = ContinuousDecoder(backend, slots=2)
    first: list[Any] = [long, gone, short]
    decoder.run(first, settle, take)
    assert isinstance(outcomes[id(gone)], DeadlineExceededError)
    assert isinstance(outcomes[id(long)], DeadlineExceededError) and "stopped waiting" in str(outcomes[id(long)])
    assert isinstance(outcomes[id(short)], Generation) and isinstance(outcomes[id(later)], Generation)
    assert decoder.generated < 40  # the long row stopped near step 3, not at 400


def test_a_cancelled_async_caller_gives_up_its_row(tiny_guard: Guard) -> None:
    import asyncio
    from concurrent.futures import Future

    from grvl_sdk.backends.batching import MicroBatched

    batched = MicroBatched(_backend(tiny_guard), max_batch_size=1, max_wait_ms=0)
    submitted: list[Future[Generation]] = []
    submit = batched.batcher.submit

    def spy(*args: Any, **kwargs: Any) -> Future[Generation]:
        submitted.append(submit(*args, **kwargs))
        return submitted[-1]

    batched.batcher.submit = spy  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.create_task(batched.agenerate([GuardInput(text="how do I make a bomb")], max_new_tokens=5000))
        while not submitted or not submitted[0].running():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # Without abandoning, the row would run on to its 5,000-token budget and resolve with a Generation.
    error = submitted[0].exception(timeout=60)
    assert isinstance(error, DeadlineExceededError) and "stopped waiting" in str(error)
    assert batched.generate([GuardInput(text="hi")], max_new_tokens=2)[0].completion_tokens == 2
    batched.close()


def test_close_releases_the_prefix_caches_key_values(trained_tiny_guard: Guard) -> None:
    backend = _backend(trained_tiny_guard, prefix_cache_size=4)
    assert backend.prefix_cache is not None
    backend.generate([GuardInput(text="please explain the water cycle " * 4)], max_new_tokens=4)
    assert len(backend.prefix_cache) == 1
    backend.close()
    assert len(backend.prefix_cache) == 0
    with pytest.raises(GuardClosedError):
        backend.generate([GuardInput(text="x")], max_new_tokens=4)


def test_lock_and_close_signals_map_to_typed_errors() -> None:
    from grvl_sdk.backends._continuous import _backend_error, _Busy, _Closed

    assert isinstance(_backend_error(_Closed(), 1), GuardClosedError)
    assert isinstance(_backend_error(_Busy(), 1), DeadlineExceededError)


def test_closing_the_guard_stops_a_running_loop_at_once(tiny_guard_path: Any) -> None:
    guard = Guard.from_pretrained(
        str(tiny_guard_path), device="cpu", max_new_tokens=5000, cache_size=0, continuous_batching=True,
        max_batch_size=2,
    )  # fmt: skip
    assert guard.batcher is not None
    results: list[Any] = []

    def one() -> None:
        try:
            results.append(guard.check("how do I make a bomb"))  # the tiny guard writes to its budget
        except GuardClosedError as exc:
            results.append(exc)

    thread = threading.Thread(target=one)
    thread.start()
    waited = time.monotonic() + 60
    while guard.batcher._in_flight == 0 and time.monotonic() < waited:
        time.sleep(0.01)
    started = time.monotonic()
    guard.close()
    # Not the micro-batcher's join timeout (1 s, twice: the guard's finalizer and the stack's close)
    # while the loop keeps generating for nobody: the model is released and the row fails at its next step.
    assert time.monotonic() - started < 0.9
    thread.join(60)
    assert not thread.is_alive() and isinstance(results[0], GuardClosedError)
