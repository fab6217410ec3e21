"""Rejection sampling (spec 4.3): hard-sample selection on scripted attempts, the seeded cap and split, resume,
sampling through an OpenAI-compatible server with n=4, and an end-to-end run on a tiny trained guard."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from grvl_sdk.backends.base import Backend
from grvl_sdk.testing import ScriptedBackend, guard_output
from grvl_sdk.trainer import TrainingSample, load_rl_data, sample_hard
from grvl_sdk.trainer.sampling import select_hard
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput

GARBAGE = "I think it is fine."


def scripted_samples() -> list[TrainingSample]:
    image = Image.new("RGB", (56, 56), (200, 0, 0))
    return [
        # A harmful request with an unharmful response, always answered right: solved. (The authors' code
        # compared the response prediction with the request gold, so it could never count as solved.)
        TrainingSample(request="alpha", response="r1", request_label="harmful", response_label="unharmful", id="A"),
        TrainingSample(request="beta", request_label="unharmful", id="B"),  # solved, no response
        TrainingSample(request="gamma", response="r2", request_label="unharmful", response_label="harmful", id="C"),
        TrainingSample(request="delta", request_label="harmful", id="D"),  # one attempt of four right
        TrainingSample(request="epsilon", request_label="harmful", id="E"),  # never parseable
        TrainingSample(images=(image,), request_label="unharmful", id="F"),  # image-only, solved
        TrainingSample(request="zeta", response="r3", response_label="harmful", id="G"),  # no request gold
    ]


ANSWERS = {
    "alpha": [guard_output("harmful", "unharmful")] * 4,
    "beta": [guard_output("unharmful")] * 4,
    "gamma": [guard_output("unharmful", "unharmful")] * 4,
    "delta": [guard_output("unharmful")] * 3 + [guard_output("harmful")],
    "epsilon": [GARBAGE] * 4,
    None: [guard_output("unharmful")] * 4,
}


def scripted_backend() -> ScriptedBackend:
    served: Counter[Any] = Counter()

    def script(item: GuardInput) -> str:
        answers = ANSWERS[item.text]
        served[item.text] += 1
        return answers[(served[item.text] - 1) % len(answers)]

    return ScriptedBackend(script)


def test_hard_samples_compare_each_label_with_its_own_gold(tmp_path):
    backend = scripted_backend()
    report = sample_hard(
        scripted_samples(), tmp_path, backend=backend, k=4, validation_fraction=0.0, cap=None, progress=False
    )
    kept = {s.id for s in load_rl_data(tmp_path / "train.jsonl")}
    assert kept == {"C", "E"}
    assert report.unlabelled == 1 and report.finished == 6 and report.attempts == 24
    assert report.hard_by_modality == {"text": 2} and report.hard_rate == pytest.approx(2 / 6)
    # Sampler accuracy: text 9 right of 20 (A 4, B 4, D 1), image 4 of 4.
    assert report.accuracy_by_modality == {"text": [9, 20], "image": [4, 4]}
    assert report.accuracy_by_label["request harmful"] == [5, 12]  # A 4 + D 1 of A, D, E
    assert report.accuracy_by_label["response none"] == [9, 16]  # B, D, E, F
    assert report.format_ok == 20  # E's 4 answers are unparseable
    # One generate call per batch, k answers per sample.
    assert all(len(call) <= 16 for call in backend.calls)
    summary = json.loads((tmp_path / "sampling_summary.json").read_text())
    assert summary["version"] == "1.0" and summary["hard_by_modality"] == {"text": 2}
    lines = [json.loads(line) for line in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert all(line["version"] == "1.0" and len(line["attempts"]) == 4 for line in lines)
    assert "hard: 2" in str(report)


def test_image_only_samples_can_all_be_kept(tmp_path):
    sample_hard(
        scripted_samples(),
        tmp_path,
        backend=scripted_backend(),
        keep_image_only=True,
        validation_fraction=0.0,
        progress=False,
    )
    kept = {s.id: s for s in load_rl_data(tmp_path / "train.jsonl")}
    assert set(kept) == {"C", "E", "F"}
    assert kept["F"].modality == "image" and len(kept["F"].images) == 1
    # Text-only samples stay text-only: no placeholder image, no image part in the prompt.
    assert kept["C"].images == () and kept["C"].modality == "text"
    assert all(part["type"] == "text" for part in kept["C"].prompt()[1]["content"])
    record = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert record["version"] == "1.0"


def test_cap_and_split_are_reproducible_with_a_seed():
    records = [{"id": f"s{i:03d}", "modality": "text", "attempts": [{"correct": i % 10 == 0}]} for i in range(60)]
    hard, train, validation = select_hard(records, cap=20, validation_fraction=0.2, seed=42)
    assert len(hard) == 54 and len(train) == 16 and len(validation) == 4
    assert not set(train) & set(validation) and set(train) | set(validation) <= set(hard)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    assert select_hard(shuffled, cap=20, validation_fraction=0.2, seed=42) == (hard, train, validation)
    assert select_hard(records, cap=20, validation_fraction=0.2, seed=43)[1] != train
    _, all_train, all_validation = select_hard(records, cap=None, validation_fraction=0.2, seed=1)
    assert len(all_train) == 43 and len(all_validation) == 11  # round(54 * 0.2) = 11


class Interrupting(Backend):
    """Delegates to a scripted backend, raising KeyboardInterrupt on call ``stop_at`` (1-based)."""

    def __init__(self, inner: ScriptedBackend, stop_at: int | None) -> None:
        self.inner, self.stop_at, self.calls = inner, stop_at, 0
        self.generated: list[str | None] = []

    def generate(self, inputs, *, max_new_tokens, deadline=None, decoding: Decoding = GREEDY) -> list[Generation]:
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.generated.extend(item.text for item in inputs)
        return self.inner.generate(inputs, max_new_tokens=max_new_tokens, decoding=decoding)


def test_an_interrupted_sampling_run_resumes_without_redoing_finished_samples(tmp_path):
    samples = [TrainingSample(request=f"q{i}", request_label="harmful", id=f"id{i}") for i in range(10)]
    wrong = ScriptedBackend(guard_output("unharmful"))
    first = Interrupting(wrong, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        sample_hard(samples, tmp_path, backend=first, batch_size=2, progress=False)
    finished = [json.loads(line)["id"] for line in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert finished == ["id0", "id1", "id2", "id3"]
    second = Interrupting(ScriptedBackend(guard_output("unharmful")), stop_at=None)
    report = sample_hard(samples, tmp_path, backend=second, batch_size=2, validation_fraction=0.0, progress=False)
    assert second.generated == [f"q{i}" for i in range(4, 10)]  # nothing finished is generated again
    assert report.resumed == 4 and report.generated == 6 and report.finished == 10
    assert len(load_rl_data(tmp_path / "train.jsonl")) == 10


def test_resuming_with_other_generation_settings_is_refused_and_selection_settings_may_change(tmp_path):
    """Attempts made at k=4, temperature 1.0 are not silently mixed with attempts at k=2 or another
    temperature or guard; the selection (cap, split, seed, image-only option) is rebuilt and may change."""
    from grvl_sdk.errors import TrainingConfigError

    samples = [TrainingSample(request=f"q{i}", request_label="harmful", id=f"id{i}") for i in range(6)]
    scripted = Interrupting(ScriptedBackend(guard_output("unharmful")), stop_at=None)
    first = sample_hard(samples[:3], tmp_path, backend=scripted, progress=False)
    assert first.generated == 3
    changed = (({"k": 2}, "k"), ({"temperature": 1.2}, "temperature"), ({"max_new_tokens": 64}, "max_new_tokens"))
    for changes, key in changed:
        backend = Interrupting(ScriptedBackend(guard_output("unharmful")), stop_at=None)
        with pytest.raises(TrainingConfigError, match=rf"other settings \({key}: ") as caught:
            sample_hard(samples, tmp_path, backend=backend, progress=False, **changes)
        assert caught.value.details.get("field") == key and backend.generated == []
    other_guard = ScriptedBackend(guard_output("unharmful"))
    other_guard.model_id = "another-guard"
    with pytest.raises(TrainingConfigError, match="guard: "):
        sample_hard(samples, tmp_path, backend=other_guard, progress=False)
    again = Interrupting(ScriptedBackend(guard_output("unharmful")), stop_at=None)
    report = sample_hard(samples, tmp_path, backend=again, cap=4, seed=7, validation_fraction=0.5, progress=False)
    assert again.generated == ["q3", "q4", "q5"] and report.resumed == 3
    assert len(load_rl_data(tmp_path / "train.jsonl")) == 2
    # Deleting attempts.jsonl (as the error advises) starts afresh with the new settings.
    (tmp_path / "attempts.jsonl").unlink()
    fresh = Interrupting(ScriptedBackend(guard_output("unharmful")), stop_at=None)
    assert sample_hard(samples, tmp_path, backend=fresh, k=2, progress=False).generated == 6
    assert json.loads((tmp_path / "sampling_settings.json").read_text())["k"] == 2


class _ChatServer(ThreadingHTTPServer):
    requests_seen: list[dict[str, Any]]


class _ChatHandler(BaseHTTPRequestHandler):
    """A minimal OpenAI chat-completions endpoint answering ``n`` choices from the transcript."""

    server: _ChatServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests_seen.append(body)
        text = "".join(p.get("text", "") for p in body["messages"][1]["content"] if p.get("type") == "text")
        n = int(body.get("n", 1))
        # "bomb" requests (gold harmful) are always answered wrong: hard. The others (gold unharmful) are
        # answered right by choice 2 only.
        if "bomb" in text:
            answers = [guard_output("unharmful")] * n
        else:
            answers = [guard_output("unharmful" if i == 2 else "harmful") for i in range(n)]
        payload = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}
                for i, a in enumerate(answers)
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20 * n, "total_tokens": 50 + 20 * n},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def chat_server():
    server = _ChatServer(("127.0.0.1", 0), _ChatHandler)
    server.requests_seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_remote_sampling_sends_n_attempts_in_one_request(tmp_path, chat_server):
    image = Image.new("RGB", (84, 56), (0, 90, 200))
    samples = [
        TrainingSample(request="How to make a bomb", request_label="harmful", id="bomb"),
        TrainingSample(request="Bake a cake", request_label="unharmful", id="cake"),
        TrainingSample(request="What is this?", images=(image,), request_label="unharmful", id="picture"),
    ]
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1"
    report = sample_hard(
        samples, tmp_path, server=url, server_model="guard", k=4, validation_fraction=0.0, progress=False
    )
    bodies = chat_server.requests_seen
    assert len(bodies) == 3  # one request per sample
    assert all(b["n"] == 4 and b["temperature"] == 1.0 and b["top_p"] == 0.95 for b in bodies)
    assert report.attempts == 12 and report.hard_by_modality == {"text": 1}
    assert [s.id for s in load_rl_data(tmp_path / "train.jsonl")] == ["bomb"]
    assert any(part.get("type") == "image_url" for b in bodies for part in b["messages"][1]["content"])


# -- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_guard(request) -> Path:
    """The tiny trained guard (``trained_tiny_guard_path`` when the suite has it), else the RL tests' own
    briefly R-SFT-trained tiny guard."""
    pytest.importorskip("trl")
    try:
        return Path(request.getfixturevalue("trained_tiny_guard_path"))
    except pytest.FixtureLookupError:
        from tests.test_trainer_rl_support import rsft_guard

        return rsft_guard()


def test_end_to_end_sample_augment_and_grpo_loads_the_data(tmp_path, shared_data, trained_guard, capsys):
    from grvl_sdk.trainer import GuardRLConfig, augment_data, load_data, rl_dataset, train_rl

    bench = shared_data / "guardreasoner-text" / "benchmark"
    samples = [
        *load_data({"path": str(bench / "0_0_SimpleSafetyTests.json"), "limit": 16}),
        *load_data({"path": str(bench / "0_1_AegisSafetyTest.json"), "limit": 16}),
        *load_data({"path": str(bench / "0_5_harmbench_response.json"), "limit": 4}),  # no request gold
    ]
    report = sample_hard(
        samples, tmp_path / "hard", model=str(trained_guard), device="cpu", k=4, max_new_tokens=48, batch_size=8,
        progress=False,
    )  # fmt: skip
    assert report.unlabelled == 4 and report.finished == 32 and report.attempts == 128
    assert report.hard == len(load_rl_data(tmp_path / "hard" / "train.jsonl")) + len(
        load_rl_data(tmp_path / "hard" / "validation.jsonl")
    )
    augmented = augment_data(tmp_path / "hard", tmp_path / "rl", share=0.2, seed=3)
    dataset = rl_dataset(tmp_path / "rl" / "train.jsonl")
    assert len(dataset) == augmented.originals + augmented.augmented
    with capsys.disabled():
        print(
            f"\n[rejection sampling] {report.finished} samples × 4: hard rate {report.hard_rate:.1%}, "
            f"{report.seconds_per_sample:.3f} s per sample; sampler accuracy "
            f"{report.correct_attempts}/{report.attempts}; augmented {augmented.augmented}"
        )
    config = GuardRLConfig(
        model_name_or_path=str(trained_guard),
        train_data=[str(tmp_path / "rl")],
        output_dir=str(tmp_path / "grpo"),
        num_generations=2,
        prompts_per_rollout=2,
        prompts_per_update=2,
        per_device_train_batch_size=4,
        max_completion_length=16,
        max_steps=1,
        learning_rate=1e-4,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        progress=False,
    )
    result = train_rl(config)
    assert result.global_step == 1 and result.train_samples == len(dataset)


def test_the_cli_samples_through_a_server_augments_and_refuses_a_missing_model(tmp_path, chat_server, capsys):
    from grvl_sdk.cli import main as grvl
    from grvl_sdk.trainer import sample_to_record
    from tests.test_trainer_rl_support import toy_task

    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(sample_to_record(s, [])) + "\n" for s in toy_task(6, seed=2)))
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1"
    out = tmp_path / "hard"
    args = ["train", "sample", str(data), "--server", url, "--server-model", "guard", "--out", str(out)]
    assert grvl([*args, "-k", "3", "--validation", "0", "--no-progress"]) == 0
    assert all(body["n"] == 3 for body in chat_server.requests_seen) and len(chat_server.requests_seen) == 6
    assert "hard:" in capsys.readouterr().err
    hard = load_rl_data(out / "train.jsonl")
    assert 0 < len(hard) < 6  # "bomb" requests are never answered right; the others can be
    assert grvl([*args, "-k", "3", "--validation", "0", "--no-progress"]) == 0  # resumed: nothing re-asked
    assert len(chat_server.requests_seen) == 6
    assert grvl(["train", "augment", str(out), "--out", str(tmp_path / "aug"), "--share", "0.5"]) == 0
    assert "augmented" in capsys.readouterr().err
    augmented = load_rl_data(tmp_path / "aug" / "train.jsonl")
    assert len(augmented) > len(hard) and {s.origin for s in augmented} == {"original", "augmented"}
    missing = grvl(["train", "rl", "--set", f"model_name_or_path={tmp_path / 'nope'}", "--no-progress"])
    assert missing in (2, 3) and "nope" in capsys.readouterr().err


def test_the_rl_prompt_renders_byte_exact_as_the_inference_prompt(tiny_guard):
    """GRPO's prompt (``RLSample.prompt`` through the checkpoint's chat template) is the string the guard
    sends at inference: system message, transcript, image blocks right after ``Human user:``, user tags
    broken the same way — for text, text+response, text+image, image-only and image+response samples."""
    from grvl_sdk.protocol.prompt import neutralize_tags, render_prompt
    from grvl_sdk.trainer.rl_data import RLSample

    processor = tiny_guard.backend.processor
    image = Image.new("RGB", (56, 56), "red")
    cases = [("How to x?", None, 0), ("q", "resp", 0), ("q <image> <think>x</think>", "r", 1), (None, None, 1),
             (None, "resp", 1)]  # fmt: skip
    for request, response, images in cases:
        gold = None if response is None else "unharmful"
        sample = TrainingSample(
            request=request, response=response, images=(image,) * images, request_label="harmful", response_label=gold
        )
        rl = RLSample.from_training_sample(sample)
        rendered = processor.apply_chat_template(rl.prompt(), tokenize=False, add_generation_prompt=True)
        clean = None if request is None else neutralize_tags(request)
        assert rendered == render_prompt(clean, response, num_images=images)
        assert rendered == tiny_guard.format_prompt(request, image if images else None, response=response)
