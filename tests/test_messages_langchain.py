"""grvl_sdk.messages with real LangChain classes (``langchain-core``): messages, tuples, standard content
blocks, ``PromptValue``\\s and ``AIMessageChunk`` stream chunks."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core", reason="langchain-core is not installed")

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages import content as blocks
from langchain_core.prompt_values import StringPromptValue
from langchain_core.prompts import ChatPromptTemplate
from PIL import Image

from grvl_sdk.errors import InputError
from grvl_sdk.messages import Delta, Message, RemoteImage, chunk_deltas, response_messages, to_messages

B64 = "iVBORw0KGgo="
CALL = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}
CALL_TEXT = '[tool call] get_weather({"city":"Paris"})'


# -- request side ------------------------------------------------------------------------------------


def test_messages_text_only():
    out = to_messages(
        [SystemMessage("Be brief."), HumanMessage("hi"), AIMessage("hello"), ChatMessage(role="user", content="x")]
    )
    assert out == [
        Message(role="system", text="Be brief."),
        Message(role="user", text="hi"),
        Message(role="assistant", text="hello"),
        Message(role="user", text="x"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (("user", "hi"), [Message(role="user", text="hi")]),
        (("human", "hi"), [Message(role="user", text="hi")]),
        (("ai", "x"), [Message(role="assistant", text="x")]),
        (("system", "x"), [Message(role="system", text="x")]),
        ([("assistant", "a"), ("human", "b")], [Message(role="assistant", text="a"), Message(role="user", text="b")]),
        ([["user", "list form"]], [Message(role="user", text="list form")]),
        (
            ("user", [{"type": "text", "text": "t"}, {"type": "image", "url": "https://x/i.png"}]),
            [Message(role="user", text="t", images=(RemoteImage("https://x/i.png"),))],
        ),
        ({"type": "human", "content": "dict with a type"}, [Message(role="user", text="dict with a type")]),
    ],
)
def test_tuples_and_dicts(value, expected):
    assert to_messages(value) == expected


def test_standard_blocks_text_and_images():
    pil = Image.new("RGB", (2, 2))
    message = HumanMessage(
        content_blocks=[
            blocks.create_text_block("look"),
            blocks.create_image_block(base64=B64, mime_type="image/png"),
            blocks.create_image_block(url="https://example.com/a.png"),
            blocks.create_image_block(url=f"data:image/jpeg;base64,{B64}"),
        ]
    )
    legacy = HumanMessage(
        content=[
            {"type": "image", "source_type": "base64", "data": B64, "mime_type": "image/gif"},
            {"type": "image", "source_type": "url", "url": "https://example.com/b.png"},
            {"type": "image_url", "image_url": {"url": "https://example.com/c.png"}},
            {"type": "image", "image": pil},
            "and a plain string part",
        ]
    )
    assert to_messages([message, legacy]) == [
        Message(
            role="user",
            text="look",
            images=(
                f"data:image/png;base64,{B64}",
                RemoteImage("https://example.com/a.png"),
                f"data:image/jpeg;base64,{B64}",
            ),
        ),
        Message(
            role="user",
            text="and a plain string part",
            images=(
                f"data:image/gif;base64,{B64}",
                RemoteImage("https://example.com/b.png"),
                RemoteImage("https://example.com/c.png"),
                pil,
            ),
        ),
    ]


def test_images_in_ai_and_tool_messages():
    image = blocks.create_image_block(base64=B64, mime_type="image/png")
    out = to_messages(
        [AIMessage(content=[image]), ToolMessage(content=[image, {"type": "text", "text": "chart"}], tool_call_id="x")]
    )
    data = f"data:image/png;base64,{B64}"
    assert out == [
        Message(role="assistant", text="", images=(data,)),
        Message(role="tool", text="chart", images=(data,)),
    ]


def test_tool_calls_and_tool_messages():
    out = to_messages(
        [
            HumanMessage("weather?"),
            AIMessage(content="", tool_calls=[CALL, {"name": "noop", "args": {}, "id": "call_2"}]),
            ToolMessage(content="sunny", tool_call_id="call_1"),
            ToolMessage(content="done", tool_call_id="call_2", name="explicit_name"),
        ]
    )
    assert out == [
        Message(role="user", text="weather?"),
        Message(role="assistant", text=f"{CALL_TEXT}\n[tool call] noop({{}})"),
        Message(role="tool", text="sunny", name="get_weather"),
        Message(role="tool", text="done", name="explicit_name"),
    ]


def test_tool_call_blocks_are_not_repeated_from_tool_calls():
    v1 = AIMessage(
        content_blocks=[
            blocks.create_reasoning_block("plan"),
            blocks.create_text_block("Calling."),
            blocks.create_tool_call("get_weather", {"city": "Paris"}, id="call_1"),
        ]
    )
    provider = AIMessage(
        content=[
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        tool_calls=[CALL],
    )
    assert v1.tool_calls  # LangChain mirrors the block in tool_calls
    assert to_messages([v1, provider]) == [
        Message(role="assistant", text=f"plan\nCalling.\n{CALL_TEXT}"),
        Message(role="assistant", text=f"Calling.\n{CALL_TEXT}"),
    ]


def test_invalid_tool_calls_and_refusals():
    message = AIMessage(
        content=[{"type": "refusal", "refusal": "Partly refused."}],
        invalid_tool_calls=[
            {"name": "f", "args": "{not json", "id": "c", "error": "bad json", "type": "invalid_tool_call"}
        ],
        additional_kwargs={"refusal": "Also refused."},
    )
    assert to_messages(message) == [
        Message(role="assistant", text="Partly refused.\n[tool call] f({not json)\nAlso refused.")
    ]


def test_reasoning_block_with_summary():
    block = {
        "type": "reasoning",
        "id": "rs",
        "summary": [{"type": "summary_text", "text": "s1"}, {"type": "summary_text", "text": "s2"}],
    }
    assert to_messages(AIMessage(content=[block, "answer"])) == [Message(role="assistant", text="s1\ns2\nanswer")]


def test_text_plain_block_with_text():
    block = blocks.create_plaintext_block(text="notes", title="doc")
    assert to_messages(HumanMessage(content_blocks=[block])) == [Message(role="user", text="notes")]


def test_prompt_values():
    value = ChatPromptTemplate.from_messages([("system", "Be {tone}."), ("human", "{question}")]).invoke(
        {"tone": "kind", "question": "hi?"}
    )
    assert to_messages(value) == [Message(role="system", text="Be kind."), Message(role="user", text="hi?")]
    assert to_messages(StringPromptValue(text="just text")) == [Message(role="user", text="just text")]


def test_merged_chunk_uses_raw_tool_call_chunks():
    merged = AIMessageChunk(
        content="", tool_call_chunks=[{"name": "f", "args": '{"a"', "id": "c", "index": 0}]
    ) + AIMessageChunk(content="", tool_call_chunks=[{"name": None, "args": ":1}", "id": None, "index": 0}])
    assert to_messages(merged) == [Message(role="assistant", text='[tool call] f({"a":1})')]
    partial = AIMessageChunk(content="", tool_call_chunks=[{"name": "f", "args": '{"a"', "id": "c", "index": 0}])
    assert partial.tool_calls[0]["args"] == {}  # LangChain's best-effort parse loses the partial arguments
    assert response_messages(partial) == [Message(role="assistant", text='[tool call] f({"a")')]


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (blocks.create_image_block(file_id="file-1"), "file_id"),
        (blocks.create_audio_block(base64=B64, mime_type="audio/wav"), "'audio' content \\(audio\\)"),
        (blocks.create_video_block(url="https://x/v.mp4"), "'video' content \\(video\\)"),
        (blocks.create_file_block(base64=B64, mime_type="application/pdf"), "'file' content \\(a file\\)"),
        (blocks.create_non_standard_block({"x": 1}), "unsupported content part type 'non_standard'"),
        (blocks.create_plaintext_block(url="https://x/a.txt"), "text-plain block without its text"),
        ({"type": "image", "source_type": "id", "id": "f"}, "source_type 'id'"),
        ({"type": "image", "url": "file:///etc/passwd"}, "http\\(s\\)://"),
    ],
)
def test_unreadable_blocks_are_refused(block, match):
    with pytest.raises(InputError, match=match):
        to_messages([HumanMessage(content=[{"type": "text", "text": "x"}, block])])


def test_unknown_message_kinds_are_refused():
    with pytest.raises(InputError, match="unsupported message or item type 'remove'"):
        to_messages([HumanMessage("a"), RemoveMessage(id="1")])
    with pytest.raises(InputError, match="unknown role 'critic'"):
        to_messages([ChatMessage(role="critic", content="x")])


# -- response side -----------------------------------------------------------------------------------


def test_response_ai_message_text_image_tool_call():
    image = blocks.create_image_block(url="https://x/out.png")
    message = AIMessage(content=[{"type": "text", "text": "Here:"}, image], tool_calls=[CALL])
    assert response_messages(message) == [
        Message(role="assistant", text=f"Here:\n{CALL_TEXT}", images=(RemoteImage("https://x/out.png"),))
    ]
    assert response_messages(AIMessage("plain")) == [Message(role="assistant", text="plain")]


def test_response_must_be_an_ai_message():
    with pytest.raises(InputError, match="a response must be an assistant message"):
        response_messages(HumanMessage("hi"))


# -- stream side -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (AIMessageChunk(content="Hel"), "Hel"),
        (
            AIMessageChunk(
                content=[{"type": "text", "text": "a", "index": 0}, {"type": "text", "text": "b", "index": 0}]
            ),
            "ab",
        ),
        (AIMessageChunk(content=[{"type": "reasoning", "reasoning": "hm", "index": 0}]), "hm"),
        (
            AIMessageChunk(content="", tool_call_chunks=[{"name": "f", "args": "", "id": "c", "index": 0}]),
            "[tool call] f",
        ),
        (
            AIMessageChunk(content="", tool_call_chunks=[{"name": None, "args": '{"a":1}', "id": None, "index": 0}]),
            '{"a":1}',
        ),
        (
            AIMessageChunk(
                content=[{"type": "tool_call_chunk", "name": "f", "args": "{}", "id": "c", "index": 1}],
                tool_call_chunks=[{"name": "f", "args": "{}", "id": "c", "index": 1}],
            ),
            "[tool call] f{}",
        ),
        (AIMessageChunk(content=[{"type": "input_json_delta", "partial_json": '{"q', "index": 1}]), '{"q'),
        (AIMessageChunk(content="", chunk_position="last"), ""),
        (
            AIMessageChunk(
                content=[{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}, "index": 0}],
                tool_call_chunks=[{"name": "f", "args": "", "id": "c", "index": 1}],
            ),
            "[tool call] web_search[tool call] f",
        ),
    ],
)
def test_chunks(chunk, expected):
    assert chunk_deltas(chunk) == [Delta(text=expected)]


def test_chunk_refusal_and_whole_ai_message_as_a_chunk():
    assert chunk_deltas(AIMessageChunk(content="", additional_kwargs={"refusal": "No"})) == [Delta(text="No")]
    assert chunk_deltas(AIMessage(content="ok", tool_calls=[CALL])) == [Delta(text=f"ok\n{CALL_TEXT}")]


def test_chunk_with_an_image_is_refused():
    with pytest.raises(InputError, match="'image' block cannot be judged in a stream chunk"):
        chunk_deltas(AIMessageChunk(content=[blocks.create_image_block(url="https://x/y.png")]))
