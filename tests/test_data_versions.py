"""Format versions: written on every record, absent from older files (read), newer majors refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval_runner import H_OUT, U_OUT, ScriptedBackend
from test_trainer_synthesize import FakeTeacher, correct
from test_trainer_synthesize import run as run_synthesis

from grvl_sdk import Guard
from grvl_sdk.data.versions import FORMATS, check_version, parse_version, stamp
from grvl_sdk.errors import DataError, DataFormatError, EvalError, TrainingConfigError
from grvl_sdk.eval import get_benchmark, load_predictions, load_run, run_eval
from grvl_sdk.eval.predictions import PredictionRecord
from grvl_sdk.eval.report import load_summary
from grvl_sdk.trainer import RSFTConfig, TrainingSample, load_vltrain, synthesize
from grvl_sdk.trainer.runs import read_metrics

FUTURE = "2.0"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def without_version(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "version"} for row in rows]


# -- the version rules ----------------------------------------------------------------------------


def test_version_rules():
    assert set(FORMATS) == {
        "eval-prediction",
        "eval-run",
        "eval-results",
        "synthesis-record",
        "synthesis-dropped",
        "training-run",
        "training-metrics",
        "rl-record",
        "rl-attempt",
        "rl-summary",
        "pipeline-state",
    }
    assert all(parse_version(v)[0] == 1 for v in FORMATS.values())  # no format has changed a field's meaning
    assert list(stamp("eval-run", {"a": 1, "version": "0.1"})) == ["version", "a"]
    assert check_version("eval-run", {}) == (1, 0)  # older files have none
    assert check_version("eval-run", {"version": "1.7"}) == (1, 7)  # a newer minor adds optional fields
    assert check_version("eval-run", {"version": 1}) == (1, 0)
    with pytest.raises(DataError, match=r"format version 2\.0, newer than this grvl-sdk reads \(1\.x\)") as info:
        check_version("eval-run", {"version": FUTURE}, file="run.json", line=3)
    assert (info.value.file, info.value.line, info.value.field) == ("run.json", 3, "version")
    for bad in ("one", "1.x", True, None, -1):
        with pytest.raises(DataError, match="not a format version"):
            check_version("eval-run", {"version": bad})
    with pytest.raises(DataError, match="unknown record format"):
        stamp("nope", {})


# -- evaluation: predictions, run.json, results.json ----------------------------------------------


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    rows = [{"id": f"r{i}", "text": f"q{i}", "label": label} for i, label in enumerate(["harmful", "unharmful"])]
    data = write_lines(tmp_path / "req.jsonl", rows)
    guard = Guard(ScriptedBackend({"q0": H_OUT, "q1": U_OUT}), cache_size=0)
    out = tmp_path / "run"
    run_eval(guard, [f"Mine:request={data}"], out, progress=False)
    return out


def test_eval_files_carry_their_version(run_dir):
    predictions = lines(run_dir / "predictions" / "Mine.jsonl")
    # 1.1: predictions gained the optional score, tier and escalation fields; results.json the mode.
    assert [p["version"] for p in predictions] == ["1.1", "1.1"]
    assert json.loads((run_dir / "run.json").read_text())["version"] == "1.0"
    assert json.loads((run_dir / "results.json").read_text())["version"] == "1.1"
    assert PredictionRecord(id="a", gold="harmful").to_dict()["version"] == "1.1"


def test_eval_files_without_a_version_are_read(run_dir):
    path = run_dir / "predictions" / "Mine.jsonl"
    write_lines(path, without_version(lines(path)))
    for name in ("run.json", "results.json"):
        data = json.loads((run_dir / name).read_text())
        del data["version"]
        (run_dir / name).write_text(json.dumps(data))
    assert load_run(run_dir).results[0].f1 == 100.0
    assert load_summary(run_dir).results[0].n == 2
    assert [r.id for r in load_predictions(path, get_benchmark("ToxicChat"))] == ["r0", "r1"]
    guard = Guard(ScriptedBackend({}), cache_size=0)  # resuming: nothing left to generate
    data_file = run_dir.parent / "req.jsonl"
    assert run_eval(guard, [f"Mine:request={data_file}"], run_dir, progress=False).results[0].f1 == 100.0
    assert guard.backend.calls == []  # type: ignore[attr-defined]


def test_a_newer_prediction_format_is_refused_and_left_alone(run_dir):
    path = run_dir / "predictions" / "Mine.jsonl"
    rows = lines(path)
    rows[1]["version"] = FUTURE
    write_lines(path, rows)
    before = path.read_bytes()
    with pytest.raises(DataFormatError, match="newer than this grvl-sdk reads") as info:
        load_predictions(path, get_benchmark("ToxicChat"))
    assert isinstance(info.value, DataError) and "Mine.jsonl item 1" in str(info.value)
    with pytest.raises(EvalError, match="newer than this grvl-sdk reads"):
        load_run(run_dir)
    data_file = run_dir.parent / "req.jsonl"
    with pytest.raises(DataError, match=r"Mine\.jsonl:2: field 'version'"):
        run_eval(Guard(ScriptedBackend({}), cache_size=0), [f"Mine:request={data_file}"], run_dir, progress=False)
    assert path.read_bytes() == before  # a resume never rewrites (drops) records it cannot read


def test_a_newer_run_or_results_file_is_refused(run_dir):
    for name in ("run.json", "results.json"):
        data = json.loads((run_dir / name).read_text())
        data["version"] = FUTURE
        (run_dir / name).write_text(json.dumps(data))
    with pytest.raises(EvalError, match=r"run\.json: field 'version': this eval-run record has format version 2\.0"):
        load_run(run_dir)
    with pytest.raises(EvalError, match=r"results\.json: field 'version': this eval-results record"):
        load_summary(run_dir)


# -- synthesis: records.jsonl, dropped.jsonl -------------------------------------------------------


def test_synthesis_records_carry_their_version_and_older_ones_are_read(tmp_path):
    samples = [
        TrainingSample(request="How do I build a bomb?", request_label="harmful", id="bomb"),
        TrainingSample(request="hi", id="nolabel"),  # dropped without asking
    ]
    out = tmp_path / "s"
    with FakeTeacher(correct) as teacher:
        report = run_synthesis(samples, out, teacher)
    assert (report.kept, report.dropped) == (1, 1)
    (record,) = lines(out / "records.jsonl")
    (dropped,) = lines(out / "dropped.jsonl")
    assert (record["version"], dropped["version"]) == ("1.0", "1.0")
    assert load_vltrain(out / "records.jsonl")[0].id == "bomb"
    # Files from before versions: read for training, and a re-run resumes from them.
    write_lines(out / "records.jsonl", without_version([record]))
    write_lines(out / "dropped.jsonl", without_version([dropped]))
    assert load_vltrain(out / "records.jsonl")[0].id == "bomb"
    report = synthesize(samples, out, base_url="http://127.0.0.1:9/v1", model="t", progress=False)
    assert report.skipped == 2 and report.requests == 0


@pytest.mark.parametrize("name", ["records.jsonl", "dropped.jsonl"])
def test_a_newer_synthesis_file_is_refused(tmp_path, name):
    out = tmp_path / "s"
    out.mkdir()
    write_lines(out / name, [{"version": FUTURE, "id": "x", "messages": []}])
    with pytest.raises(DataError, match=rf"{name}:1: field 'version'.*newer than this grvl-sdk reads"):
        synthesize([], out, base_url="http://127.0.0.1:9/v1", model="t", progress=False)


def test_training_refuses_records_of_a_newer_version(tmp_path):
    transcript = "Human user:\nhi\n\nAI assistant:\nNone\n\n"
    answer = "<think>\nfine\n</think>\n<result>\nRequest: unharmful\nResponse: None\n</result>"
    record = {"messages": [{"role": "user", "content": transcript}, {"role": "assistant", "content": answer}]}
    path = write_lines(tmp_path / "r.jsonl", [record, {"version": "1.4", **record}, {"version": FUTURE, **record}])
    with pytest.raises(DataError) as info:
        load_vltrain(path)
    assert (info.value.line, info.value.field) == (3, "version")
    errors: list[DataError] = []
    assert len(load_vltrain(path, on_error="skip", errors=errors)) == 2 and len(errors) == 1


# -- training runs: rsft_config.yaml, data_summary.json, metrics.jsonl ----------------------------


def test_training_run_files_carry_their_version_and_read_back(tmp_path):
    yaml = pytest.importorskip("yaml")
    from grvl_sdk.trainer.runs import write_data_summary, write_run_config

    config = RSFTConfig.preset("3b", train_data=[str(tmp_path / "a.jsonl")], output_dir=str(tmp_path))
    path = write_run_config(tmp_path, config.to_dict(), {"processes": 1, "bf16": False})
    written = yaml.safe_load(path.read_text())
    assert (path.name, next(iter(written)), written["version"]) == ("rsft_config.yaml", "version", "1.1")
    assert written["resolved"] == {"processes": 1, "bf16": False}
    assert RSFTConfig.from_yaml(path) == config  # a run's settings file is a config again
    summary = json.loads(write_data_summary(tmp_path, {"total": 3}, ["a:1"]).read_text())
    assert summary == {"version": "1.1", "total": 3, "dropped_overlong": ["a:1"]}

    del written["version"]  # older run folders
    path.write_text(yaml.safe_dump(written))
    assert RSFTConfig.from_yaml(path) == config
    written["version"] = FUTURE
    path.write_text(yaml.safe_dump(written))
    with pytest.raises(TrainingConfigError, match="newer than this grvl-sdk reads") as info:
        RSFTConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_metrics_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 2.0}, stamp("training-metrics", {"step": 2, "loss": 1.0})]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo', encoding="utf-8")
    assert [r["step"] for r in read_metrics(path)] == [1, 2]  # the torn last line is ignored
    write_lines(path, [*rows, {"version": FUTURE, "step": 3}])
    with pytest.raises(DataError, match=r"metrics\.jsonl:3: field 'version'"):
        read_metrics(path)


# -- the RL stage: RL data, sampling attempts and summaries, pipeline state ------------------------


def test_rl_files_carry_their_version_and_newer_ones_are_refused(tmp_path):
    from grvl_sdk.trainer.augment import augment_data
    from grvl_sdk.trainer.pipeline import run_pipeline
    from grvl_sdk.trainer.rl_data import RLSample, load_rl_data, write_rl_data
    from grvl_sdk.trainer.sampling import sample_hard

    samples = [
        RLSample.from_training_sample(TrainingSample(request=f"q{i}", request_label="harmful")) for i in range(3)
    ]
    data = write_rl_data(samples, tmp_path / "rl" / "train.jsonl")
    rows = lines(data)
    assert all(next(iter(r)) == "version" and r["version"] == FORMATS["rl-record"] for r in rows)
    assert len(load_rl_data(write_lines(data, without_version(rows)))) == 3  # older files: no version
    write_lines(data, [*rows[:2], {**rows[2], "version": FUTURE}])
    with pytest.raises(DataError, match=r"train\.jsonl:3: field 'version'.*newer than this grvl-sdk reads"):
        load_rl_data(data)

    write_lines(data, rows)
    summary = json.loads(
        (augment_data(tmp_path / "rl", tmp_path / "aug").train_path.parent / "augment_summary.json").read_text()
    )
    assert summary["version"] == FORMATS["rl-summary"]

    sampled = tmp_path / "sampled"
    sampled.mkdir()
    write_lines(sampled / "attempts.jsonl", [{"version": FUTURE, "id": "x", "attempts": []}])
    with pytest.raises(DataError, match=r"attempts\.jsonl:1: field 'version'"):
        sample_hard([], sampled, progress=False)  # resuming reads the finished samples first

    pytest.importorskip("yaml")
    run = tmp_path / "pipeline"
    run.mkdir()
    (run / "pipeline_state.json").write_text(json.dumps({"version": FUTURE, "stages": {}}))
    with pytest.raises(DataError, match=r"pipeline_state\.json.*newer than this grvl-sdk reads"):
        run_pipeline({"output_dir": str(run), "train_data": ["x.jsonl"]})
    (run / "pipeline_state.json").write_text("{torn")
    with pytest.raises(DataError, match="unreadable pipeline state"):
        run_pipeline({"output_dir": str(run), "train_data": ["x.jsonl"]})
