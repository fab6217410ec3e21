"""Prediction files: one :class:`PredictionRecord` per line (``predictions/<benchmark>.jsonl``), and the
readers of the authors' prediction files.

:func:`load_predictions` reads grvl-sdk's own JSON lines, the text GuardReasoner's ``{"prompt", "label",
"predict"}`` JSON lines (``predict`` = the raw output), or the VL harness's ``generated_predictions.jsonl``
(``text_output`` = the raw output, ``predict`` = the label it extracted; :mod:`grvl_sdk.eval.vl`).

grvl-sdk's records carry ``"version"`` (format ``eval-prediction``, :mod:`grvl_sdk.data.versions`):
a record without one (an older file) is read; a newer major version is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.data.errors import EvalDataError, as_eval_error
from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import DataError, EvalError
from grvl_sdk.eval.formats import _label, _sample_id, gold_labels, read_records
from grvl_sdk.eval.registry import Benchmark

__all__ = ["PREDICTION_FORMAT", "PredictionRecord", "Status", "folder_records", "load_predictions"]

Status = Literal["ok", "unparseable", "failed"]
#: The format name of a prediction record's ``version``.
PREDICTION_FORMAT = "eval-prediction"


@dataclass
class PredictionRecord:
    """One scored (or to-be-scored) guard output. A line of ``predictions/<benchmark>.jsonl``.

    ``status``: ``"ok"`` (``predicted`` is a label), ``"unparseable"`` (the output holds no label for the
    task) or ``"failed"`` (no output: the check raised); ``None`` until parsed. The last two count as
    wrong predictions. ``defaulted``: the output held no label and the parse mode's rule supplied one
    (only ``official-vl`` on a text-image response set: ``unharmful``, the authors' quirk).
    """

    id: str
    gold: str
    raw_output: str = ""
    predicted: str | None = None
    status: Status | None = None
    benchmark: str = ""
    task: str = ""
    index: int | None = None
    error: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The verdict's latency (for a batched local check: the whole batch's generate time).
    latency_ms: float | None = None
    batch_size: int | None = None
    defaulted: bool = False
    #: The guard's probability of ``harmful`` at this task's label (``Verdict.request_score`` or
    #: ``response_score``); ``None`` without log-probabilities. ``grvl eval calibrate`` reads it.
    score: float | None = None
    #: Which latency tier answered a ``mode="fast"``/``"auto"`` check (``Verdict.tier.path``: ``"fast"`` or
    #: ``"think"``), and why auto escalated (``Verdict.tier.escalation``); ``None`` in think mode.
    tier: str | None = None
    escalation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written: its fields, with the format ``version`` first."""
        return stamp(PREDICTION_FORMAT, asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> PredictionRecord:
        """A record from its dict (unknown keys ignored); :class:`EvalDataError` when it is not one, or its
        ``version`` is newer than this code reads."""
        try:
            check_version(PREDICTION_FORMAT, data)
        except DataError as exc:
            raise as_eval_error(exc, where or "prediction record") from None
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            record = cls(**known)
        except TypeError as exc:
            raise EvalDataError(f"not a prediction record: {exc}") from exc
        record.id = str(record.id)
        return record


def folder_records(folder: str | Path) -> dict[str, dict[str, PredictionRecord]]:
    """The records of a results folder of ``grvl eval run``, by benchmark then sample id. Raises
    :class:`~grvl_sdk.errors.EvalError` when ``folder`` has no ``predictions/``, and
    :class:`EvalDataError` for a malformed line."""
    predictions = Path(folder) / "predictions"
    if not predictions.is_dir():
        raise EvalError(f"{folder} is not a results folder of `grvl eval run` (no predictions/ in it)")
    runs: dict[str, dict[str, PredictionRecord]] = {}
    for path in sorted(predictions.glob("*.jsonl")):
        for index, data in enumerate(read_records(path)):
            record = PredictionRecord.from_dict(data, f"{path.name} item {index}")
            runs.setdefault(record.benchmark or path.stem, {})[record.id] = record
    return runs


def load_predictions(path: str | Path, benchmark: Benchmark) -> list[PredictionRecord]:
    """Read a predictions file: grvl-sdk's own JSON lines, GuardReasoner's ``prompt/label/predict`` or the
    VL harness's ``generated_predictions.jsonl`` (``text_output``; see :func:`grvl_sdk.eval.vl.vl_prediction`).

    Records without a gold label for ``benchmark.task`` are left out (VL image sets: a gold ``None`` is
    ``unharmful`` and kept). Raises :class:`EvalDataError` (file and position).
    """
    path = Path(path)
    records: list[PredictionRecord] = []
    for index, data in enumerate(read_records(path)):
        where = f"{path.name} item {index}"
        if "text_output" in data:  # the VL harness: text_output is the raw output, predict a label
            from grvl_sdk.eval.vl import vl_prediction

            record = vl_prediction(data, index, benchmark, where)
            if record is not None:
                records.append(record)
        elif "predict" in data and "label" in data:  # the text GuardReasoner: predict is the raw output
            gold = gold_labels(data["label"], benchmark.task, where).get(benchmark.task)
            if gold is None:
                continue
            records.append(
                PredictionRecord(
                    id=_sample_id(data, index),
                    gold=gold,
                    raw_output=str(data["predict"] or ""),
                    benchmark=benchmark.name,
                    task=benchmark.task,
                    index=index,
                )
            )
        elif "gold" in data and "raw_output" in data:
            record = PredictionRecord.from_dict(data, where)
            record.gold = _label(record.gold, benchmark.task, where) or ""
            if record.gold:
                records.append(record)
        else:
            raise EvalDataError(
                f"{where}: not a prediction record (expected grvl-sdk's 'gold'/'raw_output', GuardReasoner's "
                "'prompt'/'label'/'predict' or the VL harness's 'text_output'/'label'/'predict')",
                path=str(path),
            )
    return records
