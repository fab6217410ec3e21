"""Reasoning synthesis: ask an OpenAI-compatible teacher for reasoning that reaches the gold labels.

Teams usually have labels and no reasoning. For each sample, the teacher (any text or vision model
behind ``/v1/chat/completions``: vLLM, SGLang, OpenAI...) is shown the same transcript the guard sees
(images at the ``<image>`` position) and the correct answers, and asked for step-by-step reasoning in
the ``<think>…</think><result>…</result>`` format. Each answer is validated: it must parse
(:func:`grvl_sdk.parsing.parse_output`, closed ``<think>`` and ``<result>``) and its labels must
agree with the gold ones; otherwise it is asked again, up to ``max_attempts`` times, then dropped and
counted. HTTP failures (connection errors, 429, 5xx) are retried with back-off; a sample whose
requests keep failing is left undone (not recorded) and is tried again by the next run.

Output folder::

    records.jsonl   kept samples as GuardReasoner-VLTrain records (messages + images): R-SFT data
    dropped.jsonl   samples dropped after max_attempts (id, reason, the teacher's last answer); a sample
                    kept by a later ``retry_dropped`` run leaves it
    images/         every image of the records (files hard-linked or copied, in-memory ones saved as PNG);
                    records name them relative to the file, so the folder can be moved as a whole

``grvl train summary OUT/`` and ``train_data: [OUT]`` read the records (``dropped.jsonl`` is skipped).

Resuming: samples whose key (``TrainingSample.key()``) is in either file are skipped, so an
interrupted run continues where it stopped; a torn last line is repaired.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grvl_sdk._constants import DEFAULT_MAX_PIXELS
from grvl_sdk.data.readers import iter_json_lines, repair_tail
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import GRVLError, TrainingConfigError
from grvl_sdk.images import load_image
from grvl_sdk.protocol.parsing import Label
from grvl_sdk.trainer.teacher import (
    TEACHER_INSTRUCTION,
    HTTPFailure,
    Teacher,
    teacher_messages,
    validate_teacher_answer,
)
from grvl_sdk.trainer.vltrain import SYNTHESIS_DROPPED, SYNTHESIS_RECORDS, sample_to_record

__all__ = [
    "TEACHER_API_KEY_ENV_VAR",
    "TEACHER_INSTRUCTION",
    "SynthesisReport",
    "synthesize",
    "teacher_messages",
    "validate_teacher_answer",
]

logger = logging.getLogger("grvl_sdk")

#: The teacher's key when ``api_key`` is not given: the OpenAI client's own variable, since the teacher
#: is any OpenAI-compatible API (the guard server's key is ``$GRVL_API_KEY``: see docs/api.md).
TEACHER_API_KEY_ENV_VAR = "OPENAI_API_KEY"
RECORDS_FILE = SYNTHESIS_RECORDS
DROPPED_FILE = SYNTHESIS_DROPPED
IMAGES_DIR = "images"


@dataclass
class SynthesisReport:
    """Counts of a synthesis run. ``failed`` samples hit HTTP errors and stay undone (re-run to retry)."""

    total: int = 0
    skipped: int = 0
    kept: int = 0
    dropped: int = 0
    failed: int = 0
    requests: int = 0
    retried_answers: int = 0
    http_retries: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    records_path: Path | None = None
    dropped_path: Path | None = None
    #: the message of the last teacher request that failed (e.g. ``HTTP 400: {...}``), None when none did
    last_http_error: str | None = None

    @property
    def complete(self) -> bool:
        """Every sample is finished (kept or dropped): nothing is left for a re-run."""
        return self.failed == 0

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (
            f"{self.total} samples: {self.kept} kept, {self.dropped} dropped, {self.failed} failed (retry by "
            f"re-running), {self.skipped} already done · {self.requests} teacher requests, "
            f"{self.retried_answers} answers asked again, {self.http_retries} HTTP retries · rejections: {reasons}"
            + (f"\nlast teacher error: {self.last_http_error}" if self.last_http_error else "")
        )


# ----------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------
def _repair_and_read(path: Path, kind: str = "synthesis-record") -> set[str]:
    """Ids recorded in a JSONL file of a run (format ``kind``), made to end on a complete line first (a
    line torn by an interrupted write is cut off). A record of a newer format version raises
    :class:`~grvl_sdk.errors.DataError`: this code must not append to a file it cannot read."""
    if not path.is_file():
        return set()
    repair_tail(path)
    ids: set[str] = set()
    for line, value in iter_json_lines(path, bad_lines="skip"):
        if isinstance(value, dict):
            check_version(kind, value, file=str(path), line=line)
            if isinstance(value.get("id"), str):
                ids.add(value["id"])
    return ids


def _file_stem(key: str) -> str:
    """A file name for a sample key (ids may hold ``/``, ``..`` or spaces): safe characters, plus a hash when
    any had to change, so two keys never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80]
    if safe == key:
        return safe
    return f"{safe or 'sample'}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:10]}"


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` holding ``source``'s bytes: a hard link where the file system allows it (no extra space),
    a copy otherwise. An existing ``target`` (a resumed run) is replaced."""
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _compact_dropped(path: Path, kept: set[str]) -> None:
    """Rewrite ``dropped.jsonl`` without the samples that were kept since (``--retry-dropped``), one line per
    sample (its latest drop). Lines that are not records are kept as they are."""
    if not path.is_file():
        return
    latest: dict[str, str] = {}
    others: list[str] = []
    changed = False
    for raw in path.read_text(encoding="utf-8").split("\n"):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            others.append(raw)
            continue
        key = value.get("id") if isinstance(value, dict) else None
        if not isinstance(key, str):
            others.append(raw)
        elif key in kept:
            changed = True
        else:
            changed |= key in latest
            latest.pop(key, None)
            latest[key] = raw
    if not changed:
        return
    partial = path.with_suffix(".tmp")
    partial.write_text("".join(line + "\n" for line in [*others, *latest.values()]), encoding="utf-8")
    partial.replace(path)


class _Writer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.records = directory / RECORDS_FILE
        self.dropped = directory / DROPPED_FILE
        self.images = directory / IMAGES_DIR

    def _append(self, path: Path, value: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(value, ensure_ascii=False) + "\n")
            handle.flush()

    def image_paths(self, sample: TrainingSample, key: str) -> list[str]:
        """The sample's images as files under ``images/`` (paths relative to the records file), so the output
        folder is self-contained: image files are linked (or copied), in-memory images saved as PNG."""
        paths: list[str] = []
        for index, image in enumerate(sample.images):
            self.images.mkdir(parents=True, exist_ok=True)
            stem = f"{_file_stem(key)}-{index}"
            if isinstance(image, (str, os.PathLike)):
                source = Path(image)
                name = stem + source.suffix.lower()
                _link_or_copy(source, self.images / name)
            else:
                name = f"{stem}.png"
                load_image(image).save(self.images / name, format="PNG")
            paths.append(f"{IMAGES_DIR}/{name}")
        return paths

    def keep(self, sample: TrainingSample, key: str, attempts: int) -> None:
        record = sample_to_record(sample, self.image_paths(sample, key))
        record["id"] = key
        record["teacher_attempts"] = attempts
        if sample.source:
            record["source"] = sample.source
        self._append(self.records, stamp("synthesis-record", record))

    def drop(self, sample: TrainingSample, key: str, reason: str, attempts: int, answer: str | None) -> None:
        record = {"id": key, "reason": reason, "attempts": attempts, "source": sample.source, "last_answer": answer}
        self._append(self.dropped, stamp("synthesis-dropped", record))


async def _run(
    todo: list[tuple[str, TrainingSample]],
    writer: _Writer,
    teacher: Teacher,
    report: SynthesisReport,
    *,
    concurrency: int,
    max_attempts: int,
    timeout: float,
    max_pixels: int,
    progress: bool,
) -> None:
    import httpx

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="synthesizing", unit="sample", file=sys.stderr)
        except ImportError:
            bar = None
    reasons: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[str, TrainingSample]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    async def one(client: Any, key: str, sample: TrainingSample) -> None:
        try:
            images = [load_image(image) for image in sample.images]
        except GRVLError as exc:
            reasons["unreadable_image"] += 1
            writer.drop(sample, key, "unreadable_image", 0, exc.message)
            report.dropped += 1
            return
        messages = teacher_messages(sample, images, max_pixels=max_pixels)
        answer: str | None = None
        reason = "malformed"
        for attempt in range(1, max_attempts + 1):
            if attempt > 1:
                report.retried_answers += 1
            try:
                answer = await teacher.ask(client, messages, report)
            except HTTPFailure as exc:
                report.failed += 1
                reasons["http_error"] += 1
                report.last_http_error = exc.message
                logger.warning("teacher request failed for %s: %s", sample.source or key, exc.message)
                return
            parsed, reason = validate_teacher_answer(answer, sample)  # type: ignore[assignment]
            if parsed is not None:
                response_label: Label | None = parsed.response_label if sample.response is not None else None
                done = sample.with_reasoning(parsed.reasoning or "", parsed.request_label, response_label)
                writer.keep(done, key, attempt)
                report.kept += 1
                return
            reasons[reason] += 1
        writer.drop(sample, key, reason, max_attempts, answer)
        report.dropped += 1

    async def worker(client: Any) -> None:
        while True:
            try:
                key, sample = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await one(client, key, sample)
            finally:
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(kept=report.kept, dropped=report.dropped, failed=report.failed)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(min(concurrency, len(todo)) or 1)))
    finally:
        if bar is not None:
            bar.close()
        for key, value in reasons.items():
            report.reasons[key] = report.reasons.get(key, 0) + value


def synthesize(
    samples: Sequence[TrainingSample],
    output_dir: str | os.PathLike[str],
    *,
    base_url: str,
    model: str,
    api_key: str | None = None,
    concurrency: int = 8,
    max_attempts: int = 3,
    max_http_retries: int = 3,
    backoff: float = 1.0,
    temperature: float = 0.7,
    max_tokens: int = 2048,
    timeout: float = 120.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    retry_dropped: bool = False,
    progress: bool = True,
    extra_body: dict[str, Any] | None = None,
) -> SynthesisReport:
    """Add teacher reasoning to ``samples``; writes ``records.jsonl`` (R-SFT data) in ``output_dir``.

    ``base_url`` is the teacher's OpenAI-compatible root (e.g. ``http://localhost:8000/v1``);
    ``api_key`` defaults to ``$OPENAI_API_KEY`` (``""``: no key sent). Runs ``concurrency`` requests at once. Samples
    already in the output are skipped (``retry_dropped=True`` asks again for dropped ones). Samples
    with no gold label at all are dropped as ``no_gold_label`` without asking.
    """
    if concurrency < 1 or max_attempts < 1 or max_http_retries < 0:
        raise TrainingConfigError("need concurrency >= 1, max_attempts >= 1 and max_http_retries >= 0")
    if not base_url or not model:
        raise TrainingConfigError("the teacher needs a base_url and a model name", field="base_url")
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    writer = _Writer(directory)
    done = _repair_and_read(writer.records, "synthesis-record")
    dropped_before = _repair_and_read(writer.dropped, "synthesis-dropped")
    if not retry_dropped:
        done |= dropped_before
    report = SynthesisReport(total=len(samples), records_path=writer.records, dropped_path=writer.dropped)
    todo: list[tuple[str, TrainingSample]] = []
    seen: set[str] = set()
    for sample in samples:
        key = sample.key()
        if key in done or key in seen:
            report.skipped += 1
            continue
        seen.add(key)
        if sample.request_label is None and sample.response_label is None:
            writer.drop(sample, key, "no_gold_label", 0, None)
            report.dropped += 1
            report.reasons["no_gold_label"] = report.reasons.get("no_gold_label", 0) + 1
            continue
        todo.append((key, sample))
    api_key = api_key if api_key is not None else os.environ.get(TEACHER_API_KEY_ENV_VAR)  # "": none sent
    teacher = Teacher(
        url=base_url.rstrip("/") + "/chat/completions",
        model=model,
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        temperature=temperature,
        max_tokens=max_tokens,
        max_http_retries=max_http_retries,
        backoff=backoff,
        extra_body=dict(extra_body or {}),
    )
    try:
        if todo:
            options: dict[str, Any] = {"concurrency": concurrency, "max_attempts": max_attempts, "timeout": timeout}
            job = _run(todo, writer, teacher, report, max_pixels=max_pixels, progress=progress, **options)
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(job)
            else:  # called from async code (a notebook...): run the loop in a worker thread
                import concurrent.futures

                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, job).result()
    finally:  # kept samples leave dropped.jsonl, even when the run is interrupted
        _compact_dropped(writer.dropped, _repair_and_read(writer.records, "synthesis-record"))
    return report
