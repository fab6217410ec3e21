"""The data layer shared by training and evaluation: samples, labels, readers, errors and format versions.

- :mod:`grvl_sdk.data.samples`: :class:`Sample` (request, response, images, labels per task, id, source,
  reasoning/completion) and :class:`TrainingSample`, the form R-SFT trains on;
- :mod:`grvl_sdk.data.labels`: the one label alias table and :func:`normalize_label` (strict per task);
- :mod:`grvl_sdk.data.readers`: JSON and JSON-lines readers that stream by ``b"\\n"`` with line numbers;
- :mod:`grvl_sdk.data.errors`: :class:`~grvl_sdk.errors.DataError` (file, line, field) and its
  evaluation form :class:`EvalDataError` (also a ``DataFormatError``);
- :mod:`grvl_sdk.data.versions`: the ``version`` field of every record grvl-sdk writes.

The trainer's loaders (:mod:`grvl_sdk.trainer`) and evaluation's readers (:mod:`grvl_sdk.eval`) are
built on these. This package also ships ``published.json`` (the published benchmark numbers).
"""

from grvl_sdk.data.errors import DataError, ErrorPolicy, EvalDataError, OnError
from grvl_sdk.data.labels import LABEL_ALIASES, NO_LABEL, TASK_LABELS, Label, Task, normalize_label
from grvl_sdk.data.readers import data_files, iter_json_array, iter_json_lines, iter_records, repair_tail
from grvl_sdk.data.samples import Modality, Sample, TrainingSample, render_completion
from grvl_sdk.data.versions import FORMATS, VERSION_FIELD, check_version, stamp

__all__ = [
    "FORMATS",
    "LABEL_ALIASES",
    "NO_LABEL",
    "TASK_LABELS",
    "VERSION_FIELD",
    "DataError",
    "ErrorPolicy",
    "EvalDataError",
    "Label",
    "Modality",
    "OnError",
    "Sample",
    "Task",
    "TrainingSample",
    "check_version",
    "data_files",
    "iter_json_array",
    "iter_json_lines",
    "iter_records",
    "normalize_label",
    "render_completion",
    "repair_tail",
    "stamp",
]
