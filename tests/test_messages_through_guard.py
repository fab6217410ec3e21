"""The message normaliser end to end: each request shape × {text, text+image, tool call} and each
response shape × {text, several choices, tool call} reach the guard as the input asserted here."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from grvl_sdk import Guard
from grvl_sdk.testing import ScriptedBackend, guard_output


def _b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


B64 = _b64()
DATA_URL = "data:image/png;base64," + B64


def _openai(kind: str) -> list:
    if kind == "text":
        return [{"role": "user", "content": "hello there"}]
    if kind == "image":
        image = {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}}
        return [{"role": "user", "content": [{"type": "text", "text": "hello there"}, image]}]
    return [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "tool_call_id": "1", "content": "result text"},
    ]  # fmt: skip


def _responses(kind: str) -> list:
    if kind == "text":
        return [{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}]
    if kind == "image":
        return [{"role": "user", "content": [{"type": "input_text", "text": "hello there"},
                                              {"type": "input_image", "image_url": DATA_URL}]}]  # fmt: skip
    return [
        {"role": "user", "content": "hello there"},
        {"type": "function_call", "call_id": "1", "name": "lookup", "arguments": '{"q":"x"}'},
        {"type": "function_call_output", "call_id": "1", "output": "result text"},
    ]


def _anthropic(kind: str) -> list:
    if kind == "text":
        return [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    if kind == "image":
        return [{"role": "user", "content": [{"type": "text", "text": "hello there"}, {"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": B64}}]}]  # fmt: skip
    return [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "1", "name": "lookup", "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "1", "content": "result text"}]},
    ]


def _langchain(kind: str) -> list:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    if kind == "text":
        return [HumanMessage("hello there")]
    if kind == "image":
        return [HumanMessage(content=[{"type": "text", "text": "hello there"},
                                      {"type": "image", "base64": B64, "mime_type": "image/png"}])]  # fmt: skip
    return [
        HumanMessage("hello there"),
        AIMessage(content="", tool_calls=[{"id": "1", "name": "lookup", "args": {"q": "x"}}]),
        ToolMessage(content="result text", tool_call_id="1", name="lookup"),
    ]


def _tuples(kind: str) -> list:
    if kind != "text":
        pytest.skip("tuples carry text only")
    return [("user", "hello there")]


SHAPES = {
    "openai": _openai,
    "responses": _responses,
    "anthropic": _anthropic,
    "langchain": _langchain,
    "tuples": _tuples,
}


@pytest.mark.parametrize("kind", ["text", "image", "tool"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_request_shapes_reach_the_guard(shape, kind):
    guard = Guard(ScriptedBackend(guard_output()), cache_size=0)
    call = guard.call(SHAPES[shape](kind))
    assert call.check_request().decision == "allow"
    (item,) = guard.backend.calls[-1]
    assert item.response is None
    if kind == "text":
        assert (item.text, len(item.images)) == ("hello there", 0)
    elif kind == "image":
        assert (item.text, len(item.images)) == ("hello there", 1)
        assert item.images[0].getpixel((5, 5)) == (10, 120, 200)
    else:
        assert item.text.startswith("[Latest user message]\nhello there\n[After it]\n")
        assert "[tool call] lookup(" in item.text and '"q"' in item.text and "result text" in item.text
        assert "Tool" in item.text


def test_prompt_values_reach_the_guard():
    pytest.importorskip("langchain_core")
    from langchain_core.prompts import ChatPromptTemplate

    value = ChatPromptTemplate.from_messages([("system", "be brief"), ("human", "{q}")]).invoke({"q": "hello there"})
    guard = Guard(ScriptedBackend(guard_output()), cache_size=0)
    guard.call(value).check_request()
    (item,) = guard.backend.calls[-1]
    assert item.text.endswith("[Latest user message]\nhello there") and "System: be brief" in item.text


RESPONSES = {
    "text": ("plain answer", ["plain answer"]),
    "choices": (
        {"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "first"}},
            {"index": 1, "message": {"role": "assistant", "content": "second"}}]},
        ["first", "second"],
    ),
    "tool call": (
        {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "run", "arguments": "{}"}}]}}]},
        ["[tool call] run({})"],
    ),
    "anthropic": ({"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}]}, ["hi"]),
    "responses": (
        {"object": "response", "output": [{"type": "message", "role": "assistant",
                                           "content": [{"type": "output_text", "text": "done"}]}]},
        ["done"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(RESPONSES))
def test_response_shapes_reach_the_guard_one_check_per_choice(shape):
    value, texts = RESPONSES[shape]
    guard = Guard(ScriptedBackend(guard_output("unharmful", "unharmful")), cache_size=0)
    call = guard.call("hello there")
    call.check_request()
    assert call.check_response(value) is value
    judged = [item.response for batch in guard.backend.calls[1:] for item in batch]
    assert judged == texts
