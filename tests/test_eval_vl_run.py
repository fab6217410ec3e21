"""Running a guard over the authors' VL test files: images by position, resized within the guard's pixel
bounds, SPA-VL-Eval's two tasks from one check per sample, the settings recorded and reported; and
``grvl eval run`` passing its pixel bounds and token budget to the guard it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval_vl_formats import HARM_PREDICTIONS, SPA_PREDICTIONS, build_vltest, harm_colour, spa_colour

from grvl_sdk import Guard
from grvl_sdk.cli import main
from grvl_sdk.eval import load_run, run_eval
from grvl_sdk.images import smart_resize
from grvl_sdk.testing import ScriptedBackend

MIN, CAP, AUTHORS = 4 * 28 * 28, 1280 * 28 * 28, 16384 * 28 * 28


class ColourBackend(ScriptedBackend):
    """Answers by the colour of the input's image (its position in the image folder); resizes within
    ``(MIN, CAP)`` like a local Qwen2.5-VL guard."""

    @property
    def image_bounds(self) -> tuple[int, int]:
        return (MIN, CAP)


def _answer(item) -> str:
    (image,) = item.images
    colour = image.getpixel((0, 0))
    for k in range(5):
        if colour == spa_colour(k):
            return SPA_PREDICTIONS[k][0]
        if colour == harm_colour(k):
            return HARM_PREDICTIONS[k][0]
    raise AssertionError(f"unexpected image colour {colour}")


@pytest.fixture
def vltest(tmp_path: Path) -> Path:
    return build_vltest(tmp_path / "GuardReasoner-VLTest")


def test_vl_run_checks_each_spa_vl_sample_once_for_both_tasks(vltest, tmp_path):
    backend = ColourBackend(_answer, model_id="colour-guard")
    guard = Guard(backend, cache_size=0)
    out = tmp_path / "run"
    summary = run_eval(
        guard, [str(vltest / "SPA_VL_Eval.json"), str(vltest / "HarmImageTest.json")], out, batch_size=2, progress=False
    )
    # 5 SPA-VL samples (both tasks from one check each), then 5 HarmImageTest samples, in batches of 2
    assert [len(call) for call in backend.calls] == [2, 2, 1, 2, 2, 1]
    seen = [item.images[0] for call in backend.calls for item in call]
    assert [im.getpixel((0, 0)) for im in seen] == [spa_colour(k) for k in range(5)] + [
        harm_colour(k) for k in range(5)
    ]
    for image, width in zip(seen, [60, 61, 62, 63, 64, 40, 41, 42, 43, 44], strict=True):
        h, w = smart_resize(30, width, min_pixels=MIN, max_pixels=CAP)
        assert image.size == (w, h)  # resized once, on the grid, within the guard's bounds

    results = {r.name: r for r in summary.results}
    assert list(results) == ["SPA-VL-EvalPrompt", "SPA-VL-EvalResponse", "HarmImageTest"]
    # recorded at run time with the SDK's parser (see test_eval_vl_formats for the outputs):
    assert results["SPA-VL-EvalPrompt"].f1 == pytest.approx(100.0)
    assert results["SPA-VL-EvalResponse"].f1 == pytest.approx(40.0)  # tp 1, fp 2, fn 1
    # HarmImageTest gold (test file) h h u u h; outputs A..E: tp, tp, fp (None), fp (junk), fn -> 4/7
    harm = results["HarmImageTest"]
    assert (harm.tp, harm.fp, harm.fn, harm.tn, harm.unparseable) == (2, 2, 1, 0, 2)
    assert harm.f1 == pytest.approx(400 / 7)

    state = json.loads((out / "run.json").read_text())
    assert (state["min_pixels"], state["max_pixels"], state["max_new_tokens"]) == (MIN, CAP, 1024)
    assert state["benchmarks"]["SPA-VL-EvalResponse"]["ids"] == ["0", "1", "2", "3", "4"]
    report = (out / "results.md").read_text()
    assert (
        "Settings: greedy decoding, max_new_tokens 1,024, images resized within 3,136–1,003,520 pixels "
        "(≤ 1,280 vision tokens each), batch size 2; differs from the authors' evaluation in max_new_tokens 1,024 "
        "(authors: 4,096); image budget 3,136–1,003,520 px (authors: 3,136–12,845,056)."
    ) in report

    # re-scored with the authors' VL parse, without generating
    rescored = {r.name: r for r in load_run(out, parse="official-vl").results}
    assert rescored["SPA-VL-EvalResponse"].f1 == pytest.approx(200 / 3)
    assert rescored["SPA-VL-EvalResponse"].defaulted == 2
    assert rescored["HarmImageTest"].f1 == pytest.approx(40.0)  # A tp, B fn, C tn, D fp, E fn

    # resumed: nothing left to generate; another image budget is refused
    backend.calls.clear()
    run_eval(guard, [str(vltest / "SPA_VL_Eval.json")], out, progress=False, write_reports=False)
    assert backend.calls == []


def test_a_folder_with_another_image_budget_is_not_resumed(vltest, tmp_path):
    from grvl_sdk.errors import EvalError

    out = tmp_path / "run"
    run_eval(Guard(ColourBackend(_answer)), [str(vltest / "HarmImageTest.json")], out, progress=False)

    class Wider(ColourBackend):
        @property
        def image_bounds(self) -> tuple[int, int]:
            return (MIN, AUTHORS)

    with pytest.raises(EvalError, match="holds a run with"):
        run_eval(Guard(Wider(_answer)), [str(vltest / "HarmImageTest.json")], out, progress=False)


def test_grvl_eval_run_gives_the_guard_its_pixel_bounds(tiny_guard_path, vltest, tmp_path, monkeypatch, capsys):
    asked: list[int] = []
    original = Guard.check_batch

    def spy(self, inputs, **kwargs):
        asked.append(len(inputs))
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(Guard, "check_batch", spy)
    out = tmp_path / "authors"
    base = ["eval", "run", "HarmImageTest", "SPA-VL-EvalPrompt", "SPA-VL-EvalResponse", "--data-dir", str(vltest),
            "--model", str(tiny_guard_path), "--device", "cpu", "--limit", "2", "--batch-size", "4",
            "--no-progress", "--json"]  # fmt: skip
    assert main([*base, "--max-new-tokens", "3", "--out", str(out)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "Settings: greedy decoding, max_new_tokens 3, images resized within 3,136–12,845,056 pixels" in captured.err
    assert asked == [2, 2]  # HarmImageTest, then SPA-VL-Eval once for both tasks
    state = json.loads((out / "run.json").read_text())
    assert (state["min_pixels"], state["max_pixels"], state["max_new_tokens"]) == (MIN, AUTHORS, 3)
    names = [r["name"] for r in json.loads(captured.out)["results"]]
    assert names == ["HarmImageTest", "SPA-VL-EvalPrompt", "SPA-VL-EvalResponse"]
    for name in names:
        lines = (out / "predictions" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(x)["id"] for x in lines] == ["0", "1"]
        # an image of 40..61 x 30 px is enlarged to the 3,136-pixel minimum: 2 x 3 patches of 28 px + text
        assert all(json.loads(x)["prompt_tokens"] > 6 for x in lines)

    other = tmp_path / "bounded"
    flags = ["--max-new-tokens", "2", "--max-pixels", str(CAP), "--min-pixels", "784", "--out", str(other)]
    assert main([*base, *flags]) == 0
    capsys.readouterr()
    state = json.loads((other / "run.json").read_text())
    assert (state["min_pixels"], state["max_pixels"], state["max_new_tokens"]) == (784, CAP, 2)
    assert "differs from the authors' evaluation" in (other / "results.md").read_text()

    moved = tmp_path / "json-only" / "HarmImageTest.json"
    moved.parent.mkdir()
    moved.write_bytes((vltest / "HarmImageTest.json").read_bytes())
    assert main(["eval", "run", str(moved), "--model", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no images under" in capsys.readouterr().err
    third = tmp_path / "explicit"
    args = [str(moved), "--model", str(tiny_guard_path), "--device", "cpu", "--limit", "1", "--max-new-tokens", "2",
            "--vl-images", str(vltest.parent), "--out", str(third), "--no-progress"]  # fmt: skip
    assert main(["eval", "run", *args]) == 0
    assert len((third / "predictions" / "HarmImageTest.jsonl").read_text().splitlines()) == 1
