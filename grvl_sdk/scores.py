"""Label scores: the guard's own probability of ``harmful`` where it wrote a label.

At the position where the model wrote ``Request: <label>`` (and ``Response: <label>``) in the block the
parser reads, the next-token distribution splits into a *harmful* branch (tokens spelling the start of
``harmful``) and an *unharmful* branch (``unharmful``). The score is::

    score = P(harmful branch) / (P(harmful branch) + P(unharmful branch))

read from the top alternatives the backend kept at that step (the local backend keeps the top
:data:`~grvl_sdk._constants.SCORE_TOP_K` log-probabilities at every step that may start a label, i.e.
after a token ending in ``:``, ``*`` or whitespace; a remote server returns ``top_logprobs`` for every
token). An alternative outside that top list counts as probability 0, so a very confident label scores
exactly 0.0 or 1.0.

What a score is not: it is conditioned on the reasoning the model wrote before the label (greedy
decoding), it is not calibrated (a 0.9 does not mean 90% of such inputs are harmful), and it is not
comparable across models. Calibrate it on your own data before using it as a threshold.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right

from grvl_sdk.errors import ParseError
from grvl_sdk.protocol.parsing import parse_output
from grvl_sdk.types import TokenLogprobs

__all__ = ["TokenLogprobs", "label_scores"]

logger = logging.getLogger("grvl_sdk")

_HARMFUL = "harmful"
_UNHARMFUL = "unharmful"


def _branch(rest: str) -> str | None:
    rest = rest.lower()
    for word in (_HARMFUL, _UNHARMFUL):
        if word.startswith(rest) or rest.startswith(word):
            return word
    return None


def _score_at(logprobs: TokenLogprobs, starts: list[int], char: int) -> float | None:
    step = bisect_right(starts, char) - 1
    if step < 0 or step >= len(logprobs.tokens):
        return None
    prefix = logprobs.tokens[step][: char - starts[step]]
    mass = {_HARMFUL: 0.0, _UNHARMFUL: 0.0}
    for token, logprob in logprobs.alternatives(step).items():
        if not isinstance(token, str) or not token.startswith(prefix) or len(token) == len(prefix):
            continue
        value = float(logprob)
        if not (value <= 0.0):  # a log-probability is at most 0; NaN fails this too
            raise ValueError(f"log-probability {logprob!r} of token {token!r} is not <= 0")
        word = _branch(token[len(prefix) :])
        if word is not None:
            mass[word] += math.exp(value)
    total = mass[_HARMFUL] + mass[_UNHARMFUL]
    return mass[_HARMFUL] / total if total > 0 else None


def label_scores(logprobs: TokenLogprobs | None) -> tuple[float | None, float | None]:
    """(request score, response score) of one output; ``None`` where no label or no logprobs.

    The labels are found by :func:`grvl_sdk.parsing.parse_output` on the generated tokens' text (so the
    same verdict block counts); a ``Response: None`` label has no score. Malformed log-probabilities
    (not numbers, positive, not finite) give no score: never an exception.
    """
    if logprobs is None or not logprobs.tokens:
        return None, None
    try:
        starts: list[int] = []
        position = 0
        for token in logprobs.tokens:
            starts.append(position)
            position += len(token)
        parsed = parse_output("".join(logprobs.tokens))
        return tuple(  # type: ignore[return-value]
            None if offset is None else _score_at(logprobs, starts, offset)
            for offset in (parsed.request_offset, parsed.response_offset)
        )
    except ParseError:
        return None, None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        logger.warning("malformed log-probabilities, no label scores: %s: %s", type(exc).__name__, exc)
        return None, None
