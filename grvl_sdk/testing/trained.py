"""The trained tiny guard: the random tiny guard taught the toy rule in seconds on CPU, built once and cached.

``build_tiny_guard(path, trained=True)`` (or ``grvl build-tiny-guard --trained PATH``) gives a 0.4 M
parameter Qwen2.5-VL guard that writes well-formed GuardReasoner-VL outputs and follows the toy rule of
:mod:`grvl_sdk.testing.toy_rule`: a request or a response containing "bomb" or "poison"
(case-insensitive) is harmful, anything else unharmful; images are ignored; ``Response: None`` when
there is no response. Its reasoning is one short sentence per judged text::

    <think>
    The request mentions nothing dangerous.
    The response mentions poison.
    </think>
    <result>
    Request: unharmful
    Response: harmful
    </result>

**Limits.** It learned the rule from about 600 synthetic English sentences; it is a model, not the rule.
On held-out everyday sentences it agrees with :func:`~grvl_sdk.testing.toy_rule.toy_label` about 95–100%
of the time (``tests/test_testing_tiny.py``). Expect misses on what it never saw: mixed case
("bOmB"), spaced or obfuscated spellings ("b o m b", "b0mb"), the words glued inside long unseen words,
other languages, very long texts (over ~60 words), several images. Decode greedily (the SDK does) with
at least 48 new tokens. Use it to test that an app reacts to harmful and unharmful verdicts, never to
judge content.

**How it is built.** The random tiny guard (:func:`grvl_sdk.testing.tiny.build_random_guard`, its
tokenizer also taught the trigger words so each is one token) is fine-tuned on
:func:`~grvl_sdk.testing.toy_rule.toy_samples` with the R-SFT data path of :mod:`grvl_sdk.trainer`
(prompts by the guard's own prompt encoder, :class:`~grvl_sdk.trainer.render.RSFTCollator`, loss on the
answer only) in a minimal AdamW loop rather than TRL's trainer, which costs several times more per step
here. A curriculum makes it fast: the first steps see the prompt without its 150-token system message
(the rule is learned on short sequences), the last ones the full inference prompt. Everything is seeded
and runs on at most 2 threads: the same recipe, library versions and CPU give the same weights.

**Cache.** A build is stored under ``<cache>/tiny-guard-<key>``, where ``<cache>`` is ``cache_dir``,
else ``$GRVL_CACHE_DIR``, else ``~/.cache/grvl-sdk``, and ``<key>`` is a content hash of the recipe
(:class:`TinyGuardRecipe`), this package's training code, the guard prompt and the torch /
transformers / tokenizers versions (:func:`trained_guard_cache_key`). Later builds copy the cached files
into ``path`` (about 2 MB, well under a second). Builds are atomic (a temporary folder renamed into
place), so concurrent processes are safe; delete the folder to rebuild.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk._paths import CACHE_ENV, cache_root

__all__ = [
    "CACHE_ENV",
    "TinyGuardRecipe",
    "build_trained_guard",
    "cache_root",
    "train_toy_guard",
    "trained_guard_cache_key",
]

# Written last into a cache entry: an entry without it is incomplete and never used.
_COMPLETE = "tiny-guard.json"
# Bump when the recipe's meaning changes in a way the hashed sources do not show.
_RECIPE_VERSION = 1
_SOURCES = ("tiny.py", "toy_rule.py", "trained.py")
_VISION_PIXELS: dict[str, int] = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}


@dataclass(frozen=True)
class TinyGuardRecipe:
    """Settings of the trained tiny guard; every field is part of the cache key.

    ``samples``: synthetic training samples; ``steps``: optimizer steps of ``batch_size`` samples;
    ``learning_rate``: AdamW peak rate, reached after ``warmup`` (fraction of steps), held, then cosine
    decayed to 0 over the last ``decay`` fraction; ``short_prompt_fraction``: fraction of steps (the
    first ones) whose prompts leave out the system message; ``threads``: most torch threads used;
    ``fast_fraction``: share of the samples rendered with an empty reasoning block (R-SFT's option of the
    same name, :func:`grvl_sdk.trainer.render.encode_samples`), so the guard also answers in
    ``mode="fast"``; at 0 (the default) it was trained to reason first and its fast-mode labels mean nothing.
    """

    seed: int = 0
    vocab_size: int = 640
    samples: int = 600
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 3e-3
    warmup: float = 0.05
    decay: float = 0.2
    short_prompt_fraction: float = 0.75
    threads: int = 2
    fast_fraction: float = 0.0


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {}
    for name in ("torch", "transformers", "tokenizers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def trained_guard_cache_key(recipe: TinyGuardRecipe | None = None) -> str:
    """The 16-hex-digit content hash a trained build is cached under.

    It covers the recipe's fields, the source of :mod:`grvl_sdk.testing.tiny`, ``toy_rule`` and this
    module, the guard prompt (:func:`grvl_sdk.protocol.prompt.render_prompt`) and the torch /
    transformers / tokenizers versions: a change to any of them builds anew.
    """
    from grvl_sdk.protocol.prompt import render_prompt

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    settings = {
        "recipe": _key_fields(recipe or TinyGuardRecipe()),
        "version": _RECIPE_VERSION,
        "libraries": _versions(),
        "prompt": render_prompt("request", "response", num_images=1),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _key_fields(recipe: TinyGuardRecipe) -> dict[str, object]:
    """The recipe's fields for the cache key; ``fast_fraction`` only when set, so the builds made before
    the field existed keep their key."""
    fields = dataclasses.asdict(recipe)
    if not fields["fast_fraction"]:
        del fields["fast_fraction"]
    return fields


def _require_training() -> None:
    for module in ("torch", "transformers", "tokenizers"):
        require(module, extra="local")


def build_trained_guard(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    vocab_size: int = 640,
    cache_dir: str | os.PathLike[str] | None = None,
    recipe: TinyGuardRecipe | None = None,
) -> Path:
    """Write the trained tiny guard to ``path`` (created if missing; its same-named files are replaced) and
    return it as a ``Path``. Trains it first (10–40 s on 2 CPU cores) unless the cache holds this build.

    ``recipe`` overrides ``seed`` and ``vocab_size`` (and sets ``fast_fraction``). Raises
    :class:`~grvl_sdk.errors.MissingDependencyError` without torch, transformers or tokenizers
    (``pip install 'grvl-sdk[local]'``); ``OSError`` when the cache folder is not writable.
    """
    _require_training()
    recipe = recipe or TinyGuardRecipe(seed=seed, vocab_size=vocab_size)
    entry = cache_root(cache_dir) / f"tiny-guard-{trained_guard_cache_key(recipe)}"
    if not (entry / _COMPLETE).is_file():
        with _build_lock(entry) as locked:  # one build per entry: other processes wait for it, then copy
            if not (entry / _COMPLETE).is_file():
                for stale in entry.parent.glob(f".{entry.name}-*") if locked else ():  # left by killed builds
                    shutil.rmtree(stale, ignore_errors=True)
                _build_entry(entry, recipe)
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    for item in entry.iterdir():
        if item.is_file():
            shutil.copyfile(item, target / item.name)
    return target


@contextlib.contextmanager
def _build_lock(entry: Path) -> Iterator[bool]:
    """An exclusive advisory lock on ``<entry>.lock`` (POSIX ``flock``; no lock where ``fcntl`` is missing),
    so concurrent test processes train one build instead of one each. Yields whether the lock is held."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: builds stay atomic, only possibly repeated
        yield False
        return
    with open(entry.parent / f"{entry.name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build_entry(entry: Path, recipe: TinyGuardRecipe) -> None:
    """Train into a temporary sibling of ``entry``, then rename it into place (another process may win)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        started = time.perf_counter()
        report = train_toy_guard(staging, recipe)
        report["build_seconds"] = round(time.perf_counter() - started, 2)
        report["recipe"] = dataclasses.asdict(recipe)
        report["libraries"] = _versions()
        (staging / _COMPLETE).write_text(json.dumps(report, indent=2), encoding="utf-8")
        try:
            staging.rename(entry)
        except OSError:
            if not (entry / _COMPLETE).is_file():  # an incomplete leftover: replace it
                shutil.rmtree(entry, ignore_errors=True)
                staging.rename(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _short_prompt(prompt_ids: array, start_id: int) -> array:
    """The prompt ids without the system turn (everything before the second ``<|im_start|>``)."""
    starts = [index for index, token in enumerate(prompt_ids) if token == start_id]
    return prompt_ids[starts[1] :] if len(starts) > 1 else prompt_ids


def train_toy_guard(path: str | os.PathLike[str], recipe: TinyGuardRecipe | None = None) -> dict[str, Any]:
    """Build the random tiny guard in ``path`` and train it there on the toy rule, in place.

    Returns a report: ``steps``, ``train_seconds`` and ``final_loss`` (mean cross-entropy per answer
    token over the last 20 steps). No cache: :func:`build_trained_guard` is the cached entry point.
    """
    recipe = recipe or TinyGuardRecipe()
    torch = require("torch", extra="local")
    transformers = require("transformers", extra="local")
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.testing.tiny import build_random_guard
    from grvl_sdk.testing.toy_rule import tokenizer_corpus, toy_samples
    from grvl_sdk.trainer.render import RSFTCollator, encode_samples

    path = build_random_guard(path, seed=recipe.seed, vocab_size=recipe.vocab_size, extra_corpus=tokenizer_corpus())
    processor = load_processor(str(path))
    samples = toy_samples(recipe.samples, seed=recipe.seed)
    examples, _ = encode_samples(
        samples,
        processor,
        max_length=None,
        min_pixels=_VISION_PIXELS["min_pixels"],
        max_pixels=_VISION_PIXELS["max_pixels"],
        fast_fraction=recipe.fast_fraction,
        seed=recipe.seed,
    )
    start_id = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    short = [dataclasses.replace(e, prompt_ids=_short_prompt(e.prompt_ids, start_id)) for e in examples]
    collators = (RSFTCollator(short, processor, **_VISION_PIXELS), RSFTCollator(examples, processor, **_VISION_PIXELS))

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(recipe.threads, os.cpu_count() or 1)))
    try:
        torch.manual_seed(recipe.seed)
        model = transformers.AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32)
        visual = getattr(model.model, "visual", None)
        for parameter in visual.parameters() if visual is not None else ():
            parameter.requires_grad_(False)  # images are irrelevant to the rule
        started = time.perf_counter()
        losses = _fit(model, collators, len(examples), recipe, torch)
        train_seconds = time.perf_counter() - started
        model.eval()
        model.save_pretrained(str(path))
    finally:
        torch.set_num_threads(threads)
    tail = losses[-20:]
    return {"steps": recipe.steps, "train_seconds": round(train_seconds, 2), "final_loss": sum(tail) / len(tail)}


def _fit(model: Any, collators: tuple[Any, Any], count: int, recipe: TinyGuardRecipe, torch: Any) -> list[float]:
    """The loop: AdamW, warm-up / constant / cosine schedule, gradient clipping at 1.0, loss on answers only."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.0)
    warmup = max(1.0, recipe.warmup * recipe.steps)
    decay_from = recipe.steps * (1.0 - recipe.decay)

    def scale(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup)
        if step < decay_from:
            return ramp
        return ramp * 0.5 * (1.0 + math.cos(math.pi * (step - decay_from) / max(1.0, recipe.steps - decay_from)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, scale)
    rng = random.Random(recipe.seed)
    order: list[int] = []
    losses: list[float] = []
    short_steps = round(recipe.short_prompt_fraction * recipe.steps)
    model.train()
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:
            fresh = list(range(count))
            rng.shuffle(fresh)
            order.extend(fresh)
        rows, order = order[: recipe.batch_size], order[recipe.batch_size :]
        batch = collators[0 if step < short_steps else 1]([{"index": index} for index in rows])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses
