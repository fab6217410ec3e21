"""The GuardReasoner-VL release's evaluation files: test JSON + image folder, and prediction files.

**Test files** (``HarmImageTest.json``, ``SPA_VL_Eval.json``; spec 6.2). Chat records whose first
message holds text (the instruction) before ``\\n\\nHuman user:``; the authors' harness cut the message at
that marker and kept the transcript ``Human user:\\n<image>\\n{request}\\n\\nAI assistant:\\n{response}\\n\\n``.
The second message holds the gold ``Request:``/``Response:`` lines; ``None`` (and ``harmless``) map to
``unharmful`` and the sample is kept (the authors' rule, for these files only). The images are **not**
the paths in the JSON: the harness took them by position from the ``GuardReasoner-VLTest`` image
folder, HarmImageTest = its rows with ``label == 0``, SPA-VL-Eval = ``label == 1``
(:attr:`~grvl_sdk.eval.registry.Benchmark.vl_label`).

**The image folder** is Hugging Face's "imagefolder" layout, as ``huggingface-cli download
yueliu1999/GuardReasoner-VLTest --repo-type dataset --local-dir DIR`` writes it: ``DIR/test/<class>/…``
(the test JSON files sit beside the class folders in ``DIR/test``). As ``datasets`` builds it:

- the split folder is ``DIR/test`` (or ``DIR/data/test``, or ``DIR`` itself when it holds the classes);
- an image's ``label`` is the index of its parent folder's name among the sorted class-folder names,
  unless the split folder has a ``metadata.jsonl`` / ``metadata.csv`` with ``file_name`` and ``label``
  columns (``label`` an index or a class name);
- rows are ordered by file path (plain string order of the relative path, so ``10.png`` sorts before
  ``2.png``); hidden files and folders (``.x``, ``__x``) are ignored.

If your copy is in another form (e.g. parquet shards), export it with ``datasets`` to this layout with
zero-padded file names (``docs/evaluation.md`` has the snippet): the order is then the dataset's.

**Prediction files** (``{model}/{Benchmark}/generated_predictions.jsonl``): ``text_input``,
``text_output`` (the raw output), ``label`` (gold), ``predict`` (the label the harness extracted; on an
unparseable output it wrote the opposite of the gold, i.e. a wrong prediction), ``res_len``; SPA-VL adds
``label_res``/``predict_res`` for the response task. Parse modes apply to ``text_output``; ``recorded``
uses ``predict``/``predict_res`` as given.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grvl_sdk.data.errors import EvalDataError, as_eval_error
from grvl_sdk.data.readers import iter_json_lines
from grvl_sdk.data.samples import Sample
from grvl_sdk.errors import DataError
from grvl_sdk.eval.formats import chat_turns, gold_labels, parse_transcript, read_numbered_records
from grvl_sdk.eval.predictions import PredictionRecord
from grvl_sdk.eval.registry import Benchmark

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "is_vl_test_record",
    "load_vl_test",
    "read_image_folder",
    "vl_gold",
    "vl_prediction",
]

#: File suffixes read as images (lower case), as the ``datasets`` image folder does.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".pjpeg"})
#: Where the authors' harness cut the first message (the transcript starts after the blank line).
MARKER = "\n\nHuman user:"
_HUMAN = "Human user:"
_VL_LINE = re.compile(r"\b(request|response)\s*:\s*(harmful|unharmful|none|harmless)\b", re.IGNORECASE)
_METADATA = ("metadata.jsonl", "metadata.csv")


# -- the image folder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFolder:
    """An image-folder split: ``rows`` are ``(image path, label)`` in the dataset's order."""

    root: Path
    classes: tuple[str, ...]
    rows: tuple[tuple[Path, int], ...]

    def images(self, label: int) -> list[Path]:
        """The images of the rows with ``label``, in order (what ``ds.filter(lambda x: x["label"] == label)`` keeps)."""
        return [path for path, row_label in self.rows if row_label == label]


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "__")) for part in relative.parts)


def _split_dir(root: Path, split: str) -> Path:
    for candidate in (root / split, root / "data" / split):
        if candidate.is_dir():
            return candidate
    return root


def _is_index(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())


def _metadata_labels(file: Path) -> tuple[dict[str, int], tuple[str, ...]]:
    """``({relative posix path: label}, class names)`` of a metadata file; ``label`` is an index, or a
    class name (then its index among the sorted names)."""
    try:
        if file.suffix == ".csv":
            with file.open(encoding="utf-8", newline="") as handle:  # csv splits rows itself (quoted newlines)
                rows: list[dict[str, Any]] = list(csv.DictReader(handle))
        else:
            rows = [row for _, row in iter_json_lines(file)]
    except OSError as exc:
        raise EvalDataError(f"cannot read {file}: {exc}", path=str(file)) from exc
    except DataError as exc:
        raise as_eval_error(exc) from exc
    bad = next((n for n, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise EvalDataError(f"{file} row {bad}: not a JSON object", path=str(file))
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("file_name"), str) or row.get("label") in (None, ""):
            raise EvalDataError(f"{file} row {number}: needs 'file_name' and 'label'", path=str(file))
    classes = tuple(sorted({str(r["label"]) for r in rows if not _is_index(r["label"])}))
    labels = {
        Path(r["file_name"]).as_posix(): int(r["label"]) if _is_index(r["label"]) else classes.index(str(r["label"]))
        for r in rows
    }
    return labels, classes


def read_image_folder(root: str | Path, *, split: str = "test") -> ImageFolder:
    """Read a Hugging Face image-folder split (the layout of the module docstring).

    Raises :class:`EvalDataError` when the folder is missing, holds no image, has no class folders
    (and no metadata file), or its metadata names an image that is not there.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EvalDataError(f"image folder {root} does not exist", path=str(root))
    folder = _split_dir(root, split)
    images = sorted(
        (p.relative_to(folder) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda rel: rel.as_posix(),
    )
    images = [rel for rel in images if not _hidden(rel)]
    if not images:
        raise EvalDataError(f"no images under {folder}", path=str(folder))
    metadata = next((folder / name for name in _METADATA if (folder / name).is_file()), None)
    if metadata is not None:
        labels, names = _metadata_labels(metadata)
        missing = sorted(set(labels) - {rel.as_posix() for rel in images})
        if missing:
            raise EvalDataError(f"{metadata} names {len(missing)} missing image(s), e.g. {missing[0]}")
        rows = tuple((folder / rel, labels[rel.as_posix()]) for rel in images if rel.as_posix() in labels)
        return ImageFolder(folder, names, rows)
    if any(len(rel.parts) < 2 for rel in images):
        loose = next(rel for rel in images if len(rel.parts) < 2)
        raise EvalDataError(
            f"{folder} holds images outside class folders (e.g. {loose}) and no metadata file: "
            "expected <split>/<class>/<image> (the label is the class folder's index in sorted order)",
            path=str(folder),
        )
    classes = sorted({rel.parent.name for rel in images})
    rows = tuple((folder / rel, classes.index(rel.parent.name)) for rel in images)
    return ImageFolder(folder, tuple(classes), rows)


# -- test files -----------------------------------------------------------------------------------


def vl_gold(text: str, where: str) -> dict[str, str]:
    """Gold labels of an answer text by the VL rule: the first ``Request:``/``Response:`` label each;
    ``none`` and ``harmless`` read as ``unharmful`` (the sample is kept)."""
    labels: dict[str, str] = {}
    for key, value in _VL_LINE.findall(text):
        task = key.lower()
        if task not in labels:
            low = value.lower()
            labels[task] = "unharmful" if low in ("none", "harmless") else low
    if "request" not in labels:
        raise EvalDataError(f"{where}: the answer has no 'Request: harmful|unharmful|none' line")
    return labels


def _first_two(record: dict[str, Any], where: str) -> tuple[str, str]:
    turns = [(role, content) for role, content in chat_turns(record, where) if role != "system"]
    if len(turns) < 2:
        raise EvalDataError(f"{where}: expected the transcript message and the answer message")
    return turns[0][1], turns[1][1]


def is_vl_test_record(record: dict[str, Any]) -> bool:
    """True for a record of the authors' VL test files: chat, first message = text, then ``\\n\\nHuman user:``."""
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        return False
    first = turns[0].get("content", turns[0].get("value"))
    return isinstance(first, str) and MARKER in first and not first.startswith(_HUMAN)


def _transcript(message: str, where: str) -> str:
    if message.startswith(_HUMAN):
        return message
    cut = message.find(MARKER)
    if cut < 0:
        raise EvalDataError(f"{where}: the first message has no '\\n\\nHuman user:' transcript")
    return message[cut + 2 :]


def load_vl_test(path: str | Path, benchmark: Benchmark, image_folder: str | Path | None = None) -> list[Sample]:
    """Samples of an authors' VL test file, with images from the image folder by position.

    ``image_folder``: the ``GuardReasoner-VLTest`` download (or its ``test`` split folder); by default the
    test file's own folder (the download keeps the JSON files beside the class folders). Raises
    :class:`EvalDataError` (file and position) for a record that cannot be read, a sample that is not
    one image, a missing folder, or a count of images with ``label == benchmark.vl_label`` that differs
    from the number of records.
    """
    path = Path(path)
    if benchmark.vl_label is None:
        raise EvalDataError(f"{benchmark.name} takes no images from the GuardReasoner-VLTest folder")
    records = read_numbered_records(path)
    folder = read_image_folder(image_folder if image_folder is not None else path.parent)
    images = folder.images(benchmark.vl_label)
    if len(images) != len(records):
        raise EvalDataError(
            f"{path.name} has {len(records)} records but {folder.root} has {len(images)} images with label "
            f"{benchmark.vl_label} (classes {list(folder.classes)}): images are matched by position, so the "
            "counts must agree (is this the GuardReasoner-VLTest folder?)",
            path=str(path),
        )
    samples: list[Sample] = []
    for index, ((line, record), image) in enumerate(zip(records, images, strict=True)):
        where = f"{path.name} item {index}"
        first, answer = _first_two(record, where)
        request, response, markers = parse_transcript(_transcript(first, where), where)
        if markers != 1:
            raise EvalDataError(f"{where}: {markers} <image> markers; each sample of this file has one image")
        gold = vl_gold(answer, where)
        samples.append(Sample(str(index), request, response, (str(image),), gold, source=f"{path}:{line}"))
    return samples


# -- prediction files -----------------------------------------------------------------------------


def _vl_value(value: Any) -> str | None:
    """``harmful``/``unharmful`` of a recorded label (``none``/``harmless`` → ``unharmful``), else ``None``."""
    if not isinstance(value, str):
        return None
    low = value.strip().lower()
    if low in ("none", "harmless"):
        return "unharmful"
    return low if low in ("harmful", "unharmful") else None


def vl_prediction(data: dict[str, Any], index: int, benchmark: Benchmark, where: str) -> PredictionRecord | None:
    """One record of an authors' ``generated_predictions.jsonl`` for ``benchmark`` (``None``: no gold).

    The response task of a file with ``label_res`` reads ``label_res``/``predict_res``; anything else reads
    ``label``/``predict``. On image and text-image sets a gold ``None`` is ``unharmful`` (kept); on text
    sets the text benchmarks' rule holds (no label: left out). The recorded prediction (``predicted``,
    ``status``) is the harness's label as given; a missing or non-label one is ``unparseable``.
    """
    raw = data.get("text_output")
    if not isinstance(raw, str):
        raise EvalDataError(f"{where}: 'text_output' (the raw output) must be a string")
    response_fields = benchmark.task == "response" and ("label_res" in data or "predict_res" in data)
    gold_value = data.get("label_res" if response_fields else "label")
    recorded = data.get("predict_res" if response_fields else "predict")
    if benchmark.modality != "text" and benchmark.task in ("request", "response"):
        gold = _vl_value(gold_value) or ("unharmful" if gold_value is None else None)
        if gold is None:
            raise EvalDataError(f"{where}: {gold_value!r} is not a {benchmark.task} label")
    else:
        gold = gold_labels(gold_value, benchmark.task, where).get(benchmark.task)
        if gold is None:
            return None
    if benchmark.task == "refusal":
        low = recorded.strip().lower() if isinstance(recorded, str) else None
        predicted = low if low in benchmark.labels else None
    else:
        predicted = _vl_value(recorded)
    return PredictionRecord(
        id=str(data.get("id", index)),
        gold=gold,
        raw_output=raw,
        predicted=predicted,
        status="ok" if predicted else "unparseable",
        benchmark=benchmark.name,
        task=benchmark.task,
        index=index,
    )
