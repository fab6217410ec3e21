"""grvl_sdk.messages with OpenAI shapes: Chat Completions and the Responses API, as dicts and as real
``openai`` SDK objects (``model_validate``), which must give identical results."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from grvl_sdk.errors import InputError
from grvl_sdk.messages import Delta, Message, RemoteImage, chunk_deltas, response_messages, to_messages

DATA_URL = "data:image/png;base64,iVBORw0KGgo="
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


@functools.cache
def _event_adapter() -> Any:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    return TypeAdapter(ResponseStreamEvent)


def _sdk_object(kind: str, data: dict[str, Any]) -> Any:
    """The real ``openai`` object for ``data`` (skips when ``openai`` is not installed)."""
    pytest.importorskip("openai", reason="the openai SDK is not installed: dict shapes only")

    if kind == "completion":
        from openai.types.chat import ChatCompletion

        return ChatCompletion.model_validate(data)
    if kind == "chunk":
        from openai.types.chat import ChatCompletionChunk

        return ChatCompletionChunk.model_validate(data)
    if kind == "message":
        from openai.types.chat import ChatCompletionMessage

        return ChatCompletionMessage.model_validate(data)
    if kind == "response":
        from openai.types.responses import Response

        return Response.model_validate(data)
    if kind == "event":
        return _event_adapter().validate_python(data)
    if kind == "legacy":
        from openai.types import Completion

        return Completion.model_validate(data)
    raise AssertionError(kind)


@pytest.fixture(params=["dict", "sdk"])
def shape(request: pytest.FixtureRequest):
    """``shape(kind, data)``: the dict itself, or the SDK object built from it."""

    def make(kind: str, data: dict[str, Any]) -> Any:
        return data if request.param == "dict" else _sdk_object(kind, data)

    return make


def _completion(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt", "choices": list(choices)}


def _choice(index: int, **message: Any) -> dict[str, Any]:
    return {"index": index, "finish_reason": "stop", "logprobs": None, "message": {"role": "assistant", **message}}


def _chunk(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt", "choices": list(choices)}


def _delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": None}


# -- Chat Completions: request side ------------------------------------------------------------------


def test_chat_text_only_every_role():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "No jokes."}]},
        {"role": "user", "content": "hi", "name": "alice"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]},
    ]
    assert to_messages(messages) == [
        Message(role="system", text="Be brief."),
        Message(role="system", text="No jokes."),
        Message(role="user", text="hi"),
        Message(role="assistant", text="hello\nthere"),
    ]


def test_chat_text_and_images():
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": DATA_URL}},
            {"type": "image_url", "image_url": "HTTP://example.com/b.jpg"},
            {"type": "text", "text": "please"},
        ],
    }
    assert to_messages([message]) == [
        Message(
            role="user",
            text="compare\nplease",
            images=(RemoteImage("https://example.com/a.png"), DATA_URL, RemoteImage("HTTP://example.com/b.jpg")),
        )
    ]


def test_chat_images_in_system_and_tool_roles():
    image = {"type": "image_url", "image_url": {"url": DATA_URL}}
    out = to_messages(
        [
            {"role": "system", "content": [{"type": "text", "text": "rules"}, image]},
            {"role": "tool", "tool_call_id": "x", "content": [image]},
        ]
    )
    assert out == [
        Message(role="system", text="rules", images=(DATA_URL,)),
        Message(role="tool", text="", images=(DATA_URL,)),
    ]


def test_chat_tool_calls_and_results_with_names_from_ids():
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                WEATHER_CALL,
                {"id": "call_2", "type": "custom", "custom": {"name": "grep", "input": "foo"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"role": "tool", "tool_call_id": "unknown", "content": "?"},
    ]
    assert to_messages(messages) == [
        Message(role="user", text="weather?"),
        Message(role="assistant", text='[tool call] get_weather({"city":"Paris"})\n[tool call] grep(foo)'),
        Message(role="tool", text="sunny", name="get_weather"),
        Message(role="tool", text="a\nb", name="grep"),
        Message(role="tool", text="?"),
    ]


def test_chat_legacy_function_call_and_function_role():
    messages = [
        {"role": "assistant", "content": "Checking.", "function_call": {"name": "lookup", "arguments": '{"q": 1}'}},
        {"role": "function", "name": "lookup", "content": "found"},
    ]
    assert to_messages(messages) == [
        Message(role="assistant", text='Checking.\n[tool call] lookup({"q": 1})'),
        Message(role="tool", text="found", name="lookup"),
    ]


def test_chat_refusal_part_and_field():
    messages = [
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "assistant", "content": None, "refusal": "No."},
    ]
    assert to_messages(messages) == [
        Message(role="assistant", text="I can't help with that."),
        Message(role="assistant", text="No."),
    ]


def test_chat_sdk_message_object_in_a_request(shape):
    """``completion.choices[0].message`` appended to the history, as people do."""
    assistant = shape("message", {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL]})
    out = to_messages(
        [{"role": "user", "content": "hi"}, assistant, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    )
    assert out == [
        Message(role="user", text="hi"),
        Message(role="assistant", text='Let me check.\n[tool call] get_weather({"city":"Paris"})'),
        Message(role="tool", text="ok", name="get_weather"),
    ]


# -- Chat Completions: response side -----------------------------------------------------------------


def test_completion_text_only(shape):
    value = shape("completion", _completion(_choice(0, content="Hello!")))
    assert response_messages(value) == [Message(role="assistant", text="Hello!")]


def test_completion_several_choices_in_index_order(shape):
    value = shape(
        "completion",
        _completion(
            _choice(2, content=None, refusal="I can't."),
            _choice(0, content="first"),
            _choice(1, content=None, tool_calls=[WEATHER_CALL]),
        ),
    )
    assert response_messages(value) == [
        Message(role="assistant", text="first"),
        Message(role="assistant", text='[tool call] get_weather({"city":"Paris"})'),
        Message(role="assistant", text="I can't."),
    ]


def test_completion_tool_call_with_text_and_legacy_function_call(shape):
    value = shape(
        "completion",
        _completion(
            _choice(0, content="Sure.", function_call={"name": "f", "arguments": "{}"}, tool_calls=[WEATHER_CALL])
        ),
    )
    assert response_messages(value) == [
        Message(role="assistant", text='Sure.\n[tool call] f({})\n[tool call] get_weather({"city":"Paris"})')
    ]


def test_completion_with_no_choices_is_empty(shape):
    assert response_messages(shape("completion", _completion())) == []


def test_completion_audio_is_refused(shape):
    audio = {"id": "a", "data": "AAAA", "expires_at": 1, "transcript": "hi"}
    with pytest.raises(InputError, match=r"choice 0: message\.audio: audio cannot be judged"):
        response_messages(shape("completion", _completion(_choice(0, content=None, audio=audio))))


def test_legacy_completion_choices_text(shape):
    data = {
        "id": "cmpl",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 1, "text": "b", "finish_reason": "stop", "logprobs": None},
            {"index": 0, "text": "a", "finish_reason": "stop", "logprobs": None},
        ],
    }
    assert response_messages(shape("legacy", data)) == [
        Message(role="assistant", text="a"),
        Message(role="assistant", text="b"),
    ]


# -- Chat Completions: stream side -------------------------------------------------------------------


def test_chunk_text_refusal_and_tool_fragments_per_choice(shape):
    chunk = shape(
        "chunk",
        _chunk(
            _delta(0, content="Hel"),
            _delta(1, refusal="I can"),
            _delta(
                2,
                tool_calls=[
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ],
            ),
            _delta(3, tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
            _delta(4, role="assistant"),
        ),
    )
    assert chunk_deltas(chunk) == [
        Delta(index=0, text="Hel"),
        Delta(index=1, text="I can"),
        Delta(index=2, text="[tool call] f"),
        Delta(index=3, text='{"a":'),
        Delta(index=4, text=""),
    ]


def test_chunk_without_choices_gives_nothing(shape):
    chunk = _chunk()
    chunk["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    assert chunk_deltas(shape("chunk", chunk)) == []


def test_stream_of_two_choices_accumulates_per_choice(shape):
    chunks = [
        _chunk(_delta(0, role="assistant", content=""), _delta(1, role="assistant", content="")),
        _chunk(_delta(1, content="Sec")),
        _chunk(_delta(0, content="Fir")),
        _chunk(_delta(0, content="st"), _delta(1, content="ond")),
        _chunk(
            _delta(
                1, tool_calls=[{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]
            )
        ),
        _chunk(_delta(1, tool_calls=[{"index": 0, "function": {"arguments": "{}"}}])),
    ]
    texts: dict[int, str] = {}
    for chunk in chunks:
        for delta in chunk_deltas(shape("chunk", chunk)):
            texts[delta.index] = texts.get(delta.index, "") + delta.text
    assert texts == {0: "First", 1: "Second[tool call] f{}"}


# -- Responses API: request side ---------------------------------------------------------------------


def test_responses_input_items():
    items = [
        "plain string item",
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": DATA_URL, "detail": "auto"},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAA"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "22C"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "sh", "input": "ls"},
        {
            "type": "custom_tool_call_output",
            "call_id": "c2",
            "output": [
                {"type": "input_text", "text": "a.txt"},
                {"type": "input_image", "image_url": "https://x/s.png"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "done", "annotations": []}],
        },
        {"type": "message", "role": "developer", "content": "dev"},
    ]
    assert to_messages(items) == [
        Message(role="user", text="plain string item"),
        Message(role="user", text="look", images=(DATA_URL,)),
        Message(role="assistant", text="thinking"),
        Message(role="assistant", text='[tool call] get_weather({"city":"Paris"})'),
        Message(role="tool", text="22C", name="get_weather"),
        Message(role="assistant", text="[tool call] sh(ls)"),
        Message(role="tool", text="a.txt", images=(RemoteImage("https://x/s.png"),), name="sh"),
        Message(role="assistant", text="done"),
        Message(role="system", text="dev"),
    ]


def test_responses_function_call_output_name_field_wins():
    out = to_messages([{"type": "function_call_output", "call_id": "zz", "name": "search", "output": "r"}])
    assert out == [Message(role="tool", text="r", name="search")]


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"type": "input_image", "file_id": "file-1", "detail": "auto"}, "file_id"),
        ({"type": "input_file", "file_id": "file-1"}, "'input_file' content \\(a file\\)"),
        ({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, "'input_audio' content \\(audio\\)"),
    ],
)
def test_responses_unreadable_parts_are_refused(item, match):
    with pytest.raises(InputError, match=match):
        to_messages([{"role": "user", "content": [{"type": "input_text", "text": "x"}, item]}])


def test_responses_item_reference_and_unknown_items_are_refused():
    with pytest.raises(InputError, match="message 1: an item_reference"):
        to_messages(["hi", {"type": "item_reference", "id": "msg_1"}])
    with pytest.raises(InputError, match=r"message 0: type: unsupported message or item type 'web_search_call'"):
        to_messages([{"type": "web_search_call", "id": "ws", "status": "completed"}])


# -- Responses API: response side --------------------------------------------------------------------


def _response(*output: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1.0,
        "model": "gpt",
        "output": list(output),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _output_message(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": list(content)}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def test_response_text_only(shape):
    value = shape("response", _response(_output_message(_output_text("Hello"), _output_text("world"))))
    assert response_messages(value) == [Message(role="assistant", text="Hello\nworld")]


def test_response_all_items_in_one_message(shape):
    value = shape(
        "response",
        _response(
            {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "plan"}]},
            _output_message(_output_text("Hi"), {"type": "refusal", "refusal": "but no"}),
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "f",
                "arguments": '{"x":1}',
                "id": "fc",
                "status": "completed",
            },
            {"type": "custom_tool_call", "call_id": "c2", "name": "g", "input": "raw"},
        ),
    )
    assert response_messages(value) == [
        Message(role="assistant", text='plan\nHi\nbut no\n[tool call] f({"x":1})\n[tool call] g(raw)')
    ]


def test_response_refusal_only(shape):
    value = shape("response", _response(_output_message({"type": "refusal", "refusal": "I can't help."})))
    assert response_messages(value) == [Message(role="assistant", text="I can't help.")]


def test_response_unjudgeable_output_item_is_refused(shape):
    item = {"type": "web_search_call", "id": "ws", "status": "completed", "action": {"type": "search", "query": "q"}}
    with pytest.raises(InputError, match=r"response 0: output\[0\]\.type: output item type 'web_search_call'"):
        response_messages(shape("response", _response(item)))


# -- Responses API: stream events --------------------------------------------------------------------


def _text_event(kind: str, delta: str) -> dict[str, Any]:
    return {
        "type": kind,
        "delta": delta,
        "item_id": "i",
        "output_index": 0,
        "content_index": 0,
        "sequence_number": 1,
        "logprobs": [],
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_text_event("response.output_text.delta", "Hel"), [Delta(text="Hel")]),
        (
            {
                "type": "response.refusal.delta",
                "delta": "no",
                "item_id": "i",
                "output_index": 0,
                "content_index": 0,
                "sequence_number": 2,
            },
            [Delta(text="no")],
        ),
        (
            {
                "type": "response.function_call_arguments.delta",
                "delta": '{"a"',
                "item_id": "i",
                "output_index": 1,
                "sequence_number": 3,
            },
            [Delta(text='{"a"')],
        ),
        (
            {
                "type": "response.reasoning_summary_text.delta",
                "delta": "hmm",
                "item_id": "i",
                "output_index": 0,
                "summary_index": 0,
                "sequence_number": 4,
            },
            [Delta(text="hmm")],
        ),
        (
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "sequence_number": 5,
                "item": {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "", "id": "fc"},
            },
            [Delta(text="[tool call] get_weather")],
        ),
        (
            {"type": "response.output_item.added", "output_index": 0, "sequence_number": 6, "item": _output_message()},
            [],
        ),
        (
            {
                "type": "response.output_text.done",
                "text": "Hello",
                "item_id": "i",
                "output_index": 0,
                "content_index": 0,
                "sequence_number": 7,
                "logprobs": [],
            },
            [],
        ),
        ({"type": "response.created", "sequence_number": 0, "response": _response()}, []),
    ],
)
def test_response_stream_events(shape, event, expected):
    assert chunk_deltas(shape("event", event)) == expected


def test_response_stream_audio_is_refused(shape):
    event = {"type": "response.audio.delta", "delta": "AAAA", "sequence_number": 1, "response_id": "r"}
    with pytest.raises(InputError, match="audio cannot be judged"):
        chunk_deltas(event)
