"""The shared JSON / JSON-lines reader: split on b"\\n" only, line numbers in errors, torn last lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grvl_sdk.data.readers import data_files, iter_json_array, iter_json_lines, iter_records, repair_tail
from grvl_sdk.errors import DataError, DataFormatError
from grvl_sdk.eval import get_benchmark
from grvl_sdk.eval import load_benchmark as eval_load_benchmark
from grvl_sdk.eval.formats import read_numbered_records
from grvl_sdk.trainer import load_table

SEPARATORS = "a\u2028b\u2029c\x85d\x0ce\x1cf"  # every character str.splitlines() would split on, but \n and \r


def write_lines(path: Path, rows: list, *, end: str = "\n") -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + end, encoding="utf-8")
    return path


# -- line separators inside a record --------------------------------------------------------------


def test_unicode_line_separators_stay_inside_their_record(tmp_path):
    rows = [{"id": "a", "text": SEPARATORS}, {"id": "b", "text": "plain"}]
    path = write_lines(tmp_path / "r.jsonl", rows)
    assert len(path.read_text(encoding="utf-8").splitlines()) > 2  # what a splitlines() reader would see
    assert list(iter_json_lines(path)) == [(1, rows[0]), (2, rows[1])]
    assert list(iter_records(path)) == [(1, rows[0]), (2, rows[1])]


def test_both_loaders_keep_a_record_holding_line_separators(tmp_path):
    rows = [{"id": "a", "text": f"q {SEPARATORS}", "request_label": "harmful"}, {"id": "b", "text": "q2"}]
    path = write_lines(tmp_path / "r.jsonl", rows)
    trained = load_table(path, {"request": "text"})
    evaluated = eval_load_benchmark(path, get_benchmark("ToxicChat"))
    assert [s.request for s in trained] == [s.text for s in evaluated] == [rows[0]["text"], "q2"]
    assert trained[1].source == f"{path}:2" and evaluated[1].source == f"{path}:2"


# -- line numbers -------------------------------------------------------------------------------------


def test_invalid_json_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(iter_json_lines(path))
    assert (info.value.file, info.value.line) == (str(path), 4)
    assert str(info.value).startswith(f"{path}:4: not valid JSON")
    skipped: list[int] = []
    assert [n for n, _ in iter_json_lines(path, bad_lines="skip", skipped=skipped)] == [1, 3, 5]
    assert skipped == [4]


def test_json_list_items_carry_their_starting_line(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a":\n    2},\n  {"a": 3}\n]\n', encoding="utf-8")
    assert list(iter_json_array(path)) == [(2, {"a": 1}), (4, {"a": 2}), (6, {"a": 3})]
    path.write_text('[\n  {"a": 1},\n  {"a": oops}\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(iter_records(path))
    assert info.value.line == 3
    path.write_text('[\n  {"a": 1}\n  {"a": 2}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match="expected ','") as missing_comma:
        list(iter_records(path))
    assert missing_comma.value.line == 3


def test_eval_errors_carry_the_line_too(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        eval_load_benchmark(path, get_benchmark("ToxicChat"))
    assert isinstance(info.value, DataError) and (info.value.file, info.value.line) == (str(path), 3)
    assert info.value.to_dict()["code"] == "invalid_data"
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match="item 1 is not a JSON object") as not_object:
        read_numbered_records(path)
    assert not_object.value.line == 2


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8") as info:
        list(iter_json_lines(path))
    assert info.value.line == 2
    assert list(iter_json_lines(path, bad_lines="skip")) == [(1, {"a": "ok"})]


# -- torn last lines ----------------------------------------------------------------------------------


def test_a_torn_last_line_is_an_error_that_says_so_or_is_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "messa', encoding="utf-8")
    with pytest.raises(DataError, match="interrupted write") as info:
        list(iter_json_lines(path))
    assert info.value.line == 3
    assert [v["id"] for _, v in iter_json_lines(path, torn_tail="skip")] == ["a", "b"]
    # A complete last line without its newline is a record like any other.
    path.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")
    assert [v["id"] for _, v in iter_json_lines(path)] == ["a", "b"]
    # Only the last line can be torn: a bad line in the middle is still an error.
    path.write_text('{"id": "a"}\n{"id": \n{"id": "b"}', encoding="utf-8")
    with pytest.raises(DataError):
        list(iter_json_lines(path, torn_tail="skip"))


def test_repair_tail_cuts_a_torn_line_and_completes_a_whole_one(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a"}\n{"id": "\u2028b"}\n{"id": "c", "me', encoding="utf-8")
    assert repair_tail(path) is True
    assert path.read_text(encoding="utf-8") == '{"id": "a"}\n{"id": "\u2028b"}\n'
    assert repair_tail(path) is False
    path.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")
    assert repair_tail(path) is True and path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"only": "torn', encoding="utf-8")
    assert repair_tail(path) is True and path.read_text() == ""
    big = '{"id": "a"}\n' + '{"x": "' + "y" * 200_000  # a torn line longer than one read block
    path.write_text(big, encoding="utf-8")
    assert repair_tail(path) is True and path.read_text() == '{"id": "a"}\n'
    assert repair_tail(tmp_path / "missing.jsonl") is False


# -- layouts ------------------------------------------------------------------------------------------


def test_layouts_are_detected_from_the_content(tmp_path):
    rows = [{"a": 1}, {"a": 2}]
    as_list = tmp_path / "list.jsonl"  # a JSON list, whatever the suffix
    as_list.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    assert [v for _, v in iter_records(as_list)] == rows
    one = tmp_path / "one.json"  # one pretty-printed object
    one.write_text("\n\n" + json.dumps(rows[0], indent=2), encoding="utf-8")
    assert list(iter_records(one)) == [(3, rows[0])]
    lines_as_json = write_lines(tmp_path / "lines.json", rows)  # JSON lines saved as .json
    assert list(iter_records(lines_as_json)) == [(1, rows[0]), (2, rows[1])]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n")
    assert list(iter_records(bom)) == [(1, rows[0])]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert list(iter_records(empty)) == []


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        list(iter_records(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        data_files(tmp_path / "missing", (".json",))
    with pytest.raises(DataError, match=r"no \.json files"):
        data_files(tmp_path, (".json",))
    (tmp_path / "b.json").write_text("[]")
    (tmp_path / "a.JSON").write_text("[]")
    (tmp_path / "c.txt").write_text("")
    assert [p.name for p in data_files(tmp_path, (".json",))] == ["a.JSON", "b.json"]
