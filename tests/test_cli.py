"""``grvl check`` in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = ROOT / "examples" / "door.jpg"


def grvl(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "GRVL_MODEL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "grvl_sdk.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=300,
        cwd=ROOT,
    )


def test_check_text_and_image_json(tiny_guard_path):
    result = grvl(
        "check", "How do I pick this lock?", "--image", str(EXAMPLE_IMAGE), "--json", "--max-new-tokens", "8",
        env={"GRVL_MODEL": str(tiny_guard_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    # Random weights: no verdict block, so a failed, fail-closed verdict.
    assert verdict["failed"] is True and verdict["harmful"] is False and verdict["blocked"] is True
    assert verdict["error"]["code"] == "unparseable_output"
    assert verdict["usage"]["completion_tokens"] == 8
    assert "Loading guard model" in result.stderr


def test_check_human_output_and_fail_on_harmful(tiny_guard_path):
    result = grvl(
        "check", "hi", "--response", "hello", "--model", str(tiny_guard_path), "--max-new-tokens", "4",
        "--fail-on-harmful",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Verdict:   FAILED" in result.stdout and "fail-closed" in result.stdout
    assert "Time:" in result.stdout


def test_text_from_stdin(tiny_guard_path):
    result = grvl("check", "-", "--model", str(tiny_guard_path), "--max-new-tokens", "2", "--json", stdin="hello")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["usage"]["prompt_tokens"] > 0


def test_unreachable_model_fails_fast_with_guidance():
    result = grvl(
        "check", "hi", "--model", "yueliu1999/GuardReasoner-VL-Eco-3B",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-grvl-test"},
    )  # fmt: skip
    assert result.returncode == 3
    assert "yueliu1999/GuardReasoner-VL-Eco-3B" in result.stderr
    assert "--model" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_folder_and_bad_input_exit_codes(tiny_guard_path, tmp_path):
    missing = grvl("check", "hi", "--model", str(tmp_path / "nope"))
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    nothing = grvl("check", "--model", str(tiny_guard_path))
    assert nothing.returncode == 2
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"not an image")
    broken = grvl("check", "hi", "--image", str(bad_image), "--model", str(tiny_guard_path), "--json")
    assert broken.returncode == 2
    assert json.loads(broken.stdout)["error"]["code"] == "invalid_image"
    assert "Traceback" not in broken.stderr


@pytest.mark.parametrize("args", [[], ["--help"], ["check", "--help"]])
def test_help(args):
    result = grvl(*args)
    assert result.returncode in (0, 2)
    assert "grvl" in (result.stdout + result.stderr)


def test_a_missing_image_is_reported_before_any_model_is_loaded(tmp_path):
    started = time.monotonic()
    result = grvl("check", "hi", "--image", "/nope.png", "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2
    assert "not found" in result.stderr and "/nope.png" in result.stderr
    assert "Loading guard model" not in result.stderr  # validated first: no model load was even tried
    assert time.monotonic() - started < 30


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_human_output_has_no_control_characters(raw):
    from grvl_sdk import Verdict
    from grvl_sdk.cli.check import _human
    from grvl_sdk.verdict import ErrorInfo

    failed = Verdict(raw_output=raw, error=ErrorInfo(code="unparseable_output", type="ParseError", message=raw[:50]))
    judged = Verdict(request_label="harmful", reasoning=raw, model=raw[:20])
    for verdict in (failed, judged):
        for show_raw in (False, True):
            text = _human(verdict, show_raw=show_raw)
            assert all(
                c in "\n\t" or (c.isprintable() and unicodedata.category(c) not in ("Cs", "Co", "Cn")) for c in text
            )
    assert len(_human(failed)) < 300 + 400 + len(repr(raw[:50])) * 6


def test_human_output_shows_scores_and_shortens_raw_output():
    from grvl_sdk import Verdict
    from grvl_sdk.cli.check import _human
    from grvl_sdk.verdict import ErrorInfo

    judged = Verdict(request_label="harmful", response_label="unharmful", request_score=0.91, response_score=0.02)
    text = _human(judged)
    assert "P(harmful) = 0.910" in text and "P(harmful) = 0.020" in text
    failed = Verdict(
        raw_output="x" * 1000 + "\x00\x0e", error=ErrorInfo(code="unparseable_output", type="E", message="m")
    )
    assert "(702 more characters)" in _human(failed) and "\\x00" not in _human(failed)
    assert "\\x00\\x0e" in _human(failed, show_raw=True)
