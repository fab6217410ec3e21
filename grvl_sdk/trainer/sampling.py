"""Rejection sampling (spec section 4.3): the samples the R-SFT guard still gets wrong become RL data.

The guard answers every training sample ``k`` times (default 4, temperature 1.0, top_p 0.95) through the
SDK's backends — batched local generation, or an OpenAI-compatible server (vLLM, SGLang) that returns the
``k`` answers of a sample from one request (``n=k``). A sample is **hard** when no attempt got both labels
right, each label compared with its **own** gold label (:func:`grvl_sdk.trainer.rewards.judge`, the
reward's rule: a ``None`` response counts as unharmful; an unparseable answer is wrong). The authors'
code compared the response prediction with the request gold (spec 6.3 bug 4).

Then (:func:`select_hard`): optionally every image-only sample is kept as well (the authors' choice,
``keep_image_only``, off by default); at most ``cap`` samples are kept (default 12,000; a seeded draw, the
authors' was unseeded); a seeded split gives train and validation (80/20, seed 42). Text-only samples stay
text-only (no 1×1 placeholder image: it cost 324 vision tokens of white per sample in the authors' RL).

Output folder::

    attempts.jsonl          one line per finished sample: gold labels, modality, the k attempts' labels,
                            format, correctness and length (format rl-attempt); resuming skips these samples
    train.jsonl             hard samples for GRPO (format rl-record, see grvl_sdk.trainer.rl_data)
    validation.jsonl        the held-out hard samples
    images/                 their images (RGB PNG)
    sampling_summary.json   the report (format rl-summary)
    sampling_settings.json  the generation settings of the attempts (guard, k, temperature, top_p, token
                            and pixel budgets): resuming with other ones is a TrainingConfigError

Samples without a gold request label, or with a response but no response label, cannot be judged and are
skipped (counted).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grvl_sdk._constants import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from grvl_sdk.backends.base import Backend
from grvl_sdk.data.errors import DataError
from grvl_sdk.data.readers import iter_json_lines, repair_tail
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.data.versions import check_version, stamp
from grvl_sdk.errors import GRVLError, ImageError, TrainingConfigError
from grvl_sdk.images import load_image
from grvl_sdk.protocol.prompt import neutralize_tags
from grvl_sdk.trainer import _formats  # noqa: F401  (registers the rl-* formats)
from grvl_sdk.trainer.rewards import judge
from grvl_sdk.trainer.rl_data import RLSample, write_rl_data
from grvl_sdk.trainer.sampling_report import SamplingReport, tally
from grvl_sdk.types import Decoding, GuardInput

__all__ = ["ATTEMPTS_FILE", "SamplingReport", "sample_hard", "select_hard"]

logger = logging.getLogger("grvl_sdk")

ATTEMPTS_FILE = "attempts.jsonl"
SUMMARY_FILE = "sampling_summary.json"
#: The generation settings of the attempts (checked on resume).
GENERATION_FILE = "sampling_settings.json"
ATTEMPT_FORMAT = "rl-attempt"


def select_hard(
    records: Sequence[dict[str, Any]],
    *,
    keep_image_only: bool = False,
    cap: int | None = 12_000,
    validation_fraction: float = 0.2,
    seed: int = 42,
) -> tuple[list[str], list[str], list[str]]:
    """``(hard ids, train ids, validation ids)`` from attempt records (``{"id", "modality", "attempts":
    [{"correct": bool, ...}]}``).

    Hard: no attempt correct (plus every ``"image"`` sample with ``keep_image_only``). When more than ``cap``
    are hard, ``cap`` are drawn with ``random.Random(seed)``; the kept ones are shuffled with the same
    generator and the first ``round(n · validation_fraction)`` go to validation. The ids are sorted first,
    so the result depends only on the records' content and the seed, not on their order.
    """
    if cap is not None and cap < 1:
        raise TrainingConfigError(f"cap must be >= 1 or None, got {cap}", field="cap")
    if not 0.0 <= validation_fraction < 1.0:
        raise TrainingConfigError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    hard = sorted(
        str(r["id"])
        for r in records
        if not r.get("error")
        and (
            not any(a.get("correct") for a in r.get("attempts", ()))
            or (keep_image_only and r.get("modality") == "image")
        )
    )
    rng = random.Random(seed)
    kept = rng.sample(hard, cap) if cap is not None and len(hard) > cap else list(hard)
    rng.shuffle(kept)
    cut = round(len(kept) * validation_fraction)
    return hard, kept[cut:], kept[:cut]


def _clean(text: str | None) -> str | None:
    return None if text is None else neutralize_tags(text)


def _guard_input(sample: TrainingSample) -> GuardInput:
    images = tuple(load_image(image) for image in sample.images)
    return GuardInput(text=_clean(sample.request), response=_clean(sample.response), images=images)


class _AttemptsFile:
    """``attempts.jsonl``: finished samples, appended batch by batch (a torn last line is repaired)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ATTEMPTS_FILE

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        repair_tail(self.path)
        found: dict[str, dict[str, Any]] = {}
        for line, value in iter_json_lines(self.path, bad_lines="skip"):
            if isinstance(value, dict) and isinstance(value.get("id"), str):
                check_version(ATTEMPT_FORMAT, value, file=str(self.path), line=line)
                found[value["id"]] = value
        return found

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(stamp(ATTEMPT_FORMAT, r), ensure_ascii=False) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())


def _record(rl: RLSample, texts: Sequence[str], tokens: Sequence[int], keep_outputs: bool) -> dict[str, Any]:
    attempts = []
    for text, count in zip(texts, tokens, strict=True):
        verdict = judge(text, request_label=rl.request_label, response_label=rl.response_label)
        attempt: dict[str, Any] = {
            "request": verdict.request_label,
            "response": verdict.response_label,
            "format": verdict.format_ok,
            "correct": verdict.correct,
            "tokens": count,
        }
        if keep_outputs:
            attempt["output"] = text
        attempts.append(attempt)
    return {
        "id": rl.id,
        "modality": rl.modality,
        "request_label": rl.request_label,
        "response_label": rl.response_label,
        "attempts": attempts,
    }


def _make_backend(
    model: str | None,
    server: str | None,
    server_model: str | None,
    api_key: str | None,
    device: str | None,
    min_pixels: int,
    max_pixels: int,
) -> Backend:
    if (model is None) == (server is None):
        raise TrainingConfigError("give exactly one of model (a local checkpoint) or server (an OpenAI-compatible URL)")
    if server is not None:
        from grvl_sdk.backends.remote import RemoteBackend

        if not server_model:
            raise TrainingConfigError("a server needs server_model, the served model name", field="server_model")
        return RemoteBackend(
            server, model=server_model, api_key=api_key, score_top_k=0, min_pixels=min_pixels, max_pixels=max_pixels
        )
    from grvl_sdk.backends.local import LocalBackend

    assert model is not None
    return LocalBackend.from_pretrained(
        model, device=device, min_pixels=min_pixels, max_pixels=max_pixels, score_top_k=0
    )


def _progress(enabled: bool, total: int, done: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc="rejection sampling", unit="sample", smoothing=0.1)


def _generate(
    backend: Backend,
    batch: Sequence[tuple[TrainingSample, RLSample]],
    decoding: Decoding,
    max_new_tokens: int,
    keep_outputs: bool,
) -> list[dict[str, Any] | None]:
    """Attempt records for a batch; ``None`` for a sample whose generation failed (retried by the next run)."""
    inputs: list[GuardInput | None] = []
    errors: list[str | None] = []
    for sample, _ in batch:
        try:
            inputs.append(_guard_input(sample))
            errors.append(None)
        except ImageError as exc:
            inputs.append(None)
            errors.append(f"unreadable image: {exc.message}")
    ready = [item for item in inputs if item is not None]
    k = decoding.n
    try:
        generations = backend.generate(ready, max_new_tokens=max_new_tokens, decoding=decoding) if ready else []
    except GRVLError as exc:
        if len(ready) == 1:
            logger.warning("sampling failed for %s: %s", batch[0][1].source or batch[0][1].id, exc.message)
            return [
                None if error is None else _error_record(rl, error)
                for (_, rl), error in zip(batch, errors, strict=True)
            ]
        # Isolate the failing sample: one generate call per sample.
        return [r for pair in batch for r in _generate(backend, [pair], decoding, max_new_tokens, keep_outputs)]
    if len(generations) != len(ready) * k:
        raise GRVLError(f"the backend returned {len(generations)} generations for {len(ready)} inputs × n={k}")
    out: list[dict[str, Any] | None] = []
    position = 0
    for (_, rl), error in zip(batch, errors, strict=True):
        if error is not None:
            out.append(_error_record(rl, error))
            continue
        mine = generations[position * k : (position + 1) * k]
        position += 1
        out.append(_record(rl, [g.text for g in mine], [g.completion_tokens for g in mine], keep_outputs))
    return out


def _guard_name(backend: Backend | None, model: str | None, server_model: str | None) -> str | None:
    """What identifies the sampling guard: the local checkpoint's absolute path, the served model name, or a
    given backend's ``model_id``."""
    if backend is not None:
        return str(getattr(backend, "model_id", None) or type(backend).__name__)
    if model is not None:
        return os.path.abspath(model) if os.path.exists(model) else model
    return server_model


def _check_generation_settings(directory: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``attempts.jsonl`` made with other generation settings (another guard, ``k``,
    temperature, top_p, token or pixel budget): mixing them would make the hard-sample rule mean different
    things for different samples. The settings are written on the first run (format rl-attempt)."""
    path = directory / GENERATION_FILE
    if path.is_file() and (directory / ATTEMPTS_FILE).is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainingConfigError(f"cannot read {path}: {exc}", file=str(path)) from exc
        check_version(ATTEMPT_FORMAT, previous, file=str(path))
        previous = {key: value for key, value in previous.items() if key != "version"}
        changed = sorted(key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key))
        if changed:
            detail = ", ".join(f"{key}: {previous.get(key)!r} -> {settings.get(key)!r}" for key in changed)
            raise TrainingConfigError(
                f"{directory} holds attempts generated with other settings ({detail}); resuming would mix them. "
                "Use the same settings, another output folder, or delete its attempts.jsonl to start afresh",
                field=changed[0],
                file=str(path),
            )
        return
    if (directory / ATTEMPTS_FILE).is_file():
        logger.warning("%s has attempts from a run that recorded no generation settings: resuming them", directory)
    path.write_text(json.dumps(stamp(ATTEMPT_FORMAT, settings), indent=2), encoding="utf-8")


def _error_record(rl: RLSample, error: str) -> dict[str, Any]:
    return {"id": rl.id, "modality": rl.modality, "error": error, "attempts": []}


def sample_hard(
    samples: Sequence[TrainingSample],
    output_dir: str | os.PathLike[str],
    *,
    backend: Backend | None = None,
    model: str | None = None,
    server: str | None = None,
    server_model: str | None = None,
    api_key: str | None = None,
    device: str | None = None,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 3072,
    batch_size: int = 16,
    keep_image_only: bool = False,
    cap: int | None = 12_000,
    validation_fraction: float = 0.2,
    seed: int = 42,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_outputs: bool = False,
    progress: bool = True,
) -> SamplingReport:
    """Rejection-sample ``samples`` with the R-SFT guard; write the hard ones as RL data in ``output_dir``.

    The guard is ``backend`` (any :class:`~grvl_sdk.backends.base.Backend`), or a local checkpoint
    ``model`` (batched generation, ``batch_size`` samples × ``k`` answers per call; ``device``), or an
    OpenAI-compatible ``server`` URL serving ``server_model`` (one request per sample with ``n=k``;
    ``batch_size`` requests in flight). Images are resized to Qwen2.5-VL's grid within
    ``min_pixels``/``max_pixels``. Samples already in ``attempts.jsonl`` are not generated again; a sample
    whose generation failed is retried by the next run; the selection and the files are rebuilt from all
    finished samples at the end of every run. See :func:`select_hard` for ``keep_image_only``, ``cap``,
    ``validation_fraction`` and ``seed``. ``keep_outputs`` also stores every raw answer in
    ``attempts.jsonl`` (large). Raises :class:`TrainingConfigError` for bad settings.
    """
    if k < 1 or batch_size < 1 or max_new_tokens < 1:
        raise TrainingConfigError(
            f"need k, batch_size and max_new_tokens >= 1, got {k}, {batch_size}, {max_new_tokens}"
        )
    if temperature <= 0:
        raise TrainingConfigError(f"rejection sampling samples: temperature must be > 0, got {temperature}")
    decoding = Decoding(temperature=temperature, top_p=top_p, n=k)
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    store = _AttemptsFile(directory)
    generation = {
        "guard": _guard_name(backend, model, server_model),
        "k": k,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }
    _check_generation_settings(directory, generation)
    done = store.read()
    report = SamplingReport(total=len(samples), k=k)
    pairs: list[tuple[TrainingSample, RLSample]] = []
    seen: set[str] = set()
    for sample in samples:
        try:
            rl = RLSample.from_training_sample(sample)
        except DataError:
            report.unlabelled += 1
            continue
        if rl.id in seen:
            report.duplicates += 1
            continue
        seen.add(rl.id)
        pairs.append((sample, rl))
    todo = [pair for pair in pairs if pair[1].id not in done]
    report.resumed = len(pairs) - len(todo)
    own = backend is None and bool(todo)
    if todo and backend is None:
        backend = _make_backend(model, server, server_model, api_key, device, min_pixels, max_pixels)
    bar = _progress(progress, len(pairs), report.resumed)
    started = time.perf_counter()
    try:
        for start in range(0, len(todo), batch_size):
            assert backend is not None
            records = _generate(backend, todo[start : start + batch_size], decoding, max_new_tokens, keep_outputs)
            finished = [r for r in records if r is not None]
            store.append(finished)
            for record in finished:
                done[record["id"]] = record
            report.generated += len(finished)
            report.failed += len(records) - len(finished)
            if bar is not None:
                bar.update(len(records))
    finally:
        report.seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        if own and backend is not None:
            backend.close()
    mine = [done[rl.id] for _, rl in pairs if rl.id in done]
    hard, train, validation = select_hard(
        mine, keep_image_only=keep_image_only, cap=cap, validation_fraction=validation_fraction, seed=seed
    )
    tally(report, mine, hard, train, validation)
    by_id = {rl.id: rl for _, rl in pairs}
    report.train_path = write_rl_data([by_id[i] for i in train], directory / "train.jsonl")
    report.validation_path = write_rl_data([by_id[i] for i in validation], directory / "validation.jsonl")
    settings = {
        "k": k,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "keep_image_only": keep_image_only,
        "cap": cap,
        "validation_fraction": validation_fraction,
        "seed": seed,
    }
    summary = stamp("rl-summary", {**report.to_dict(), "settings": settings})
    (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return report
