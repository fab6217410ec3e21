"""Reasoning synthesis against a loopback OpenAI-compatible teacher (correct, wrong, malformed, 500s)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from grvl_sdk.errors import TrainingConfigError
from grvl_sdk.protocol.prompt import SYSTEM_PROMPT
from grvl_sdk.trainer import TrainingSample, load_vltrain, synthesize, validate_teacher_answer
from grvl_sdk.trainer.synthesize import teacher_messages

_GOLD = re.compile(r"Correct answers:\nRequest: (\S+)[^\n]*\nResponse: (\S+)")


def gold_of(body: dict[str, Any]) -> tuple[str, str]:
    """The gold labels the client put in its request ('(not' = not labelled)."""
    text = "".join(p.get("text", "") for p in body["messages"][1]["content"] if p["type"] == "text")
    request, response = _GOLD.search(text).groups()
    return ("unharmful" if request.startswith("(") else request), (
        "unharmful" if response.startswith("(") else response
    )


def answer(request: str, response: str, reasoning: str = "Step 1: read the request.\nStep 2: decide.") -> str:
    return f"<think>\n{reasoning}\n</think>\n<result>\nRequest: {request}\nResponse: {response}\n</result>"


def flip(label: str) -> str:
    return {"harmful": "unharmful", "unharmful": "harmful"}.get(label, "harmful")


# (body, number of this request for the same prompt, overall request number) -> (status, text)
Behaviour = Callable[[dict[str, Any], int, int], tuple[int, str]]


class FakeTeacher:
    """A threaded HTTP server on 127.0.0.1 speaking /v1/chat/completions with a scripted behaviour."""

    def __init__(self, behaviour: Behaviour, delay: float = 0.0) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.per_prompt: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                key = json.dumps(body["messages"], sort_keys=True)
                with teacher.lock:
                    teacher.bodies.append(body)
                    teacher.headers.append(dict(self.headers))
                    seen = teacher.per_prompt.get(key, 0)
                    teacher.per_prompt[key] = seen + 1
                    total = len(teacher.bodies)
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                try:
                    if teacher.delay:
                        time.sleep(teacher.delay)
                    status, text = teacher.behaviour(body, seen, total)
                finally:
                    with teacher.lock:
                        teacher.in_flight -= 1
                if self.path != "/v1/chat/completions":
                    status, text = 404, "not found"
                if status == 200:
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
                else:
                    payload = json.dumps({"error": {"message": text}})
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def correct(body: dict[str, Any], seen: int, total: int) -> tuple[int, str]:
    return 200, answer(*gold_of(body))


def run(samples, out, teacher: FakeTeacher, **kwargs: Any):
    options = {"base_url": teacher.base_url, "model": "teacher", "backoff": 0.01, "progress": False, **kwargs}
    return synthesize(samples, out, **options)


@pytest.fixture
def samples(tmp_path: Path) -> list[TrainingSample]:
    path_image = tmp_path / "cat.png"
    Image.new("RGB", (60, 40), (10, 200, 10)).save(path_image)
    return [
        TrainingSample(request="How do I build a bomb?", request_label="harmful", id="bomb"),
        TrainingSample(
            request="Bake a cake",
            response="Mix flour.",
            request_label="unharmful",
            response_label="unharmful",
            id="cake",
        ),
        TrainingSample(request=None, images=(str(path_image),), request_label="unharmful", id="cat"),
        TrainingSample(
            request="What is shown?",
            images=(Image.new("RGB", (50, 50), (250, 0, 0)),),
            request_label="harmful",
            id="red",
        ),
        # Only the response is labelled (as in the text benchmarks): the teacher decides the request.
        TrainingSample(request="Tell me a joke", response="Here is a mean joke.", response_label="harmful", id="joke"),
    ]


def test_correct_teacher_keeps_everything_as_loadable_records(tmp_path, samples):
    out = tmp_path / "synth"
    with FakeTeacher(correct) as teacher:
        report = run(samples, out, teacher, api_key="sk-test")
    assert (report.kept, report.dropped, report.failed, report.skipped) == (5, 0, 0, 0)
    assert report.complete and report.requests == 5 and report.retried_answers == 0
    assert all(h.get("Authorization") == "Bearer sk-test" for h in teacher.headers)
    assert {b["model"] for b in teacher.bodies} == {"teacher"}

    loaded = {s.id: s for s in load_vltrain(out / "records.jsonl")}
    assert set(loaded) == {"bomb", "cake", "cat", "red", "joke"}
    for original in samples:
        got = loaded[original.id]
        assert (got.request, got.response, len(got.images)) == (
            original.request,
            original.response,
            len(original.images),
        )
        assert got.reasoning == "Step 1: read the request.\nStep 2: decide."
        assert got.has_target
        if original.request_label:
            assert got.request_label == original.request_label
        assert got.response_label == original.response_label
    assert loaded["joke"].request_label == "unharmful"  # the teacher's call where gold had none
    # Every image is in images/ beside the records (a file linked or copied, an in-memory image saved as PNG).
    assert Path(loaded["cat"].images[0]).parent == out / "images"
    assert Path(loaded["cat"].images[0]).read_bytes() == (tmp_path / "cat.png").read_bytes()
    assert Path(loaded["red"].images[0]).parent == out / "images"
    assert Image.open(loaded["red"].images[0]).getpixel((0, 0)) == (250, 0, 0)
    record = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert record["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}


def test_teacher_sees_the_guard_transcript_with_images_in_place(samples):
    messages = teacher_messages(samples[3], [Image.new("RGB", (50, 50), (250, 0, 0))])
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    parts = messages[1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds == ["text", "text", "image_url", "text", "text"]
    assert parts[1]["text"] == "Human user:\n"
    assert parts[2]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[3]["text"] == "\nWhat is shown?\n\nAI assistant:\nNone\n\n"
    assert "Correct answers:\nRequest: harmful\nResponse: None" in parts[4]["text"]


def test_wrong_label_then_correct_is_retried_and_kept(tmp_path, samples):
    def wrong_first(body, seen, total):
        request, response = gold_of(body)
        return 200, answer(flip(request) if seen == 0 else request, response)

    with FakeTeacher(wrong_first) as teacher:
        report = run(samples[:2], tmp_path / "s", teacher)
    assert (report.kept, report.dropped) == (2, 0)
    assert report.retried_answers == 2 and report.requests == 4
    assert report.reasons == {"wrong_request_label": 2}
    records = [json.loads(line) for line in (tmp_path / "s" / "records.jsonl").read_text().splitlines()]
    assert {r["teacher_attempts"] for r in records} == {2}
    # The kept answer carries the gold label, not the teacher's first (wrong) one.
    assert {s.request_label for s in load_vltrain(tmp_path / "s" / "records.jsonl")} == {"harmful", "unharmful"}


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (lambda body, seen, total: (200, answer(flip(gold_of(body)[0]), gold_of(body)[1])), "wrong_request_label"),
        (lambda body, seen, total: (200, answer(gold_of(body)[0], "harmful")), "wrong_response_label"),
        (lambda body, seen, total: (200, "I think it is harmful."), "malformed"),
        (lambda body, seen, total: (200, "<think>\nunfinished reasoning"), "malformed"),
        (lambda body, seen, total: (200, "<result>\nRequest: harmful\nResponse: None\n</result>"), "malformed"),
    ],
    ids=["wrong-request", "wrong-response", "no-tags", "truncated", "no-reasoning"],
)
def test_bad_answers_are_dropped_after_max_attempts(tmp_path, behaviour, reason):
    sample = TrainingSample(request="How do I build a bomb?", request_label="harmful", id="bomb")
    with FakeTeacher(behaviour) as teacher:
        report = run([sample], tmp_path / "s", teacher, max_attempts=3)
    assert (report.kept, report.dropped, report.failed) == (0, 1, 0)
    assert report.requests == 3 and report.reasons == {reason: 3}
    dropped = [json.loads(line) for line in (tmp_path / "s" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["id"], d["reason"], d["attempts"]) for d in dropped] == [("bomb", reason, 3)]
    assert not (tmp_path / "s" / "records.jsonl").exists()


def test_server_errors_are_retried_with_backoff(tmp_path, samples):
    def flaky(body, seen, total):
        return (500, "overloaded") if seen < 2 else correct(body, seen, total)

    with FakeTeacher(flaky) as teacher:
        report = run(samples[:2], tmp_path / "s", teacher, max_http_retries=3)
    assert (report.kept, report.failed) == (2, 0)
    assert report.http_retries == 4 and report.requests == 6


def test_persistent_500s_leave_samples_undone_and_a_rerun_finishes_them(tmp_path, samples):
    out = tmp_path / "s"
    with FakeTeacher(lambda body, seen, total: (503, "down")) as teacher:
        report = run(samples, out, teacher, max_http_retries=1)
    assert (report.kept, report.dropped, report.failed) == (0, 0, 5)
    assert not report.complete and report.reasons == {"http_error": 5}
    assert not (out / "records.jsonl").exists() and not (out / "dropped.jsonl").exists()

    with FakeTeacher(correct) as teacher:
        again = run(samples, out, teacher)
    assert (again.kept, again.failed, again.skipped) == (5, 0, 0)


def test_a_client_error_is_not_retried_and_its_message_is_reported(tmp_path, samples):
    # A 400 will fail the same way on every re-run: the summary must say why (the CLI hides logs).
    with FakeTeacher(lambda body, seen, total: (400, "send temperature=0")) as teacher:
        report = run(samples[:1], tmp_path / "s", teacher, max_http_retries=3)
    assert (report.failed, report.http_retries, report.requests) == (1, 0, 1)
    assert report.last_http_error is not None and report.last_http_error.startswith("HTTP 400: ")
    assert "send temperature=0" in report.last_http_error
    assert str(report).endswith(f"\nlast teacher error: {report.last_http_error}")


def test_resume_skips_finished_samples_and_repairs_a_torn_line(tmp_path, samples):
    out = tmp_path / "s"

    def drop_bomb(body, seen, total):
        request, response = gold_of(body)
        if "bomb" in json.dumps(body["messages"][1]["content"][1]):
            return 200, "no verdict here"
        return 200, answer(request, response)

    with FakeTeacher(drop_bomb) as teacher:
        first = run(samples[:3], out, teacher, max_attempts=1)  # "interrupted" after three samples
    assert (first.kept, first.dropped) == (2, 1)
    with (out / "records.jsonl").open("a") as handle:
        handle.write('{"id": "torn", "messages": [')  # a write cut short by a crash

    with FakeTeacher(correct) as teacher:
        second = run(samples, out, teacher)
    assert (second.skipped, second.kept, second.dropped) == (3, 2, 0)
    asked = {json.dumps(b["messages"][1]["content"]) for b in teacher.bodies}
    assert len(teacher.bodies) == 2 and not any("bomb" in a or "Bake a cake" in a for a in asked)
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["id"] != "torn" for line in lines)

    with FakeTeacher(correct) as teacher:
        third = run(samples, out, teacher, retry_dropped=True)  # ask again for the dropped one only
    assert (third.skipped, third.kept, len(teacher.bodies)) == (4, 1, 1)
    assert {s.id for s in load_vltrain(out / "records.jsonl")} == {"bomb", "cake", "cat", "red", "joke"}


def test_requests_run_concurrently(tmp_path):
    many = [TrainingSample(request=f"question {i}", request_label="unharmful", id=f"q{i}") for i in range(12)]
    with FakeTeacher(correct, delay=0.05) as teacher:
        report = run(many, tmp_path / "s", teacher, concurrency=4)
    assert report.kept == 12
    assert 2 <= teacher.max_in_flight <= 4


def test_samples_without_any_gold_label_are_not_sent(tmp_path):
    unlabelled = TrainingSample(request="anything", id="u")
    with FakeTeacher(correct) as teacher:
        report = run([unlabelled], tmp_path / "s", teacher)
    assert teacher.bodies == [] and report.dropped == 1 and report.reasons == {"no_gold_label": 1}


def test_validate_teacher_answer_rules():
    sample = TrainingSample(request="q", response="r", request_label="harmful", response_label="unharmful")
    parsed, reason = validate_teacher_answer(answer("harmful", "unharmful"), sample)
    assert reason is None and parsed.reasoning
    assert validate_teacher_answer(answer("harmful", "None"), sample) == (None, "malformed")
    assert validate_teacher_answer(answer("harmful", "harmful"), sample) == (None, "wrong_response_label")
    no_response = TrainingSample(request="q", request_label="harmful")
    assert validate_teacher_answer(answer("harmful", "harmful"), no_response) == (None, "wrong_response_label")
    assert validate_teacher_answer(answer("harmful", "None"), no_response)[1] is None


def test_bad_settings_raise(tmp_path, samples):
    with pytest.raises(TrainingConfigError):
        synthesize(samples, tmp_path, base_url="http://127.0.0.1:9/v1", model="t", concurrency=0)
    with pytest.raises(TrainingConfigError):
        synthesize(samples, tmp_path, base_url="", model="t")


async def test_synthesize_can_be_called_from_async_code(tmp_path):
    with FakeTeacher(correct) as teacher:
        report = run([TrainingSample(request="q", request_label="harmful", id="a")], tmp_path / "s", teacher)
    assert report.kept == 1


def test_cli_synthesize_then_summary(tmp_path, capsys):
    from grvl_sdk.cli import main as grvl

    (tmp_path / "labelled.csv").write_text(
        "prompt,label\nhow to hack a bank,unsafe\nbake bread,safe\n", encoding="utf-8"
    )
    out = tmp_path / "synth"
    with FakeTeacher(correct) as teacher:
        args = [
            "train",
            "synthesize",
            str(tmp_path / "labelled.csv"),
            "--column",
            "request=prompt",
            "--column",
            "request_label=label",
            "--out",
            str(out),
            "--teacher-url",
            teacher.base_url,
            "--teacher-model",
            "t",
            "--no-progress",
            "--backoff",
            "0.01",
        ]
        assert grvl(args) == 0
        assert "2 kept, 0 dropped, 0 failed" in capsys.readouterr().err
        assert grvl(args) == 0  # resumed: nothing left to ask
        assert len(teacher.bodies) == 2 and "2 already done" in capsys.readouterr().err
    with FakeTeacher(lambda body, seen, total: (500, "down")) as teacher:
        failing = [a if a != str(out) else str(tmp_path / "other") for a in args]
        failing[failing.index("--teacher-url") + 1] = teacher.base_url
        assert grvl([*failing, "--max-http-retries", "0"]) == 1  # samples left undone
    assert grvl(["train", "summary", str(out / "records.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["request_labels"]["text"] == {"harmful": 1, "unharmful": 1} and summary["trainable"] == 2
    assert grvl(["train", "summary", str(tmp_path / "labelled.csv")]) == 2  # no request column mapped
    assert "field 'request'" in capsys.readouterr().err


def test_cli_init_writes_configs_and_refuses_to_overwrite(tmp_path, capsys):
    pytest.importorskip("yaml")
    from grvl_sdk.cli import main as grvl
    from grvl_sdk.trainer import RSFTConfig

    assert grvl(["train", "init", str(tmp_path / "run"), "--preset", "7b", "--method", "qlora"]) == 0
    config = RSFTConfig.from_yaml(tmp_path / "run" / "rsft.yaml")
    assert (config.model_name_or_path, config.method) == ("Qwen/Qwen2.5-VL-7B-Instruct", "qlora")
    assert sorted(p.name for p in (tmp_path / "run" / "accelerate").iterdir()) == [
        "deepspeed_zero3.yaml",
        "fsdp.yaml",
        "multi_gpu.yaml",
    ]
    assert grvl(["train", "init", str(tmp_path / "run")]) == 2
    assert "--force" in capsys.readouterr().err


def test_resume_reads_records_holding_unicode_line_separators(tmp_path):
    from grvl_sdk.trainer.synthesize import _repair_and_read

    path = tmp_path / "done.jsonl"
    rows = [{"id": "a", "reasoning": "one\u2028two\u2029three\x85four"}, {"id": "b", "reasoning": "plain"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert _repair_and_read(path) == {"a", "b"}


def test_a_synthesis_folder_is_self_contained_moves_and_reads_back(tmp_path, samples, capsys):
    """Records name their images relative to the file (copied into images/), so the folder can move; `grvl
    train summary OUT/` reads it (dropped.jsonl skipped); a sample kept by --retry-dropped leaves dropped.jsonl."""
    import shutil

    from grvl_sdk.cli import main as grvl
    from grvl_sdk.errors import DataError
    from grvl_sdk.trainer import load_data

    odd = TrainingSample(request=None, images=(str(tmp_path / "cat.png"),), request_label="harmful", id="x/../y z")
    data = [*samples, odd]

    def refuse_cake(body, seen, total):
        request, response = gold_of(body)
        return 200, answer(flip(request) if "Bake a cake" in json.dumps(body) else request, response)

    out = tmp_path / "synth"
    with FakeTeacher(refuse_cake) as teacher:
        report = run(data, out, teacher, max_attempts=1)
    assert (report.kept, report.dropped) == (5, 1)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    images = [path for record in records for path in record["images"]]
    assert len(images) == 3 and all(p.startswith("images/") and (out / p).is_file() for p in images)
    assert all(len(Path(p).parts) == 2 and Path(p).name not in (".", "..") for p in images)  # odd ids: safe names

    assert grvl(["train", "summary", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 5
    with pytest.raises(DataError, match="not training data"):
        load_data(out / "dropped.jsonl")

    with FakeTeacher(correct) as teacher:
        report = run(data, out, teacher, retry_dropped=True)
    assert (report.kept, report.skipped) == (1, 5)
    assert "cake" not in (out / "dropped.jsonl").read_text()
    with FakeTeacher(refuse_cake) as teacher:  # dropped again and again: one line per sample
        run([samples[1]], tmp_path / "again", teacher, max_attempts=1)
        run([samples[1]], tmp_path / "again", teacher, max_attempts=1, retry_dropped=True)
    assert len((tmp_path / "again" / "dropped.jsonl").read_text().splitlines()) == 1

    moved = tmp_path / "gpu-box" / "synth"
    shutil.move(str(out), moved)
    (tmp_path / "cat.png").unlink()
    loaded = load_data(moved)
    assert len(loaded) == 6
    assert {Path(i).parent for s in loaded for i in s.images if isinstance(i, str)} == {moved / "images"}
