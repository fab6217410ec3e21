"""Streaming moderation cost: the fixed-interval schedule (before) against the bounded one (after).

One stream of ``--chars`` characters (default 8,000, in 20-character chunks) is moderated twice in the
same run on the same guard: with ``stream_check_growth=1, stream_max_checks=None`` (a check every
``stream_check_every`` characters: the behaviour before issue 16) and with the default bounded schedule
(first check at 400, growth 4, at most 3 generations). Reported per schedule: guard generations, prompt
tokens prefilled (the backend's own count), wall time, and each as a multiple of one final check.

    .venv/bin/python benchmarks/bench_streaming.py [--model PATH] [--chars 8000] [--new-tokens 32]

Without ``--model`` the tiny offline guard is built (its decode is Python-bound, so the wall ratio
understates the decode share of a real guard; the generation and prefill counts are what scale).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any


def run(guard: Any, text: str, policy: dict[str, Any]) -> tuple[int, int, float]:
    """(generations, prompt tokens, seconds) of moderating ``text`` as a stream under ``policy``."""
    chunks = [text[i : i + 20] for i in range(0, len(text), 20)]
    call = guard.call(
        "Write me a long story about a lighthouse.", policy={"check": "response", "mode": "monitor", **policy}
    )
    start = time.perf_counter()
    out = "".join(call.stream(iter(chunks)))
    seconds = time.perf_counter() - start
    assert out == text
    tokens = sum(v.usage.prompt_tokens for v in call.verdicts)
    return len(call.verdicts), tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chars", type=int, default=8000)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    from grvl_sdk import Guard
    from grvl_sdk.testing import build_tiny_guard

    model_path = args.model or str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))
    guard = Guard.from_pretrained(model_path, device=args.device, max_new_tokens=args.new_tokens, cache_size=0,
                                  micro_batching=False)  # fmt: skip
    words = "The keeper climbed the stairs, trimmed the wick and watched the sea. "
    text = (words * (args.chars // len(words) + 1))[: args.chars]
    guard.check(text="warm up", response="warm up")

    final = run(guard, text, {"stream_max_checks": 1})  # the final check alone: the unit
    before = run(guard, text, {"stream_check_growth": 1, "stream_max_checks": None})
    after = run(guard, text, {})
    print(f"stream of {args.chars} characters, {args.new_tokens} new tokens per check, model {model_path}\n")
    print("| schedule | generations | prompt tokens | wall s | × final check (gen / prefill / wall) |")
    print("|---|---|---|---|---|")
    for name, (gens, tokens, seconds) in (("final check only", final), ("before: every 400", before),
                                          ("after: bounded (default)", after)):  # fmt: skip
        print(f"| {name} | {gens} | {tokens} | {seconds:.3f} | {gens / final[0]:.1f} / "
              f"{tokens / max(final[1], 1):.2f} / {seconds / final[2]:.2f} |")  # fmt: skip
    ratios = (after[0] / before[0], after[1] / max(before[1], 1), after[2] / before[2])
    print("\nafter ÷ before: generations {:.2f}, prompt tokens {:.2f}, wall {:.2f}".format(*ratios))


if __name__ == "__main__":
    main()
