"""Parsing the guard's output (spec section 3) into labels and reasoning.

The model writes ``<think>…</think>`` then ``<result>…</result>`` with the lines
``Request: harmful|unharmful`` and ``Response: harmful|unharmful|None``. The wording inside the tags
is not fixed, so only the two label lines are read. Rules, strictest first:

1. the first closed ``<result>…</result>`` block;
2. an unclosed ``<result>`` (output cut after it): the text after it;
3. text after a closed ``</think>``;
4. no ``<think>`` at all (e.g. text GuardReasoner's ``Answers:`` section): the text after the last
   ``Answers:``, else the whole output.

A ``<think>`` that never closes and no ``<result>`` means a truncated output. No request label, or two
different request labels in the same region, raise :class:`~grvl_sdk.errors.ParseError`; the parser
never guesses "unharmful".
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from grvl_sdk.errors import ParseError

__all__ = ["Label", "ParsedOutput", "parse_output"]

Label = Literal["harmful", "unharmful"]

_FLAGS = re.IGNORECASE | re.DOTALL
_THINK = re.compile(r"<think>(.*?)</think>", _FLAGS)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_RESULT = re.compile(r"<result>(.*?)</result>", _FLAGS)
_RESULT_OPEN = re.compile(r"<result>", re.IGNORECASE)
_ANSWERS = re.compile(r"\banswers?\s*:", re.IGNORECASE)
# "Request: harmful", "**Request**: Harmful", "request :unharmful" ...
_REQUEST = re.compile(r"\brequest\s*\**\s*:\s*\**\s*(unharmful|harmful)\b", re.IGNORECASE)
_RESPONSE = re.compile(r"\bresponse\s*\**\s*:\s*\**\s*(unharmful|harmful|none)\b", re.IGNORECASE)


class ParsedOutput(BaseModel):
    """What one guard output says."""

    model_config = ConfigDict(frozen=True)

    request_label: Label
    #: ``None`` when the output judged no response (``Response: None`` or no response line).
    response_label: Label | None
    #: The ``<think>`` text (or the text before the answer section when there are no tags).
    reasoning: str | None
    #: Which rule found the labels: ``"result"``, ``"result-unclosed"``, ``"after-think"``, ``"untagged"``.
    source: Literal["result", "result-unclosed", "after-think", "untagged"]


def _single(pattern: re.Pattern[str], region: str, what: str, output: str) -> str | None:
    found = {m.group(1).lower() for m in pattern.finditer(region)}
    if len(found) > 1:
        raise ParseError(f"conflicting {what} labels in the guard output: {sorted(found)}", output=output)
    return found.pop() if found else None


def _answer_region(output: str) -> tuple[str, str, str | None]:
    """(region holding the labels, the rule used, reasoning)."""
    think = _THINK.search(output)
    reasoning = think.group(1).strip() if think else None
    closed = _RESULT.search(output)
    if closed:
        return closed.group(1), "result", reasoning
    opened = _RESULT_OPEN.search(output)
    if opened:
        return output[opened.end() :], "result-unclosed", reasoning
    if think:
        return output[think.end() :], "after-think", reasoning
    if _THINK_OPEN.search(output):
        raise ParseError("truncated guard output: <think> never closed and no <result> block", output=output)
    answers = list(_ANSWERS.finditer(output))
    if answers:
        start = answers[-1].start()
        return output[answers[-1].end() :], "untagged", output[:start].strip() or None
    return output, "untagged", None


def parse_output(output: str) -> ParsedOutput:
    """Parse a raw guard output. Raises :class:`ParseError` when it holds no usable request label."""
    if not isinstance(output, str):
        raise ParseError(f"guard output must be a string, got {type(output).__name__}", output=repr(output))
    if not output.strip():
        raise ParseError("empty guard output", output=output)
    region, source, reasoning = _answer_region(output)
    request = _single(_REQUEST, region, "request", output)
    if request is None:
        raise ParseError(f"no 'Request: harmful|unharmful' label in the guard output ({source})", output=output)
    response = _single(_RESPONSE, region, "response", output)
    return ParsedOutput(
        request_label=request,  # type: ignore[arg-type]
        response_label=None if response in (None, "none") else response,  # type: ignore[arg-type]
        reasoning=reasoning,
        source=source,  # type: ignore[arg-type]
    )
