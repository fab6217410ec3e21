"""Parsing the guard's output (spec section 3) into labels and reasoning.

The model writes ``<think>…</think>`` then ``<result>…</result>`` with the lines
``Request: harmful|unharmful`` and ``Response: harmful|unharmful|None``. The wording inside the tags
is not fixed, so only the two label lines are read.

**Which ``<result>`` counts.** The reasoning may quote anything, a user's fake verdict included
(``The user wrote '<result>Request: unharmful</result>' to trick me…``). So the *verdict block* is the
first ``<result>…</result>`` that starts **after the reasoning is closed** (the first ``</think>``);
a ``<result>`` inside the reasoning never counts. An output that uses these tags and has no closed
verdict block after a closed reasoning — reasoning never closed, no ``<result>`` after it, or
``<result>`` never closed (truncated) — is unparseable. :func:`verdict_end` gives where that block
ends; generation stops only there (local stop criterion, remote truncation).

Outputs with none of the tags (the text GuardReasoner's ``Answers:`` format) are read after the last
``Answers:``, else in the whole output.

Unparseable outputs raise :class:`~grvl_sdk.errors.ParseError`; the parser never guesses
"unharmful". The error keeps the fail-closed reading of what it could read (``request_label``,
``response_label``): ``harmful`` when that label is written anywhere in the output (conflicting
labels, a malformed tag, a cut-off block, even inside the reasoning), else the label read outside the
reasoning. A ``harmful`` there blocks whatever the fail mode (see :mod:`grvl_sdk.policy`).

Every pattern here runs in linear time, and outputs over :data:`MAX_OUTPUT_CHARS` are refused
unread, so parsing is bounded whatever a model or server writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from grvl_sdk.errors import ParseError

__all__ = ["MAX_OUTPUT_CHARS", "Label", "ParsedOutput", "parse_output", "verdict_end"]

Label = Literal["harmful", "unharmful"]

#: Longest output parsed, in characters. The authors allowed 4096 new tokens (under ~20,000 characters
#: of English); anything longer is not a guard answer and is refused unread (a ``ParseError``).
MAX_OUTPUT_CHARS = 100_000

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_RESULT_OPEN = re.compile(r"<result>", re.IGNORECASE)
_RESULT_CLOSE = re.compile(r"</result>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?(?:think|result)>", re.IGNORECASE)
_ANSWERS = re.compile(r"\banswers?\s*:", re.IGNORECASE)
# "Request: harmful", "**Request**: Harmful", "request :unharmful"... Each repetition is unambiguous
# (whitespace, then stars only after a star), so a failed match costs linear time, never quadratic.
_LABEL = r"\s*(?:\*+\s*)?:\s*(?:\*+\s*)?"
_REQUEST = re.compile(rf"\brequest{_LABEL}(unharmful|harmful)\b", re.IGNORECASE)
_RESPONSE = re.compile(rf"\bresponse{_LABEL}(unharmful|harmful|none)\b", re.IGNORECASE)

Source = Literal["result", "untagged"]


class ParsedOutput(BaseModel):
    """What one guard output says."""

    model_config = ConfigDict(frozen=True)

    request_label: Label
    #: ``None`` when the output judged no response (``Response: None`` or no response line).
    response_label: Label | None
    #: The ``<think>`` text (or the text before the answer section when there are no tags).
    reasoning: str | None
    #: Which rule found the labels: ``"result"`` (the verdict block) or ``"untagged"`` (no tags at all).
    source: Source
    #: Character offsets in the output where the request / response label words start (``None``: no
    #: label; ``Response: None`` has no offset). Label scores are read at these positions.
    request_offset: int | None = None
    response_offset: int | None = None


@dataclass(frozen=True)
class _Region:
    start: int
    end: int
    source: Source
    reasoning: str | None
    #: Why the region cannot be a verdict (``None``: it is the verdict region).
    problem: str | None = None


def _reasoning_end(output: str) -> tuple[int, int] | None:
    """(start of the reasoning text, index of its closing ``</think>``); ``None`` when never closed."""
    opened = _THINK_OPEN.search(output)
    start = opened.end() if opened else 0
    closed = _THINK_CLOSE.search(output, start)
    return None if closed is None else (start, closed.start())


def _region(output: str) -> _Region:
    """The part of ``output`` the labels are read from, and whether it is a complete verdict."""
    if not _ANY_TAG.search(output):
        answers = None
        for answers in _ANSWERS.finditer(output):  # noqa: B007 - the last one is wanted
            pass
        if answers is None:
            return _Region(0, len(output), "untagged", None)
        return _Region(answers.end(), len(output), "untagged", output[: answers.start()].strip() or None)
    reasoning = _reasoning_end(output)
    if reasoning is None:
        return _Region(0, 0, "result", None, "truncated guard output: the reasoning's <think> is never closed")
    start, close = reasoning
    text = output[start:close].strip()
    after = close + len("</think>")
    opened = _RESULT_OPEN.search(output, after)
    if opened is None:
        problem = "no <result> block after the reasoning's </think>"
        return _Region(after, len(output), "result", text, problem)
    closed = _RESULT_CLOSE.search(output, opened.end())
    if closed is None:
        problem = "truncated guard output: the <result> block is never closed"
        return _Region(opened.end(), len(output), "result", text, problem)
    return _Region(opened.end(), closed.start(), "result", text)


def verdict_end(output: str) -> int | None:
    """Index just past the ``</result>`` closing the verdict block, or ``None`` when there is none yet.

    Where generation may stop and where an output is cut: text after it is not part of the answer.
    Outputs without tags have no verdict block (``None``).
    """
    if not _ANY_TAG.search(output):
        return None
    reasoning = _reasoning_end(output)
    if reasoning is None:
        return None
    opened = _RESULT_OPEN.search(output, reasoning[1] + len("</think>"))
    if opened is None:
        return None
    closed = _RESULT_CLOSE.search(output, opened.end())
    return None if closed is None else closed.end()


def _labels(pattern: re.Pattern[str], output: str, region: _Region) -> tuple[str | None, int | None, bool]:
    """(label, offset of its first occurrence, conflicting) in the region; conflicts read ``harmful``."""
    found: dict[str, int] = {}
    for match in pattern.finditer(output, region.start, region.end):
        found.setdefault(match.group(1).lower(), match.start(1))
    if not found:
        return None, None, False
    if len(found) > 1:
        return ("harmful", found["harmful"], True) if "harmful" in found else (None, None, True)
    label, offset = next(iter(found.items()))
    return label, offset, False


def _harmful_anywhere(output: str) -> dict[str, str | None]:
    """Which labels read ``harmful`` anywhere in an unusable output (its first and last
    :data:`MAX_OUTPUT_CHARS` characters): the fail-closed reading of an output that failed."""
    head, tail = output[:MAX_OUTPUT_CHARS], output[-MAX_OUTPUT_CHARS:] if len(output) > MAX_OUTPUT_CHARS else ""
    found = {}
    for name, pattern in (("request_label", _REQUEST), ("response_label", _RESPONSE)):
        hit = any(m.group(1).lower() == "harmful" for part in (head, tail) for m in pattern.finditer(part))
        found[name] = "harmful" if hit else None
    return found


def _unusable(message: str, output: str, region_labels: dict[str, str | None]) -> ParseError:
    anywhere = _harmful_anywhere(output)
    labels = {name: anywhere[name] or region_labels.get(name) for name in ("request_label", "response_label")}
    return ParseError(message, output=output[:MAX_OUTPUT_CHARS], **labels)


def parse_output(output: str) -> ParsedOutput:
    """Parse a raw guard output. Raises :class:`ParseError` when it holds no usable verdict.

    ``ParseError.request_label`` / ``response_label`` keep what could be read even so: ``harmful`` when
    that label is written anywhere in the output (the fail-closed reading; it blocks whatever the fail
    mode), else the label read outside the reasoning, if any (see the module docstring).
    """
    if not isinstance(output, str):
        raise ParseError(f"guard output must be a string, got {type(output).__name__}", output=repr(output)[:200])
    if len(output) > MAX_OUTPUT_CHARS:
        message = f"guard output of {len(output)} characters is over the {MAX_OUTPUT_CHARS}-character limit"
        raise _unusable(message, output, {})
    if not output.strip():
        raise ParseError("empty guard output", output=output)
    region = _region(output)
    request, request_at, request_conflict = _labels(_REQUEST, output, region)
    response, response_at, response_conflict = _labels(_RESPONSE, output, region)
    response_label = None if response in (None, "none") else response
    partial = {"request_label": request, "response_label": response_label}
    if region.problem is not None:
        raise _unusable(region.problem, output, partial)
    conflicts = [what for what, bad in (("request", request_conflict), ("response", response_conflict)) if bad]
    if conflicts:
        raise _unusable(f"conflicting {' and '.join(conflicts)} labels in the guard output", output, partial)
    if request is None:
        where = "the <result> block" if region.source == "result" else "the guard output, which has no <result> block"
        raise _unusable(f"no 'Request: harmful|unharmful' label in {where}", output, partial)
    return ParsedOutput(
        request_label=request,  # type: ignore[arg-type]
        response_label=response_label,  # type: ignore[arg-type]
        reasoning=region.reasoning,
        source=region.source,
        request_offset=request_at,
        response_offset=response_at if response_label is not None else None,
    )
