"""Load test of the guarded proxy (``grvl serve``): concurrent streaming and non-streaming chat requests
through the proxy to a fast scripted upstream, against the same load sent to the upstream directly.

Checks that nothing is lost or mixed up (each answer must echo its own request's nonce, stream chunks
included) and reports the proxy-added latency excluding guard time, and the throughput.

Three processes: the upstream, the proxy (a scripted guard that judges instantly, so guard time is near
zero and reported apart), and this load generator. Run::

    .venv/bin/python benchmarks/bench_server.py --concurrency 200 --rounds 5

Figures (per request): ``overhead = client latency - upstream time - guard time`` for whole answers
(``x-grvl-upstream-ms`` and ``x-grvl-guard-ms`` are measured by the proxy); for streams, the proxy's
time to the last byte minus the direct run's, at the same load; and the proxy process's CPU time per
request (``/proc``; the scripted guard's share included), which, unlike latencies, hardly moves when
other work shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent

UPSTREAM = """
import uvicorn
from tests._server_upstream import ScriptedUpstream, create_upstream_app
uvicorn.run(create_upstream_app(ScriptedUpstream(chunk_chars=16)), host="127.0.0.1", port={port},
            log_level="warning", access_log=False, timeout_keep_alive=60)
"""

PROXY = """
from grvl_sdk import Guard
from grvl_sdk.server import ServerConfig, create_app, serve
from grvl_sdk.testing import ScriptedBackend
config = ServerConfig(upstream="http://127.0.0.1:{upstream}/v1", port={port}, max_concurrency=1024, max_queue=0,
                      access_log=False)
serve(create_app(Guard(ScriptedBackend.flagging("bomb")), config=config), port={port}, log_level="warning",
      keep_alive_timeout=config.keep_alive_timeout)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(code: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _one(client: httpx.AsyncClient, base: str, stream: bool) -> dict[str, Any]:
    try:
        return await _request(client, base, stream)
    except httpx.HTTPError as exc:  # counted as lost
        return {"ok": False, "error": repr(exc), "total": 0.0, "stream": stream, "guard": 0.0, "upstream": 0.0}


async def _request(client: httpx.AsyncClient, base: str, stream: bool) -> dict[str, Any]:
    nonce = uuid.uuid4().hex
    body = {"model": "m", "messages": [{"role": "user", "content": f"question {nonce}"}], "stream": stream}
    expected = f"Echo: question {nonce}"
    started = time.perf_counter()
    if not stream:
        answer = await client.post(base + "/chat/completions", json=body)
        total = (time.perf_counter() - started) * 1000
        text = answer.json()["choices"][0]["message"]["content"]
        return {"ok": answer.status_code == 200 and text == expected, "total": total, "stream": False,
                "guard": float(answer.headers.get("x-grvl-guard-ms", 0)),
                "upstream": float(answer.headers.get("x-grvl-upstream-ms", 0))}  # fmt: skip
    parts: list[str] = []
    first = None
    async with client.stream("POST", base + "/chat/completions", json=body) as answer:
        async for line in answer.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            first = first or (time.perf_counter() - started) * 1000
            chunk = json.loads(line[6:])
            parts.extend(c["delta"].get("content") or "" for c in chunk["choices"])
        status = answer.status_code
        guard = float(answer.headers.get("x-grvl-guard-ms", 0))
    total = (time.perf_counter() - started) * 1000
    return {"ok": status == 200 and "".join(parts) == expected, "total": total, "first": first, "stream": True,
            "guard": guard}  # fmt: skip


async def _load(base: str, concurrency: int, rounds: int) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(*(_one(client, base, i % 2 == 0) for i in range(min(concurrency, 50))))  # warm-up
        results: list[dict[str, Any]] = []
        started = time.perf_counter()
        for round_index in range(rounds):
            results += await asyncio.gather(
                *(_one(client, base, (round_index * concurrency + i) % 2 == 0) for i in range(concurrency))
            )
        return results, time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _response_check_ms(proxy: str) -> float:
    """The mean response-check time (ms) from the proxy's metrics."""
    text = httpx.get(proxy.rsplit("/v1", 1)[0] + "/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("sum", "count"):
            if line.startswith(f'grvl_check_seconds_{name}{{stage="response"}}'):
                values[name] = float(line.split()[-1])
    return 1000 * values.get("sum", 0.0) / max(values.get("count", 1.0), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=200, help="requests sent one at a time")
    args = parser.parse_args()

    up_port, proxy_port = _port(), _port()
    processes = [_start(UPSTREAM.format(port=up_port))]
    try:
        _wait(f"http://127.0.0.1:{up_port}/v1/models")
        processes.append(_start(PROXY.format(upstream=up_port, port=proxy_port)))
        _wait(f"http://127.0.0.1:{proxy_port}/health")
        direct, proxy = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{proxy_port}/v1"
        rows = []
        for label, concurrency, rounds in (("sequential", 1, args.sequential), ("concurrent", args.concurrency,
                                                                                 args.rounds)):  # fmt: skip
            upstream_cpu = _cpu_seconds(processes[0].pid)
            base_results, base_seconds = asyncio.run(_load(direct, concurrency, rounds))
            upstream_cpu = _cpu_seconds(processes[0].pid) - upstream_cpu
            cpu = _cpu_seconds(processes[1].pid)
            results, seconds = asyncio.run(_load(proxy, concurrency, rounds))
            cpu = _cpu_seconds(processes[1].pid) - cpu
            lost = sum(not r["ok"] for r in results) + sum(not r["ok"] for r in base_results)
            whole = [r for r in results if not r["stream"] and r["ok"]]
            overhead = [r["total"] - r["upstream"] - r["guard"] for r in whole]
            streams = [r["total"] for r in results if r["stream"] and r["ok"]]
            base_streams = [r["total"] for r in base_results if r["stream"] and r["ok"]]
            guard_stream = statistics.mean(r["guard"] for r in results if r["stream"]) + _response_check_ms(proxy)
            streamed = f"{_pct(streams, 0.5):.1f} / {_pct(streams, 0.99):.1f}"
            streamed_direct = f"{_pct(base_streams, 0.5):.1f} / {_pct(base_streams, 0.99):.1f}"
            added = _pct(streams, 0.5) - _pct(base_streams, 0.5) - guard_stream
            rows.append({
                "run": label,
                "concurrency": concurrency,
                "requests": len(results),
                "lost or mixed": lost,
                "whole: overhead p50 / p99 ms": f"{_pct(overhead, 0.5):.2f} / {_pct(overhead, 0.99):.2f}",
                "whole: guard p50 ms": f"{_pct([r['guard'] for r in whole], 0.5):.2f}",
                "stream: last byte p50 / p99 ms (direct)": f"{streamed} ({streamed_direct})",
                "stream: added p50 ms excl. guard": f"{added:.2f}",
                "throughput req/s (direct)": f"{len(results) / seconds:.0f} ({len(base_results) / base_seconds:.0f})",
                "CPU ms/request: proxy, guard incl. (upstream)": f"{1000 * cpu / len(results):.2f} "
                f"({1000 * upstream_cpu / len(base_results):.2f})",
            })  # fmt: skip
        keys = list(rows[0])
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for row in rows:
            print("| " + " | ".join(str(row[k]) for k in keys) + " |")
        if any(row["lost or mixed"] for row in rows):
            sys.exit("answers were lost or mixed up")
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
