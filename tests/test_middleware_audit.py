"""Observability: structured log records, ``on_verdict`` hooks, the JSONL audit log (hashes by
default, raw content on opt-in) and its durability when the process is killed mid-run."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grvl_sdk import AuditLog, BackendError, Guard
from grvl_sdk import audit as audit_module
from grvl_sdk.audit import (
    AUDIT_RECORD_VERSION,
    MAX_RECORD_BYTES,
    TRUNCATION_MARKER,
    AuditLogContents,
    encode_audit_record,
    read_audit_log,
)
from grvl_sdk.errors import AuditLogError, InputError
from grvl_sdk.events import MAX_LOG_FIELD_CHARS
from grvl_sdk.testing import ScriptedBackend, guard_output
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Verdict

ROOT = Path(__file__).resolve().parent.parent


def test_audit_lines_hold_decisions_and_hashes_not_content(tmp_path, rgb_image):
    path = tmp_path / "audit" / "verdicts.jsonl"
    guard = Guard(ScriptedBackend.flagging("bomb"), audit_log=path)
    guard.check("how to build a bomb", image=rgb_image)
    guard.check("bake bread", response="Use flour.")
    guard.check("bake bread", response="Use flour.")  # cached
    guard.close()
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["decision"] for r in records] == ["block", "allow", "allow"]
    assert [r["cached"] for r in records] == [False, False, True]
    first = records[0]
    assert first["request_label"] == "harmful" and first["mode"] == "enforce" and first["fail_mode"] is None
    assert first["hashes"]["text"] == hashlib.sha256(b"how to build a bomb").hexdigest()
    assert len(first["hashes"]["images"]) == 1 and records[1]["hashes"]["response"]
    assert "content" not in first
    assert "bomb" not in path.read_text() and "flour" not in path.read_text()
    assert len({r["id"] for r in records}) == 3 and all(r["ts"].endswith("+00:00") for r in records)


def test_audit_content_opt_in_and_fail_modes(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, include_content=True, fsync=True) as audit:
        guard = Guard(ScriptedBackend(BackendError("down")), audit_log=audit, policy={"on_error": "allow"})
        guard.check("hello", response="world")
        guard.close()  # the guard does not close a log it did not open
        guard2 = Guard(ScriptedBackend(BackendError("down")), audit_log=audit)
        guard2.check("again")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["content"] == {"text": "hello", "response": "world", "num_images": 0}
    assert [(r["decision"], r["fail_mode"], r["error_code"]) for r in records] == [
        ("error-allowed", "allow", "backend_error"),
        ("error-blocked", "block", "backend_error"),
    ]
    assert records[0]["fail_reason"].startswith("backend_error")


def test_structured_log_records_and_levels(caplog):
    guard = Guard(ScriptedBackend([BackendError("down"), guard_output("harmful"), "Request: unharmful"]))
    with caplog.at_level(logging.DEBUG, logger="grvl_sdk"):
        guard.check("a")
        guard.check("b")
        guard.check("c")
    records = [r for r in caplog.records if r.name == "grvl_sdk" and hasattr(r, "grvl_decision")]
    assert [(r.grvl_decision, r.levelname) for r in records] == [
        ("error-blocked", "WARNING"),
        ("block", "INFO"),
        ("allow", "DEBUG"),
    ]
    assert records[0].grvl_fail_mode == "block" and records[0].grvl_error_code == "backend_error"
    assert "decision=error-blocked" in records[0].getMessage()


def test_hooks_get_every_verdict_and_a_failing_hook_is_isolated(caplog):
    seen = []

    def broken(verdict):
        raise RuntimeError("metrics down")

    guard = Guard(ScriptedBackend.flagging("bomb"), on_verdict=[seen.append, broken])
    with caplog.at_level(logging.ERROR, logger="grvl_sdk"):
        verdicts = [guard.check("bomb"), guard.check("bread")]
    assert seen == verdicts
    assert any("on_verdict hook" in r.getMessage() for r in caplog.records)
    single = []
    Guard(ScriptedBackend.flagging("x"), on_verdict=single.append).check("y")
    assert len(single) == 1


WRITER = textwrap.dedent(
    """
    import sys
    from grvl_sdk import Guard
    from grvl_sdk.testing import ScriptedBackend, guard_output

    guard = Guard(ScriptedBackend.flagging("bomb"), audit_log=sys.argv[1], cache_size=0)
    i = 0
    while True:
        guard.check(("bomb " if i % 2 else "bread ") + "x" * (i % 300), response="r" * (i % 50))
        i += 1
    """
)


def test_audit_log_lines_intact_after_sigkill(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": "line"}\n')  # append-only: existing lines are kept
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        while path.stat().st_size < 200_000 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    contents = read_audit_log(path)
    # A kill may cut the record being written (Linux stops a write at a page boundary), only the last one.
    assert set(contents.torn) <= {_line_count(path)}
    records = contents.records
    assert len(records) > 100
    assert records[0] == {"earlier": "line"}
    assert {r["decision"] for r in records[1:]} == {"allow", "block"}
    assert all(r["version"] == AUDIT_RECORD_VERSION for r in records[1:])


# -- helpers ---------------------------------------------------------------------------------------
def _line_count(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def _verdict(**fields) -> Verdict:
    return Verdict.from_labels("unharmful", None, **fields)


def _half_then_enospc(real_write):
    """An ``os.write`` that writes half the bytes, then fails like a full disk."""

    def write(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


# -- bug 1: a failed or short write leaves a torn line; the next record starts on a new line ------------
def test_disk_full_half_record_is_reported_and_next_record_starts_on_new_line(tmp_path, monkeypatch, caplog):
    path = tmp_path / "audit.jsonl"
    real_write = os.write
    calls = []
    monkeypatch.setattr(audit_module.os, "write", lambda fd, data: calls.append(len(data)) or real_write(fd, data))
    with AuditLog(path) as audit:
        first, torn, last = _verdict(call_id="1"), _verdict(call_id="2"), _verdict(call_id="3")
        assert audit.write(first) is True
        monkeypatch.setattr(audit_module.os, "write", _half_then_enospc(real_write))
        with caplog.at_level(logging.CRITICAL, logger="grvl_sdk"):
            assert audit.write(torn) is False
        monkeypatch.setattr(audit_module.os, "write", lambda fd, data: calls.append(len(data)) or real_write(fd, data))
        assert audit.write(last) is True
        assert audit.failed_writes == 1
    assert len(calls) == 2, "one os.write per record"
    data = path.read_bytes()
    assert data.count(b"\n") == 3 and data.endswith(b"\n")
    contents = read_audit_log(path)
    assert contents == AuditLogContents(records=contents.records, torn=[2])
    assert [r["id"] for r in contents.records] == [first.id, last.id]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and torn.id in critical[0].getMessage() and "No space left" in critical[0].getMessage()


def test_short_write_counts_as_failed_and_raises_in_raise_mode(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    real_write = os.write
    monkeypatch.setattr(audit_module.os, "write", lambda fd, data: real_write(fd, bytes(data[:10])))
    audit = AuditLog(path, on_error="raise")
    verdict = _verdict()
    with pytest.raises(AuditLogError) as raised:
        audit.write(verdict)
    assert raised.value.code == "audit_log_error"
    assert raised.value.details["path"] == str(path) and raised.value.details["verdict_id"] == verdict.id
    assert raised.value.details["written"] == 10 and raised.value.details["expected"] > 10
    assert audit.failed_writes == 1
    monkeypatch.setattr(audit_module.os, "write", real_write)
    assert audit.write(_verdict()) is True
    audit.close()
    assert path.read_bytes()[10:11] == b"\n"
    assert read_audit_log(path).torn == [1] and len(read_audit_log(path).records) == 1


def test_real_enospc_from_dev_full(caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with AuditLog("/dev/full", on_error="raise") as audit, pytest.raises(AuditLogError) as raised:
        audit.write(_verdict())
    assert raised.value.details["errno"] == errno.ENOSPC and audit.failed_writes == 1
    with AuditLog("/dev/full") as audit, caplog.at_level(logging.CRITICAL, logger="grvl_sdk"):
        verdict = _verdict()
        assert audit.write(verdict) is False
    assert audit.failed_writes == 1
    assert [r.levelname for r in caplog.records if verdict.id in r.getMessage()] == ["CRITICAL"]


def test_opening_a_file_with_a_torn_tail_starts_on_a_new_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"version":1,"id":"whole"}\n{"version":1,"id":"cut by a ki')
    with AuditLog(path) as audit:
        verdict = _verdict()
        audit.write(verdict)
        audit.write(_verdict())
    contents = read_audit_log(path)
    assert contents.torn == [2]
    assert [r["id"] for r in contents.records][:2] == ["whole", verdict.id] and len(contents.records) == 3
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b'{"id":"whole"}\n')
    with AuditLog(clean) as audit:
        audit.write(_verdict())
    assert b"\n\n" not in clean.read_bytes(), "no spare newline after an intact last line"


# -- bug 2: every record is bounded; long fields are cut with a marker, their sha256 and length -------
def test_large_content_gives_one_bounded_line_with_marker_hash_and_length(tmp_path):
    path = tmp_path / "audit.jsonl"
    text = "a\u2028b" + "x" * (5 * 1024 * 1024)
    with AuditLog(path, include_content=True) as audit:
        audit.write(_verdict(), GuardInput(text=text, response="short"))
    data = path.read_bytes()
    assert data.count(b"\n") == 1 and len(data) <= MAX_RECORD_BYTES
    record = json.loads(data)
    cut = record["content"]["text"]
    full_sha = hashlib.sha256(text.encode()).hexdigest()
    assert cut.startswith("a\u2028bxxx") and TRUNCATION_MARKER in cut
    assert cut.endswith(f"{TRUNCATION_MARKER}{len(text)} chars, sha256={full_sha}]")
    assert record["hashes"]["text"] == full_sha
    assert record["content"]["response"] == "short" and record["truncated"] == ["content.text"]
    assert len(data) > MAX_RECORD_BYTES - 200, "the head keeps as much text as fits"


def test_every_long_field_is_bounded_at_the_smallest_cap(tmp_path):
    long = 'é"\\\n' * 50_000  # escapes make the JSON form longer than the text
    verdict = _verdict(call_id=long, model=long + "m", fail_reason=long + "r", id="v" * 70_000)
    item = GuardInput(text=long, response=long + "s")
    record = audit_module.audit_record(verdict, item, include_content=True)
    record["hashes"]["images"] = ["f" * 64] * 5_000
    for max_bytes in (4096, 10_000, MAX_RECORD_BYTES):
        data = encode_audit_record(record, max_bytes=max_bytes)
        assert len(data) <= max_bytes and data.endswith(b"\n") and data.count(b"\n") == 1
        decoded = json.loads(data)
        assert next(iter(decoded)) == "version"
        assert set(decoded["truncated"]) >= {"call_id", "model", "fail_reason", "id", "content.text", "hashes.images"}
        assert decoded["fail_reason"].endswith(
            f"{len(long) + 1} chars, sha256={hashlib.sha256((long + 'r').encode()).hexdigest()}]"
        )
    assert record["call_id"] == long and len(record["hashes"]["images"]) == 5_000, "the input is not changed"
    with pytest.raises(InputError):
        encode_audit_record(record, max_bytes=100)


def test_lone_surrogates_stay_valid_json_and_round_trip(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, include_content=True) as audit:
        audit.write(_verdict(), GuardInput(text="bad \udc80 surrogate"))
    assert read_audit_log(path).records[0]["content"]["text"] == "bad \udc80 surrogate"


WRITER_BIG = textwrap.dedent(
    """
    import sys
    from grvl_sdk.audit import AuditLog
    from grvl_sdk.types import GuardInput
    from grvl_sdk.verdict import Verdict

    log = AuditLog(sys.argv[1], include_content=True)
    text = "x" * 200_000  # cut to the 16 KiB bound
    print("ready", flush=True)
    i = 0
    while True:
        log.write(Verdict.from_labels("unharmful", None, call_id=str(i)), GuardInput(text=text + str(i)))
        i += 1
    """
)


def test_large_records_survive_repeated_sigkill(tmp_path):
    path = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    torn_tails: set[int] = set()
    for kill in range(10):
        size = path.stat().st_size if path.exists() else 0
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER_BIG, str(path)], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
            deadline = time.monotonic() + 10
            target = size + 32_768 * (1 + kill % 4)
            while path.stat().st_size < target and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.001)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL
        contents = read_audit_log(path)
        last = _line_count(path)
        assert set(contents.torn) - torn_tails <= {last}, "only the last line may be torn by this kill"
        torn_tails |= set(contents.torn)
        assert all(len(line) <= MAX_RECORD_BYTES for line in path.read_bytes().split(b"\n"))
    with path.open("ab") as file:
        file.write(b'{"version":1,"id":"torn by hand')  # a torn tail for sure
    with AuditLog(path) as audit:
        verdict = _verdict()
        audit.write(verdict)
    contents = read_audit_log(path)
    assert contents.records[-1]["id"] == verdict.id
    assert contents.torn[-1] == _line_count(path) - 1, "the hand-torn line stays a line of its own"
    assert len(contents.records) > 20 and all(r["version"] == AUDIT_RECORD_VERSION for r in contents.records)


# -- bug 3: the reader ------------------------------------------------------------------------------
def test_reader_splits_on_newline_only_keeps_old_records_and_reads_a_last_line_without_newline(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(
        b'{"id":"old, no version"}\n'
        b"\n"
        + json.dumps({"version": 1, "id": "sep", "t": "a\u2028b\u0085c\x0cd"}, ensure_ascii=False).encode()
        + b"\n[1, 2]\n"
        b"\xff\xfe not utf-8\n"
        b'{"version":1,"id":"no newline"}'
    )
    contents = read_audit_log(path)
    assert [r["id"] for r in contents.records] == ["old, no version", "sep", "no newline"]
    assert contents.records[1]["t"] == "a\u2028b\u0085c\x0cd"
    assert contents.torn == [4, 5]
    with pytest.raises(AuditLogError) as raised:
        read_audit_log(tmp_path / "missing.jsonl")
    assert raised.value.details["path"] == str(tmp_path / "missing.jsonl")


# -- bug 4: errors of the log itself surface, typed ------------------------------------------------
def test_unopenable_paths_raise_audit_log_error(tmp_path):
    for bad in (tmp_path, tmp_path / "file" / "audit.jsonl", str(tmp_path / "nul\0.jsonl")):
        if isinstance(bad, Path) and bad.parent.name == "file":
            (tmp_path / "file").write_text("a file, not a folder")
        with pytest.raises(AuditLogError) as raised:
            AuditLog(bad)
        assert raised.value.details["path"] == str(Path(bad))
    with pytest.raises(AuditLogError) as raised:
        Guard(ScriptedBackend.flagging("x"), audit_log=tmp_path)
    assert raised.value.code == "audit_log_error" and raised.value.details["path"] == str(tmp_path)
    with pytest.raises(InputError):
        AuditLog(123)  # type: ignore[arg-type]


def test_read_only_folder_raises_audit_log_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(AuditLogError):
            AuditLog(folder / "audit.jsonl")
    finally:
        folder.chmod(0o700)


def test_on_error_raise_reaches_the_caller_of_check_and_log_mode_does_not(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(audit_module.os, "write", _half_then_enospc(os.write))
    seen = []
    with AuditLog(tmp_path / "raise.jsonl", on_error="raise") as audit:
        guard = Guard(ScriptedBackend.flagging("bomb"), audit_log=audit, on_verdict=seen.append)
        with pytest.raises(AuditLogError) as raised:
            guard.check("bomb")
        assert raised.value.details["errno"] == errno.ENOSPC and isinstance(raised.value.__cause__, OSError)
        assert len(seen) == 1 and raised.value.details["verdict_id"] == seen[0].id, "hooks still ran"
    with AuditLog(tmp_path / "log.jsonl") as audit, caplog.at_level(logging.CRITICAL, logger="grvl_sdk"):
        guard = Guard(ScriptedBackend.flagging("bomb"), audit_log=audit)
        verdict = guard.check("bomb")
        assert verdict.decision == "block" and audit.failed_writes == 1
    assert any(r.levelno == logging.CRITICAL and verdict.id in r.getMessage() for r in caplog.records)


def test_bad_options_raise_input_error_and_closed_log_raises_audit_log_error(tmp_path, caplog):
    with pytest.raises(InputError):
        AuditLog(tmp_path / "a.jsonl", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        AuditLog(tmp_path / "a.jsonl", max_record_bytes=100)
    audit = AuditLog(tmp_path / "a.jsonl")
    audit.close()
    with pytest.raises(AuditLogError, match="closed"):
        audit.write(_verdict())
    assert audit.failed_writes == 1 and audit.closed
    guard = Guard(ScriptedBackend.flagging("x"), audit_log=audit)
    with caplog.at_level(logging.CRITICAL, logger="grvl_sdk"):
        verdict = guard.check("y")  # "log" mode: a closed log is reported, the check goes on
    assert any(r.levelno == logging.CRITICAL and verdict.id in r.getMessage() for r in caplog.records)
    raising = AuditLog(tmp_path / "b.jsonl", on_error="raise")
    raising.close()
    with pytest.raises(AuditLogError, match="closed"):
        Guard(ScriptedBackend.flagging("x"), audit_log=raising).check("y")


# -- bug 5: a version field ------------------------------------------------------------------------
def test_every_record_starts_with_the_version(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.write(_verdict())
    assert path.read_bytes().startswith(b'{"version":1,')
    assert AUDIT_RECORD_VERSION == 1 and next(iter(read_audit_log(path).records[0])) == "version"


# -- the same kinds elsewhere: unbounded values in log records ---------------------------------------
def test_log_records_and_audit_records_bound_a_huge_fail_reason(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    # With include_content the message is written (bounded); without it only the error code (next test).
    audit = AuditLog(path, include_content=True)
    guard = Guard(ScriptedBackend(BackendError("server said: " + "z" * 1_000_000)), audit_log=audit)
    with caplog.at_level(logging.WARNING, logger="grvl_sdk"):
        verdict = guard.check("hello")
    guard.close()
    audit.close()
    (record,) = [r for r in caplog.records if hasattr(r, "grvl_fail_reason")]
    assert len(record.grvl_fail_reason) < MAX_LOG_FIELD_CHARS + 50 and "truncated" in record.grvl_fail_reason
    assert len(record.getMessage()) < MAX_LOG_FIELD_CHARS + 300
    (line,) = read_audit_log(path).records
    assert line["truncated"] == ["fail_reason"] and line["id"] == verdict.id
    assert f"{len(verdict.fail_reason)} chars" in line["fail_reason"]


def test_error_messages_that_may_quote_content_stay_out_of_the_audit_log(tmp_path):
    """A server echoing the prompt in its error (a 400) or a backend exception quoting the input: without
    include_content the audit line keeps only the error code and type."""
    path = tmp_path / "audit.jsonl"
    guard = Guard(ScriptedBackend(BackendError("400: bad prompt 'MY-SECRET-SSN-123'")), audit_log=path)
    guard.check("MY-SECRET-SSN-123")
    guard.close()
    assert "MY-SECRET" not in path.read_text()
    (line,) = read_audit_log(path).records
    assert (line["fail_reason"], line["error_code"], line["error_type"]) == (
        "backend_error",
        "backend_error",
        "BackendError",
    )


def test_the_documented_logging_recipe_does_not_break_other_loggers():
    """docs/middleware.md's formatter: verdict records show their fields, other records format too."""
    formatter = logging.Formatter(
        "%(levelname)s %(grvl_decision)s %(grvl_stage)s %(message)s", defaults={"grvl_decision": "-", "grvl_stage": "-"}
    )
    other = logging.LogRecord("my_app", logging.WARNING, __file__, 1, "plain", None, None)
    assert formatter.format(other) == "WARNING - - plain"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("grvl_sdk")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        Guard(ScriptedBackend.flagging("bomb")).check("a bomb")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert formatter.format(records[-1]).startswith("INFO block None guard verdict")
