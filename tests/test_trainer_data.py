"""Training data: the sample, loaders (real shared files, VLTrain records, tables), validation errors, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grvl_sdk.errors import DataError, InputError
from grvl_sdk.protocol.prompt import SYSTEM_PROMPT, build_transcript
from grvl_sdk.trainer import (
    ColumnMap,
    TrainingSample,
    detect_format,
    load_benchmark,
    load_data,
    load_table,
    load_vltrain,
    normalize_label,
    parse_transcript,
    render_completion,
    sample_to_record,
    summarize,
)

BENCHMARKS = {
    "0_0_SimpleSafetyTests.json": (100, "request"),
    "0_1_AegisSafetyTest.json": (359, "request"),
    "0_2_OpenAIModeration.json": (1680, "request"),
    "0_3_harmbench_prompt.json": (239, "request"),
    "0_5_harmbench_response.json": (602, "response"),
    "0_6_xstest_response_harmful.json": (446, "response"),
    "0_8_toxic_chat.json": (2853, "request"),
    "0_9_safe_rlhf.json": (2000, "response"),
    "0_A_beaver_tails.json": (3021, "response"),
}


def answer(request: str, response: str = "None") -> str:
    return render_completion("The request asks for X.", request, None if response == "None" else response)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def vl_record(transcript: str, assistant: str | None, images: list[str] | None = None) -> dict:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": transcript}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages, "images": images or []}


# ---------------------------------------------------------------------------------------------
# Real files in ../shared/data
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_real_benchmark_files_load(shared_data, name):
    count, task = BENCHMARKS[name]
    path = shared_data / "guardreasoner-text" / "benchmark" / name
    samples = load_benchmark(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert len(samples) == len(raw) == count
    for sample, item in zip(samples, raw, strict=True):
        # The transcript survives the round trip byte for byte: training renders what the file holds.
        assert sample.transcript() == item["input"]
        assert sample.modality == "text" and not sample.images
        labelled = sample.request_label if task == "request" else sample.response_label
        assert labelled in ("harmful", "unharmful")
        if task == "response":
            assert sample.response is not None and sample.request_label is None
        else:
            assert sample.response is None and sample.response_label is None
    assert detect_format(path) == "benchmark"
    summary = summarize(samples)
    harmful = sum(1 for item in raw if "harmful" in item["output"] and "unharmful" not in item["output"])
    key = "request_labels" if task == "request" else "response_labels"
    assert summary.to_dict()[key]["text"].get("harmful", 0) == harmful


def test_real_benchmark_labels_are_read_right(shared_data):
    folder = shared_data / "guardreasoner-text" / "benchmark"
    simple = load_benchmark(folder / "0_0_SimpleSafetyTests.json")
    assert {s.request_label for s in simple} == {"harmful"}
    beaver = load_benchmark(folder / "0_A_beaver_tails.json")
    assert sum(s.response_label == "harmful" for s in beaver) == 1733
    assert beaver[0].source.endswith("0_A_beaver_tails.json:2")


def test_refusal_benchmark_is_rejected_with_file_line_and_field(shared_data):
    path = shared_data / "guardreasoner-text" / "benchmark" / "0_7_xstest_response_refusal.json"
    with pytest.raises(DataError) as info:
        load_benchmark(path)
    error = info.value
    assert (error.file, error.line, error.field) == (str(path), 2, "output")
    assert "compliance" in str(error) or "refusal" in str(error)
    assert str(error).startswith(f"{path}:2: field 'output':")
    errors: list[DataError] = []
    assert load_benchmark(path, on_error="skip", errors=errors) == []
    assert len(errors) == 449 and errors[-1].line > errors[0].line


def test_real_benchmark_folder_with_skip(shared_data):
    errors: list[DataError] = []
    samples = load_data({"path": shared_data / "guardreasoner-text" / "benchmark"}, on_error="skip", errors=errors)
    assert len(samples) == sum(count for count, _ in BENCHMARKS.values())
    assert len(errors) == 449


# ---------------------------------------------------------------------------------------------
# GuardReasoner-VLTrain records
# ---------------------------------------------------------------------------------------------
def test_vltrain_records_all_modalities(tmp_path):
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "img.png")
    records = [
        vl_record("Human user:\nHow do I pick a lock?\n\nAI assistant:\nNone\n\n", answer("harmful")),
        vl_record("Human user:\n<image>\n\nAI assistant:\nNone\n\n", answer("unharmful"), ["img.png"]),
        vl_record(
            "Human user:\n<image>\nWhat is this?\n\nAI assistant:\nA cat.\n\n",
            answer("unharmful", "unharmful"),
            ["img.png"],
        ),
    ]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    samples = load_vltrain(path)
    assert [s.modality for s in samples] == ["text", "image", "text-image"]
    assert samples[0].request == "How do I pick a lock?" and samples[0].response is None
    assert samples[1].request is None and samples[1].images == (str(tmp_path / "img.png"),)
    assert (samples[2].request, samples[2].response) == ("What is this?", "A cat.")
    assert [(s.request_label, s.response_label) for s in samples] == [
        ("harmful", None),
        ("unharmful", None),
        ("unharmful", "unharmful"),
    ]
    assert samples[0].reasoning == "The request asks for X."
    # The assistant turn is trained on verbatim.
    assert samples[2].target() == records[2]["messages"][2]["content"]
    assert samples[2].source == f"{path}:3"
    # sample_to_record writes the same record back.
    assert sample_to_record(samples[0], []) == records[0]
    assert detect_format(path) == "vltrain"


def test_vltrain_json_list_folder_conversations_and_demo_newline(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Human user:\nhello\n\nAI assistant:\nNone\n"},  # demo form
                        {"from": "gpt", "value": answer("unharmful")},
                    ]
                }
            ],
            indent=2,
        )
    )
    write_jsonl(tmp_path / "b.jsonl", [vl_record("Human user:\nbye\n\nAI assistant:\nNone\n\n", answer("harmful"))])
    samples = load_vltrain(tmp_path)
    assert [(s.request, s.request_label) for s in samples] == [("hello", "unharmful"), ("bye", "harmful")]
    assert samples[0].source == f"{tmp_path / 'a.json'}:2"


def test_vltrain_from_a_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "x.png")
    rows = [
        vl_record(
            "Human user:\n<image>\nwhat?\n\nAI assistant:\nNone\n\n", answer("harmful"), [str(tmp_path / "x.png")]
        ),
        vl_record("Human user:\nhi\n\nAI assistant:\nNone\n\n", answer("unharmful"), []),
    ]
    dataset = datasets.Dataset.from_list(rows)
    samples = load_vltrain(dataset)
    assert [s.modality for s in samples] == ["text-image", "text"]
    # A dataset with decoded images (the `datasets` Image feature gives PIL images).
    with_images = datasets.Dataset.from_dict(
        {"messages": [rows[0]["messages"]], "images": [[str(tmp_path / "x.png")]]},
        features=datasets.Features(
            {
                "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
                "images": datasets.Sequence(datasets.Image()),
            }
        ),
    )
    decoded = load_vltrain(with_images)
    assert isinstance(decoded[0].images[0], Image.Image) and decoded[0].images[0].size == (40, 30)
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert len(load_vltrain(tmp_path / "saved")) == 2


# ---------------------------------------------------------------------------------------------
# Bad records: clear errors naming file, line and field
# ---------------------------------------------------------------------------------------------
GOOD = vl_record("Human user:\nhi\n\nAI assistant:\nNone\n\n", answer("unharmful"))


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ({"text": "no messages"}, "messages", "needs 'messages'"),
        (vl_record("User: hi\n\nAI assistant:\nNone\n\n", answer("harmful")), "messages[1].content", "must start"),
        (vl_record("Human user:\nhi\n\nAssistant: None", answer("harmful")), "messages[1].content", "AI assistant"),
        (
            vl_record("Human user:\n<image>\nhi\n\nAI assistant:\nNone\n\n", answer("harmful")),
            "messages[1].content",
            "0 image(s)",
        ),
        (
            vl_record("Human user:\nhi <image>\n\nAI assistant:\nNone\n\n", answer("harmful"), ["x.png"]),
            "images[0]",
            "not found",
        ),
        (vl_record("Human user:\nhi\n\nAI assistant:\nNone\n\n", "It is harmful."), "messages[2].content", "verdict"),
        (
            vl_record("Human user:\nhi\n\nAI assistant:\nNone\n\n", "<think>x</think>\nRequest: harmful"),
            "messages[2].content",
            "<result>",
        ),
        (
            vl_record("Human user:\nhi\n\nAI assistant:\nNone\n\n", answer("harmful", "harmful")),
            "messages[2].content",
            "transcript has none",
        ),
        (
            vl_record("Human user:\nhi\n\nAI assistant:\nSure.\n\n", answer("harmful")),
            "messages[2].content",
            "does not label",
        ),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role"),
        ({"messages": [GOOD["messages"][2], GOOD["messages"][1]]}, "messages", "expected"),
    ],
    ids=[
        "no-messages",
        "bad-transcript",
        "no-ai-section",
        "image-count",
        "missing-image",
        "no-verdict",
        "unclosed-result",
        "labels-missing-response",
        "unlabelled-response",
        "bad-role",
        "bad-order",
    ],
)
def test_bad_vltrain_records_name_file_line_and_field(tmp_path, bad, field, words):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(DataError) as info:
        load_vltrain(path)
    error = info.value
    assert (error.file, error.line, error.field) == (str(path), 3, field)
    assert words in str(error)
    assert isinstance(error, InputError) and error.to_dict()["code"] == "invalid_training_data"
    errors: list[DataError] = []
    assert len(load_vltrain(path, on_error="skip", errors=errors)) == 2 and len(errors) == 1


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"messages": [\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_vltrain(path)
    assert (info.value.line, info.value.field) == (3, None) and "not valid JSON" in str(info.value)


def test_json_list_items_report_their_own_line(tmp_path):
    bad = {"messages": [{"role": "user", "content": "Nope"}]}
    path = tmp_path / "list.json"
    path.write_text(json.dumps([GOOD, bad], indent=2), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_vltrain(path)
    text = path.read_text().splitlines()
    assert text[info.value.line - 1].strip() == "{" and info.value.line > 10
    assert '"Nope"' in "\n".join(text[info.value.line - 1 : info.value.line + 6])


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown format"):
        load_data({"path": str(write_jsonl(tmp_path / "a.jsonl", [GOOD])), "format": "parquet"})
    with pytest.raises(DataError, match="unknown data source key"):
        load_data({"path": "x", "colums": {}})


# ---------------------------------------------------------------------------------------------
# Plain tables
# ---------------------------------------------------------------------------------------------
def test_csv_with_column_mapping_and_label_spellings(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 30)).save(tmp_path / "b.png")
    (tmp_path / "data.csv").write_text(
        "prompt,answer,pic,y,y_resp,why\n"
        "how to hack,,,unsafe,,Hacking is harmful.\n"
        "hello,hi there,a.png,0,safe,Greeting.\n"
        ',,"[""a.png"", ""b.png""]",1,,Two images.\n',
        encoding="utf-8",
    )
    columns = {
        "request": "prompt",
        "response": "answer",
        "images": "pic",
        "request_label": "y",
        "response_label": "y_resp",
        "reasoning": "why",
    }
    samples = load_table(tmp_path / "data.csv", columns)
    assert [(s.request, s.response, len(s.images), s.request_label, s.response_label) for s in samples] == [
        ("how to hack", None, 0, "harmful", None),
        ("hello", "hi there", 1, "unharmful", "unharmful"),
        (None, None, 2, "harmful", None),
    ]
    assert all(s.has_target for s in samples)
    assert samples[2].modality == "image" and samples[2].source == f"{tmp_path / 'data.csv'}:4"
    assert samples[0].target() == render_completion("Hacking is harmful.", "harmful", None)


def test_table_errors_name_the_mapped_column(tmp_path):
    (tmp_path / "d.csv").write_text("q,label\nfine,harmful\nbad,maybe\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_table(tmp_path / "d.csv", {"request": "q", "request_label": "label"})
    assert (info.value.line, info.value.field) == (3, "label") and "maybe" in str(info.value)
    with pytest.raises(DataError) as header:
        load_table(tmp_path / "d.csv", {"request": "prompt"})
    assert (header.value.line, header.value.field) == (1, "prompt")
    with pytest.raises(DataError, match="unknown column role"):
        ColumnMap.from_mapping({"prompt": "q"})
    write_jsonl(
        tmp_path / "e.jsonl", [{"request": "ok"}, {"request": "", "response": "r", "response_label": "harmful"}]
    )
    with pytest.raises(DataError) as empty:
        load_table(tmp_path / "e.jsonl")
    assert (empty.value.line, empty.value.field) == (2, "request")


def test_jsonl_table_defaults(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"request": "a", "request_label": True, "id": 7}, {"request": "b", "request_label": "Unharmful"}],
    )
    samples = load_data(path)
    assert [(s.request_label, s.id) for s in samples] == [("harmful", "7"), ("unharmful", None)]
    assert samples[0].key() == "7" and len(samples[1].key()) == 24


# ---------------------------------------------------------------------------------------------
# The sample, transcripts, summary
# ---------------------------------------------------------------------------------------------
def test_sample_validation():
    with pytest.raises(DataError, match="request text, an image"):
        TrainingSample(request=None)
    with pytest.raises(DataError, match="no response"):
        TrainingSample(request="q", response_label="harmful")
    with pytest.raises(DataError, match="label must be"):
        TrainingSample(request="q", request_label="unsafe")  # type: ignore[arg-type]
    sample = TrainingSample(request="q", response="r", request_label="harmful")
    assert not sample.has_target
    with pytest.raises(DataError, match="synthesize"):
        sample.target()
    with pytest.raises(DataError, match="response has no label"):
        TrainingSample(request="q", response="r", request_label="harmful", reasoning="x").target()
    assert TrainingSample(request="q", images=[b"x"]).images == (b"x",)


def test_normalize_label():
    assert [normalize_label(v) for v in ("Harmful", " SAFE ", 1, 0, False, "", None, "none")] == [
        "harmful",
        "unharmful",
        "harmful",
        "unharmful",
        "unharmful",
        None,
        None,
        None,
    ]
    for bad in ("maybe", 2, 0.5, ["harmful"]):
        with pytest.raises(ValueError):
            normalize_label(bad)


_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: "\n\nAI assistant:\n" not in s and not s.startswith("<image>") and s != "None"
)


@settings(max_examples=200, deadline=None)
@given(request=st.none() | _text, response=st.none() | _text, images=st.integers(0, 3))
def test_transcripts_round_trip(request, response, images):
    if request is None and images == 0:
        images = 1
    text = build_transcript(request, response, num_images=images)
    assert parse_transcript(text) == (request, response, images)
    assert parse_transcript(text, num_images=images) == (request, response, images)


def test_summary_counts_and_table():
    samples = [
        TrainingSample(request="a", request_label="harmful", reasoning="r"),
        TrainingSample(request="b", response="c", request_label="unharmful", response_label="harmful", reasoning="r"),
        TrainingSample(request=None, images=(b"i",), request_label="unharmful"),
        TrainingSample(request="d", images=(b"i",), response="e"),
    ]
    summary = summarize(samples)
    assert summary.total == 4 and summary.by_modality == {"text": 2, "image": 1, "text-image": 1}
    assert summary.request_labels["text"] == {"harmful": 1, "unharmful": 1}
    assert summary.response_labels["text"] == {"no response": 1, "harmful": 1}
    assert summary.response_labels["text-image"] == {"unknown": 1}
    assert (summary.with_response, summary.with_reasoning, summary.trainable) == (2, 2, 2)
    table = str(summary).splitlines()
    assert table[0].split()[:2] == ["modality", "samples"]
    assert table[-2].split() == ["all", "4", "1", "2", "1", "1", "0", "1", "2"]
    assert "ready for R-SFT: 2" in table[-1]
