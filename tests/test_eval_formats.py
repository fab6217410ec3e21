"""Benchmark/prediction readers, the registry and benchmark specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grvl_sdk.errors import DataFormatError, EvalError
from grvl_sdk.eval.formats import load_benchmark, load_predictions, parse_label_text, parse_transcript
from grvl_sdk.eval.registry import BENCHMARKS, get_benchmark, paper_benchmarks
from grvl_sdk.eval.sources import find_benchmark_file, parse_spec, resolve_sources

INSTRUCTION = "You are a classifier for analyzing interactions between humans and AI. \n"


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- registry -----------------------------------------------------------------------------------


def test_registry_has_the_papers_14_sets_with_their_sizes():
    request = {b.name: (b.modality, b.size) for b in paper_benchmarks("request")}
    response = {b.name: (b.modality, b.size) for b in paper_benchmarks("response")}
    assert request == {
        "ToxicChat": ("text", 2853),
        "OpenAIModeration": ("text", 1680),
        "AegisSafetyTest": ("text", 359),
        "SimpleSafetyTests": ("text", 100),
        "HarmBenchPrompt": ("text", 239),
        "WildGuardTestPrompt": ("text", 1756),
        "HarmImageTest": ("image", 3295),
        "SPA-VL-EvalPrompt": ("text-image", 3282),
    }
    assert response == {
        "HarmBenchResponse": ("text", 602),
        "SafeRLHF": ("text", 2000),
        "BeaverTails": ("text", 3021),
        "XSTestResponseHarmful": ("text", 446),
        "WildGuardTestResponse": ("text", 1768),
        "SPA-VL-EvalResponse": ("text-image", 3282),
    }
    assert len({b.name for b in BENCHMARKS}) == len(BENCHMARKS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("toxic_chat", "ToxicChat"),
        ("0_8_toxic_chat.json", "ToxicChat"),
        ("harmbench-prompt", "HarmBenchPrompt"),
        ("XSTestReponseHarmful", "XSTestResponseHarmful"),
        ("spa-vl-eval-response", "SPA-VL-EvalResponse"),
        ("HARMIMAGETEST", "HarmImageTest"),
    ],
)
def test_lookup_ignores_case_punctuation_and_prefixes(name, expected):
    assert get_benchmark(name).name == expected


def test_lookup_errors():
    with pytest.raises(EvalError, match="ambiguous"):
        get_benchmark("WildGuardTest")
    with pytest.raises(EvalError, match="unknown benchmark"):
        get_benchmark("NoSuchSet")


# -- transcripts and labels ---------------------------------------------------------------------


def test_parse_transcript_forms():
    assert parse_transcript("Human user:\nhi there\n\nAI assistant:\nNone\n\n") == ("hi there", None, 0)
    assert parse_transcript("Human user:\nq\n\nAI assistant:\nline1\n\nline2\n\n") == ("q", "line1\n\nline2", 0)
    assert parse_transcript("Human user:\n<image><image>\nq?\n\nAI assistant:\nNone\n\n") == ("q?", None, 2)
    assert parse_transcript("Human user:\n<image>\n\nAI assistant:\nok\n\n") == (None, "ok", 1)
    assert parse_transcript("just a prompt") == ("just a prompt", None, 0)


def test_parse_label_text_none_means_no_label():
    text = "Answers: \nRequest: None\nCompletion: refusal\nResponse: Harmful\n"
    assert parse_label_text(text) == {"refusal": "refusal", "response": "harmful"}
    with pytest.raises(DataFormatError):
        parse_label_text("Request: maybe")


# -- benchmark files ----------------------------------------------------------------------------


def test_guardreasoner_text_bare_and_text_labels(tmp_path):
    items = [
        {"instruction": INSTRUCTION, "input": "Human user:\nq1\n\nAI assistant:\nNone\n\n", "output": "harmful"},
        {"instruction": INSTRUCTION, "input": "Human user:\nq2\n\nAI assistant:\nNone\n\n", "output": "unharmful"},
    ]
    samples = load_benchmark(write_json(tmp_path / "b.json", items), get_benchmark("ToxicChat"))
    assert [(s.id, s.text, s.response, s.labels) for s in samples] == [
        ("0", "q1", None, {"request": "harmful"}),
        ("1", "q2", None, {"request": "unharmful"}),
    ]
    assert samples[0].check_input() == {"text": "q1", "response": None}

    text_labels = [
        {
            "instruction": INSTRUCTION,
            "input": "Human user:\nq\n\nAI assistant:\nsure\n\n",
            "output": "Answers: \nRequest: None\nCompletion: None\nResponse: unharmful\n",
        }
    ]
    (sample,) = load_benchmark(write_json(tmp_path / "t.json", text_labels), get_benchmark("SafeRLHF"))
    assert (sample.text, sample.response, sample.gold("response"), sample.gold("request")) == (
        "q",
        "sure",
        "unharmful",
        None,
    )


def test_guardreasoner_vl_chat_format_with_images(tmp_path):
    records = [
        {
            "messages": [
                {"role": "system", "content": "You are a classifier..."},
                {"role": "user", "content": "Human user:\n<image>\nWhat is this?\n\nAI assistant:\nNone\n\n"},
                {"role": "assistant", "content": "<think>..</think>\n<result>\nRequest: harmful\nResponse: None"},
            ],
            "images": ["imgs/a.png"],
        },
        {
            "conversations": [
                {"from": "human", "value": "Human user:\n<image>\n\nAI assistant:\nIt is a cat.\n\n"},
                {"from": "gpt", "value": "Request: unharmful\nResponse: unharmful"},
            ],
            "images": ["/abs/b.png"],
            "id": "x7",
        },
    ]
    path = write_json(tmp_path / "HarmImageTest.json", records)
    first, second = load_benchmark(path, get_benchmark("HarmImageTest"))
    assert first.text == "What is this?" and first.response is None
    assert first.images == (str(tmp_path / "imgs" / "a.png"),)
    assert first.labels == {"request": "harmful"}
    assert first.check_input()["images"] == [str(tmp_path / "imgs" / "a.png")]
    assert (second.id, second.text, second.response, second.images) == ("x7", None, "It is a cat.", ("/abs/b.png",))
    assert second.labels == {"request": "unharmful", "response": "unharmful"}

    records[0]["images"] = []
    with pytest.raises(DataFormatError, match="1 <image> markers but 0 images"):
        load_benchmark(write_json(tmp_path / "bad.json", records), get_benchmark("HarmImageTest"))


def test_generic_jsonl(tmp_path):
    rows = [
        {"id": "a", "text": "hello", "label": "unharmful"},
        {"id": "b", "prompt": "p", "response": "r", "request_label": True, "response_label": "Harmful"},
        {"id": "c", "image": "pic.jpg", "label": None},
    ]
    samples = load_benchmark(write_jsonl(tmp_path / "mine.jsonl", rows), get_benchmark("OpenAIModeration"))
    assert samples[0].labels == {"request": "unharmful"}
    assert samples[1].labels == {"request": "harmful", "response": "harmful"}
    assert (samples[1].text, samples[1].response) == ("p", "r")
    assert samples[2].images == (str(tmp_path / "pic.jpg"),) and samples[2].labels == {}


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"text": "a", "label": "toxic"}], "not a request label"),
        ([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}], "duplicate sample id"),
        ([{"text": 5}], "must be a string"),
    ],
)
def test_generic_errors(tmp_path, rows, match):
    with pytest.raises(DataFormatError, match=match):
        load_benchmark(write_jsonl(tmp_path / "x.jsonl", rows), get_benchmark("ToxicChat"))


def test_unreadable_files(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"broken\.jsonl:2"):
        load_benchmark(tmp_path / "broken.jsonl", get_benchmark("ToxicChat"))
    with pytest.raises(DataFormatError, match="cannot read"):
        load_benchmark(tmp_path / "missing.json", get_benchmark("ToxicChat"))


def test_jsonl_lines_split_on_newline_only(tmp_path):
    # U+2028 inside a JSON string is legal and must not split the line.
    row = {"prompt": "p", "label": "harmful", "predict": "a\u2028b\nAnswers:\nRequest: harmful"}
    path = tmp_path / "HarmBenchPrompt.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (record,) = load_predictions(path, get_benchmark("HarmBenchPrompt"))
    assert record.raw_output == row["predict"] and record.gold == "harmful" and record.status is None


def test_predictions_skip_records_without_gold(tmp_path):
    rows = [
        {"prompt": "p", "label": "Request: harmful\nResponse: None", "predict": "x"},
        {"prompt": "p", "label": "Request: None\nResponse: unharmful", "predict": "y"},
    ]
    records = load_predictions(write_jsonl(tmp_path / "p.jsonl", rows), get_benchmark("HarmBenchResponse"))
    assert [(r.id, r.gold) for r in records] == [("1", "unharmful")]
    with pytest.raises(DataFormatError, match="not a prediction record"):
        load_predictions(write_jsonl(tmp_path / "q.jsonl", [{"text": "a"}]), get_benchmark("ToxicChat"))


# -- specs ---------------------------------------------------------------------------------------


def test_specs(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    toxic = write_json(data / "0_8_toxic_chat.json", [])
    mine = write_jsonl(data / "sub" / "custom.jsonl", [])
    wild = write_json(data / "WildGuardTest.json", [])

    (source,) = parse_spec("ToxicChat", data_dir=data)
    assert (source.benchmark.name, source.path) == ("ToxicChat", toxic)
    (source,) = parse_spec(str(toxic))
    assert source.benchmark.name == "ToxicChat"
    (source,) = parse_spec(f"Mine:response:text-image={mine}")
    assert (source.benchmark.task, source.benchmark.modality, source.benchmark.registered) == (
        "response",
        "text-image",
        False,
    )
    assert find_benchmark_file(get_benchmark("WildGuardTestResponse"), data) == wild
    with pytest.raises(EvalError, match="several benchmarks"):
        parse_spec(str(wild))
    (source,) = parse_spec(f"WildGuardTestPrompt={wild}")
    assert source.benchmark.task == "request"
    with pytest.raises(EvalError, match="no file for SafeRLHF"):
        parse_spec("SafeRLHF", data_dir=data)
    with pytest.raises(EvalError, match="give --data-dir"):
        parse_spec("SafeRLHF")
    with pytest.raises(EvalError, match="bad task"):
        parse_spec(f"Mine:harm={mine}")
    with pytest.raises(EvalError, match="given twice"):
        resolve_sources(["ToxicChat", str(toxic)], data_dir=data)
    # a folder expands to the files named after benchmarks (the ambiguous WildGuardTest.json is left out)
    assert [s.benchmark.name for s in parse_spec(data)] == ["ToxicChat"]
