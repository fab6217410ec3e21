"""grvl_sdk.messages: the package rules across sources (one conversation in every shape), inputs of
every kind, Gemini shapes, images, and the refusals (each an ``InputError`` naming index and field)."""

from __future__ import annotations

import base64
import dataclasses
import io
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from grvl_sdk.errors import GRVLError, InputError
from grvl_sdk.images import load_image
from grvl_sdk.messages import Delta, Message, RemoteImage, chunk_deltas, response_messages, to_messages

DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def _png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- one conversation, every source ------------------------------------------------------------------

EXPECTED = [
    Message(role="system", text="Be helpful."),
    Message(role="user", text="What is in this picture, and the weather?", images=(DATA_URL,)),
    Message(role="assistant", text='[tool call] get_weather({"city":"Paris"})'),
    Message(role="tool", text="sunny", name="get_weather"),
    Message(role="assistant", text="A cat. It is sunny."),
]
QUESTION = "What is in this picture, and the weather?"

OPENAI_CHAT = [
    {"role": "system", "content": "Be helpful."},
    {
        "role": "user",
        "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": DATA_URL}}],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "assistant", "content": "A cat. It is sunny."},
]
OPENAI_RESPONSES = [
    {"role": "developer", "content": "Be helpful."},
    {
        "role": "user",
        "content": [{"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": DATA_URL}],
    },
    {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
    {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat. It is sunny."}]},
]
ANTHROPIC = [
    {"role": "system", "content": "Be helpful."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": DATA_URL.split(",")[1]}},
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]}],
    },
    {"role": "assistant", "content": [{"type": "text", "text": "A cat. It is sunny."}]},
]
LANGCHAIN_DICTS = [
    ("system", "Be helpful."),
    (
        "human",
        [
            {"type": "text", "text": QUESTION},
            {"type": "image", "base64": DATA_URL.split(",")[1], "mime_type": "image/png"},
        ],
    ),
    {
        "type": "ai",
        "content": "",
        "tool_calls": [{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}],
    },
    {"type": "tool", "content": "sunny", "tool_call_id": "c1"},
    ("ai", "A cat. It is sunny."),
]
GEMINI_AND_SDK = [
    {"role": "system", "parts": [{"text": "Be helpful."}]},
    {
        "role": "user",
        "parts": [{"text": QUESTION}, {"inline_data": {"mime_type": "image/png", "data": DATA_URL.split(",")[1]}}],
    },
    {"role": "model", "parts": [{"function_call": {"name": "get_weather", "args": {"city": "Paris"}}}]},
    {"role": "tool", "name": "get_weather", "content": "sunny"},
    {"role": "model", "parts": [{"text": "A cat. It is sunny."}]},
]


@pytest.mark.parametrize(
    "messages",
    [OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC, LANGCHAIN_DICTS, GEMINI_AND_SDK],
    ids=["openai-chat", "openai-responses", "anthropic", "langchain", "gemini"],
)
def test_the_same_conversation_in_every_shape(messages):
    assert to_messages(messages) == EXPECTED


def test_shapes_can_be_mixed_in_one_list():
    mixed = [OPENAI_CHAT[0], LANGCHAIN_DICTS[1], ANTHROPIC[2], ANTHROPIC[3], OPENAI_RESPONSES[4]]
    assert to_messages(mixed) == EXPECTED


# -- inputs of every kind ----------------------------------------------------------------------------


def test_single_values():
    assert to_messages("hi") == [Message(role="user", text="hi")]
    assert to_messages({"role": "user", "content": "hi"}) == [Message(role="user", text="hi")]
    assert to_messages(("user", "hi")) == [Message(role="user", text="hi")]
    assert to_messages(SimpleNamespace(role="assistant", content="x")) == [Message(role="assistant", text="x")]
    assert to_messages(["user", "hi"]) == [Message(role="user", text="user"), Message(role="user", text="hi")]
    assert to_messages(("hi", "there")) == [Message(role="user", text="hi"), Message(role="user", text="there")]
    assert to_messages([]) == []


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("user", "user"),
        ("human", "user"),
        ("User", "user"),
        ("assistant", "assistant"),
        ("ai", "assistant"),
        ("model", "assistant"),
        ("system", "system"),
        ("developer", "system"),
        ("tool", "tool"),
        ("function", "tool"),
    ],
)
def test_roles(role, expected):
    assert to_messages([{"role": role, "content": "x"}]) == [Message(role=expected, text="x")]


def test_empty_messages_and_empty_parts():
    out = to_messages(
        [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": None},
            {"role": "user", "content": ["", {"type": "text", "text": ""}, "a"]},
        ]
    )
    assert out == [Message(role="user", text=""), Message(role="assistant", text=""), Message(role="user", text="a")]


def test_values_are_frozen_and_keyword_only():
    message = Message(role="user", text="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.text = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Message("user", "x")  # type: ignore[misc]
    assert Delta() == Delta(index=0, text="")
    assert hash(RemoteImage("https://x")) == hash(RemoteImage("https://x"))


def test_response_side_generic_values():
    assert response_messages("done") == [Message(role="assistant", text="done")]
    assert response_messages({"content": "c"}) == [Message(role="assistant", text="c")]
    assert response_messages({"text": "t"}) == [Message(role="assistant", text="t")]
    assert response_messages(SimpleNamespace(content=[{"type": "text", "text": "o"}])) == [
        Message(role="assistant", text="o")
    ]
    assert response_messages(
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}
    ) == [Message(role="assistant", text="[tool call] f({})")]


def test_stream_side_generic_values():
    assert chunk_deltas("") == [Delta(text="")]
    assert chunk_deltas("abc") == [Delta(text="abc")]
    assert chunk_deltas({"content": "c"}) == [Delta(text="c")]
    assert chunk_deltas(SimpleNamespace(text="t")) == [Delta(text="t")]


def test_a_whole_message_as_a_chunk_keeps_its_tool_calls():
    message = {"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    assert chunk_deltas(message) == [Delta(text="x\n[tool call] f({})")]
    with pytest.raises(InputError, match="images in a stream chunk"):
        chunk_deltas({"content": [{"type": "image_url", "image_url": DATA_URL}]})


def test_own_messages_pass_through():
    user, answer = Message(role="user", text="u", images=(DATA_URL,)), Message(role="assistant", text="a")
    assert to_messages([user, "more"]) == [user, Message(role="user", text="more")]
    assert to_messages(user) == [user]
    assert response_messages(answer) == [answer]
    with pytest.raises(InputError, match="a response must be an assistant message"):
        response_messages(user)


def test_a_text_field_is_the_content_when_there_is_none():
    assert to_messages([{"role": "user", "text": "hi"}]) == [Message(role="user", text="hi")]
    assert to_messages([{"role": "user", "content": "c", "text": "ignored duplicate"}]) == [
        Message(role="user", text="c")
    ]


# -- Gemini ------------------------------------------------------------------------------------------


def test_gemini_candidates_and_stream():
    response = {
        "candidates": [
            {"index": 1, "content": {"role": "model", "parts": [{"text": "second"}]}},
            {
                "index": 0,
                "content": {
                    "role": "model",
                    "parts": [{"text": "thought", "thought": True}, {"functionCall": {"name": "f", "args": {"a": 1}}}],
                },
            },
            {"index": 2, "finish_reason": "SAFETY"},
        ]
    }
    assert response_messages(response) == [
        Message(role="assistant", text='thought\n[tool call] f({"a":1})'),
        Message(role="assistant", text="second"),
        Message(role="assistant", text=""),
    ]
    chunk = {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "He"}]}}]}
    assert chunk_deltas(chunk) == [Delta(index=0, text="He")]


def test_gemini_function_response_and_refusals():
    out = to_messages(
        [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ok": True}}}, {"text": "next"}]}]
    )
    assert out == [Message(role="tool", text='{"ok":true}', name="f"), Message(role="user", text="next")]
    with pytest.raises(InputError, match="MIME type 'audio/wav'"):
        to_messages([{"role": "user", "parts": [{"inline_data": {"mime_type": "audio/wav", "data": "AA"}}]}])
    with pytest.raises(InputError, match=r"message 0: parts\[0\]: a part that is not text"):
        to_messages([{"role": "user", "parts": [{"file_data": {"file_uri": "gs://b/x.png"}}]}])


# -- images ------------------------------------------------------------------------------------------


def test_built_data_urls_load_with_load_image():
    data = _png_base64()
    out = to_messages(
        [
            ("user", [{"type": "image", "base64": data, "mime_type": "image/png"}, {"type": "image", "base64": data}]),
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}],
            },
        ]
    )
    images = [image for message in out for image in message.images]
    assert images == [f"data:image/png;base64,{data}", f"data:;base64,{data}", f"data:image/png;base64,{data}"]
    assert all(load_image(image).size == (4, 3) for image in images)


def test_sdk_image_form_passes_sources_through(tmp_path, rgb_image):
    path = tmp_path / "a.png"
    rgb_image.save(path)
    raw = path.read_bytes()
    parts = [{"type": "image", "image": value} for value in (path, str(path), raw, rgb_image, "https://x/y.png")]
    (message,) = to_messages([{"role": "user", "content": parts}])
    assert message.images == (path, str(path), raw, rgb_image, RemoteImage("https://x/y.png"))


@pytest.mark.parametrize("url", ["/etc/passwd", "file:///etc/passwd", "ftp://x/y.png", "iVBORw0KGgoAAAANSUhEUg", "", 7])
def test_wire_image_urls_must_be_http_or_data(url):
    with pytest.raises(InputError, match=r"message 0: content\[0\]\.image_url\.url: image URL must be"):
        to_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "match", "index", "field"),
    [
        ([{"role": "critic", "content": "x"}], "message 0: role: unknown role 'critic'", 0, "role"),
        (["ok", {"content": "x"}], "message 1: role: message has no role", 1, "role"),
        (
            [{"role": "user", "content": 5}],
            "message 0: content: content must be a string or a list of parts, got int",
            0,
            "content",
        ),
        (
            [{"role": "user", "content": [3]}],
            r"content\[0\]: a content part must be a string or an object, got int",
            0,
            "content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 1}]}],
            r"content\[0\]\.text: must be a string, got int",
            0,
            "content[0].text",
        ),
        ([{"role": "user", "content": [{"foo": 1}]}], "content part has no type", 0, "content[0]"),
        (
            [{"role": "user", "content": [{"type": "hologram"}]}],
            "unsupported content part type 'hologram'",
            0,
            "content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}],
            "'input_audio' content \\(audio\\) cannot be judged",
            0,
            "content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
            "'file' content \\(a file\\)",
            0,
            "content[0]",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}],
            "tool call has no function name",
            0,
            "tool_calls[0].function",
        ),
        ([{"role": "assistant", "tool_calls": {"id": "c"}}], "must be a list of tool calls", 0, "tool_calls"),
        ([{"role": "assistant", "tool_calls": ["f"]}], "a tool call must be an object", 0, "tool_calls[0]"),
        ([{"role": "assistant", "content": "x", "refusal": 3}], "refusal: must be a string", 0, "refusal"),
        ([{"role": "assistant", "content": None, "audio": {"id": "audio_1"}}], "audio cannot be judged", 0, "audio"),
        ([{"role": "tool", "name": 3, "content": "x"}], "name: must be a string", 0, "name"),
        ([1.5], "a message must be a string, a \\(role, content\\) tuple or an object, got float", 0, None),
    ],
)
def test_request_refusals_name_index_and_field(messages, match, index, field):
    with pytest.raises(InputError, match=match) as info:
        to_messages(messages)
    assert isinstance(info.value, GRVLError)
    assert info.value.details["index"] == index
    assert info.value.details["field"] == field


@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        b"bytes",
        ["a list"],
        {"nothing": "here"},
        {"choices": "x"},
        {"choices": [{"index": "0", "message": {}}]},
    ],
)
def test_response_refusals(value):
    with pytest.raises(InputError):
        response_messages(value)


def test_response_of_another_role_is_refused():
    with pytest.raises(InputError, match="a response must be an assistant message"):
        response_messages({"choices": [{"index": 0, "message": {"role": "user", "content": "x"}}]})


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"abc", "bytes chunks are decoded by the stream reader"),
        (bytearray(b"abc"), "bytes chunks are decoded by the stream reader"),
        (None, "cannot read the text of a stream chunk"),
        ({"foo": 1}, "cannot read the text of a stream chunk"),
        ({"choices": [{"index": 0, "delta": {"content": 5}}]}, r"choice 0: delta\.content: must be a string"),
        ({"choices": [{"index": 0}]}, "has no delta"),
        (
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"name": 1}}]}}]},
            r"function\.name: must be a string",
        ),
        ({"type": "response.output_text.delta", "delta": None}, r"event 0: delta: must be a string"),
    ],
)
def test_chunk_refusals(value, match):
    with pytest.raises(InputError, match=match):
        chunk_deltas(value)


def test_to_messages_refuses_bytes_and_unreadable_prompt_values():
    class BrokenPrompt:
        def to_messages(self) -> Any:
            raise RuntimeError("boom")

        def to_string(self) -> str:
            return ""

    with pytest.raises(InputError, match="bytes are not a message"):
        to_messages(b"hi")
    with pytest.raises(InputError, match="cannot read the prompt's messages: boom"):
        to_messages(BrokenPrompt())
