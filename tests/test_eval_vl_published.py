"""The published numbers shipped with the package (``grvl_sdk/data/published.json``, spec 5 and 6.1):
the VL models' 14 per-benchmark F1, the baselines, and GuardReasoner-8B's two sources kept apart."""

from __future__ import annotations

import pytest

from grvl_sdk.cli import main
from grvl_sdk.eval import get_benchmark, load_compare, load_published, paper_benchmarks, weighted_average

# Spec 6.1, in its column order.
COLUMNS = [
    "ToxicChat", "HarmBenchPrompt", "OpenAIModeration", "AegisSafetyTest", "SimpleSafetyTests", "WildGuardTestPrompt",
    "HarmImageTest", "SPA-VL-EvalPrompt", "HarmBenchResponse", "SafeRLHF", "BeaverTails", "XSTestResponseHarmful",
    "WildGuardTestResponse", "SPA-VL-EvalResponse",
]  # fmt: skip
SPEC_F1 = {
    "GuardReasoner-VL-7B": [76.51, 98.30, 70.98, 90.13, 98.99, 88.35, 70.84, 85.60, 87.22, 66.37, 84.76, 92.72, 79.04,
                            73.22],
    "GuardReasoner-VL-Eco-7B": [76.26, 98.73, 70.82, 90.34, 99.50, 88.54, 64.84, 85.26, 86.22, 66.15, 85.51, 93.33,
                                78.60, 70.81],
    "GuardReasoner-VL-3B": [74.45, 89.10, 70.83, 88.79, 99.50, 88.92, 70.93, 86.47, 85.76, 66.37, 85.16, 93.08, 76.07,
                            71.19],
    "GuardReasoner-VL-Eco-3B": [73.47, 88.58, 70.87, 89.04, 99.50, 89.16, 66.79, 85.82, 84.72, 66.96, 85.39, 93.59,
                                77.39, 72.01],
}  # fmt: skip
# Spec 5 and 6.1: (request Avg(Text), Avg(All), response Avg(Text), Avg(All))
SPEC_AVERAGES = {
    "GuardReasoner-VL-Eco-3B": (78.43, 77.39, 79.31, 77.14),
    "GuardReasoner-VL-3B": (78.77, 78.73, 78.83, 76.56),
    "GuardReasoner-VL-Eco-7B": (79.82, 77.49, 79.51, 76.94),
    "GuardReasoner-VL-7B": (79.88, 79.07, 79.42, 77.58),
    "LLaMA Guard 3 Vision 11B": (67.24, 48.03, 59.28, 54.01),
    "Qwen2.5-VL-7B-Instruct (prompted)": (58.04, 56.53, 62.25, 61.58),
    "Qwen2.5-VL-3B-Instruct (prompted)": (51.47, 53.53, 58.05, 56.51),
    "OpenAI Moderation API": (35.28, 44.20, 16.68, 25.69),
    "Azure Content Safety API": (54.30, 44.95, 44.47, 42.96),
}
TEXT_8B = {
    "GuardReasoner-8B (text paper's released outputs)": [92.10, 90.18, 99.50, 85.62, 93.75],
    "GuardReasoner-8B (VL paper's table)": [93.30, 90.27, 100.00, 85.47, 94.34],
}
TEXT_8B_SETS = ["HarmBenchPrompt", "AegisSafetyTest", "SimpleSafetyTests", "HarmBenchResponse", "XSTestResponseHarmful"]


@pytest.fixture(scope="module")
def rows():
    return {row.label: row for row in load_published()}


def test_vl_models_per_benchmark_f1(rows):
    assert [b.name for b in paper_benchmarks()] == [COLUMNS[i] for i in (0, 2, 3, 4, 1, 5, 6, 7, 8, 9, 10, 11, 12, 13)]
    for name, values in SPEC_F1.items():
        assert rows[name].f1 == dict(zip(COLUMNS, values, strict=True)), name


@pytest.mark.parametrize("name", list(SPEC_F1))
def test_per_benchmark_f1_give_the_published_averages(rows, name):
    # A column put under the wrong benchmark moves these weighted means by far more than the rounding
    # of the published numbers (at most 0.05 here).
    row = rows[name]
    for task, index in (("request", 0), ("response", 2)):
        sets = paper_benchmarks(task)
        text = weighted_average((row.f1[b.name], b.size) for b in sets if b.modality == "text")
        every = weighted_average((row.f1[b.name], b.size) for b in sets)
        assert text == pytest.approx(SPEC_AVERAGES[name][index], abs=0.06), (name, task)
        assert every == pytest.approx(SPEC_AVERAGES[name][index + 1], abs=0.06), (name, task)


def test_averages_and_baselines(rows):
    assert set(rows) == set(SPEC_AVERAGES) | set(TEXT_8B)
    for name, (rt, ra, st, sa) in SPEC_AVERAGES.items():
        assert rows[name].averages == {
            "request": {"Avg(Text)": rt, "Avg(All)": ra},
            "response": {"Avg(Text)": st, "Avg(All)": sa},
        }, name
        assert rows[name].source.startswith("GuardReasoner-VL paper (arXiv 2505.11049)")


def test_the_two_sources_of_guardreasoner_8b_are_labelled(rows, capsys):
    released, vl_table = (rows[name] for name in TEXT_8B)
    for row, values in zip((released, vl_table), TEXT_8B.values(), strict=True):
        assert row.f1 == dict(zip(TEXT_8B_SETS, values, strict=True))
        assert row.averages == {}
        assert all(get_benchmark(name).modality == "text" for name in row.f1)
    assert "released outputs" in released.source and "NOT the VL paper's table" in released.source
    assert "VL paper" in vl_table.source and "do not mix them" in vl_table.source
    assert [r.label for r in load_compare("published:GuardReasoner-8B")] == list(TEXT_8B)

    assert main(["eval", "compare", "published:GuardReasoner-8B"]) == 0
    out = capsys.readouterr().out
    assert "| GuardReasoner-8B (text paper's released outputs) | – | – | 90.18 | 99.50 | 92.10 | – |" in out
    assert "| GuardReasoner-8B (VL paper's table) | – | – | 90.27 | 100.00 | 93.30 | – |" in out
    assert "## Sources" in out
    assert f"- GuardReasoner-8B (text paper's released outputs): {released.source}" in out
    assert f"- GuardReasoner-8B (VL paper's table): {vl_table.source}" in out
