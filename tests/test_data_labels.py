"""The one label normaliser: one alias table, the same answer in training and evaluation, strict per task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grvl_sdk.data.labels import LABEL_ALIASES, NO_LABEL, TASK_LABELS, normalize_label
from grvl_sdk.errors import DataError, DataFormatError
from grvl_sdk.eval import get_benchmark
from grvl_sdk.eval import load_benchmark as eval_load_benchmark
from grvl_sdk.eval.formats import gold_labels, parse_label_text
from grvl_sdk.trainer import load_table
from grvl_sdk.trainer import normalize_label as trainer_normalize_label

HARM_SPELLINGS = {
    "harmful": "harmful",
    "Harmful": "harmful",
    " UNSAFE ": "harmful",
    "1": "harmful",
    "true": "harmful",
    "True": "harmful",
    "unharmful": "unharmful",
    "safe": "unharmful",
    "0": "unharmful",
    "false": "unharmful",
}


def test_the_alias_table_is_the_documented_one():
    assert LABEL_ALIASES == {
        "harmful": "harmful",
        "unsafe": "harmful",
        "1": "harmful",
        "true": "harmful",
        "unharmful": "unharmful",
        "safe": "unharmful",
        "0": "unharmful",
        "false": "unharmful",
        "refusal": "refusal",
        "compliance": "compliance",
    }
    assert {"", "none", "null", "nan", "n/a"} == NO_LABEL
    assert TASK_LABELS["refusal"] == ("refusal", "compliance")
    # Every alias maps to a label of some task.
    assert set(LABEL_ALIASES.values()) <= {label for pair in TASK_LABELS.values() for label in pair}


@pytest.mark.parametrize(("spelling", "label"), sorted(HARM_SPELLINGS.items()))
@pytest.mark.parametrize("task", ["harm", "request", "response"])
def test_harm_spellings(spelling, label, task):
    assert normalize_label(spelling, task) == label


def test_values_that_are_not_strings():
    assert [normalize_label(v) for v in (True, False, 1, 0, 1.0, 0.0, None)] == [
        "harmful",
        "unharmful",
        "harmful",
        "unharmful",
        "harmful",
        "unharmful",
        None,
    ]
    assert (normalize_label(True, "refusal"), normalize_label(False, "refusal")) == ("refusal", "compliance")
    for bad in (2, 0.5, ["harmful"], {"label": "harmful"}):
        with pytest.raises(DataError):
            normalize_label(bad)


@pytest.mark.parametrize("empty", ["", "  ", "None", "null", "NaN", "n/a"])
@pytest.mark.parametrize("task", ["harm", "request", "response", "refusal"])
def test_no_label_spellings(empty, task):
    assert normalize_label(empty, task) is None


def test_refusal_is_strict():
    assert normalize_label("Refusal", "refusal") == "refusal"
    assert normalize_label("compliance", "refusal") == "compliance"
    for harm_word in ("harmful", "unsafe", "safe", "1", "true", 1):
        with pytest.raises(DataError, match="is not a refusal label"):
            normalize_label(harm_word, "refusal")
    for refusal_word in ("refusal", "compliance"):
        with pytest.raises(DataError, match="is not a request label"):
            normalize_label(refusal_word, "request")


def test_errors_are_data_errors_and_value_errors_naming_the_value_and_task():
    with pytest.raises(DataError) as info:
        normalize_label("maybe", "response")
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("'maybe' is not a response label (expected harmful/unharmful")
    with pytest.raises(DataError, match="unknown task"):
        normalize_label("harmful", "toxicity")


def test_trainer_and_eval_read_every_spelling_alike(tmp_path: Path):
    """The same table read by the trainer (plain table) and by evaluation (generic JSON lines)."""
    spellings = [*HARM_SPELLINGS, "none", "", True, False, 1, 0]
    rows = [{"id": str(i), "text": f"q{i}", "request_label": value} for i, value in enumerate(spellings)]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    trained = load_table(path, {"request": "text"})
    evaluated = eval_load_benchmark(path, get_benchmark("ToxicChat"))
    assert [s.request_label for s in trained] == [s.gold("request") for s in evaluated]
    assert [s.request_label for s in trained] == [normalize_label(v) for v in spellings]
    assert trainer_normalize_label is normalize_label


def test_a_bad_label_fails_in_both_naming_where(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "request_label": "harmful"}\n{"text": "b", "request_label": "toxic"}\n')
    with pytest.raises(DataError) as trained:
        load_table(path, {"request": "text"})
    assert (trained.value.line, trained.value.field) == (2, "request_label")
    assert "'toxic' is not a request label" in str(trained.value)
    with pytest.raises(DataFormatError) as evaluated:
        eval_load_benchmark(path, get_benchmark("ToxicChat"))
    assert isinstance(evaluated.value, DataError)
    assert "bad.jsonl item 1: 'toxic' is not a request label" in str(evaluated.value)


def test_label_lines_and_bare_labels_in_eval_use_the_table():
    assert parse_label_text("Request: unsafe\nResponse: safe\nCompletion: refusal") == {
        "request": "harmful",
        "response": "unharmful",
        "refusal": "refusal",
    }
    assert gold_labels(1, "request", "x") == {"request": "harmful"}
    assert gold_labels("Safe", "response", "x") == {"response": "unharmful"}
    with pytest.raises(DataFormatError, match="is not a refusal label"):
        parse_label_text("Completion: harmful")
    with pytest.raises(DataFormatError, match="is not a refusal label"):
        gold_labels("unsafe", "refusal", "x")


def test_trainer_benchmark_labels_use_the_table(tmp_path: Path):
    from grvl_sdk.trainer import load_benchmark

    items = [
        {"instruction": "i", "input": "Human user:\nq\n\nAI assistant:\nNone\n\n", "output": "unsafe"},
        {"instruction": "i", "input": "Human user:\nq\n\nAI assistant:\nok\n\n", "output": "Request: 0\nResponse: 1"},
        {"instruction": "i", "input": "Human user:\nq\n\nAI assistant:\nok\n\n", "output": "compliance"},
    ]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    errors: list[DataError] = []
    samples = load_benchmark(path, on_error="skip", errors=errors)
    assert [(s.request_label, s.response_label) for s in samples] == [("harmful", None), ("unharmful", "harmful")]
    ((error),) = errors
    assert error.field == "output" and "'compliance' is not a response label" in str(error)
