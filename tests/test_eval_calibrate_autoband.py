"""`grvl eval run --mode auto --auto-band LOW HIGH`: validated, recorded in run.json, part of the resume check;
and the report's settings line for fast and auto runs."""

from __future__ import annotations

import json

import pytest

from grvl_sdk import Guard, GuardOptions
from grvl_sdk.errors import EvalError
from grvl_sdk.eval import run_eval
from grvl_sdk.eval.report import settings_line
from tests.test_eval_runner import H_OUT, ScriptedBackend, write_jsonl


@pytest.fixture
def data_file(tmp_path):
    return write_jsonl(tmp_path / "set.jsonl", [{"id": "0", "text": "q0", "label": "harmful"}])


class Tiered:
    """A scripted think guard that says it runs in ``options.mode`` with ``options.auto_band``."""

    def __init__(self, guard: Guard, **options: object) -> None:
        self.guard, self.options = guard, GuardOptions(**options)  # type: ignore[arg-type]
        self.model_id, self.max_new_tokens = guard.model_id, guard.max_new_tokens

    def check_batch(self, inputs, **kwargs):
        return self.guard.check_batch(inputs, **kwargs)


def test_run_eval_records_the_band_and_refuses_to_resume_with_another(tmp_path, data_file):
    guard = Guard(ScriptedBackend({"q0": H_OUT}), cache_size=0)  # type: ignore[arg-type]
    out = tmp_path / "auto"
    spec = [f"Mine:request={data_file}"]
    summary = run_eval(Tiered(guard, mode="auto", auto_band=(0.3, 0.7)), spec, out, progress=False)
    assert json.loads((out / "run.json").read_text())["auto_band"] == [0.3, 0.7]
    assert summary.meta["auto_band"] == [0.3, 0.7]
    assert "band [0.3, 0.7]" in (out / "results.md").read_text()
    with pytest.raises(EvalError, match=r"auto_band: \[0.3, 0.7\] → \[0.2, 0.8\]"):
        run_eval(Tiered(guard, mode="auto", auto_band=(0.2, 0.8)), spec, out, progress=False)
    run_eval(Tiered(guard, mode="auto", auto_band=(0.3, 0.7)), spec, out, progress=False)  # same band resumes
    think = tmp_path / "think"
    run_eval(guard, spec, think, progress=False)
    assert "auto_band" not in json.loads((think / "run.json").read_text())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "auto", "--auto-band", "0.8", "0.2"], "0 <= LOW <= HIGH <= 1, got 0.8 0.2"),
        (["--mode", "auto", "--auto-band", "-0.1", "0.5"], "0 <= LOW <= HIGH <= 1"),
        (["--mode", "auto", "--auto-band", "0.2", "1.5"], "0 <= LOW <= HIGH <= 1"),
        (["--mode", "auto", "--auto-band", "nan", "0.5"], "0 <= LOW <= HIGH <= 1"),
        (["--auto-band", "0.2", "0.8"], "--mode auto only (got --mode think)"),
        (["--mode", "fast", "--auto-band", "0.2", "0.8"], "--mode auto only (got --mode fast)"),
    ],
)
def test_cli_auto_band_is_validated_before_loading(tmp_path, data_file, capsys, flags, message):
    from grvl_sdk.cli import main

    args = ["eval", "run", f"Mine:request={data_file}", "--model", str(tmp_path / "no-model"), "--out",
            str(tmp_path / "o"), *flags]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Loading" not in err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_to_resume_an_auto_folder_with_another_band(tmp_path, data_file, capsys):
    """The band recorded in run.json (the flag's, or the guard's default 0.2-0.8) is checked before loading."""
    from grvl_sdk.cli import main

    out = tmp_path / "auto"
    out.mkdir()
    model = str(tmp_path / "no-model")
    (out / "run.json").write_text(json.dumps({"model": model, "mode": "auto", "auto_band": [0.3, 0.7]}))
    base = ["eval", "run", f"Mine:request={data_file}", "--model", model, "--out", str(out), "--mode", "auto"]
    assert main([*base, "--auto-band", "0.25", "0.75"]) == 2
    err = capsys.readouterr().err
    assert "auto_band: [0.3, 0.7] → [0.25, 0.75]" in err and "--no-resume" in err and "Loading" not in err
    assert main(base) == 2  # no flag: the default band, not the recorded one
    assert "auto_band: [0.3, 0.7] → [0.2, 0.8]" in capsys.readouterr().err


def test_cli_passes_the_band_to_the_guard(tmp_path, data_file, monkeypatch):
    from grvl_sdk.cli import main

    seen = {}

    def from_pretrained(model, **kwargs):
        seen.update(kwargs)
        raise EvalError("stop here")

    monkeypatch.setattr(Guard, "from_pretrained", staticmethod(from_pretrained))
    args = ["eval", "run", f"Mine:request={data_file}", "--model", "m", "--out", str(tmp_path / "o"),
            "--mode", "auto", "--auto-band", "0.3", "0.7"]  # fmt: skip
    assert main(args) == 2
    assert seen["mode"] == "auto" and seen["auto_band"] == (0.3, 0.7)


def test_settings_line_never_calls_a_fast_or_auto_run_the_authors_settings():
    authors = {"max_new_tokens": 4096, "min_pixels": 3136, "max_pixels": 12845056}
    assert settings_line(authors).endswith("; the authors' evaluation settings.")
    fast = settings_line({**authors, "mode": "fast"})
    assert "authors' evaluation settings" not in fast
    assert fast.endswith("; fast tier: not the authors' protocol (they always reasoned before the verdict).")
    auto = settings_line({**authors, "mode": "auto", "auto_band": [0.3, 0.7]})
    assert "band [0.3, 0.7]" in auto and auto.endswith("auto tier: not the authors' protocol (they always reasoned "
                                                       "before the verdict).")  # fmt: skip
    shorter = settings_line({**authors, "mode": "fast", "max_new_tokens": 64})
    assert shorter.endswith("not the authors' protocol (they always reasoned before the verdict); also differs in "
                            "max_new_tokens 64 (authors: 4,096).")  # fmt: skip
