"""``grvl eval`` end to end: the tiny guard on 50-sample slices of two shared benchmarks, interrupted
and resumed; ``score``, ``report``, ``compare`` and ``list``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grvl_sdk import Guard
from grvl_sdk.cli import main
from grvl_sdk.eval import get_benchmark, load_benchmark

BENCHMARKS = ("AegisSafetyTest", "XSTestResponseHarmful")
BATCH = 8


@pytest.fixture
def benchmark_dir(shared_data: Path) -> Path:
    folder = shared_data / "guardreasoner-text" / "benchmark"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def run_args(benchmark_dir: Path, model: Path, out: Path) -> list[str]:
    return [
        "eval", "run", *BENCHMARKS, "--data-dir", str(benchmark_dir), "--model", str(model), "--device", "cpu",
        "--limit", "50", "--batch-size", str(BATCH), "--max-new-tokens", "3", "--out", str(out), "--no-progress",
    ]  # fmt: skip


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_tiny_guard_run_interrupted_then_resumed(tiny_guard_path, benchmark_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    original = Guard.check_batch
    asked: list[str] = []

    def interrupt_on_fourth_call(self, inputs, **kwargs):
        if len(asked) >= 3 * BATCH:
            raise KeyboardInterrupt  # Ctrl-C during the fourth batch
        asked.extend(i["text"] for i in inputs)
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(Guard, "check_batch", interrupt_on_fourth_call)
    assert main(run_args(benchmark_dir, tiny_guard_path, out)) == 130
    assert "Run the same command again to resume" in capsys.readouterr().err
    first = read_lines(out / "predictions" / "AegisSafetyTest.jsonl")
    assert len(first) == 3 * BATCH and not (out / "predictions" / "XSTestResponseHarmful.jsonl").exists()
    assert not (out / "results.json").exists()

    resumed: list[str] = []

    def spy(self, inputs, **kwargs):
        resumed.extend(i["text"] for i in inputs)
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(Guard, "check_batch", spy)
    assert main([*run_args(benchmark_dir, tiny_guard_path, out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)

    # finished samples were not generated again; the rest were, once, in order
    aegis, xstest = (
        [s.text for s in load_benchmark(path, bench)]
        for path, bench in (
            (benchmark_dir / "0_1_AegisSafetyTest.json", get_benchmark("AegisSafetyTest")),
            (benchmark_dir / "0_6_xstest_response_harmful.json", get_benchmark("XSTestResponseHarmful")),
        )
    )
    assert asked == aegis[: 3 * BATCH]
    assert resumed == aegis[3 * BATCH : 50] + xstest[:50]
    for name in BENCHMARKS:
        lines = read_lines(out / "predictions" / f"{name}.jsonl")
        assert [x["id"] for x in lines] == [str(i) for i in range(50)], name
        for line in lines:
            assert line["gold"] in ("harmful", "unharmful")
            assert line["status"] in ("ok", "unparseable") and line["benchmark"] == name
            assert 0 < line["completion_tokens"] <= 3 and line["raw_output"] is not None
    assert read_lines(out / "predictions" / "AegisSafetyTest.jsonl")[: 3 * BATCH] == first

    results = {r["name"]: r for r in payload["results"]}
    assert set(results) == set(BENCHMARKS)
    assert results["AegisSafetyTest"]["task"] == "request" and results["XSTestResponseHarmful"]["task"] == "response"
    for r in results.values():
        assert r["n"] == 50 and r["failed"] == 0
        assert 0.0 <= r["f1"] <= 100.0
    for name in ("results.json", "results.md", "results.csv", "f1.png"):
        assert (out / name).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["max_new_tokens"] == 3 and saved["meta"]["limit"] == 50
    assert (saved["meta"]["min_pixels"], saved["meta"]["max_pixels"]) == (4 * 28 * 28, 16384 * 28 * 28)
    assert (
        "Settings: greedy decoding, max_new_tokens 3, images resized within 3,136–12,845,056 pixels"
        in (out / "results.md").read_text()
    )
    assert saved["results"][0]["mean_completion_tokens"] > 0

    # re-scoring the folder with the SDK parser reproduces the run's numbers
    assert main(["eval", "score", str(out), "--parse", "sdk", "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["n"], r["f1"], r["unparseable"]) for r in rescored["results"]] == [
        (r["name"], r["n"], r["f1"], r["unparseable"]) for r in payload["results"]
    ]

    # report and compare
    assert main(["eval", "report", str(out), "--compare", "published:GuardReasoner-VL-Eco-3B"]) == 0
    report = capsys.readouterr().out
    assert "| GuardReasoner-VL-Eco-3B |" in report and "## Response harmfulness" in report
    assert main(["eval", "compare", str(out), "published:GuardReasoner-VL-3B", "--png", str(tmp_path / "c.png")]) == 0
    assert "| GuardReasoner-VL-3B |" in capsys.readouterr().out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_and_list(tmp_path, capsys):
    assert main(["eval", "run", "NoSuchSet", "--out", str(tmp_path / "o"), "--model", "x"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert main(["eval", "score", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["eval", "report", str(tmp_path)]) == 2
    assert main(["eval", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sum(b["in_paper"] for b in listed) == 14
    assert main(["eval"]) == 2


def test_run_against_a_guard_server(tiny_guard, benchmark_dir, tmp_path, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from grvl_sdk.testing.server import LoopbackServer

    out = tmp_path / "remote"
    with LoopbackServer(tiny_guard.backend) as server:
        args = [
            "eval", "run", "SimpleSafetyTests", "--data-dir", str(benchmark_dir), "--server", server.base_url,
            "--model", server.model_name, "--limit", "4", "--max-new-tokens", "3", "--out", str(out),
            "--no-progress", "--json",
        ]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
        assert server.state.requests == 4
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert (result["name"], result["n"], result["failed"]) == ("SimpleSafetyTests", 4, 0)
    lines = read_lines(out / "predictions" / "SimpleSafetyTests.jsonl")
    assert [x["completion_tokens"] for x in lines] == [3, 3, 3, 3]
    # the remote guard was built with grvl eval run's pixel bounds (the authors' 4*28*28..16384*28*28)
    state = json.loads((out / "run.json").read_text())
    assert (state["min_pixels"], state["max_pixels"], state["max_new_tokens"]) == (4 * 28 * 28, 16384 * 28 * 28, 3)


# -- the first hour: a dead guard is no terrible model -------------------------------------------------------
def _tiny_set(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "set.jsonl"
    rows = [{"text": f"request {i}", "request_label": "harmful" if i % 2 else "unharmful"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_dead_guard_server_stops_the_run_with_the_reason(tmp_path, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    args = ["eval", "run", f"Mine:request={_tiny_set(tmp_path)}", "--server", f"http://127.0.0.1:{port}/v1",
            "--model", "tiny", "--out", str(tmp_path / "r"), "--no-progress"]  # fmt: skip
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "unreachable" in err and str(port) in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_failures_that_dominate_stop_the_run_and_are_reported(tmp_path):
    from grvl_sdk.errors import BackendError
    from grvl_sdk.eval import run_eval
    from grvl_sdk.testing import ScriptedBackend, guard_output

    dead = Guard(ScriptedBackend(BackendError("CUDA error: device lost")), cache_size=0)
    with pytest.raises(BackendError, match="first batch") as info:
        run_eval(dead, [f"Mine:request={_tiny_set(tmp_path)}"], tmp_path / "a", progress=False, batch_size=2)
    assert "CUDA error" in info.value.message
    calls = iter(range(100))

    def flaky(item):  # the first batch works, then the backend dies
        if next(calls) < 2:
            return guard_output("harmful")
        raise BackendError("out of memory")

    guard = Guard(ScriptedBackend(flaky), cache_size=0)
    with pytest.raises(BackendError, match="over the allowed"):
        run_eval(guard, [f"Mine:request={_tiny_set(tmp_path, 12)}"], tmp_path / "b", progress=False, batch_size=2)
    ok = Guard(ScriptedBackend(guard_output("harmful")), cache_size=0)
    summary = run_eval(ok, [f"Mine:request={_tiny_set(tmp_path)}"], tmp_path / "c", progress=False, batch_size=2)
    assert summary.meta["failed_this_call"] == 0 and summary.meta["first_error"] is None


def test_average_rows_count_only_their_samples(tmp_path):
    from grvl_sdk.eval.report import render_csv
    from grvl_sdk.eval.scoring import BenchmarkResult, EvalSummary

    def row(name, modality, n):
        return BenchmarkResult(name=name, task="request", modality=modality, n=n, f1=50.0, precision=50.0,
                               recall=50.0, tp=1, fp=1, fn=1, tn=1, unparseable=0, failed=0)  # fmt: skip

    summary = EvalSummary(model="m", results=[row("A", "text", 4), row("B", "text-image", 6)], parse="recorded")
    averages = {line.split(",")[0]: line for line in render_csv(summary).splitlines()[3:]}
    assert ",4," in averages["request Avg(Text)"] and ",10," in averages["request Avg(All)"]


def test_scoring_a_missing_path_says_so(capsys):
    assert main(["eval", "score", "/no/such/path"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
