"""Continuous batching: the length efficiency of static batching (``model.generate``) against the local
backend's continuous-batching loop, and concurrent callers against sequential checks.

**Method.** The output lengths are scripted, so both paths generate exactly the same number of tokens
per row: the guard is the tiny random guard (or ``--model``), with the output-head rows of its stop
tokens (end-of-sequence, ``<|im_end|>``, pad) set to zero, so greedy decoding never picks them (a random
model's top logit is positive) and never closes a verdict block; each row's output length is then set
by its own limit:

- *static*: the old path, ``model.generate`` on chunks of ``--slots`` inputs (left-padded, the guard's
  decoding), ``max_new_tokens`` = the chunk's longest length and a stopping criterion that marks row
  ``i`` done after its own ``lengths[i]`` tokens (the chunk runs until its longest row ends);
- *continuous*: :class:`grvl_sdk.backends._continuous.ContinuousDecoder` with ``--slots`` rows, each
  job's ``max_new_tokens`` = its length (finished rows leave, queued inputs take their slots).

Workload: ``--checks`` text checks (default 4 × slots) with *mixed* lengths (a long-tailed mix: most
short, a few up to ``--longest``; mean ÷ max about 0.2, as the issue's 3,401 tokens over 16 checks with
the longest 1,024) and the same checks with *uniform* lengths (each the mix's mean, so the same total).
**Length efficiency** = generated tokens/s on the mixed lengths ÷ generated tokens/s on the uniform
lengths, same path, same run (target ≥ 0.8; static gives about mean ÷ max). Every row's length is
asserted. Besides tokens/s, the table gives tokens per forward pass (prefills + decode steps), the
same ratio where a forward pass costs the same whatever the rows (a decode-bound GPU), independent of
the machine's load. The continuous loop is reported over the whole workload (including the drain at the end, when
the queue is empty and the last long rows run in a shrinking batch) and *while inputs are queued* (from
the start to the moment the last input is taken: all slots busy, the steady state of a loaded guard).

Concurrency: ``--slots`` callers in threads, each ``guard.check(...)`` with its own
``max_new_tokens`` (the mixed lengths) through the micro-batcher, continuous batching on, against the
same checks one after another (sequential, same guard); also the uniform-length case and the static
micro-batcher (which runs inputs with different budgets in separate batches).

Prefix reuse: one stream's checks (the bounded schedule's offsets) prefilled from scratch and with the
prompt-prefix cache (``LocalBackend(..., prefix_cache_size=4)``): prompt tokens run through the model.

    .venv/bin/python benchmarks/bench_continuous.py [--slots 16] [--checks 64] [--longest 256] [--model PATH]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import threading
import time
from typing import Any


def mixed_lengths(count: int, longest: int, seed: int = 0) -> list[int]:
    """A long-tailed mix: ~70% short (4-12% of ``longest``), ~20% medium (15-40%), ~10% long (60-100%),
    at least one of ``longest`` per 16."""
    rng = random.Random(seed)
    lengths = []
    for i in range(count):
        if i % 16 == 0:
            lengths.append(longest)
            continue
        u = rng.random()
        low, high = (0.04, 0.12) if u < 0.7 else (0.15, 0.4) if u < 0.9 else (0.6, 1.0)
        lengths.append(max(2, int(longest * rng.uniform(low, high))))
    rng.shuffle(lengths)
    return lengths


def silence_stop_tokens(backend: Any) -> None:
    """Zero the output-head rows of the stop tokens: greedy decoding never picks them."""
    import torch

    head = backend.model.get_output_embeddings()
    stop = sorted(set(backend._eos_ids) | {backend.encoder.pad_token_id})
    with torch.no_grad():
        head.weight[stop] = 0.0


def static(backend: Any, items: list[Any], lengths: list[int], slots: int) -> tuple[int, int]:
    """The old path: ``model.generate`` per chunk of ``slots``, rows stopped at their own length.
    Returns (tokens generated, forward passes: one per step of each chunk's longest row)."""
    import torch
    import transformers

    produced: list[int] = []
    passes = 0
    for start in range(0, len(items), slots):
        chunk, limits = items[start : start + slots], lengths[start : start + slots]
        batch = backend.encoder.encode_batch(chunk, device=backend.device, pixel_dtype=backend._pixel_dtype())
        width = batch.input_ids.shape[1]

        class RowLengths(transformers.StoppingCriteria):
            def __init__(self, width: int, limits: list[int]) -> None:
                self.width, self.limits = width, limits

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return input_ids.shape[1] - self.width >= torch.tensor(self.limits, device=input_ids.device)

        with torch.inference_mode():
            output = backend.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=backend.generation_config(max(limits)),
                stopping_criteria=transformers.StoppingCriteriaList([RowLengths(width, limits)]),
            )
        pad = backend.encoder.pad_token_id
        for i, row in enumerate(output[:, width:].tolist()):
            n = limits[i]
            assert pad not in row[:n], "a row stopped early"
            produced.append(n)
        passes += max(limits)
    return sum(produced), passes


#: (tokens generated, forward passes, seconds) of a continuous run up to the moment its queue ran empty.
STEADY: list[tuple[int, int, float]] = []


def continuous(backend: Any, items: list[Any], lengths: list[int], slots: int) -> tuple[int, int]:
    """The continuous loop, fed through ``take`` as rows free up; records :data:`STEADY`. Returns
    (tokens generated, forward passes: prefills + decode steps)."""
    from grvl_sdk.backends._continuous import ContinuousDecoder, ContinuousJob

    jobs = [ContinuousJob(item, n, None) for item, n in zip(items, lengths, strict=True)]
    queue = list(jobs)
    out: dict[int, Any] = {}
    decoder = ContinuousDecoder(backend, slots=slots)
    start = time.perf_counter()

    def take(n: int) -> list[Any]:
        taken = [queue.pop(0) for _ in range(min(n, len(queue)))]
        if taken and not queue:
            passes = decoder.prefills + decoder.decode_steps
            STEADY.append((decoder.generated, passes, time.perf_counter() - start))
        return taken

    decoder.run([], lambda job, outcome: out.__setitem__(id(job), outcome), take)
    produced = []
    for job in jobs:
        generation = out[id(job)]
        assert not isinstance(generation, Exception), generation
        assert generation.completion_tokens == job.max_new_tokens, "a row stopped early"
        produced.append(generation.completion_tokens)
    return sum(produced), decoder.prefills + decoder.decode_steps


def timed(fn: Any, *args: Any) -> tuple[int, int, float]:
    start = time.perf_counter()
    tokens, passes = fn(*args)
    return tokens, passes, time.perf_counter() - start


def callers(guard: Any, texts: list[str], lengths: list[int], concurrent: bool) -> float:
    def one(i: int) -> None:
        verdict = guard.check(texts[i], max_new_tokens=lengths[i])
        assert verdict.usage.completion_tokens == lengths[i], verdict

    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for i in range(len(texts)):
            one(i)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--checks", type=int, default=None, help="default: 4 x slots")
    parser.add_argument("--longest", type=int, default=256)
    parser.add_argument("--chars", type=int, default=8000, help="length of the streamed response (prefix reuse)")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch

    from grvl_sdk import Guard
    from grvl_sdk.backends.local import LocalBackend
    from grvl_sdk.testing import build_tiny_guard
    from grvl_sdk.types import GuardInput

    torch.set_num_threads(1)
    path = args.model or str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))
    backend = LocalBackend.from_pretrained(path, device=args.device)
    silence_stop_tokens(backend)
    count = args.checks or 4 * args.slots
    mixed = mixed_lengths(count, args.longest)
    mean = round(statistics.mean(mixed))
    uniform = [mean] * count
    texts = [f"Request {i}: is it fine to ask about topic number {i}?" for i in range(count)]
    items = [GuardInput(text=t) for t in texts]
    print(
        f"{count} checks, {args.slots} slots; mixed lengths: total {sum(mixed)}, mean {statistics.mean(mixed):.1f}, "
        f"longest {max(mixed)} (mean/max {statistics.mean(mixed) / max(mixed):.2f}); uniform: {mean} each"
    )
    continuous(backend, items[:2], [2, 3], 2)  # warm-up
    rows = []
    for name, fn in (("static (model.generate)", static), ("continuous, whole workload", continuous)):
        rows.append(
            (name, timed(fn, backend, items, mixed, args.slots), timed(fn, backend, items, uniform, args.slots))
        )
    rows.append(("continuous, while inputs are queued", STEADY[-2], STEADY[-1]))
    print(
        "| path | mixed: tokens / s / tok/s | uniform: tokens / s / tok/s | length efficiency (tok/s) "
        "| tokens per forward pass, mixed / uniform | length efficiency (per pass) |"
    )
    print("|---|---|---|---|---|---|")
    for name, (mt, mp, ms), (ut, up, us) in rows:
        by_time, by_pass = (mt / ms) / (ut / us), (mt / mp) / (ut / up)
        print(
            f"| {name} | {mt} / {ms:.1f} / {mt / ms:.0f} | {ut} / {us:.1f} / {ut / us:.0f} | **{by_time:.2f}** "
            f"| {mt / mp:.1f} / {ut / up:.1f} | **{by_pass:.2f}** |"
        )
    (st, _, ss), (ct, _, cs) = rows[0][1], rows[1][1]
    print(f"continuous ÷ static, mixed lengths, tokens/s: {(ct / cs) / (st / ss):.2f}")

    n = args.slots
    print(f"\n{n} callers (guard.check in threads, micro-batching) vs the same {n} checks one after another")
    print("| lengths | batching | sequential s | concurrent s | concurrent ÷ sequential throughput |")
    print("|---|---|---|---|---|")
    for label, lengths in (("mixed", mixed[:n]), ("uniform", uniform[:n])):
        for mode in ("static", "continuous"):
            backend.continuous_batching = mode == "continuous"
            guard = Guard(backend, cache_size=0, max_batch_size=n)
            callers(guard, texts[:2], [2, 2], concurrent=True)  # warm-up
            sequential_s = callers(guard, texts[:n], lengths, concurrent=False)
            concurrent_s = callers(guard, texts[:n], lengths, concurrent=True)
            ratio = sequential_s / concurrent_s
            print(f"| {label} | {mode} | {sequential_s:.1f} | {concurrent_s:.1f} | **{ratio:.2f}** |")
            guard._batched.batcher.close()
    backend.continuous_batching = True
    prefix_reuse(backend, args.chars)


def prefix_reuse(backend: Any, chars: int) -> None:
    """One stream's checks (request + response so far, at the bounded schedule's offsets 400, 1,600 and
    the end) prefilled from scratch and with the prompt-prefix cache, one after another: prompt tokens
    run through the model and wall time (1 new token per check). Two streams: a short request with a
    ``chars``-long response (the response dominates: the schedule's growth keeps each shared prefix
    under half of the next prompt, so nothing is reused) and a ``chars``-long request (a long context)
    with a 2,000-character response."""
    from grvl_sdk.backends._continuous import PrefixCache
    from grvl_sdk.types import GuardInput

    story = "the keeper climbed the stairs again and watched the grey sea roll under the lamp " * 400
    short = "Write me a long story about a lighthouse keeper and the storm that changed everything."
    streams = {
        f"short request, {chars:,}-character response": [
            GuardInput(text=short, response=story[:n]) for n in (400, 1600, chars)
        ],
        f"{chars:,}-character request, 2,000-character response": [
            GuardInput(text=story[:chars], response=story[:n]) for n in (400, 1600, 2000)
        ],
    }
    print("\nprefix reuse: one stream's checks (response at the bounded schedule's offsets), one after another")
    print("| stream | prefill | prompt tokens | tokens run through the model | s |")
    print("|---|---|---|---|---|")
    for name, checks in streams.items():
        outputs = []
        for label, size in (("from scratch", 0), ("prompt-prefix cache", 4)):
            backend.prefix_cache = PrefixCache(size) if size else None
            start = time.perf_counter()
            generations = [backend.generate([item], max_new_tokens=1)[0] for item in checks]
            seconds = time.perf_counter() - start
            prompt = sum(g.prompt_tokens for g in generations)
            ran = backend.prefix_cache.prefilled if backend.prefix_cache is not None else prompt
            outputs.append([g.text for g in generations])
            print(f"| {name} | {label} | {prompt:,} | {ran:,} ({ran / prompt:.2f}) | {seconds:.2f} |")
        assert outputs[0] == outputs[1], "prefix reuse changed an output"
    backend.prefix_cache = None


if __name__ == "__main__":
    main()
