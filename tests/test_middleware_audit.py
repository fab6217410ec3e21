"""Observability: structured log records, ``on_verdict`` hooks, the JSONL audit log (hashes by
default, raw content on opt-in) and its durability when the process is killed mid-run."""

from __future__ import annotations

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

from grvl_sdk import AuditLog, BackendError, Guard
from grvl_sdk.testing import ScriptedBackend


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
    guard = Guard(ScriptedBackend([BackendError("down"), "<result>Request: harmful</result>", "Request: unharmful"]))
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
    from grvl_sdk.testing import ScriptedBackend

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
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        while path.stat().st_size < 200_000 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    data = path.read_bytes()
    assert data.endswith(b"\n"), "a killed writer must not leave half a line"
    lines = data.decode().splitlines()
    assert len(lines) > 100
    records = [json.loads(line) for line in lines]
    assert records[0] == {"earlier": "line"}
    assert {r["decision"] for r in records[1:]} == {"allow", "block"}
