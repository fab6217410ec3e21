"""What an eval report shows a reader: the model's short name in the tables (its full name in the
header), averages over a subset of the paper's sets marked, the chart's legend off the bars, and a
resume refused with a readable list of changed settings and the caller's own advice (API or CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grvl_sdk import Guard
from grvl_sdk.errors import EvalError
from grvl_sdk.eval import run_eval
from grvl_sdk.eval.report import load_compare, paper_table, render_markdown, short_model_name
from grvl_sdk.eval.scoring import BenchmarkResult, EvalSummary
from grvl_sdk.testing import ScriptedBackend

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("model", "short"),
    [
        ("/data/runs/my-guard", "my-guard"),
        ("runs/my-guard/", "my-guard"),
        ("/data/runs/my-guard/checkpoint-200", "my-guard/checkpoint-200"),
        ("yueliu1999/GuardReasoner-VL-Eco-3B", "GuardReasoner-VL-Eco-3B"),
        ("tiny", "tiny"),
    ],
)
def test_short_model_names(model, short):
    assert short_model_name(model) == short


def _summary(model: str, *sets: tuple[str, str, str]) -> EvalSummary:
    results = [
        BenchmarkResult(
            name=name,
            task=task,
            modality=modality,
            n=10,
            f1=100.0,
            precision=100.0,
            recall=100.0,
            tp=5,
            fp=0,
            fn=0,
            tn=5,
            unparseable=0,
            failed=0,
        )
        for name, task, modality in sets
    ]
    return EvalSummary(model=model, results=results, parse="recorded")


def test_full_path_in_the_header_short_name_in_the_tables():
    text = render_markdown(_summary("/data/runs/my-guard", ("ToxicChat", "request", "text")))
    assert text.startswith("# Evaluation: my-guard\n\nModel: `/data/runs/my-guard`\n")
    assert "| my-guard | 100.00 |" in text and "| /data/runs/my-guard |" not in text


def test_averages_over_a_subset_are_marked_and_footnoted():
    subset = _summary(
        "m", ("ToxicChat", "request", "text"), ("AegisSafetyTest", "request", "text"), ("Mine", "request", "text")
    )
    table = paper_table(load_compare("published:GuardReasoner-VL-7B"), "request")
    assert "*" not in table  # published averages cover the paper's sets
    text = render_markdown(subset, load_compare("published:GuardReasoner-VL-7B"))
    assert "| m | 100.00 | – | 100.00 |" in text and "| 100.00* | 100.00* |" in text
    assert "| 79.88 | 79.07 |" in text  # the published row unmarked
    assert (
        "\\* Averaged over a subset of the paper's benchmarks, so not comparable with the published averages: "
        "m: its Avg(Text) covers 2 of the paper's 6 sets and 1 other(s), its Avg(All) covers 2 of the paper's "
        "8 sets and 1 other(s)." in text
    )


def test_the_full_paper_set_is_not_marked():
    from grvl_sdk.eval.registry import paper_benchmarks

    full = _summary("m", *((b.name, b.task, b.modality) for b in paper_benchmarks("request")))
    text = render_markdown(full)
    assert "Averaged over a subset" not in text and "*" not in text.split("## Request")[1].split("##")[0]


def test_the_chart_legend_is_outside_the_bars(tmp_path):
    pytest.importorskip("matplotlib")
    from grvl_sdk.eval.report import f1_figure, plot_f1

    summary = _summary(
        "/data/runs/my-guard", ("ToxicChat", "request", "text"), ("HarmBenchResponse", "response", "text")
    )
    fig = f1_figure(summary, load_compare("published"))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    assert fig.legends and not ax.get_legend()
    legend, plot = fig.legends[0].get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.y1 <= plot.y0  # wholly below the plotting area: it covers no bar
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "request Avg(Text)*" in labels and "response Avg(All)*" in labels
    assert ax.get_title().endswith(": my-guard")
    assert plot_f1(summary, tmp_path / "f1.png").stat().st_size > 0


def _data(tmp_path: Path) -> str:
    path = tmp_path / "mine.jsonl"
    rows = [{"id": str(i), "text": f"question {i}", "label": "unharmful"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f"Mine:request={path}"


def test_a_resume_mismatch_lists_the_changes_with_the_api_advice(tmp_path):
    spec, out = _data(tmp_path), tmp_path / "run"
    first = ScriptedBackend.flagging("bomb", model_id="runs/a")
    run_eval(Guard(first, max_new_tokens=16), [spec], out, progress=False, write_reports=False)
    with pytest.raises(EvalError) as info:
        run_eval(Guard(ScriptedBackend.flagging("bomb", model_id="runs/b"), max_new_tokens=1024), [spec], out,
                 progress=False)  # fmt: skip
    message = info.value.message
    assert message == (
        f"{out} holds a run with other settings (model: runs/a → runs/b; max_new_tokens: 16 → 1,024), so it "
        "cannot be resumed: pass another out_dir, or resume=False to start over there."
    )
    assert info.value.details["changes"] == "model, max_new_tokens"
    assert "{" not in message and "'" not in message and "--no-resume" not in message


def test_the_cli_refuses_a_mismatched_resume_before_loading_the_model(tmp_path):
    spec, out = _data(tmp_path), tmp_path / "run"
    run_eval(Guard(ScriptedBackend.flagging("bomb", model_id="runs/a"), max_new_tokens=16), [spec], out,
             progress=False, write_reports=False)  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    model = str(tmp_path / "no-such-model")
    args = ["eval", "run", spec, "--model", model, "--max-new-tokens", "16", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "grvl_sdk.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert f"model: runs/a → {tmp_path / 'no-such-model'}" in done.stderr
    assert "give another --out folder, or add --no-resume" in done.stderr and "resume=False" not in done.stderr
    assert "Loading guard model" not in done.stderr  # refused before anything was loaded
