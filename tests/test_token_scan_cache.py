"""The load-time vocabulary scan is cached per tokenizer, and a bad cache file is never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grvl_sdk.backends import _token_scan
from grvl_sdk.backends._processor import load_processor
from grvl_sdk.backends._token_scan import TokenScan, scan_tokens, scanned_tokens


@pytest.fixture
def tokenizer(tiny_guard_path):
    return load_processor(str(tiny_guard_path)).tokenizer


def _entry(cache: Path) -> Path:
    (entry,) = cache.glob("*.json")
    return entry


def _no_rescan(monkeypatch):
    def fail(_tokenizer):
        raise AssertionError("the vocabulary was scanned again")

    monkeypatch.setattr(_token_scan, "scan_tokens", fail)


def test_the_scan_finds_the_verdict_and_label_triggers(tokenizer):
    scan = scan_tokens(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in scan.triggers  # holds ">"
    assert all(">" in tokenizer.convert_ids_to_tokens(i) for i in scan.triggers)
    colon = [i for i, t in enumerate(texts) if t.endswith(":")]
    assert colon and set(colon) <= scan.label_triggers
    assert all(texts[i].rstrip().endswith((":", "*")) or not texts[i].strip() for i in scan.label_triggers)


def test_a_later_load_reads_the_stored_scan(tokenizer, tmp_path, monkeypatch):
    first = scanned_tokens(tokenizer, cache_dir=tmp_path)
    assert first == scan_tokens(tokenizer)
    stored = json.loads(_entry(tmp_path).read_text())
    assert stored["size"] == len(tokenizer) and sorted(first.label_triggers) == stored["label_triggers"]
    _no_rescan(monkeypatch)
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == first


def test_the_backend_uses_the_scan(tiny_guard):
    backend = tiny_guard.backend
    scan = scan_tokens(backend.tokenizer)
    assert backend._trigger_ids == scan.triggers
    assert backend._label_trigger_ids == scan.label_triggers


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: b"\x00\xff not json",
        lambda data: json.dumps(data)[: len(json.dumps(data)) // 2].encode(),  # cut short
        lambda data: json.dumps([data]).encode(),
        lambda data: json.dumps({**data, "key": "0" * 64}).encode(),  # another tokenizer's
        lambda data: json.dumps({**data, "size": data["size"] + 1}).encode(),
        lambda data: json.dumps({**data, "label_triggers": [*data["label_triggers"], data["size"]]}).encode(),
        lambda data: json.dumps({**data, "label_triggers": ["1"]}).encode(),
        lambda data: json.dumps({**data, "triggers": None}).encode(),
    ],
    ids=["garbage", "truncated", "not-an-object", "other-key", "other-size", "id-out-of-range", "str-id", "null"],
)
def test_a_corrupt_cache_file_is_ignored_and_rebuilt(tokenizer, tmp_path, corrupt):
    good = scanned_tokens(tokenizer, cache_dir=tmp_path)
    entry = _entry(tmp_path)
    entry.write_bytes(corrupt(json.loads(entry.read_text())))
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == good
    assert json.loads(entry.read_text())["label_triggers"] == sorted(good.label_triggers)  # rewritten


def _plain_id(tokenizer, scan: TokenScan) -> int:
    """An id that is neither kind of trigger."""
    return next(i for i in range(len(tokenizer)) if i not in scan.label_triggers and i not in scan.triggers)


@pytest.mark.parametrize("field", ["label_triggers", "triggers"])
def test_a_well_formed_file_with_wrong_ids_is_not_trusted(tokenizer, tmp_path, field):
    good = scanned_tokens(tokenizer, cache_dir=tmp_path)
    entry = _entry(tmp_path)
    data = json.loads(entry.read_text())
    data[field] = sorted({*data[field], _plain_id(tokenizer, good)})  # same key, one id too many
    entry.write_text(json.dumps(data))
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == good


def test_a_missing_id_is_caught_by_the_spot_check(tokenizer, tmp_path, monkeypatch):
    good = scanned_tokens(tokenizer, cache_dir=tmp_path)
    entry = _entry(tmp_path)
    data = json.loads(entry.read_text())
    data["label_triggers"] = data["label_triggers"][1:]  # one id left out
    entry.write_text(json.dumps(data))
    monkeypatch.setattr(_token_scan, "_SPOT_SAMPLE", len(tokenizer))  # sample every other id
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == good


def test_another_tokenizer_gets_its_own_entry(tokenizer, tmp_path):
    scanned_tokens(tokenizer, cache_dir=tmp_path)
    tokenizer.add_tokens(["Verdict:"])
    grown = scanned_tokens(tokenizer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert tokenizer.convert_tokens_to_ids("Verdict:") in grown.label_triggers


def test_an_unwritable_cache_still_gives_the_scan(tokenizer, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert scanned_tokens(tokenizer, cache_dir=blocked) == scan_tokens(tokenizer)


def test_the_default_cache_follows_grvl_cache_dir(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GRVL_CACHE_DIR", str(tmp_path))
    scanned_tokens(tokenizer)
    assert _entry(tmp_path / "token-scans").is_file()


def _sampled(tokenizer, key: str) -> set[int]:
    """The ids the spot check samples for ``key``."""
    size = len(tokenizer)
    return set(_token_scan.random.Random(key).sample(range(size), min(size, _token_scan._SPOT_SAMPLE)))


def test_a_trigger_swapped_for_a_plain_id_is_not_trusted(tokenizer, tmp_path):
    # The stored triggers once passed a count check over stored + sampled ids: leaving out a sampled
    # trigger and adding a plain id kept the count, so the file was trusted.
    good = scanned_tokens(tokenizer, cache_dir=tmp_path)
    entry = _entry(tmp_path)
    data = json.loads(entry.read_text())
    dropped = min(good.triggers & _sampled(tokenizer, data["key"]))
    data["triggers"] = sorted((good.triggers - {dropped}) | {_plain_id(tokenizer, good)})
    entry.write_text(json.dumps(data))
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == good


def test_a_decoder_changed_in_memory_gets_its_own_entry(tokenizer, tmp_path):
    from tokenizers import decoders

    scanned_tokens(tokenizer, cache_dir=tmp_path)
    tokenizer.backend_tokenizer.decoder = decoders.Replace("e", ":")  # same tokenizer.json on disk
    changed = scanned_tokens(tokenizer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert changed == scan_tokens(tokenizer)
    assert tokenizer.convert_tokens_to_ids("e") in changed.label_triggers


def test_absurdly_nested_json_is_ignored(tokenizer, tmp_path):
    good = scanned_tokens(tokenizer, cache_dir=tmp_path)
    _entry(tmp_path).write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == good


def test_no_home_folder_still_gives_the_scan(tokenizer, monkeypatch):
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")  # what Path.home() raises then

    monkeypatch.delenv("GRVL_CACHE_DIR", raising=False)
    monkeypatch.setattr(_token_scan.Path, "home", staticmethod(no_home))
    assert scanned_tokens(tokenizer) == scan_tokens(tokenizer)


def test_processes_writing_the_same_entry_at_once_leave_a_sound_file(tokenizer, tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)  # all four miss the cache, scan and write the same entry together

    def load() -> None:
        start.wait(10)
        for _ in range(5):
            assert scanned_tokens(tokenizer, cache_dir=tmp_path) == expected

    expected = scan_tokens(tokenizer)
    workers = [context.Process(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == [_entry(tmp_path).name]  # no staging file left
    assert json.loads(_entry(tmp_path).read_text())["label_triggers"] == sorted(expected.label_triggers)


def test_the_clean_up_flag_gets_its_own_entry(tokenizer, tmp_path):
    # clean_up_tokenization_spaces changes the decoded texts ("a :" -> "a:"): the decode path, too.
    first = scanned_tokens(tokenizer, cache_dir=tmp_path)
    tokenizer.clean_up_tokenization_spaces = not tokenizer.clean_up_tokenization_spaces
    flipped = scanned_tokens(tokenizer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert flipped == scan_tokens(tokenizer)
    tokenizer.clean_up_tokenization_spaces = not tokenizer.clean_up_tokenization_spaces
    assert scanned_tokens(tokenizer, cache_dir=tmp_path) == first
