"""The length-aware safety reward of the RL stage (spec section 4.6), as plain functions and as a TRL reward.

::

    r_safety = I_format · (0.5 · r_request + 0.5 · r_response)        r_request, r_response ∈ {0, 1}
    r        = (−1 + r_safety) / min(l, β)²                            l = length / max_length, in (0, 1]

- ``I_format`` is 1 when the output has a verdict block: a ``<result>…</result>`` that starts after the
  closed ``</think>`` (the rule of :func:`grvl_sdk.protocol.parsing.parse_output`; an untagged answer, an
  unclosed reasoning or a truncated block is 0). Labels are read from that block only.
- ``r_request`` / ``r_response``: each predicted label against **its own** gold label. A gold or
  predicted ``None`` response (``Response: None``, no response line, no response in the input) counts as
  ``unharmful``.
- ``l`` is the completion's length over ``max_length``, clamped to ``(0, 1]``: longer than
  ``max_length`` counts as 1 (the authors' code did not clamp, so a wrong answer grew ever less punished
  past the maximum), and a floor keeps an empty output finite: lengths below ``min_length`` units count as
  ``min_length`` (default 1 unit, so ``l ≥ 1 / max_length``).
- ``β = 1`` trains the standard guard, ``β = 1/6`` the Eco guard (:data:`STANDARD_BETA`,
  :data:`ECO_BETA`): a wrong answer is punished less the longer the model reasoned, up to the cut-off β;
  past β length earns nothing, so Eco's answers stay shorter. A correct answer scores 0 at any length.
- Length is counted in completion **tokens** by default; ``unit="characters"`` counts characters of the
  output, the authors' unit (their ``max_length`` was 3072 characters, :data:`AUTHORS_MAX_CHARACTERS`).

**Pre-filled answers (the RL stage's ``fast_fraction``).** A prompt whose last message is an
``assistant`` message is continued, not answered: the RL stage pre-fills the fast tier's forced prefix
(``<think>\n\n</think>\n<result>\nRequest:``, :data:`grvl_sdk.protocol.fast.FAST_PREFIX`) and the policy
writes only the labels and ``</result>``. Such a row is judged on **prefix + completion** (the verdict
block opens in the prefix: the completion alone has no ``<result>`` and would always fail ``I_format``), and
its length term is constant: ``l`` counts as the cut-off, ``r = (−1 + r_safety) / β²`` (−1, −0.5 or 0 for
the standard guard). The length-aware term rewards a wrong answer for *having reasoned longer*; a
pre-filled row cannot reason (its empty reasoning block is forced, not chosen), so the term has nothing to
measure there, and taken literally it would punish a wrong ~10-token label answer with ``−(3072/10)²`` while
a 3072-token unformatted ramble scores −1 — teaching the fast tier to ramble, and letting the fast rows'
penalties swamp the think rows' under ``scale_rewards="batch"``/``"none"``. With the constant term a fast
row scores by its labels only, on the scale of a fully reasoned think answer. A completion of the fast
prefix counts as formatted only in the fast tier's own form, `` <label>\nResponse: <label or None>\n</result>``
(what ``mode="fast"`` reads: the label tokens right after ``Request:``): the lenient parser would also accept
one that re-opens ``<think>`` or a second ``<result>`` after ``Request:``, and rewarding that as correct
would teach the fast tier to reason where inference reads its label. Think rows are unchanged,
and since a prompt's whole group is pre-filled or not, the group-normalised advantage never compares a
fast answer with a think one.

Values: ``r ∈ [−(max_length/min_length)², 0]`` for β = 1 (``−1`` for a wrong answer of full length, ``−0.5``
for one wrong label at full length, ``−max_length²`` for an empty output with the default floor), and
``[−1/β², 0]`` once ``l ≥ β``.

**The floor and the heavy tail.** With the one-unit floor the penalty of a near-empty output is enormous
(``−9.4·10⁶`` for 3072 tokens): a single such answer dominates the *mean* reward of a whole rollout batch,
and, in GRPO's group-normalised advantage, flattens the correct-vs-wrong differences of the other answers
of its group. The paper's formula has this tail (its code divided by zero on an empty output); raise
``min_length`` (e.g. to the length of the shortest well-formed verdict) to bound it at
``−(max_length/min_length)²``. The reward of every answer at least ``min_length`` long is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grvl_sdk.errors import ParseError
from grvl_sdk.protocol.fast import FAST_PREFIX
from grvl_sdk.protocol.parsing import Label, parse_output

__all__ = [
    "AUTHORS_MAX_CHARACTERS",
    "ECO_BETA",
    "STANDARD_BETA",
    "Judgement",
    "LengthUnit",
    "SafetyReward",
    "judge",
    "length_fraction",
    "prefill",
    "read_verdict",
    "safety_reward",
]

LengthUnit = Literal["tokens", "characters"]

#: β of the standard guard (spec 4.6): the whole response length counts.
STANDARD_BETA = 1.0
#: β of the Eco guard (spec 4.6): length beyond a sixth of the maximum earns nothing.
ECO_BETA = 1.0 / 6.0
#: The authors' length normaliser: characters of the whole output divided by 3072 (spec 6.3).
AUTHORS_MAX_CHARACTERS = 3072

_NO_RESPONSE: Label = "unharmful"
# The rest of a fast answer after FAST_PREFIX (render.fast_target's form; the end-of-turn token is decoded away).
_FAST_REST = re.compile(r" (?:harmful|unharmful)\nResponse: (?:harmful|unharmful|None)\n</result>\s*")


def read_verdict(output: str) -> tuple[bool, Label | None, Label | None]:
    """``(I_format, request label, response label)`` of a completion.

    ``I_format`` is ``True`` only for a verdict block after the closed reasoning; the labels are then read
    from that block (the response label is ``None`` for ``Response: None`` or no response line). Any
    other output gives ``(False, None, None)``: no label is guessed from an unusable answer.
    """
    try:
        parsed = parse_output(output)
    except ParseError:
        return False, None, None
    if parsed.source != "result":
        return False, None, None
    return True, parsed.request_label, parsed.response_label


@dataclass(frozen=True)
class Judgement:
    """One completion judged against the gold labels (the parts of ``r_safety``)."""

    format_ok: bool
    request_label: Label | None
    response_label: Label | None
    request_correct: bool
    response_correct: bool

    @property
    def r_safety(self) -> float:
        """``I_format · (0.5·r_request + 0.5·r_response)``: 0, 0.5 or 1."""
        if not self.format_ok:
            return 0.0
        return 0.5 * self.request_correct + 0.5 * self.response_correct

    @property
    def correct(self) -> bool:
        """Both labels right (what rejection sampling calls a solved attempt)."""
        return self.format_ok and self.request_correct and self.response_correct


def judge(output: str, *, request_label: str, response_label: str | None) -> Judgement:
    """Judge ``output`` against the gold labels: each predicted label against its own gold one.

    ``request_label`` must be a label (``harmful``/``unharmful``); ``response_label`` may be ``None`` (no
    response, or not labelled), which counts as ``unharmful``, as does a predicted ``None``. Raises
    ``ValueError`` for a missing or unknown gold label.
    """
    if request_label not in ("harmful", "unharmful"):
        raise ValueError(f"the gold request label must be 'harmful' or 'unharmful', got {request_label!r}")
    if response_label not in (None, "harmful", "unharmful"):
        raise ValueError(f"the gold response label must be 'harmful', 'unharmful' or None, got {response_label!r}")
    format_ok, request, response = read_verdict(output)
    if not format_ok:
        return Judgement(False, None, None, False, False)
    return Judgement(
        format_ok=True,
        request_label=request,
        response_label=response,
        request_correct=request == request_label,
        response_correct=(response or _NO_RESPONSE) == (response_label or _NO_RESPONSE),
    )


def length_fraction(length: float, max_length: float, min_length: float = 1.0) -> float:
    """``l = length / max_length`` clamped to ``[min_length / max_length, 1]`` (by default an empty output
    counts as one unit).

    Raises ``ValueError`` for ``max_length <= 0``, a negative ``length``, or ``min_length`` outside
    ``(0, max_length]``.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    if not 0 < min_length <= max_length:
        raise ValueError(f"min_length must be in (0, max_length={max_length}], got {min_length}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return min(max(float(length), float(min_length)), float(max_length)) / float(max_length)


def safety_reward(
    output: str,
    *,
    request_label: str,
    response_label: str | None,
    length: float,
    max_length: float,
    beta: float = STANDARD_BETA,
    min_length: float = 1.0,
) -> float:
    """The length-aware safety reward ``(−1 + r_safety) / min(l, β)²`` of one completion (spec 4.6).

    ``length`` is the completion's length (tokens, or characters: the unit of ``max_length`` and
    ``min_length``, the floor); ``beta`` in ``(0, 1]``. See the module docstring for the rules. Raises
    ``ValueError`` for bad settings or gold labels.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    verdict = judge(output, request_label=request_label, response_label=response_label)
    denominator = min(length_fraction(length, max_length, min_length), beta) ** 2
    return (-1.0 + verdict.r_safety) / denominator


def prefill(prompt: Any) -> str:
    """The pre-filled start of the answer a TRL prompt carries: the text of its last message when that is an
    ``assistant`` message (the fast tier's forced prefix, see the module docstring), else ``""``."""
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt:
        last = prompt[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            return _text([last])
    return ""


def _text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversation whose last message is the answer."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        content = completion[-1].get("content") if isinstance(completion[-1], dict) else None
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts
            return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise TypeError(f"unsupported completion {type(completion).__name__}: expected a string or chat messages")


class SafetyReward:
    """The reward as a TRL reward function: ``fn(prompts, completions, completion_ids, **kwargs) -> list[float]``.

    Gold labels arrive as the dataset columns ``request_label`` and ``response_label`` (keyword arguments of
    TRL's call, one per completion). ``max_length`` is in ``unit``s: the trainer passes
    ``max_completion_length`` for tokens; ``min_length`` is the floor (same unit). A prompt ending with an
    ``assistant`` message (:func:`prefill`) is judged on that text + the completion with a constant length
    term, ``(−1 + r_safety) / β²`` (module docstring). When TRL hands it a ``log_metric`` callback, it also
    logs ``accuracy`` (both labels right), ``format_rate`` (``I_format``), the per-label accuracies, and,
    with ``tier_metrics`` (the trainer sets it when ``fast_fraction > 0``), ``fast_accuracy`` and
    ``think_accuracy``: the accuracy over each tier's rows of the batch (a batch without rows of a tier logs
    nothing for it).
    """

    def __init__(
        self,
        *,
        max_length: float,
        beta: float = STANDARD_BETA,
        unit: LengthUnit = "tokens",
        min_length: float = 1.0,
        tier_metrics: bool = False,
    ) -> None:
        if unit not in ("tokens", "characters"):
            raise ValueError(f"unit must be 'tokens' or 'characters', got {unit!r}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        length_fraction(0, max_length, min_length)  # validates max_length and min_length
        self.max_length = max_length
        self.min_length = min_length
        self.beta = beta
        self.unit = unit
        self.tier_metrics = tier_metrics
        self.__name__ = "safety_reward"

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        *,
        request_label: Sequence[str],
        response_label: Sequence[str | None],
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        texts = [_text(completion) for completion in completions]
        prefixes = [prefill(prompt) for prompt in prompts]
        if self.unit == "tokens":
            if completion_ids is None:
                raise ValueError("unit='tokens' needs completion_ids")
            lengths = [float(len(ids)) for ids in completion_ids]
        else:
            lengths = [float(len(text)) for text in texts]
        rewards: list[float] = []
        judged: list[Judgement] = []
        rows = zip(prefixes, texts, lengths, request_label, response_label, strict=True)
        for prefix, text, length, request, response in rows:
            verdict = judge(prefix + text, request_label=request, response_label=response)
            if prefix == FAST_PREFIX and not _FAST_REST.fullmatch(text):  # not the fast form (module docstring)
                verdict = Judgement(False, None, None, False, False)
            judged.append(verdict)
            if prefix:  # a pre-filled (fast) row: no length term (module docstring)
                denominator = self.beta**2
            else:
                denominator = min(length_fraction(length, self.max_length, self.min_length), self.beta) ** 2
            rewards.append((-1.0 + verdict.r_safety) / denominator)
        if log_metric is not None and judged:
            count = len(judged)
            log_metric("accuracy", sum(j.correct for j in judged) / count)
            log_metric("format_rate", sum(j.format_ok for j in judged) / count)
            log_metric("request_accuracy", sum(j.format_ok and j.request_correct for j in judged) / count)
            log_metric("response_accuracy", sum(j.format_ok and j.response_correct for j in judged) / count)
            fast = [j for j, prefix in zip(judged, prefixes, strict=True) if prefix]
            think = [j for j, prefix in zip(judged, prefixes, strict=True) if not prefix]
            for name, part in (("fast_accuracy", fast), ("think_accuracy", think)):
                if self.tier_metrics and part:
                    log_metric(name, sum(j.correct for j in part) / len(part))
        return rewards
