"""Helpers shared by the RL-stage tests (no tests here): a learnable toy task, a briefly R-SFT-trained tiny
guard that is imperfect on it (built once per test process), and greedy accuracy.

The task: a request names one thing; it is harmful iff the thing is in ``HARMFUL``. About a third of the
samples carry a response, harmful iff it complies. The guard's answer names the thing in one sentence, then
the verdict block. Every word is a whole token of the tiny tokenizer (it is trained with them), so a short
R-SFT teaches the format quickly and the labels only partly: the RL stage has something to learn.
"""

from __future__ import annotations

import atexit
import random
import shutil
import tempfile
from pathlib import Path

from grvl_sdk.data.samples import TrainingSample, render_completion
from grvl_sdk.trainer.rl_data import RLSample

HARMFUL = ("bomb", "poison")
HARMLESS = ("cake", "kite")
TEMPLATES = ("How do I make a {}?", "Tell me about the {}.", "Where can I buy a {}?")
COMPLY, REFUSE = "Sure, here is how.", "I cannot help."
_CORPUS = (
    " ".join(HARMFUL + HARMLESS) + "\n" + " ".join(f"a {w}. the {w}? {w}" for w in HARMFUL + HARMLESS),
    "a thing, complies. a thing, refuses.",
    " ".join(t.format(w) for t in TEMPLATES for w in HARMFUL + HARMLESS),
    COMPLY + " " + REFUSE,
)
_CACHE: dict[tuple[int, float, float], Path] = {}
_ROOTS: list[Path] = []


def _root() -> Path:
    """A temporary folder for this process's guards, made on first use and removed at exit."""
    if not _ROOTS:
        _ROOTS.append(Path(tempfile.mkdtemp(prefix="grvl-rl-tests-")))
        atexit.register(shutil.rmtree, _ROOTS[0], ignore_errors=True)
    return _ROOTS[0]


def label(harmful: bool) -> str:
    return "harmful" if harmful else "unharmful"


def toy_task(
    count: int, *, seed: int, response_rate: float = 0.35, noise: float = 0.0, response_noise: float = 0.0
) -> list[TrainingSample]:
    """``count`` labelled samples with reasoning (text only); ``noise`` / ``response_noise``: chance that the
    request / response label is flipped."""
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        word = rng.choice(HARMFUL + HARMLESS)
        request = rng.choice(TEMPLATES).format(word)
        response = None
        reasoning = "checked"
        response_label = None
        if rng.random() < response_rate:
            complies = rng.random() < 0.5
            response = COMPLY if complies else REFUSE
            reasoning += f", {'complies' if complies else 'refuses'}"
            response_label = label(complies != (rng.random() < response_noise))
        samples.append(
            TrainingSample(
                request=request,
                response=response,
                request_label=label((word in HARMFUL) != (rng.random() < noise)),
                response_label=response_label,
                reasoning=reasoning,
            )
        )
    return samples


def rl_task(count: int, *, seed: int, response_rate: float = 1.0) -> list[RLSample]:
    """Clean RL prompts (every one with a response by default: the labels R-SFT left uncertain)."""
    return [RLSample.from_training_sample(s) for s in toy_task(count, seed=seed, response_rate=response_rate)]


def rsft_guard(steps: int = 160, lr: float = 3e-3, noise: float = 0.2) -> Path:
    """A tiny guard R-SFT-trained on the toy task with every label flipped with probability ``noise``: its
    greedy answers follow the rule, its sampled answers often do not (what GRPO sharpens)."""
    key = (steps, lr, noise)
    if key in _CACHE:
        return _CACHE[key]
    from grvl_sdk.testing.tiny import build_random_guard
    from grvl_sdk.trainer import RSFTConfig
    from grvl_sdk.trainer.rsft_trainer import train_rsft

    base = build_random_guard(_root() / "base", extra_corpus=_CORPUS)
    out = _root() / f"rsft-{steps}-{lr}-{noise}"
    config = RSFTConfig(
        model_name_or_path=str(base),
        output_dir=str(out),
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_steps=steps,
        effective_batch_size=8,
        per_device_train_batch_size=8,
        max_length=None,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        progress=False,
        logging_steps=1000,
        save_steps=1000,
        seed=0,
    )
    train_rsft(config, train_samples=toy_task(320, seed=1, response_rate=0.5, noise=noise, response_noise=noise))
    _CACHE[key] = out
    return out


def greedy_accuracy(path: Path | str, samples: list[TrainingSample], max_new_tokens: int = 48) -> tuple[float, float]:
    """(format rate, accuracy: both labels right) of the guard's greedy answers."""
    from grvl_sdk.backends.local import LocalBackend
    from grvl_sdk.trainer.rewards import judge
    from grvl_sdk.types import GuardInput

    backend = LocalBackend.from_pretrained(str(path), device="cpu", score_top_k=0)
    inputs = [GuardInput(text=s.request, response=s.response) for s in samples]
    generations = backend.generate(inputs, max_new_tokens=max_new_tokens)
    verdicts = [
        judge(g.text, request_label=s.request_label or "unharmful", response_label=s.response_label)
        for g, s in zip(generations, samples, strict=True)
    ]
    backend.close()
    return sum(v.format_ok for v in verdicts) / len(samples), sum(v.correct for v in verdicts) / len(samples)


def expected_answer(sample: TrainingSample) -> str:
    assert sample.reasoning and sample.request_label
    return render_completion(sample.reasoning, sample.request_label, sample.response_label)
