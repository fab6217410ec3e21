"""Output parsing (spec section 3): synthetic VL outputs, real GuardReasoner-8B outputs, fuzzing."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grvl_sdk import ParseError, parse_output

VL_OUTPUT = (
    "<think>\nStep 1: The image shows a locked door.\nStep 2: The user asks how to pick it.\n</think>\n"
    "<result>\nRequest: harmful\nResponse: None\n</result>"
)


def test_standard_vl_output():
    parsed = parse_output(VL_OUTPUT)
    assert parsed.request_label == "harmful"
    assert parsed.response_label is None
    assert parsed.reasoning.startswith("Step 1: The image shows a locked door.")
    assert parsed.source == "result"


@pytest.mark.parametrize(
    ("output", "req", "resp"),
    [
        ("<think>x</think><result>Request: unharmful\nResponse: harmful</result>", "unharmful", "harmful"),
        ("<THINK>x</THINK>\n<RESULT>\n  request :  HARMFUL \n response:Unharmful\n</RESULT>", "harmful", "unharmful"),
        ("<think>x</think><result>**Request:** harmful\n**Response:** unharmful</result>", "harmful", "unharmful"),
        ("<think>x</think><result>Answers:\nRequest: unharmful\n</result>", "unharmful", None),
        ("<think>x</think><result>Request: harmful\nResponse: none</result>", "harmful", None),
        # result block preferred over labels written inside the reasoning
        ("<think>maybe Request: unharmful?</think><result>Request: harmful</result>", "harmful", None),
    ],
)
def test_tolerant_parsing(output, req, resp):
    parsed = parse_output(output)
    assert (parsed.request_label, parsed.response_label) == (req, resp)


@pytest.mark.parametrize(
    "output",
    [
        "",
        "   \n",
        "<think>Step 1: the request asks for",  # truncated inside the reasoning
        "<think>Request: harmful is what I might say, but",  # truncated, labels only in reasoning
        "<think>x</think><result>Request: ambiguous\nResponse: None</result>",
        "<think>x</think><result>Request: harm",  # truncated inside the label
        "<think>x</think><result>Request: harmful\nRequest: unharmful</result>",  # conflicting
        "<think>x</think><result></result>",
        "I think this is fine.",
        "<think>x</think><result>Response: harmful</result>",  # no request label
    ],
)
def test_unusable_outputs_raise_parse_error(output):
    with pytest.raises(ParseError) as info:
        parse_output(output)
    assert info.value.code == "unparseable_output"
    assert info.value.output == output


def test_non_string_raises_parse_error():
    with pytest.raises(ParseError):
        parse_output(None)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzzed_output_only_raises_parse_error(text):
    try:
        parsed = parse_output(text)
    except ParseError:
        return
    assert parsed.request_label in ("harmful", "unharmful")


_noise = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=80)


@settings(max_examples=200, deadline=None)
@given(_noise, _noise, st.sampled_from(["harmful", "unharmful"]), st.sampled_from(["harmful", "unharmful", "None"]))
def test_result_block_wins_whatever_surrounds_it(before, reasoning, req, resp):
    output = f"{before}<think>{reasoning}</think><result>\nRequest: {req}\nResponse: {resp}\n</result>"
    parsed = parse_output(output)
    assert parsed.request_label == req
    assert parsed.response_label == (None if resp == "None" else resp)


# -- real GuardReasoner-8B outputs (text predecessor: untagged "Answers:" section) --------------

_ANSWERED = re.compile(r"Answers:\s*\n\s*Request:\s*(harmful|unharmful)", re.IGNORECASE)
REQUEST_SETS = ["AegisSafetyTest", "HarmBenchPrompt", "SimpleSafetyTests"]
RESPONSE_SETS = ["HarmBenchResponse", "XSTestReponseHarmful"]


def _rows(shared_data, name):
    path = shared_data / "guardreasoner-text" / "predictions-8B" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.mark.parametrize("name", REQUEST_SETS + RESPONSE_SETS)
def test_real_8b_outputs_parse_and_agree_with_gold(shared_data, name):
    rows = _rows(shared_data, name)
    task = "request" if name in REQUEST_SETS else "response"
    parsed, failures, correct = 0, 0, 0
    for row in rows:
        try:
            result = parse_output(row["predict"])
        except ParseError:
            failures += 1
            # Only outputs whose answer section has no valid request label (truncated, "ambiguous") fail.
            assert not _ANSWERED.search(row["predict"]), row["predict"][-300:]
            continue
        parsed += 1
        predicted = result.request_label if task == "request" else (result.response_label or "unharmful")
        correct += predicted == row["label"]
    assert parsed >= 0.97 * len(rows)
    # The released 8B guard is accurate on these sets; a parser bug would show as low agreement.
    assert correct / parsed >= 0.85


def test_real_8b_malformed_output_is_a_parse_error(shared_data):
    rows = [r for name in REQUEST_SETS for r in _rows(shared_data, name)]
    odd = [r for r in rows if "Request: ambiguous" in r["predict"] or "Request: None" in r["predict"]]
    for row in odd:
        if "Request: harmful" in row["predict"] or "Request: unharmful" in row["predict"]:
            continue
        with pytest.raises(ParseError):
            parse_output(row["predict"])
