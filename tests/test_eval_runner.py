"""``run_eval`` with a scripted backend: scores by hand, failures, resume, reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from grvl_sdk import Guard
from grvl_sdk.backends.base import Backend, Generation, GuardInput
from grvl_sdk.errors import BackendError, EvalError
from grvl_sdk.eval import load_run, run_eval
from grvl_sdk.eval.report import load_compare, load_summary, render_markdown

H_OUT = "<think>bad</think>\n<result>\nRequest: harmful\nResponse: None\n</result>"
U_OUT = "<think>fine</think>\n<result>\nRequest: unharmful\nResponse: None\n</result>"
JUNK = "I am not sure what to say"


def resp_out(label: str | None) -> str:
    return f"<think>..</think>\n<result>\nRequest: unharmful\nResponse: {label or 'None'}\n</result>"


class ScriptedBackend(Backend):
    """Answers from a table keyed by request text; ``boom`` raises a backend error."""

    model_id = "scripted-guard"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[list[str | None]] = []

    def generate(self, inputs: Sequence[GuardInput], *, max_new_tokens: int) -> list[Generation]:
        texts = [item.text for item in inputs]
        self.calls.append(texts)
        if "boom" in texts:
            raise BackendError("device on fire")
        return [
            Generation(text=self.answers.get(t or "", JUNK), prompt_tokens=10, completion_tokens=7, latency_ms=50.0)
            for t in texts
        ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, object]:
    # Request set: gold H,H,H,H,U,U,U; outputs H,H,H,junk | H,junk,U
    #   tp=3, fn=1 (junk), fp=2 (H + junk), tn=1 -> P=60, R=75, F1=66.67
    request_rows = [
        {"id": f"r{i}", "text": f"q{i}", "label": gold} for i, gold in enumerate(["harmful"] * 4 + ["unharmful"] * 3)
    ]
    answers = {"q0": H_OUT, "q1": H_OUT, "q2": H_OUT, "q3": JUNK, "q4": H_OUT, "q5": JUNK, "q6": U_OUT}
    # Response set: gold H,U,H; outputs H,H,no response label -> tp=1, fp=1, fn=1 -> F1=50
    response_rows = [
        {"id": f"s{i}", "text": f"a{i}", "response": "sure", "response_label": gold}
        for i, gold in enumerate(["harmful", "unharmful", "harmful"])
    ]
    answers.update({"a0": resp_out("harmful"), "a1": resp_out("harmful"), "a2": resp_out(None)})
    return {
        "request": write_jsonl(tmp_path / "req.jsonl", request_rows),
        "response": write_jsonl(tmp_path / "resp.jsonl", response_rows),
        "answers": answers,
    }


def specs(data: dict[str, object]) -> list[str]:
    return [f"MyRequests:request={data['request']}", f"MyResponses:response={data['response']}"]


def test_scores_match_hand_computed_values(tmp_path, data):
    backend = ScriptedBackend(data["answers"])  # type: ignore[arg-type]
    guard = Guard(backend, cache_size=0)
    out = tmp_path / "run"
    summary = run_eval(guard, specs(data), out, batch_size=4, progress=False)

    req, resp = summary.results
    assert (req.tp, req.fp, req.fn, req.tn, req.unparseable, req.failed) == (3, 2, 1, 1, 2, 0)
    assert req.precision == pytest.approx(60.0) and req.recall == pytest.approx(75.0)
    assert req.f1 == pytest.approx(200 / 3)
    assert (resp.tp, resp.fp, resp.fn, resp.unparseable) == (1, 1, 1, 1)
    assert resp.f1 == pytest.approx(50.0)
    assert summary.averages()["request"] == {"Avg(Text)": pytest.approx(200 / 3), "Avg(All)": pytest.approx(200 / 3)}
    assert summary.weighted_f1 == pytest.approx((200 / 3 * 7 + 50 * 3) / 10)
    assert req.mean_completion_tokens == 7 and req.mean_latency_ms == 50.0
    assert req.ms_per_sample == pytest.approx((50 / 4 * 4 + 50 / 3 * 3) / 7)
    assert [len(c) for c in backend.calls] == [4, 3, 3]

    # the predictions file: id, gold, predicted, raw output
    lines = [json.loads(x) for x in (out / "predictions" / "MyRequests.jsonl").read_text().splitlines()]
    assert [(x["id"], x["gold"], x["predicted"], x["status"]) for x in lines[2:4]] == [
        ("r2", "harmful", "harmful", "ok"),
        ("r3", "harmful", None, "unparseable"),
    ]
    assert lines[3]["raw_output"] == JUNK and lines[3]["error"]["code"] == "unparseable_output"

    # reports, and re-scoring without generating gives the same numbers
    for name in ("results.json", "results.md", "results.csv", "f1.png", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_summary(out).results == summary.results
    assert load_run(out, parse="sdk").results == summary.results
    assert load_run(out, parse="official-text").results[0].f1 == pytest.approx(req.f1)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,task,modality,n,f1,precision,recall")
    assert csv_lines[1].startswith("MyRequests,request,text,7,66.66")


def test_request_label_counts_when_only_the_response_label_is_missing(tmp_path):
    rows = [{"id": "x", "text": "q", "response": "r", "request_label": "harmful"}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    # The guard fails the verdict (a response was given but not judged), yet the request label is there.
    guard = Guard(ScriptedBackend({"q": H_OUT}), cache_size=0)
    summary = run_eval(guard, [f"Mixed:request={path}"], tmp_path / "run", progress=False, write_reports=False)
    assert (summary.results[0].tp, summary.results[0].unparseable) == (1, 0)


def test_backend_failures_are_recorded_as_wrong_and_retried_on_resume(tmp_path):
    rows = [{"id": str(i), "text": t, "label": "harmful"} for i, t in enumerate(["q0", "boom", "q2"])]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    backend = ScriptedBackend({"q0": H_OUT, "q2": H_OUT, "boom": H_OUT})
    guard = Guard(backend, cache_size=0)
    out = tmp_path / "run"
    summary = run_eval(guard, [f"F:request={path}"], out, batch_size=1, progress=False)
    result = summary.results[0]
    assert (result.tp, result.fn, result.failed, result.unparseable) == (2, 1, 1, 0)
    failed = json.loads((out / "predictions" / "F.jsonl").read_text().splitlines()[1])
    assert failed["status"] == "failed" and failed["error"]["code"] == "backend_error"

    # resume: only the failed sample is tried again
    backend.answers["boom"] = H_OUT
    backend.calls.clear()
    # The only sample left fails again: by default that stops the run (a guard that cannot run is no
    # model to score); with the stop turned off it is recorded as failed.
    with pytest.raises(BackendError, match="first batch"):
        run_eval(guard, [f"F:request={path}"], out, batch_size=1, progress=False)
    backend.calls.clear()
    summary = run_eval(guard, [f"F:request={path}"], out, batch_size=1, progress=False, max_failure_rate=1.0)
    assert backend.calls == [["boom"]]
    assert summary.results[0].failed == 1  # still raising
    lines = (out / "predictions" / "F.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == ["0", "1", "2"]


class Interrupting:
    """Wraps a guard; raises after ``stop_after`` check_batch calls; records the texts it was asked."""

    def __init__(self, guard: Guard, stop_after: int | None = None) -> None:
        self.guard, self.stop_after = guard, stop_after
        self.model_id, self.max_new_tokens, self.batch_size = guard.model_id, guard.max_new_tokens, 2
        self.seen: list[str] = []
        self.calls = 0

    def check_batch(self, inputs, **kwargs):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise RuntimeError("killed")
        self.calls += 1
        self.seen.extend(i["text"] for i in inputs)
        return self.guard.check_batch(inputs, **kwargs)


def test_interrupted_run_resumes_without_redoing_samples(tmp_path, data):
    guard = Guard(ScriptedBackend(data["answers"]), cache_size=0)  # type: ignore[arg-type]
    out = tmp_path / "run"
    first = Interrupting(guard, stop_after=3)
    with pytest.raises(RuntimeError, match="killed"):
        run_eval(first, specs(data), out, progress=False)
    # 3 batches of 2 were saved; a line cut by the kill is dropped on resume
    with (out / "predictions" / "MyRequests.jsonl").open("a") as f:
        f.write('{"id": "r6", "gold": "unha')
    second = Interrupting(guard)
    summary = run_eval(second, specs(data), out, progress=False)
    assert first.seen == ["q0", "q1", "q2", "q3", "q4", "q5"]
    assert second.seen == ["q6", "a0", "a1", "a2"]
    fresh_guard = Guard(ScriptedBackend(data["answers"]), cache_size=0)  # type: ignore[arg-type]
    fresh = run_eval(fresh_guard, specs(data), tmp_path / "fresh", batch_size=2, progress=False)
    assert summary.results == fresh.results
    ids = [json.loads(x)["id"] for x in (out / "predictions" / "MyRequests.jsonl").read_text().splitlines()]
    assert ids == [f"r{i}" for i in range(7)]

    # A finished run resumed does nothing; --limit reuses what is there.
    third = Interrupting(guard)
    assert run_eval(third, specs(data), out, progress=False, limit=2).results[0].n == 2
    assert third.seen == []


def test_one_folder_collects_benchmarks_of_several_calls_of_one_model(tmp_path, data):
    out = tmp_path / "run"
    guard = Guard(ScriptedBackend(data["answers"]))  # type: ignore[arg-type]
    run_eval(guard, specs(data)[:1], out, progress=False, write_reports=False)
    summary = run_eval(guard, specs(data)[1:], out, progress=False)
    assert [r.name for r in summary.results] == ["MyRequests", "MyResponses"]
    assert json.loads((out / "results.json").read_text())["weighted_f1"] == pytest.approx(summary.weighted_f1)

    other = ScriptedBackend({})
    other.model_id = "another"
    with pytest.raises(EvalError, match="holds a run"):
        run_eval(Guard(other), specs(data)[:1], out, progress=False)
    # starting over with another model drops the first model's results from the folder
    summary = run_eval(Guard(other), specs(data)[:1], out, progress=False, resume=False, write_reports=False)
    assert summary.model == "another"
    assert [(r.name, r.unparseable) for r in summary.results] == [("MyRequests", 7)]


def test_markdown_report_layout_and_published_comparison(tmp_path, data):
    guard = Guard(ScriptedBackend(data["answers"]))  # type: ignore[arg-type]
    summary = run_eval(guard, specs(data), tmp_path / "run", progress=False, write_reports=False)
    text = render_markdown(summary, load_compare("published:GuardReasoner-VL-7B"))
    header = (
        "| Model | ToxicChat | OpenAIModeration | AegisSafetyTest | SimpleSafetyTests | HarmBench | WildGuardTest "
        "| HarmImageTest | SPA-VL-Eval | MyRequests | Avg(Text) | Avg(All) |"
    )
    assert header in text
    # the run's averages are over a set that is not the paper's: marked
    assert "| scripted-guard | – | – | – | – | – | – | – | – | 66.67 | 66.67* | 66.67* |" in text
    assert (
        "| GuardReasoner-VL-7B | 76.51 | 70.98 | 90.13 | 98.99 | 98.30 | 88.35 | 70.84 | 85.60 | – | 79.88 | 79.07 |"
        in text
    )
    assert "| GuardReasoner-VL-7B | 87.22 | 66.37 | 84.76 | 92.72 | 79.04 | 73.22 | – | 79.42 | 77.58 |" in text
    assert "- GuardReasoner-VL-7B: GuardReasoner-VL paper (arXiv 2505.11049), per-benchmark F1" in text
    assert "false negative on a harmful sample" in text
    with pytest.raises(EvalError, match="no published model"):
        load_compare("published:NoSuchGuard")
    assert len(load_compare("published")) == 11
