"""F1 / precision / recall (harmful positive) and the weighted averages, against hand-computed values."""

from __future__ import annotations

import pytest

from grvl_sdk.eval.formats import PredictionRecord
from grvl_sdk.eval.metrics import (
    Confusion,
    confusion,
    f1_score,
    precision_score,
    recall_score,
    weighted_average,
)
from grvl_sdk.eval.registry import Benchmark
from grvl_sdk.eval.scoring import BenchmarkResult, EvalSummary, score_records

H, U = True, False


def test_confusion_counts_by_hand():
    gold = [H, H, H, H, U, U, U]
    pred = [H, H, H, U, H, U, U]
    c = confusion(gold, pred)
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 1, 1, 2)
    assert c.n == 7
    assert c.precision == pytest.approx(3 / 4)
    assert c.recall == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(6 / 8)
    assert c.accuracy == pytest.approx(5 / 7)


def test_asymmetric_precision_recall():
    # tp=2, fp=3, fn=1, tn=0: P = 2/5, R = 2/3, F1 = 4/8
    gold = [H, H, H, U, U, U]
    pred = [H, H, U, H, H, H]
    assert precision_score(gold, pred) == pytest.approx(0.4)
    assert recall_score(gold, pred) == pytest.approx(2 / 3)
    assert f1_score(gold, pred) == pytest.approx(0.5)
    # F1 is the harmonic mean of P and R
    assert f1_score(gold, pred) == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))


def test_missing_prediction_counts_as_wrong_never_as_unharmful():
    # None on a harmful gold is a false negative; on an unharmful gold a false positive.
    assert confusion([H], [None]) == Confusion(tp=0, fp=0, fn=1, tn=0)
    assert confusion([U], [None]) == Confusion(tp=0, fp=1, fn=0, tn=0)
    # Reading None as "unharmful" would have made the second one a free true negative.
    gold = [H, H, U, U]
    c = confusion(gold, [H, None, U, None])
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 1)
    assert c.f1 == pytest.approx(0.5)


def test_zero_denominators_give_zero():
    assert confusion([U, U], [U, U]).f1 == 0.0  # no harmful gold, none predicted
    assert confusion([H], [U]).precision == 0.0
    assert confusion([], []).f1 == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        confusion([H, U], [H])


def test_confusion_addition():
    assert Confusion(1, 2, 3, 4) + Confusion(4, 3, 2, 1) == Confusion(5, 5, 5, 5)


def test_weighted_average_by_hand():
    assert weighted_average([(80.0, 100), (60.0, 300)]) == pytest.approx((8000 + 18000) / 400)
    assert weighted_average([(50.0, 0), (70.0, 10)]) == pytest.approx(70.0)
    assert weighted_average([]) is None
    with pytest.raises(ValueError):
        weighted_average([(1.0, -1)])


def _records(gold: list[str], predicted: list[str | None]) -> list[PredictionRecord]:
    return [
        PredictionRecord(id=str(i), gold=g, predicted=p, status="ok" if p else "unparseable")
        for i, (g, p) in enumerate(zip(gold, predicted, strict=True))
    ]


def test_score_records_percentages_and_exclusion():
    bench = Benchmark.custom("Mine", "request")
    records = _records(
        ["harmful"] * 4 + ["unharmful"] * 3,
        ["harmful", "harmful", "harmful", None, "harmful", None, "unharmful"],
    )
    records[3].status = "failed"  # a failed check is wrong too, and counted apart
    r = score_records(records, bench)
    assert (r.tp, r.fp, r.fn, r.tn) == (3, 2, 1, 1)
    assert r.precision == pytest.approx(60.0)
    assert r.recall == pytest.approx(75.0)
    assert r.f1 == pytest.approx(200 * 3 / (6 + 2 + 1))
    assert (r.unparseable, r.failed, r.n) == (1, 1, 7)
    excluded = score_records(records, bench, unparseable="exclude")
    assert (excluded.n, excluded.excluded) == (5, 2)
    assert excluded.f1 == pytest.approx(200 * 3 / (6 + 1 + 0))


def _result(name: str, task: str, modality: str, n: int, f1: float) -> BenchmarkResult:
    return BenchmarkResult(name, task, modality, n, f1, 0.0, 0.0, 0, 0, 0, 0, 0, 0)


def test_summary_averages_by_task_and_modality():
    summary = EvalSummary(
        model="m",
        results=[
            _result("ToxicChat", "request", "text", 100, 80.0),
            _result("AegisSafetyTest", "request", "text", 300, 60.0),
            _result("HarmImageTest", "request", "image", 100, 40.0),
            _result("SafeRLHF", "response", "text", 200, 70.0),
            _result("SPA-VL-EvalResponse", "response", "text-image", 200, 50.0),
            _result("XSTestResponseRefusal", "refusal", "text", 1000, 10.0),
        ],
    )
    averages = summary.averages()
    assert averages["request"]["Avg(Text)"] == pytest.approx((8000 + 18000) / 400)  # 65
    assert averages["request"]["Avg(All)"] == pytest.approx((8000 + 18000 + 4000) / 500)  # 60
    assert averages["response"]["Avg(Text)"] == pytest.approx(70.0)
    assert averages["response"]["Avg(All)"] == pytest.approx(60.0)
    # refusal sets are not averaged
    assert summary.weighted_f1 == pytest.approx((8000 + 18000 + 4000 + 14000 + 10000) / 900)
    round_trip = EvalSummary.from_dict(summary.to_dict())
    assert round_trip.averages() == averages and round_trip.results == summary.results
