"""The toy rule the trained tiny guard learns, and the synthetic samples it learns it from.

**The rule.** A request (or a response) is *harmful* when its text contains ``"bomb"`` or ``"poison"``,
case-insensitively, anywhere (``"Bombs"``, ``"POISONED"`` and ``"rat-poison"`` count); anything else is
*unharmful*. Images never matter, and an input without text is unharmful. :func:`toy_label` is the rule
in code, the reference the trained guard is measured against.

:func:`toy_samples` draws seeded synthetic :class:`~grvl_sdk.trainer.TrainingSample` objects: requests
and responses from sentence templates and random word strings over a small English vocabulary (with
near-miss words such as "tomb", "comb", "prison", "potion" as negatives), the trigger words in lower,
Capitalised and UPPER case at any position, with and without a response, with and without an
irrelevant image. Each sample's reasoning is one short sentence per judged text, e.g.
``The request mentions a bomb.`` / ``The response mentions nothing dangerous.``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

__all__ = ["TOY_RULE_WORDS", "tokenizer_corpus", "toy_completion", "toy_label", "toy_reasoning", "toy_samples"]

#: The trigger words of the toy rule (matched case-insensitively, as substrings).
TOY_RULE_WORDS = ("bomb", "poison")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "cake garden bike poem song lamp chair car letter kite boat house computer dog cat shirt map "
    "clock phone tent bread soup painting robot website window door book movie recipe party budget "
    "resume email team tree river camera guitar bottle ticket jacket pizza salad bridge school"
)
# Near misses: close in spelling to the trigger words, but unharmful under the rule.
_NEAR_MISSES = _words(
    "tomb comb boom bottom bamboo womb bonbon prison potion poise person position season poster boots "
    "moisture points bob pony bison"
)
_VERBS = _words(
    "build make fix clean paint find sell draw cook design repair describe hide carry mix buy plant "
    "wrap open test store ship measure explain"
)
_ADJECTIVES = ("small", "red", "old", "cheap", "quiet", "simple", "big", "new", "funny", "green", "safe", "fast")
_PEOPLE = ("friend", "boss", "neighbour", "sister", "teacher", "class", "son", "uncle", "client", "roommate")
_FILLER = _words(
    "the a my your and with for in at to of today please now then quickly maybe very just also home "
    "work night weekend again really"
)
# Phrases with a trigger word; {} is replaced by the trigger in some casing.
_TRIGGER_PHRASES = {
    "bomb": ("a {}", "the {}", "{}s", "a pipe {}", "a car {}", "{}-making", "{} threats", "a {} vest", "{}ing"),
    "poison": ("{}", "rat {}", "the {}", "{}ed", "{}ous", "{}ing", "some {}", "a {} pill", "{}s"),
}
_REQUESTS = (
    "How do I {verb} {x}?",
    "Can you help me {verb} {x}?",
    "Write a {adj} story about {x}.",
    "What is the best way to {verb} {x}?",
    "Tell me about {x}.",
    "Where can I buy {x}?",
    "Explain how {x} works.",
    "Give me tips to {verb} {x} at home.",
    "Is it okay to {verb} {x} near my {person}?",
    "I want to {verb} {x} for my {person}.",
    "{X} for my {person}, how?",
    "My {person} asked about {x}. What should I say?",
    "List five facts about {x}.",
    "Draw {x} in a {adj} style.",
    "Why would anyone {verb} {x}?",
)
_RESPONSES = (
    "Sure, here is how to {verb} {x}.",
    "I cannot help with {x}.",
    "Here are three tips about {x}.",
    "You can {verb} {x} in a few steps.",
    "First, {verb} {x}, then wait.",
    "Sorry, I will not discuss {x}.",
    "{X} is easy to {verb} with a {adj} kit.",
    "Ask your {person} about {x}.",
    "Step one: get {x}. Step two: {verb} it.",
    "That sounds fun! {X} is a great idea.",
)


def tokenizer_corpus() -> tuple[str, ...]:
    """Lines added to the tiny tokenizer's training text for the trained guard: the trigger words in
    every casing (so each becomes one token, with or without a leading space) and the reasoning's words."""
    words = [form for word in TOY_RULE_WORDS for form in (word, word.capitalize(), word.upper())]
    spaced = " ".join(f"{w} {w}\n{w}." for w in words)
    reasoning = [toy_reasoning("bomb poison", "x"), toy_reasoning("x", "bomb"), toy_reasoning("poison")]
    return (spaced, spaced, " ".join(_NOUNS + _VERBS + _NEAR_MISSES), *reasoning)


_SHORT_REPLIES = (
    "No.",
    "Sorry, I won't help.",
    "I cannot help with that.",
    "Okay.",
    "Sure!",
    "Here you go.",
    "Done.",
    "Please ask something else.",
    "Yes, of course.",
    "That is not possible.",
)


def toy_label(text: str | None) -> str:
    """``"harmful"`` when ``text`` contains a word of :data:`TOY_RULE_WORDS` (case-insensitive), else
    ``"unharmful"`` (also for ``None`` or empty text)."""
    lowered = (text or "").lower()
    return "harmful" if any(word in lowered for word in TOY_RULE_WORDS) else "unharmful"


def _mention(text: str | None) -> str:
    lowered = (text or "").lower()
    found = [word for word in TOY_RULE_WORDS if word in lowered]
    if not found:
        return "nothing dangerous"
    return " and ".join("a bomb" if word == "bomb" else word for word in found)


def toy_reasoning(request: str | None, response: str | None = None) -> str:
    """The reasoning the trained guard is taught for an input: one sentence per judged text, e.g.
    ``The request mentions a bomb.`` then, with a response, ``The response mentions nothing dangerous.``"""
    lines = [f"The request mentions {_mention(request)}."]
    if response is not None:
        lines.append(f"The response mentions {_mention(response)}.")
    return "\n".join(lines)


def toy_completion(request: str | None, response: str | None = None) -> str:
    """The whole output the trained guard is taught for an input (reasoning, then the verdict block)."""
    response_label = None if response is None else toy_label(response)
    return (
        f"<think>\n{toy_reasoning(request, response)}\n</think>\n"
        f"<result>\nRequest: {toy_label(request)}\nResponse: {response_label or 'None'}\n</result>"
    )


def _cased(word: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return word
    return word.capitalize() if roll < 0.85 else word.upper()


def _phrase(rng: random.Random, trigger: str) -> str:
    return rng.choice(_TRIGGER_PHRASES[trigger]).format(_cased(trigger, rng))


def _thing(rng: random.Random, triggers: Sequence[str]) -> str:
    if triggers:
        return " and ".join(_phrase(rng, trigger) for trigger in triggers)
    noun = rng.choice(_NEAR_MISSES) if rng.random() < 0.3 else rng.choice(_NOUNS)
    if rng.random() < 0.2:
        noun = f"{rng.choice(_ADJECTIVES)} {noun}"
    return rng.choice(("a {}", "the {}", "my {}", "{}s", "{}")).format(noun)


def _sentence(rng: random.Random, triggers: Sequence[str], templates: Sequence[str]) -> str:
    if rng.random() < 0.25:  # a string of random words, the triggers (if any) anywhere in it
        words = [rng.choice(_FILLER + _NOUNS + _VERBS + _NEAR_MISSES) for _ in range(rng.randint(2, 10))]
        for trigger in triggers:
            words.insert(rng.randint(0, len(words)), _phrase(rng, trigger))
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice((".", "?", "!", ""))
    thing = _thing(rng, triggers)
    return rng.choice(templates).format(
        verb=rng.choice(_VERBS),
        x=thing,
        X=thing[0].upper() + thing[1:],
        adj=rng.choice(_ADJECTIVES),
        person=rng.choice(_PEOPLE),
    )


def _triggers(rng: random.Random, harmful_rate: float) -> tuple[str, ...]:
    if rng.random() >= harmful_rate:
        return ()
    if rng.random() < 0.1:
        return tuple(rng.sample(TOY_RULE_WORDS, 2))
    return (rng.choice(TOY_RULE_WORDS),)


def _image(rng: random.Random) -> Any:
    from PIL import Image

    size = (rng.choice((56, 84, 112)), rng.choice((56, 84)))
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(rng.randint(0, 3)):  # a few rectangles, so images differ in more than colour
        x0, y0 = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        box = (x0, y0, x0 + rng.randint(8, size[0] // 2), y0 + rng.randint(8, size[1] // 2))
        image.paste(tuple(rng.randrange(256) for _ in range(3)), box)
    return image


def _response(rng: random.Random, triggers: Sequence[str]) -> str:
    if rng.random() < 0.2:  # a short answer: a refusal or a bare mention
        if triggers:
            phrase = " and ".join(_phrase(rng, trigger) for trigger in triggers)
            return phrase[0].upper() + phrase[1:] + rng.choice((".", "!", ""))
        return rng.choice(_SHORT_REPLIES)
    return _sentence(rng, triggers, _RESPONSES)


# How a request and its response pair up: (request has a trigger, response has one) and its weight.
# Pairs that disagree are the most frequent, to teach that each text is judged on its own.
_PAIRINGS = (((True, False), 0.3), ((False, True), 0.3), ((True, True), 0.2), ((False, False), 0.2))


def toy_samples(count: int, *, seed: int = 0, harmful_rate: float = 0.5, response_rate: float = 0.6) -> list[Any]:
    """``count`` synthetic training samples labelled by :func:`toy_label`, drawn with ``random.Random(seed)``.

    ``response_rate`` of them have a response; their request and response disagree 60% of the time
    (harmful request and unharmful response, or the reverse), both are harmful 20%, both unharmful 20%.
    ``harmful_rate`` is the chance that a request without a response holds a trigger word. A quarter
    carry an irrelevant image, one in five of those with no request text. Needs Pillow (for the images).
    """
    from grvl_sdk.trainer import TrainingSample

    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        images = (_image(rng),) if rng.random() < 0.25 else ()
        if rng.random() < response_rate:
            ((request_harmful, response_harmful),) = rng.choices([p for p, _ in _PAIRINGS], [w for _, w in _PAIRINGS])
            request_triggers = _triggers(rng, 1.0 if request_harmful else 0.0)
            response = _response(rng, _triggers(rng, 1.0 if response_harmful else 0.0))
        else:
            request_triggers, response = _triggers(rng, harmful_rate), None
        request = None if images and rng.random() < 0.2 else _sentence(rng, request_triggers, _REQUESTS)
        samples.append(
            TrainingSample(
                request=request, response=response, images=images, completion=toy_completion(request, response)
            )
        )
    return samples
