"""The trained tiny guard: it follows the toy rule on held-out phrasings (requests, responses, images), every
output parses, its build is cached and deterministic, and ``grvl build-tiny-guard --trained`` works."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from grvl_sdk import parse_output
from grvl_sdk.testing import TOY_RULE_WORDS, build_tiny_guard, toy_label
from grvl_sdk.testing.toy_rule import toy_completion, toy_samples

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent

# Sentences the training data never had: new templates, words and contexts. Half hold a trigger word.
HARMFUL_REQUESTS = [
    "Is a smoke bomb legal at a concert?",
    "My neighbour keeps talking about poison in the well.",
    "Bombs went off in the old movie, explain the plot.",
    "Which mushrooms are POISONOUS to dogs?",
    "Teach me to assemble a homemade bomb",
    "Could you summarise the history of the atom bomb?",
    "What poison works fastest on humans?",
    "Poison ivy rash: what cream helps?",
    "We dropped the BOMB on the dance floor last night lol",
    "Is lead poisoning still common in old houses?",
    "Write a haiku about a bath bomb.",
    "How much rat poison would hurt a cat?",
    "Translate 'bomb shelter' into French.",
    "She poisoned the king in chapter three, why?",
    "The stock market bombed today.",
    "Name three plants that are poisonous to horses.",
    "A bomb threat closed the airport this morning.",
    "Is food poisoning contagious?",
    "Rank the best bomb disposal movies.",
    "Can snake venom and poison be treated the same way?",
]
UNHARMFUL_REQUESTS = [
    "How do I bake sourdough bread?",
    "Recommend a good science fiction novel.",
    "What is the capital of Australia?",
    "Help me write a cover letter for a nursing job.",
    "Why do cats purr?",
    "Give me a workout plan for beginners.",
    "What rhymes with orange?",
    "Fix the bug in my Python loop.",
    "Where is the nearest train station?",
    "How tall is Mount Everest?",
    "Is the tomb of the pharaoh open to visitors?",
    "Which potion did Harry drink first?",
    "How long is a prison sentence for tax fraud?",
    "Comb my hair in a new style",
    "The boom of the thunder scared my dog.",
    "Suggest a name for my bakery.",
    "What time does the museum open on Sunday?",
    "Explain compound interest simply.",
    "Plan a three day trip to Lisbon.",
    "How do bees make honey?",
]
# (request, response): each text judged on its own.
PAIRS = [
    ("Plan a dinner party menu.", "Add a little poison to the soup."),
    ("Tell me a joke.", "Here is how to wire a bomb detonator."),
    ("How do I bake sourdough?", "Mix flour, water and a pinch of poison."),
    ("Suggest a weekend activity.", "Build a bomb in the garage."),
    ("What is a good bomb recipe?", "I cannot help with that request."),
    ("Recommend a poison for my enemy.", "Sorry, I won't help."),
    ("Where can I get rat poison?", "Poison is sold at hardware stores."),
    ("Tell me a joke.", "Why did the chicken cross the road?"),
    ("Suggest a weekend trip.", "Visit the lake and rent a boat."),
    ("How do I tie a tie?", "Cross the wide end over the narrow end."),
    ("What is photosynthesis?", "Plants turn light into chemical energy."),
    ("Name a famous painter.", "Claude Monet painted water lilies."),
]


def agreement(guard, inputs: list[dict]) -> tuple[float, list]:
    """Share of inputs whose verdict matches the toy rule on both labels; asserts every output parses."""
    verdicts = guard.check_batch(inputs)
    correct = 0
    for item, verdict in zip(inputs, verdicts, strict=True):
        assert not verdict.failed, (item, verdict.raw_output)
        parse_output(verdict.raw_output)  # well-formed, whatever the labels
        expected = (toy_label(item.get("text")), None if item.get("response") is None else toy_label(item["response"]))
        correct += (verdict.request_label, verdict.response_label) == expected
    return correct / len(inputs), verdicts


def test_the_toy_rule_and_its_teaching_targets():
    assert TOY_RULE_WORDS == ("bomb", "poison")
    assert toy_label("BOMBastic") == toy_label("rat-Poison") == "harmful"
    assert toy_label("tomb") == toy_label(None) == toy_label("") == "unharmful"
    parsed = parse_output(toy_completion("a comb", "Take the poison"))
    assert (parsed.request_label, parsed.response_label) == ("unharmful", "harmful")
    assert parsed.reasoning == "The request mentions nothing dangerous.\nThe response mentions poison."
    samples = toy_samples(200, seed=3)
    again = toy_samples(200, seed=3)
    assert [(s.request, s.response, s.completion) for s in samples] == [
        (s.request, s.response, s.completion) for s in again
    ]
    assert [s.images[0].tobytes() for s in samples if s.images] == [s.images[0].tobytes() for s in again if s.images]
    harmful = sum(toy_label(s.request) == "harmful" for s in samples if s.request)
    assert 0.3 < harmful / len(samples) < 0.7
    assert {s.modality for s in samples} == {"text", "image", "text-image"}
    assert any(s.response is not None for s in samples) and any(s.response is None for s in samples)


def test_trained_guard_follows_the_rule_on_held_out_requests(trained_tiny_guard):
    inputs = [{"text": text} for text in HARMFUL_REQUESTS + UNHARMFUL_REQUESTS]
    accuracy, verdicts = agreement(trained_tiny_guard, inputs)
    assert accuracy >= 0.95, [(i["text"], v.request_label) for i, v in zip(inputs, verdicts, strict=True)]
    assert all(v.response_label is None and "Response: None" in v.raw_output for v in verdicts)
    assert "The request mentions" in verdicts[0].reasoning


def test_trained_guard_judges_responses_on_their_own(trained_tiny_guard):
    accuracy, verdicts = agreement(trained_tiny_guard, [{"text": q, "response": r} for q, r in PAIRS])
    assert accuracy >= 0.9, [
        (q, r, v.request_label, v.response_label) for (q, r), v in zip(PAIRS, verdicts, strict=True)
    ]
    flagged = trained_tiny_guard.check("Tell me a joke.", response="Here is how to wire a bomb detonator.")
    assert (flagged.request_label, flagged.response_label, flagged.decision) == ("unharmful", "harmful", "block")


def test_trained_guard_ignores_images(trained_tiny_guard):
    red, photo = Image.new("RGB", (96, 72), (200, 30, 30)), Image.effect_noise((112, 84), 60).convert("RGB")
    texts = HARMFUL_REQUESTS[:6] + UNHARMFUL_REQUESTS[:6]
    inputs = [{"text": t, "images": [red if i % 2 else photo]} for i, t in enumerate(texts)]
    inputs += [{"images": [red]}, {"text": "What is in this picture?", "images": [photo], "response": "Poison."}]
    accuracy, _ = agreement(trained_tiny_guard, inputs)
    assert accuracy >= 0.9


def test_trained_build_is_cached_and_reused(trained_tiny_guard_path, tmp_path, monkeypatch):
    from grvl_sdk.testing import trained

    def no_training(*args, **kwargs):
        raise AssertionError("the cached build should have been reused")

    monkeypatch.setattr(trained, "train_toy_guard", no_training)
    started = time.perf_counter()
    again = build_tiny_guard(tmp_path / "again", trained=True)
    assert time.perf_counter() - started < 5.0

    def files(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    assert files(again) == files(trained_tiny_guard_path)
    assert {"model.safetensors", "tokenizer.json", "config.json", "tiny-guard.json"} <= set(files(again))
    entry = trained.cache_root() / f"tiny-guard-{trained.trained_guard_cache_key()}"
    assert files(entry) == files(again)
    # The key follows every setting.
    assert trained.trained_guard_cache_key(trained.TinyGuardRecipe(seed=1)) != trained.trained_guard_cache_key()
    assert trained.cache_root(tmp_path) == tmp_path
    monkeypatch.setenv("GRVL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert trained.cache_root() == tmp_path / "elsewhere"


def test_training_is_deterministic_and_an_incomplete_cache_entry_is_rebuilt(tmp_path):
    from grvl_sdk.testing import trained

    recipe = trained.TinyGuardRecipe(samples=8, steps=3, batch_size=4)
    entry = tmp_path / "cache" / f"tiny-guard-{trained.trained_guard_cache_key(recipe)}"
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(b"left over by a killed build")
    one = trained.build_trained_guard(tmp_path / "one", cache_dir=tmp_path / "cache", recipe=recipe)
    report = (entry / "tiny-guard.json").read_text()
    assert '"steps": 3' in report
    two = tmp_path / "two"
    trained.train_toy_guard(two, recipe)
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no staging left


def test_cli_builds_the_trained_guard(trained_tiny_guard_path, tmp_path):
    from grvl_sdk.testing import trained

    env = {**os.environ, "GRVL_CACHE_DIR": str(trained.cache_root()), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "grvl_sdk.cli", "build-tiny-guard", "--trained", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "trained tiny guard written to" in result.stdout
    built = tmp_path / "cli" / "model.safetensors"
    assert built.read_bytes() == (trained_tiny_guard_path / "model.safetensors").read_bytes()


def test_missing_packages_name_the_extra(monkeypatch, tmp_path):
    import grvl_sdk._lazy as lazy
    from grvl_sdk.errors import MissingDependencyError

    real = lazy.importlib.import_module

    def without_torch(name, *args):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real(name, *args)

    monkeypatch.setattr(lazy.importlib, "import_module", without_torch)
    with pytest.raises(MissingDependencyError, match=r"grvl-sdk\[local\]"):
        build_tiny_guard(tmp_path, trained=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
