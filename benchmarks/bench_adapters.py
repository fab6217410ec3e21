"""Added latency of each framework adapter over calling the guard directly.

For each adapter, each repeat times (interleaved, alternating which goes first):

- the **adapter path**: the guarded call through the adapter (``GuardRunnable.invoke``,
  ``GuardedChatModel.invoke`` / ``stream``, an agent with ``GuardrailMiddleware``, ``GuardedOpenAI``);
- the **direct path**: the same model call unguarded, plus the same checks made directly on the guard
  (``guard.check(text)`` for the request, ``guard.check(text, response=answer)`` for the response); for
  the agent middleware, the same agent with a middleware whose two hooks make those direct checks.

Added latency = adapter path − direct path, per repeat: what the adapter costs beyond the guard's own time
and the model's (target p50 < 1 ms). The repeats run in ``--blocks`` blocks and each row reports the least
disturbed block — the one whose two paths took the least time (like ``timeit``'s best-of: on a shared
machine, load from other processes only ever adds time; the block is chosen on the paths' times, not on
their difference, so the choice does not bias the difference).

The guard is a ``ScriptedBackend`` with the verdict cache off, so every check runs the guard's whole
stack (policy, sink) at almost no model time; the model is LangChain's ``GenericFakeChatModel`` /
``FakeMessagesListChatModel``, or the loopback OpenAI-compatible upstream of ``tests/_upstream.py`` for
the OpenAI client.

    .venv/bin/python benchmarks/bench_adapters.py [--repeats 300] [--blocks 3]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the loopback upstream


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _added(adapter_ms: list[float], direct_ms: list[float]) -> list[float]:
    return [a - d for a, d in zip(adapter_ms, direct_ms, strict=True)]


def measure(adapter: Callable[[], Any], direct: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
    """Per repeat: (adapter ms, direct ms), interleaved; 10 warm-up rounds first."""
    for _ in range(10):
        adapter()
        direct()
    adapter_ms, direct_ms = [], []
    for i in range(repeats):
        order = ((adapter, adapter_ms), (direct, direct_ms)) if i % 2 else ((direct, direct_ms), (adapter, adapter_ms))
        for fn, sink in order:
            started = time.perf_counter()
            fn()
            sink.append((time.perf_counter() - started) * 1000)
    return adapter_ms, direct_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300, help="repeats per block")
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()

    import logging

    from _upstream import Reply, Upstream
    from langchain.agents import create_agent
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage
    from openai import OpenAI

    from grvl_sdk import Guard
    from grvl_sdk.integrations.langchain import GuardrailMiddleware, as_runnable, with_guard
    from grvl_sdk.integrations.openai import GuardedOpenAI
    from grvl_sdk.testing import ScriptedBackend

    logging.getLogger("grvl_sdk").setLevel(logging.WARNING)
    guard = Guard(ScriptedBackend.flagging("bomb", "poison"), cache_size=0)
    question, answer = "How do I bake bread?", "Knead the dough, let it rise, then bake it."
    messages = [HumanMessage(question)]

    def direct_checks() -> None:
        guard.check(question)
        guard.check(question, response=answer)

    rows: list[tuple[str, list[float], list[float], float]] = []

    def add(name: str, adapter: Callable[[], Any], direct: Callable[[], Any], guard_only: Callable[[], Any]) -> None:
        blocks = [measure(adapter, direct, args.repeats) for _ in range(args.blocks)]
        # The least disturbed block: lowest total time (chosen on both paths, not on their difference).
        adapter_ms, direct_ms = min(blocks, key=lambda b: statistics.median(b[0]) + statistics.median(b[1]))
        own = min(statistics.median(measure(guard_only, guard_only, max(30, args.repeats // 5))[0])
                  for _ in range(args.blocks))  # fmt: skip
        rows.append((name, adapter_ms, direct_ms, own))

    # GuardRunnable
    runnable = as_runnable(guard)
    add("`GuardRunnable.invoke` (1 check)", lambda: runnable.invoke(question), lambda: guard.check(question),
        lambda: guard.check(question))  # fmt: skip
    batch = [f"{question} ({i})" for i in range(8)]
    specs = [{"text": text} for text in batch]
    add("`GuardRunnable.batch` of 8 (1 batched check)", lambda: runnable.batch(batch),
        lambda: guard.check_batch(specs), lambda: guard.check_batch(specs))  # fmt: skip

    # GuardedChatModel
    fake = GenericFakeChatModel(messages=itertools.repeat(answer))
    guarded = with_guard(GenericFakeChatModel(messages=itertools.repeat(answer)), guard)
    add("`GuardedChatModel.invoke` (2 checks)", lambda: guarded.invoke(messages),
        lambda: (fake.invoke(messages), direct_checks()), direct_checks)  # fmt: skip
    add("`GuardedChatModel.stream`, buffer mode (2 checks, 13 chunks)", lambda: list(guarded.stream(messages)),
        lambda: (list(fake.stream(messages)), direct_checks()), direct_checks)  # fmt: skip

    # Agent middleware. Baseline: the same agent with a middleware whose two hooks call the guard directly,
    # so the added latency is the guard middleware's own; LangGraph's cost of running two hook nodes at all
    # (no-op hooks vs no middleware) is reported apart.
    class NoopHooks(AgentMiddleware):  # type: ignore[misc]
        def before_model(self, state: Any, runtime: Any) -> None:
            return None

        def after_model(self, state: Any, runtime: Any) -> None:
            return None

    class DirectHooks(NoopHooks):
        def before_model(self, state: Any, runtime: Any) -> None:
            guard.check(question)

        def after_model(self, state: Any, runtime: Any) -> None:
            guard.check(question, response=answer)

    def agent(*middleware: Any) -> Any:
        return create_agent(FakeMessagesListChatModel(responses=[AIMessage(answer)]), [], middleware=list(middleware))

    plain_agent, noop_agent = agent(), agent(NoopHooks())
    direct_agent, guarded_agent = agent(DirectHooks()), agent(GuardrailMiddleware(guard))

    def turn() -> dict[str, Any]:
        return {"messages": [HumanMessage(question)]}

    add("`GuardrailMiddleware` in `create_agent` (2 checks; baseline: hooks calling `guard.check`)",
        lambda: guarded_agent.invoke(turn()), lambda: direct_agent.invoke(turn()), direct_checks)  # fmt: skip
    add("(for reference: LangGraph's cost of two no-op `before_model`/`after_model` hooks)",
        lambda: noop_agent.invoke(turn()), lambda: plain_agent.invoke(turn()), lambda: None)  # fmt: skip

    # OpenAI client
    upstream = Upstream().start()
    upstream.reply = Reply([answer])
    raw = OpenAI(base_url=upstream.base_url, api_key="bench")
    client = GuardedOpenAI(raw, guard)
    chat = [{"role": "user", "content": question}]
    add("`GuardedOpenAI` `chat.completions.create` (2 checks)",
        lambda: client.chat.completions.create(model="m", messages=chat),
        lambda: (raw.chat.completions.create(model="m", messages=chat), direct_checks()), direct_checks)  # fmt: skip
    add("`GuardedOpenAI` `chat.completions.create(stream=True)` (2 checks, 11 chunks)",
        lambda: list(client.chat.completions.create(model="m", messages=chat, stream=True)),
        lambda: (list(raw.chat.completions.create(model="m", messages=chat, stream=True)), direct_checks()),
        direct_checks)  # fmt: skip
    add("`GuardedOpenAI` `responses.create` (2 checks)",
        lambda: client.responses.create(model="m", input=question),
        lambda: (raw.responses.create(model="m", input=question), direct_checks()), direct_checks)  # fmt: skip
    add("`GuardedOpenAI` `responses.create(stream=True)` (2 checks, 14 events)",
        lambda: list(client.responses.create(model="m", input=question, stream=True)),
        lambda: (list(raw.responses.create(model="m", input=question, stream=True)), direct_checks()),
        direct_checks)  # fmt: skip
    upstream.stop()

    print(f"{args.repeats} interleaved repeats per block, best of {args.blocks} blocks per row; "
          "added = adapter path - (unguarded call + direct checks)\n")  # fmt: skip
    print("| adapter | added p50 | added p99 | guard's own time p50 | unguarded call + checks p50 | target |")
    print("|---|---|---|---|---|---|")
    for name, adapter_ms, direct_ms, own in rows:
        added = _added(adapter_ms, direct_ms)
        print(f"| {name} | **{statistics.median(added):.3f} ms** | {_percentile(added, 0.99):.3f} ms | "
              f"{own:.3f} ms | {statistics.median(direct_ms):.3f} ms | p50 < 1 ms |")  # fmt: skip


if __name__ == "__main__":
    main()
