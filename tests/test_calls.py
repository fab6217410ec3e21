"""The public call flow (``guard.call``) and ``guard.wrap`` over it: what users hit before the redesign,
each with the right value — LangChain messages and tuples, every choice and tool call judged, images in
any role, all text arguments, refusals in the caller's shape, guarded streams keeping their interface."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import pytest
from PIL import Image

from grvl_sdk import AsyncGuardedStream, Guard, GuardBlocked, GuardedStream, InputError
from grvl_sdk.testing import ScriptedBackend


def _guard(**options) -> Guard:
    return Guard(ScriptedBackend.flagging("bomb", "poison"), cache_size=0, **options)


def _png_b64(color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _received(guard: Guard) -> list:
    return [item for call in guard.backend.calls for item in call]


# -- LangChain shapes -----------------------------------------------------------------------------------
def test_langchain_messages_and_tuples_are_understood_by_wrap():
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    model = GenericFakeChatModel(messages=iter([AIMessage(content="Sure.")] * 4))
    guard = _guard()
    guarded = guard.wrap(model.invoke)
    with pytest.raises(GuardBlocked) as info:
        guarded([SystemMessage("be nice"), HumanMessage("how to make a bomb")])
    assert info.value.stage == "request"
    assert guarded([("user", "hi")]).content == "Sure."
    # A blocked LangChain call refuses with an AIMessage, the verdict in its metadata.
    refusing = guard.wrap(model.invoke, policy={"on_block": "refuse"})
    refused = refusing([("human", "poison the well")])
    assert isinstance(refused, AIMessage)
    assert refused.response_metadata["grvl"]["blocked"] is True
    assert refused.response_metadata["finish_reason"] == "content_filter"


def test_langchain_standard_image_blocks_reach_the_guard():
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage

    guard = _guard()
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "base64": _png_b64(), "mime_type": "image/png"},
    ]
    assert guard.check_conversation([HumanMessage(content=content)]).decision == "allow"
    (item,) = _received(guard)
    assert item.text == "what is this?" and len(item.images) == 1
    with pytest.raises(InputError, match="image URL"):
        guard.check_conversation([HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])])


# -- OpenAI shapes: every choice, tool calls, refusals ---------------------------------------------------------
def _completion(*contents, tool_arguments=None, refusal=None) -> dict:
    choices = []
    for index, content in enumerate(contents):
        message = {"role": "assistant", "content": content}
        if tool_arguments is not None:
            message["tool_calls"] = [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": tool_arguments}}
            ]
        if refusal is not None:
            message["refusal"] = refusal
        choices.append({"index": index, "message": message, "finish_reason": "stop"})
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": choices}


@pytest.mark.parametrize(
    "reply",
    [
        _completion(None, tool_arguments=json.dumps({"q": "how to build a bomb"})),  # content None, harmful tool call
        _completion("Here you go.", "Step 1: build the bomb"),  # n=2, the second choice harmful
        _completion(None, refusal="I won't explain the poison"),  # refusal part
    ],
)
def test_every_choice_tool_call_and_refusal_of_a_response_is_judged(reply):
    guard = _guard(policy={"on_block": "refuse"})
    guarded = guard.wrap(lambda *, model, messages: reply)
    result = guarded(model="m", messages=[{"role": "user", "content": "help me"}])
    assert result["choices"][0]["finish_reason"] == "content_filter"
    assert result["grvl"]["stage"] == "response" and result["object"] == "chat.completion"


def test_images_in_tool_and_system_messages_reach_the_guard_and_urls_there_are_refused():
    guard = _guard()
    data_url = "data:image/png;base64," + _png_b64()
    messages = [
        {"role": "system", "content": [
            {"type": "text", "text": "be nice"}, {"type": "image_url", "image_url": {"url": data_url}}]},
        {"role": "user", "content": "describe the tool's picture"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "camera", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": [{"type": "image_url", "image_url": {"url": data_url}}]},
    ]  # fmt: skip
    guarded = guard.wrap(lambda *, messages: "A red box.")
    assert guarded(messages=messages) == "A red box."
    request = _received(guard)[0]
    assert len(request.images) == 2 and "[tool call] camera({})" in request.text and "System: be nice" in request.text
    messages[3]["content"] = [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]
    with pytest.raises(InputError, match="image URL"):
        guarded(messages=messages)


# -- arguments and results -----------------------------------------------------------------------------------
def test_every_text_argument_is_judged_and_a_missing_response_is_an_error():
    guard = _guard()

    def ask_vlm(prompt: str, question: str) -> str:
        return "fine"

    with pytest.raises(GuardBlocked):
        guard.wrap(ask_vlm)("describe the picture", "and how to make a bomb?")
    assert "describe the picture" in _received(guard)[0].text and "bomb" in _received(guard)[0].text
    with pytest.raises(InputError, match="get_response"):
        guard.wrap(ask_vlm, get_response=lambda result: None)("a", "b")
    with pytest.raises(InputError, match="get_request"):
        guard.wrap(lambda model, body: "x")("gpt-4o", "how to make a bomb")  # two unnamed strings: ambiguous


# -- refusals in the caller's shape, guarded streams keep their interface -----------------------------------------
def _openai_client(handler):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(
        api_key="k",
        base_url="http://upstream.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def _sse(*texts: str) -> bytes:
    events = []
    for index, text in enumerate(texts):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}  # fmt: skip
        events.append(f"data: {json.dumps(chunk)}\n\n")
        del index
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


def test_a_blocked_openai_call_returns_a_chat_completion_and_never_reaches_the_upstream():
    openai = pytest.importorskip("openai")
    seen = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_completion("Mix the poison like this."))

    client = _openai_client(upstream)
    guard = _guard(policy={"on_block": "refuse"})
    create = guard.wrap(client.chat.completions.create)
    blocked = create(model="m", messages=[{"role": "user", "content": "how to make a bomb"}])
    assert isinstance(blocked, openai.types.chat.ChatCompletion) and not seen
    assert blocked.choices[0].finish_reason == "content_filter"
    answered = create(model="m", messages=[{"role": "user", "content": "cook dinner"}])
    assert isinstance(answered, openai.types.chat.ChatCompletion) and len(seen) == 1
    assert answered.choices[0].finish_reason == "content_filter"  # the response mentioned poison
    # A blocked streaming request answers a stream holding one refusal chunk.
    with create(model="m", messages=[{"role": "user", "content": "bomb"}], stream=True) as stream:
        chunks = list(stream)
    assert len(chunks) == 1 and chunks[0].choices[0].finish_reason == "content_filter"


def test_a_guarded_openai_stream_keeps_the_stream_interface():
    pytest.importorskip("openai")
    client = _openai_client(lambda request: httpx.Response(200, content=_sse("Hel", "lo ", "there"),
                                                           headers={"content-type": "text/event-stream"}))  # fmt: skip
    records: list = []
    guard = _guard(on_verdict=records.append)
    create = guard.wrap(client.chat.completions.create)
    with create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True) as stream:
        assert isinstance(stream, GuardedStream)
        assert stream.response.status_code == 200  # the source's attributes pass through
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "Hello there"
    assert [v.stage for v in records] == ["request", "response"]


async def test_async_call_flow_and_async_stream_interface():
    guard = _guard()
    call = guard.call([{"role": "user", "content": "tell me a story"}])
    assert (await call.acheck_request()).decision == "allow"

    async def source():
        for part in ("Once ", "upon ", "a time"):
            yield part

    stream = call.astream(source())
    assert isinstance(stream, AsyncGuardedStream)
    async with stream:
        parts = [part async for part in stream]
    assert "".join(parts) == "Once upon a time"
    assert [v.stage for v in call.verdicts] == ["request", "response"]
    assert len({v.call_id for v in call.verdicts}) == 1


def test_the_call_flow_without_wrap():
    guard = _guard(policy={"on_block": "refuse"})
    call = guard.call(text="how do I cook rice?")
    assert call.check_request().decision == "allow" and call.blocked is None
    assert call.check_response("Boil it.") == "Boil it."
    refused = guard.call("x").check_response("Add poison.")
    assert refused == "Sorry, I can't help with that."
    with pytest.raises(InputError):
        guard.call()
    response_only = guard.call("q", policy={"check": "response"})
    assert response_only.check_request() is None  # the policy does not check requests
    assert response_only.check_response("poison") == "Sorry, I can't help with that."


def test_response_only_checks_judge_the_response_alone():
    guard = _guard()
    verdict = guard.check(response="Step 1: get the poison.")
    assert verdict.request_label is None and verdict.response_label == "harmful" and verdict.decision == "block"
    assert _received(guard)[0].text is None
    with pytest.raises(InputError, match="requests only"):
        guard.check(response="x", policy={"check": "request"})
    with pytest.raises(InputError, match="responses only"):
        guard.check("x", policy={"check": "response"})


def test_policy_check_governs_direct_checks():
    guard = _guard()
    verdict = guard.check("hello", response="here is the bomb recipe", policy={"check": "request"})
    assert verdict.response_label == "harmful" and verdict.harmful and verdict.decision == "allow"
    verdict = guard.check("bomb please", response="No.", policy={"check": "response"})
    assert verdict.request_label == "harmful" and verdict.decision == "allow"


def test_guarded_async_wrap_of_a_streaming_call():
    guard = _guard(policy={"on_block": "refuse"})

    async def chat(*, messages, stream=False):
        async def gen():
            for part in ("to make a ", "bomb you"):
                yield part

        return gen()

    guarded = guard.wrap(chat)

    async def main():
        stream = await guarded(messages=[{"role": "user", "content": "hi"}], stream=True)
        return [part async for part in stream]

    assert asyncio.run(main())[-1] == "Sorry, I can't help with that."


def test_remote_images_are_fetched_only_within_the_guards_fetch_policy():
    from grvl_sdk.fetch import FetchPolicy
    from grvl_sdk.testing.faults import FaultServer

    png = base64.b64decode(_png_b64((0, 200, 0)))
    with FaultServer("body", body=png) as server:
        url = f"http://127.0.0.1:{server.port}/cat.png"
        message = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ]
        with pytest.raises(InputError, match="image_fetch"):
            _guard().check_conversation(message)
        policy = FetchPolicy(allow=("127.0.0.1",), allow_http=True, allow_private=True)
        guard = _guard(image_fetch=policy)
        assert guard.check_conversation(message).decision == "allow"
        assert guard.check("look", image=url).decision == "allow"
        items = _received(guard)
        assert all(item.images[0].getpixel((3, 3)) == (0, 200, 0) for item in items)
        other = _guard(image_fetch=FetchPolicy(allow=("images.example.com",), allow_http=True))
        with pytest.raises(InputError, match="not"):
            other.check("look", image=url)
        guard.close()
