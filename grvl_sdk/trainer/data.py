"""Deprecated location: training data now lives in the shared data layer and the trainer's loaders.

- samples, labels, readers: :mod:`grvl_sdk.data` (``TrainingSample``, ``normalize_label``, ``render_completion``);
- loaders: :mod:`grvl_sdk.trainer.vltrain` (``load_vltrain``, ``sample_to_record``) and
  :mod:`grvl_sdk.trainer.loaders` (``load_benchmark``, ``load_table``, ``ColumnMap``, ``load_data``);
- counts: :mod:`grvl_sdk.trainer.summary` (``summarize``, ``DataSummary``).

Every public name is also importable from :mod:`grvl_sdk.trainer`. Importing this module warns once.
"""

from grvl_sdk._deprecation import warn_deprecated
from grvl_sdk.data.errors import OnError
from grvl_sdk.data.labels import LABEL_ALIASES, normalize_label
from grvl_sdk.data.samples import Modality, TrainingSample, render_completion
from grvl_sdk.protocol.prompt import parse_transcript
from grvl_sdk.trainer.loaders import (
    BenchmarkTask,
    ColumnMap,
    DataFormat,
    detect_format,
    load_benchmark,
    load_data,
    load_table,
)
from grvl_sdk.trainer.summary import DataSummary, summarize
from grvl_sdk.trainer.vltrain import load_vltrain, sample_to_record, vltrain_sample

__all__ = [
    "LABEL_ALIASES",
    "BenchmarkTask",
    "ColumnMap",
    "DataFormat",
    "DataSummary",
    "Modality",
    "OnError",
    "TrainingSample",
    "detect_format",
    "load_benchmark",
    "load_data",
    "load_table",
    "load_vltrain",
    "normalize_label",
    "parse_transcript",
    "render_completion",
    "sample_to_record",
    "summarize",
    "vltrain_sample",
]

warn_deprecated("the module grvl_sdk.trainer.data", "grvl_sdk.trainer (loaders) and grvl_sdk.data (samples, labels)")
