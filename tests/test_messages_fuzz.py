"""grvl_sdk.messages under hypothesis: arbitrary nested JSON-like values (biased toward the keys and
type names the readers look at) give ``Message`` / ``Delta`` lists or an ``InputError``, never another
exception."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grvl_sdk.errors import InputError
from grvl_sdk.messages import Delta, Message, RemoteImage, chunk_deltas, response_messages, to_messages

KEYS = [
    "role", "content", "type", "text", "refusal", "name", "arguments", "args", "input", "id", "call_id",
    "tool_call_id", "tool_use_id", "tool_calls", "function", "function_call", "custom", "invalid_tool_calls",
    "tool_call_chunks", "additional_kwargs", "audio", "image_url", "image", "url", "source", "source_type",
    "base64", "data", "mime_type", "media_type", "file_id", "choices", "message", "delta", "index", "output",
    "object", "summary", "reasoning", "thinking", "partial_json", "content_block", "item", "candidates",
    "parts", "inline_data", "functionCall", "function_response", "output_text",
]  # fmt: skip
WORDS = [
    "user", "human", "assistant", "ai", "model", "system", "developer", "tool", "function", "chat", "message",
    "text", "input_text", "output_text", "refusal", "reasoning", "thinking", "redacted_thinking", "image_url",
    "input_image", "image", "tool_call", "tool_call_chunk", "tool_use", "server_tool_use", "tool_result",
    "function_call", "function_call_output", "custom_tool_call", "custom", "text-plain", "input_audio", "file",
    "base64", "url", "response", "chat.completion.chunk", "AIMessageChunk", "item_reference",
    "response.output_text.delta", "response.output_item.added", "response.audio.delta", "content_block_delta",
    "content_block_start", "message_start", "text_delta", "input_json_delta", "https://x/y.png",
    "data:image/png;base64,AAAA", "/etc/passwd", "image/png",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=5)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(WORDS)
)
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=12,
)
FUZZ = settings(
    max_examples=int(os.environ.get("GRVL_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Valid inputs to mutate: a mutation of a realistic shape reaches deeper than random JSON does.
_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
REQUEST_SEEDS: list[Any] = [
    [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": "https://x"}}],
        },
        {"role": "assistant", "content": None, "tool_calls": [_CALL], "refusal": None},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r"}]},
    ],
    [
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "h"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}]}],
        },
    ],
    [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "t"}, {"type": "input_image", "image_url": "data:,"}],
        },
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "o"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]},
        (
            "human",
            [{"type": "image", "base64": "AA", "mime_type": "image/png"}, {"type": "reasoning", "reasoning": "r"}],
        ),
        {
            "type": "ai",
            "content": "",
            "tool_calls": [{"name": "f", "args": {"a": 1}, "id": "i"}],
            "tool_call_chunks": [],
        },
        {"role": "model", "parts": [{"text": "t"}, {"function_call": {"name": "f", "args": {}}}]},
    ],
]
RESPONSE_SEEDS: list[Any] = [
    {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a", "tool_calls": [_CALL]}},
            {"index": 1, "text": "b"},
        ]
    },
    {
        "object": "response",
        "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "o"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]},
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
        ],
    },
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "t"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}],
    },
    {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "t"}]}}]},
]
CHUNK_SEEDS: list[Any] = [
    {
        "choices": [
            {
                "index": 0,
                "delta": {"content": "a", "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]},
            }
        ]
    },
    {"type": "response.output_item.added", "item": {"type": "function_call", "name": "f", "arguments": ""}},
    {"type": "response.output_text.delta", "delta": "d"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}},
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "name": "f", "id": "t", "input": {}},
    },
    {"type": "message_start", "message": {"role": "assistant", "content": []}},
    {
        "type": "AIMessageChunk",
        "content": [{"type": "text", "text": "t"}],
        "tool_call_chunks": [{"name": "f", "args": "{"}],
    },
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*prefix, i)))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    items = list(value)
    items[head] = _replace(items[head], rest, new)
    return tuple(items) if isinstance(value, tuple) else items


def _mutated(seeds: list[Any]) -> st.SearchStrategy[Any]:
    """A seed with one to three sub-values replaced by random JSON-like values."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        value = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            path = draw(st.sampled_from(_paths(value)))
            value = _replace(value, path, draw(json_like))
        return value

    return build()


def _check_messages(value: Any, reader: Any) -> None:
    try:
        out = reader(value)
    except InputError:
        return
    assert isinstance(out, list)
    for message in out:
        assert isinstance(message, Message)
        assert message.role in ("system", "user", "assistant", "tool")
        assert isinstance(message.text, str)
        assert isinstance(message.images, tuple)
        assert message.name is None or isinstance(message.name, str)
        for image in message.images:
            assert isinstance(image, (str, RemoteImage))


@FUZZ
@given(json_like)
def test_to_messages_fuzz(value):
    _check_messages(value, to_messages)


@FUZZ
@given(_mutated(REQUEST_SEEDS))
def test_to_messages_mutated_fuzz(value):
    _check_messages(value, to_messages)


@FUZZ
@given(json_like | _mutated(RESPONSE_SEEDS))
def test_response_messages_fuzz(value):
    _check_messages(value, response_messages)


@FUZZ
@given(json_like | _mutated(CHUNK_SEEDS))
def test_chunk_deltas_fuzz(value):
    try:
        out = chunk_deltas(value)
    except InputError:
        return
    assert isinstance(out, list)
    for delta in out:
        assert isinstance(delta, Delta)
        assert isinstance(delta.index, int)
        assert isinstance(delta.text, str)
