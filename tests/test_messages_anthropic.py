"""grvl_sdk.messages with Anthropic Messages API shapes, as dicts and as real ``anthropic`` SDK objects."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from grvl_sdk.errors import InputError
from grvl_sdk.messages import Delta, Message, RemoteImage, chunk_deltas, response_messages, to_messages

B64 = "iVBORw0KGgo="
BASE64_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "unit": "°C"}}
TOOL_USE_TEXT = '[tool call] get_weather({"city":"Paris","unit":"°C"})'


@functools.cache
def _event_adapter() -> Any:
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    return TypeAdapter(RawMessageStreamEvent)


def _sdk_object(kind: str, data: dict[str, Any]) -> Any:
    pytest.importorskip("anthropic", reason="the anthropic SDK is not installed: dict shapes only")
    if kind == "message":
        from anthropic.types import Message as AnthropicMessage

        return AnthropicMessage.model_validate(data)
    if kind == "event":
        return _event_adapter().validate_python(data)
    raise AssertionError(kind)


@pytest.fixture(params=["dict", "sdk"])
def shape(request: pytest.FixtureRequest):
    def make(kind: str, data: dict[str, Any]) -> Any:
        return data if request.param == "dict" else _sdk_object(kind, data)

    return make


def _message(*content: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


# -- request side ------------------------------------------------------------------------------------


def test_text_only():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]},
    ]
    assert to_messages(messages) == [Message(role="user", text="hi"), Message(role="assistant", text="hello")]


def test_text_and_images():
    message = {"role": "user", "content": [BASE64_IMAGE, URL_IMAGE, {"type": "text", "text": "which is a cat?"}]}
    assert to_messages([message]) == [
        Message(
            role="user",
            text="which is a cat?",
            images=(f"data:image/png;base64,{B64}", RemoteImage("https://example.com/cat.jpg")),
        )
    ]


def test_tool_use_and_tool_results_split_into_tool_turns():
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, TOOL_USE]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "15"}, BASE64_IMAGE],
                },
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "timeout", "is_error": True},
                {"type": "tool_result", "tool_use_id": "toolu_9"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert to_messages(messages) == [
        Message(role="user", text="weather?"),
        Message(role="assistant", text=f"Let me check.\n{TOOL_USE_TEXT}"),
        Message(role="tool", text="15", images=(f"data:image/png;base64,{B64}",), name="get_weather"),
        Message(role="tool", text="timeout", name="get_weather"),
        Message(role="tool", text=""),
        Message(role="user", text="thanks"),
    ]


def test_thinking_is_text_and_redacted_thinking_adds_nothing():
    content = [
        {"type": "thinking", "thinking": "The user wants...", "signature": "sig"},
        {"type": "redacted_thinking", "data": "EncRypTed"},
        {"type": "text", "text": "Here."},
    ]
    assert to_messages([{"role": "assistant", "content": content}]) == [
        Message(role="assistant", text="The user wants...\nHere.")
    ]


def test_server_tool_use_is_a_tool_call():
    block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}
    assert to_messages([{"role": "assistant", "content": [block]}]) == [
        Message(role="assistant", text='[tool call] web_search({"query":"q"})')
    ]


def test_history_with_sdk_content_blocks(shape):
    """``messages.append({"role": "assistant", "content": response.content})``: SDK block objects."""
    reply = shape("message", _message({"type": "text", "text": "Checking.", "citations": None}, TOOL_USE))
    content = reply["content"] if isinstance(reply, dict) else reply.content
    out = to_messages(
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "15"}]},
        ]
    )
    assert out == [
        Message(role="user", text="weather?"),
        Message(role="assistant", text=f"Checking.\n{TOOL_USE_TEXT}"),
        Message(role="tool", text="15", name="get_weather"),
    ]


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
            "'document' content",
        ),
        ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "file_id"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png"}},
            r"source\.data: base64 image data",
        ),
        ({"type": "image", "source": {"type": "url", "url": "/etc/passwd"}}, "http\\(s\\)://"),
        (
            {"type": "search_result", "source": "s", "title": "t", "content": []},
            "unsupported content part type 'search_result'",
        ),
        ({"type": "container_upload", "file_id": "f"}, "unsupported content part type 'container_upload'"),
        ({"type": "tool_use", "id": "t", "input": {}}, "tool call has no function name"),
        ({"type": "tool_use", "id": "t", "name": "f", "input": {"x": object()}}, "not JSON-serialisable"),
    ],
)
def test_unreadable_blocks_are_refused(block, match):
    with pytest.raises(InputError, match=match) as info:
        to_messages(
            [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "x"}, block]}]
        )
    assert info.value.details["index"] == 1
    assert info.value.details["field"].startswith("content[1]")


def test_tool_result_outside_a_user_message_or_nested_is_refused():
    result = {"type": "tool_result", "tool_use_id": "t", "content": "x"}
    with pytest.raises(InputError, match="belongs in a user message"):
        to_messages([{"role": "assistant", "content": [result]}])
    with pytest.raises(InputError, match="belongs in a user message"):
        to_messages([{"role": "user", "content": [{**result, "content": [result]}]}])


# -- response side -----------------------------------------------------------------------------------


def test_response_text_only(shape):
    value = shape("message", _message({"type": "text", "text": "Hello"}, {"type": "text", "text": "again"}))
    assert response_messages(value) == [Message(role="assistant", text="Hello\nagain")]


def test_response_thinking_text_and_tool_use(shape):
    value = shape(
        "message",
        _message(
            {"type": "thinking", "thinking": "plan", "signature": "s"},
            {"type": "text", "text": "Calling."},
            TOOL_USE,
            stop_reason="tool_use",
        ),
    )
    assert response_messages(value) == [Message(role="assistant", text=f"plan\nCalling.\n{TOOL_USE_TEXT}")]


def test_response_refusal_stop_reason_keeps_what_was_said(shape):
    value = shape("message", _message({"type": "text", "text": "I can"}, stop_reason="refusal"))
    assert response_messages(value) == [Message(role="assistant", text="I can")]
    assert response_messages(shape("message", _message(stop_reason="refusal"))) == [Message(role="assistant", text="")]


def test_response_server_tool_result_is_refused(shape):
    block = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    with pytest.raises(InputError, match="'web_search_tool_result'"):
        response_messages(shape("message", _message(block)))


# -- stream events -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "message_start", "message": _message()}, []),
        ({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, []),
        (
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}},
            [Delta(text="Hi")],
        ),
        (
            {"type": "content_block_start", "index": 1, "content_block": {**TOOL_USE, "input": {}}},
            [Delta(text="[tool call] get_weather")],
        ),
        (
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
            [Delta(text="Hel")],
        ),
        (
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
            [Delta(text='{"ci')],
        ),
        (
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
            [Delta(text="hm")],
        ),
        ({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}, []),
        ({"type": "content_block_stop", "index": 0}, []),
        (
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 3},
            },
            [],
        ),
        ({"type": "message_stop"}, []),
    ],
)
def test_stream_events(shape, event, expected):
    assert chunk_deltas(shape("event", event)) == expected


def test_stream_ping_and_unknown_delta():
    assert chunk_deltas({"type": "ping"}) == []
    with pytest.raises(InputError, match="unsupported delta type 'image_delta'"):
        chunk_deltas({"type": "content_block_delta", "index": 0, "delta": {"type": "image_delta"}})
    with pytest.raises(InputError, match="'web_search_tool_result' block cannot be judged"):
        chunk_deltas({"type": "content_block_start", "index": 0, "content_block": {"type": "web_search_tool_result"}})


def test_stream_accumulates_text_and_tool_call(shape):
    events = [
        {"type": "message_start", "message": _message()},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {**TOOL_USE, "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "message_stop"},
    ]
    text = "".join(d.text for e in events for d in chunk_deltas(shape("event", e)))
    assert text == 'Let me check.[tool call] get_weather{"city":"Paris"}'
