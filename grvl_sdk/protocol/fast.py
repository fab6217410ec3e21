"""The fast tier: the verdict without reasoning (``mode="fast"``).

After the normal prompt, the assistant turn is forced to start with an empty reasoning block and an
open result::

    <think>\\n\\n</think>\\n<result>\\nRequest:

and the request label is read from the model's probabilities of the two label continuations,
`` harmful`` and `` unharmful``. When a response is given, the chosen request label and
``\\nResponse:`` are forced next and the response label is read the same way. Nothing is sampled:
one forward pass per part. The label is the likelier continuation; the score is

    score = P(harmful) / (P(harmful) + P(unharmful))

(the same definition as :mod:`grvl_sdk.scores`), and ``P(harmful) + P(unharmful)`` — the *label
mass* — says how much the model wanted to write a label at all (near 0: the model was not trained to
answer without reasoning, or a server ignored the forced prefix).

Where the probabilities come from:

- **local backend**: the exact probability of each label's whole token sequence (a label may be
  several tokens, e.g. `` un`` + ``harm`` + ``ful``: their conditional probabilities are multiplied),
  from the logits (:mod:`grvl_sdk.backends._fast_local`);
- **remote backend**: an assistant-prefix continuation with ``max_tokens=1`` and ``top_logprobs``; a
  label's probability is the total probability of the first tokens that spell its start (a server gives
  no more without generating further); a ``harmful`` missing from the list is given the most it can
  hold, never 0 (fail-closed), see :func:`branch_logprobs`.

A fast output is written in the protocol's own form (``<think>\\n\\n</think>\\n<result>\\nRequest:
harmful\\nResponse: unharmful\\n</result>``) with the label probabilities as the label tokens'
alternatives, so parsing, scores, the policy and the audit log treat it like any other output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from grvl_sdk.protocol.parsing import Label
from grvl_sdk.types import Generation, TokenLogprobs

__all__ = [
    "FAST_PREFIX",
    "LABELS",
    "RESPONSE_CUE",
    "LabelLogprobs",
    "assistant_prefix",
    "branch_logprobs",
    "chosen_label",
    "fast_generation",
    "is_fast_output",
    "label_mass",
]

#: The forced start of the assistant turn: an empty reasoning block, an open result, the request cue.
FAST_PREFIX = "<think>\n\n</think>\n<result>\nRequest:"
#: Forced after the request label when a response is judged.
RESPONSE_CUE = "\nResponse:"
_END = "\n</result>"
#: The label words, as continuations (a space follows the cue's colon, as in the paper's outputs).
LABELS: tuple[Label, Label] = ("harmful", "unharmful")

#: (log P(harmful continuation), log P(unharmful continuation)) of one part: unnormalised, both <= 0.
LabelLogprobs = tuple[float, float]


def assistant_prefix(request_label: Label | None = None) -> str:
    """The forced assistant text before a label: up to ``Request:`` (no label yet), or with the
    request label and ``\\nResponse:`` (to read the response label)."""
    if request_label is None:
        return FAST_PREFIX
    return f"{FAST_PREFIX} {request_label}{RESPONSE_CUE}"


def chosen_label(logprobs: LabelLogprobs) -> Label:
    """The likelier label (``harmful`` on a tie: fail-closed)."""
    harmful, unharmful = logprobs
    return "harmful" if harmful >= unharmful else "unharmful"


def fast_generation(
    request: LabelLogprobs,
    response: LabelLogprobs | None,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: float,
) -> Generation:
    """The fast output as a :class:`Generation`: the protocol's text with the chosen labels, and the
    label probabilities as the alternatives at each label token (``response=None``: no response was
    judged, the output ends with ``Response: None``). ``completion_tokens``: the forced and label tokens
    the model read (none was sampled)."""
    for pair in (request, response):
        if pair is not None and not all(isinstance(v, float) and v <= 0.0 for v in pair):
            raise ValueError(f"label log-probabilities must be floats <= 0, got {pair!r}")
    request_label = chosen_label(request)
    tokens: list[str] = [FAST_PREFIX, f" {request_label}"]
    steps: dict[int, dict[str, float]] = {1: {f" {label}": value for label, value in zip(LABELS, request, strict=True)}}
    if response is None:
        tokens += [RESPONSE_CUE, " None"]
    else:
        tokens += [RESPONSE_CUE, f" {chosen_label(response)}"]
        steps[3] = {f" {label}": value for label, value in zip(LABELS, response, strict=True)}
    tokens.append(_END)

    def alternatives(step: int) -> dict[str, float]:
        return dict(steps.get(step, {}))

    return Generation(
        text="".join(tokens),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        finished=True,
        logprobs=TokenLogprobs(tokens=tuple(tokens), alternatives=alternatives),
    )


def is_fast_output(generation: Generation) -> bool:
    """True when ``generation`` is a fast-tier output (it starts with the forced empty reasoning block)
    — a backend that ignored ``Decoding(tier="fast")`` and reasoned is caught by this."""
    return generation.text.startswith(FAST_PREFIX)


def label_mass(generation: Generation) -> float | None:
    """``P(harmful) + P(unharmful)`` at the request label of a fast output (the smaller of the two
    parts when a response was judged); ``None`` without label probabilities."""
    logprobs = generation.logprobs
    if logprobs is None:
        return None
    masses = []
    for step in (1, 3):
        found = logprobs.alternatives(step) if step < len(logprobs.tokens) else {}
        values = [found[f" {label}"] for label in LABELS if f" {label}" in found]
        if len(values) == 2:
            masses.append(sum(math.exp(v) for v in values))
    return min(masses) if masses else None


def branch_logprobs(alternatives: Mapping[str, float]) -> LabelLogprobs | None:
    """(log P(harmful), log P(unharmful)) from one step's top alternatives (a server's
    ``top_logprobs`` after a forced cue): each label's probability is the total of the tokens that
    spell its start (`` harmful``, `` harm``, `` h`` / `` unharmful``, `` un``...; case ignored; the
    leading space may be spelled ``Ġ``; a whitespace-only token is ambiguous and counts for neither).
    ``None`` when no alternative spells either label (the server did not continue the forced prefix).

    A label that no listed alternative spells is not known to be improbable — only to be below the
    list's cut-off — so it is read fail-closed: ``unharmful`` gets ``-inf``, ``harmful`` gets the
    largest probability it can have, ``min(smallest listed probability, 1 − listed total)`` (``-inf``
    when the list holds all the probability). Raises ``ValueError`` on a log-probability that is not
    <= 0."""
    mass = {"harmful": 0.0, "unharmful": 0.0}
    listed = 0.0
    smallest = 1.0
    for token, logprob in alternatives.items():
        value = float(logprob)
        if not value <= 0.0:
            raise ValueError(f"log-probability {logprob!r} of token {token!r} is not <= 0")
        listed += math.exp(value)
        smallest = min(smallest, math.exp(value))
        if token.startswith("\u0120"):  # a byte-level BPE spelling of the leading space ("Ġharmful")
            token = " " + token[1:]
        rest = token.lstrip().lower()
        if not rest or not token[:1].isspace():
            continue  # the label follows the cue's colon after a space
        for word in LABELS:
            if word.startswith(rest) or rest.startswith(word):
                mass[word] += math.exp(value)
                break
    if mass["harmful"] == 0.0 and mass["unharmful"] == 0.0:
        return None
    if mass["harmful"] == 0.0:  # below the list's cut-off: its largest possible probability (fail-closed)
        mass["harmful"] = max(0.0, min(smallest, 1.0 - listed))
    return tuple(math.log(mass[w]) if mass[w] > 0 else -math.inf for w in LABELS)  # type: ignore[return-value]
