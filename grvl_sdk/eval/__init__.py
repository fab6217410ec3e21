"""Evaluation: the paper's benchmark table for any guard, and re-scoring of saved outputs.

>>> from grvl_sdk import Guard
>>> from grvl_sdk.eval import run_eval
>>> guard = Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B")
>>> summary = run_eval(guard, ["ToxicChat", "HarmBenchResponse"], "results/eco3b", data_dir="benchmarks/")
>>> summary.averages()["request"]["Avg(Text)"]

``grvl eval run`` builds the guard with the authors' evaluation settings (4,096 new tokens, images
within 4*28*28..16384*28*28 pixels); from Python, build the guard with them to compare with the paper.
The authors' VL test files (images from the GuardReasoner-VLTest image folder by position) and
prediction files are read by :mod:`grvl_sdk.eval.vl`; their parse is ``parse="official-vl"``.

Benchmark files are read by :mod:`grvl_sdk.eval.formats` and prediction files by
:mod:`grvl_sdk.eval.predictions`, on the shared data layer (:mod:`grvl_sdk.data`: samples, labels,
readers, errors, format versions).

See ``docs/evaluation.md``. The CLI is ``grvl eval run|score|report|compare|list``.
"""

from grvl_sdk.data.samples import Sample
from grvl_sdk.eval.formats import load_benchmark
from grvl_sdk.eval.metrics import (
    Confusion,
    confusion,
    f1_score,
    precision_score,
    recall_score,
    weighted_average,
)
from grvl_sdk.eval.official import OFFICIAL_WINDOW, official_label, official_vl_label
from grvl_sdk.eval.predictions import PredictionRecord, load_predictions
from grvl_sdk.eval.registry import BENCHMARKS, Benchmark, get_benchmark, paper_benchmarks
from grvl_sdk.eval.report import (
    ResultRow,
    load_compare,
    load_published,
    load_summary,
    render_markdown,
    settings_line,
    write_reports,
)
from grvl_sdk.eval.runner import image_bounds, load_run, run_eval
from grvl_sdk.eval.scoring import BenchmarkResult, EvalSummary, apply_parse, score_records, sdk_label
from grvl_sdk.eval.sources import BenchmarkSource, parse_spec, resolve_sources
from grvl_sdk.eval.vl import ImageFolder, load_vl_test, read_image_folder

__all__ = [
    "BENCHMARKS",
    "OFFICIAL_WINDOW",
    "Benchmark",
    "BenchmarkResult",
    "BenchmarkSource",
    "Confusion",
    "EvalSummary",
    "ImageFolder",
    "PredictionRecord",
    "ResultRow",
    "Sample",
    "apply_parse",
    "confusion",
    "f1_score",
    "get_benchmark",
    "image_bounds",
    "load_benchmark",
    "load_compare",
    "load_predictions",
    "load_published",
    "load_run",
    "load_summary",
    "load_vl_test",
    "official_label",
    "official_vl_label",
    "paper_benchmarks",
    "parse_spec",
    "precision_score",
    "read_image_folder",
    "recall_score",
    "render_markdown",
    "resolve_sources",
    "run_eval",
    "score_records",
    "sdk_label",
    "settings_line",
    "weighted_average",
    "write_reports",
]
