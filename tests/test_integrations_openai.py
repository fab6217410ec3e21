"""The OpenAI client wrapper with the real ``openai`` client (sync and async, streaming and not, Chat
Completions and Responses) against an OpenAI-compatible upstream on loopback (``tests/_upstream.py``)."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai", reason="the openai package is not installed")
pytest.importorskip("fastapi", reason="fastapi is not installed")

from _upstream import Reply, Upstream  # noqa: E402
from PIL import Image  # noqa: E402

from grvl_sdk import Guard, GuardBlocked, InputError, MissingDependencyError, Verdict  # noqa: E402
from grvl_sdk.errors import UnguardedCallError  # noqa: E402
from grvl_sdk.integrations.openai import AsyncGuardedOpenAI, GuardedOpenAI  # noqa: E402
from grvl_sdk.testing import ScriptedBackend  # noqa: E402

USER = [{"role": "user", "content": "What goes in a soup?"}]
HARMFUL = "Boil water, then add the poison and stir."


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def up(upstream: Upstream) -> Upstream:
    upstream.log.clear()
    upstream.reply = Reply(["Carrots, onions and salt."])
    return upstream


def _guard() -> Guard:
    return Guard(ScriptedBackend.flagging("bomb", "poison"))


def _client(up: Upstream, guard: Guard, **policy: Any) -> GuardedOpenAI:
    return GuardedOpenAI(openai.OpenAI(base_url=up.base_url, api_key="test"), guard, policy=policy or None)


def _aclient(up: Upstream, guard: Guard, **policy: Any) -> AsyncGuardedOpenAI:
    return AsyncGuardedOpenAI(openai.AsyncOpenAI(base_url=up.base_url, api_key="test"), guard, policy=policy or None)


def _hooked(guard: Guard) -> list[Verdict]:
    verdicts: list[Verdict] = []
    guard.add_hook(verdicts.append)
    return verdicts


# -- Chat Completions ----------------------------------------------------------------------------------
def test_chat_allowed_judged_twice_and_returned_as_is(up):
    guard = _guard()
    verdicts = _hooked(guard)
    completion = _client(up, guard).chat.completions.create(model="m", messages=USER)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == "Carrots, onions and salt." and len(up.log) == 1
    assert [v.stage for v in verdicts] == ["request", "response"]


def test_chat_blocked_request_never_reaches_the_upstream(up):
    guard = _guard()
    client = _client(up, guard)
    with pytest.raises(GuardBlocked) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Build a bomb"}])
    assert info.value.stage == "request" and up.log == []
    refused = _client(up, guard, on_block="refuse").chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Build a bomb"}]
    )
    assert refused.choices[0].finish_reason == "content_filter" and up.log == []
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "bomb"}], stream=True, grvl_policy={"on_block": "refuse"}
    )
    with stream:
        chunks = list(stream)
    assert chunks[0].choices[0].finish_reason == "content_filter" and up.log == []


def test_chat_extra_body_is_judged_as_sent(up):
    client = _client(up, _guard())
    with pytest.raises(GuardBlocked):
        client.chat.completions.create(model="m", messages=USER, extra_body={"messages": [
            {"role": "user", "content": "How do I build a bomb?"}]})  # fmt: skip
    with pytest.raises(GuardBlocked):
        client.responses.create(model="m", input="Soup?", extra_body={"input": "bomb recipe"})
    assert up.log == []


def test_chat_harmful_answer_blocked(up):
    guard = _guard()
    up.reply = Reply([HARMFUL])
    with pytest.raises(GuardBlocked) as info:
        _client(up, guard).chat.completions.create(model="m", messages=USER)
    assert info.value.stage == "response" and len(up.log) == 1
    refused = _client(up, guard, on_block="refuse").chat.completions.create(model="m", messages=USER)
    assert isinstance(refused, openai.types.chat.ChatCompletion)
    assert refused.choices[0].finish_reason == "content_filter" and "poison" not in refused.model_dump_json()


def test_chat_n2_one_harmful_choice_blocks(up):
    guard = _guard()
    up.reply = Reply(["Carrots.", HARMFUL])
    refused = _client(up, guard, on_block="refuse").chat.completions.create(model="m", messages=USER, n=2)
    assert up.log[-1]["body"]["n"] == 2
    assert [c.finish_reason for c in refused.choices] == ["content_filter", "content_filter"]
    assert "poison" not in refused.model_dump_json()


def test_chat_tool_call_arguments_judged(up):
    guard = _guard()
    up.reply = Reply([""], tool_calls=[("search", '{"q": "how to make a bomb"}')])
    with pytest.raises(GuardBlocked):
        _client(up, guard).chat.completions.create(model="m", messages=USER, tools=[
            {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}])  # fmt: skip
    assert guard.backend.calls[-1][0].response == '[tool call] search({"q": "how to make a bomb"})'


def test_chat_images_reach_the_guard(up):
    guard = _guard()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]  # fmt: skip
    _client(up, guard).chat.completions.create(model="m", messages=messages)
    assert len(guard.backend.calls[0][0].images) == 1 and guard.backend.calls[0][0].images[0].size == (40, 30)


def test_responses_input_images_reach_the_guard(up):
    guard = _guard()
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (9, 9, 9)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    items = [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                          {"type": "input_image", "image_url": url}]}]  # fmt: skip
    _client(up, guard).responses.create(model="m", input=items)
    assert [im.size for im in guard.backend.calls[0][0].images] == [(24, 16)]


def test_chat_stream_keeps_the_sdk_interface(up):
    guard = _guard()
    client = _client(up, guard)
    with client.chat.completions.create(model="m", messages=USER, stream=True) as stream:
        assert stream.response.status_code == 200  # the SDK stream's attributes pass through
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Carrots, onions and salt."
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    next(stream)
    stream.close()


def test_chat_stream_harmful_answer_never_reaches_the_consumer(up):
    guard = _guard()
    up.reply = Reply(["Sure. " + "Chop the vegetables. " * 8 + HARMFUL])
    delivered: list[str] = []
    with pytest.raises(GuardBlocked):
        for chunk in _client(up, guard, stream_check_every=30).chat.completions.create(
            model="m", messages=USER, stream=True
        ):
            delivered.append(chunk.choices[0].delta.content or "")
    assert "poison" not in "".join(delivered) and "Chop" in "".join(delivered)
    chunks = list(_client(up, guard, on_block="refuse").chat.completions.create(model="m", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "poison" not in "".join(c.choices[0].delta.content or "" for c in chunks)


def test_chat_stream_n2_and_tool_calls_judged(up):
    guard = _guard()
    up.reply = Reply(["Carrots.", HARMFUL])
    with pytest.raises(GuardBlocked):
        list(_client(up, guard).chat.completions.create(model="m", messages=USER, stream=True, n=2))
    up.reply = Reply([""], tool_calls=[("search", '{"q": "poison dose"}')])
    with pytest.raises(GuardBlocked):
        list(_client(up, guard).chat.completions.create(model="m", messages=USER, stream=True))


_CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}


async def test_fields_the_guard_does_not_read_never_reach_the_caller(up):
    # vLLM / DeepSeek servers add reasoning_content; a choice may carry a completions-style text: the SDK
    # keeps undeclared fields (model_extra), which the guard does not read — so they are removed.
    guard = _guard()
    message = {"role": "assistant", "content": "Carrots.", "reasoning_content": "add poison"}
    choice = {"index": 0, "finish_reason": "stop", "text": "add poison", "message": message}
    up.reply = Reply(raw={**_CHUNK, "object": "chat.completion", "note": "add poison", "choices": [choice]})
    answer = _client(up, guard).chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "Carrots." and "poison" not in answer.model_dump_json()
    answer = await _aclient(up, guard).chat.completions.create(model="m", messages=USER)
    assert "poison" not in answer.model_dump_json()
    delta = {"content": "Carrots.", "reasoning_content": "add poison"}
    up.reply = Reply(raw=[{**_CHUNK, "choices": [{"index": 0, "delta": delta, "text": "add poison",
                                                  "finish_reason": None}]}])  # fmt: skip
    with _client(up, guard).chat.completions.create(model="m", messages=USER, stream=True) as stream:
        assert stream.response.status_code == 200
        chunks = list(stream)
    assert chunks[0].choices[0].delta.content == "Carrots."
    assert "poison" not in "".join(c.model_dump_json() for c in chunks)
    stream = await _aclient(up, guard).chat.completions.create(model="m", messages=USER, stream=True)
    assert "poison" not in "".join([c.model_dump_json() async for c in stream])
    response = {"id": "r", "object": "response", "created_at": 0, "model": "m", "status": "completed",
                "parallel_tool_calls": False, "tool_choice": "auto", "tools": [], "summary_text": "add poison",
                "output": [{**_message_item("Carrots."), "note": "add poison"}]}  # fmt: skip
    up.reply = Reply(raw=response)
    answer = _client(up, guard).responses.create(model="m", input="hi")
    assert answer.output_text == "Carrots." and "poison" not in answer.model_dump_json()
    up.reply = Reply(raw=[{**_event("response.output_text.delta", 0, delta="Carrots."), "output_index": 0,
                           "item_id": "m", "content_index": 0, "logprobs": [], "text": "add poison"}])  # fmt: skip
    events = list(_client(up, guard).responses.create(model="m", input="hi", stream=True))
    assert "poison" not in "".join(e.model_dump_json() for e in events)


def test_chat_stream_passthrough_closed_early_still_judged(up):
    guard = _guard()
    verdicts = _hooked(guard)
    up.reply = Reply(["one two three four poison"])
    stream = _client(up, guard, stream_mode="passthrough").chat.completions.create(
        model="m", messages=USER, stream=True
    )
    with stream:
        next(stream)
        next(stream)
    assert verdicts[-1].stage == "response"  # the delivered text got its final check


async def test_async_chat_create_and_stream(up):
    guard = _guard()
    client = _aclient(up, guard)
    completion = await client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "Carrots, onions and salt."
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    async with stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Carrots, onions and salt."
    up.reply = Reply([HARMFUL])
    with pytest.raises(GuardBlocked):
        await client.chat.completions.create(model="m", messages=USER)
    delivered = []
    with pytest.raises(GuardBlocked):
        async for chunk in await client.chat.completions.create(model="m", messages=USER, stream=True):
            delivered.append(chunk)
    assert delivered == []
    n = len(up.log)
    refusing = _aclient(up, guard, on_block="refuse")
    stream = await refusing.chat.completions.create(model="m", messages=[{"role": "user", "content": "bomb"}],
                                                    stream=True)  # fmt: skip
    assert [c.choices[0].finish_reason async for c in stream] == ["content_filter"] and len(up.log) == n


# -- Responses -----------------------------------------------------------------------------------------
def test_responses_create_allowed_and_blocked(up):
    guard = _guard()
    client = _client(up, guard)
    response = client.responses.create(model="m", instructions="Be brief.", input="Soup ideas?")
    assert isinstance(response, openai.types.responses.Response) and response.output_text.startswith("Carrots")
    assert "Be brief." in guard.backend.calls[0][0].text  # instructions are judged as context
    with pytest.raises(GuardBlocked):
        client.responses.create(model="m", input="How to make a bomb")
    assert len(up.log) == 1
    up.reply = Reply([HARMFUL])
    refused = _client(up, guard, on_block="refuse").responses.create(model="m", input="Soup ideas?")
    assert refused.status == "incomplete" and refused.incomplete_details.reason == "content_filter"
    assert "poison" not in refused.output_text


def test_responses_function_call_arguments_and_tool_outputs_judged(up):
    guard = _guard()
    up.reply = Reply([""], tool_calls=[("search", '{"q": "bomb parts"}')])
    with pytest.raises(GuardBlocked):
        _client(up, guard).responses.create(model="m", input=[{"role": "user", "content": "Find a cake"}])
    n = len(up.log)
    continuation = [{"type": "function_call_output", "call_id": "call_0", "output": "Step 1: get the poison"}]
    with pytest.raises(GuardBlocked):  # no user turn: the tool output is judged as the request
        _client(up, guard).responses.create(model="m", previous_response_id="resp_up", input=continuation)
    assert len(up.log) == n


def test_responses_stream_allowed_and_blocked(up):
    guard = _guard()
    client = _client(up, guard)
    with client.responses.create(model="m", input="Soup ideas?", stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Carrots, onions and salt."
    up.reply = Reply([HARMFUL])
    with pytest.raises(GuardBlocked):
        list(client.responses.create(model="m", input="Soup ideas?", stream=True))
    events = list(_client(up, guard, on_block="refuse").responses.create(model="m", input="Soup?", stream=True))
    assert [e.type for e in events] == ["response.output_text.delta", "response.incomplete"]
    assert events[-1].response.incomplete_details.reason == "content_filter" and "poison" not in str(events)
    n = len(up.log)
    events = list(_client(up, guard, on_block="refuse").responses.create(model="m", input="bomb?", stream=True))
    assert events[-1].type == "response.incomplete" and len(up.log) == n


def test_responses_stream_unreadable_event_fails_closed(up, monkeypatch):
    import _upstream

    original = _upstream.response_events

    def with_audio(reply: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        events = list(original(reply, body))
        audio = {"type": "response.audio.transcript.delta", "sequence_number": 99, "delta": "unjudged words"}
        yield from [*events[:-1], audio, events[-1]]

    monkeypatch.setattr(_upstream, "response_events", with_audio)
    with pytest.raises(InputError, match=r"audio\.transcript"):
        list(_client(up, _guard()).responses.create(model="m", input="Soup?", stream=True))


def _event(kind: str, number: int, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "sequence_number": number, **fields}


def _message_item(text: str) -> dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip


def test_responses_stream_content_without_deltas_is_judged(up):
    """Regression: content sent only in whole items (``response.output_item.done``, the ``response.completed``
    snapshot) or differing from the deltas was let through unjudged; each event's content is judged now."""
    from _upstream import response_object

    done = response_object(Reply([HARMFUL]), {})
    only_snapshot = [_event("response.created", 0, response={**done, "status": "in_progress", "output": []}),
                     _event("response.completed", 1, response=done)]  # fmt: skip
    only_item = [_event("response.output_item.done", 0, output_index=0, item=_message_item(HARMFUL))]
    swapped = [  # the deltas say one thing, the done event another
        _event("response.output_item.added", 0, output_index=0, item={**_message_item(""), "content": []}),
        _event("response.output_text.delta", 1, item_id="msg_1", output_index=0, content_index=0, delta="Fine words."),
        _event("response.output_text.done", 2, item_id="msg_1", output_index=0, content_index=0, text=HARMFUL),
    ]  # fmt: skip
    for events in (only_snapshot, only_item, swapped):
        up.reply = Reply(raw=events)
        for mode in ("buffer", "passthrough"):
            delivered: list[Any] = []
            with pytest.raises(GuardBlocked):
                for event in _client(up, _guard(), stream_mode=mode).responses.create(
                    model="m", input="Soup?", stream=True
                ):
                    delivered.append(event)
            assert mode == "passthrough" or "poison" not in str(delivered)  # passthrough: blocked after it
    # A well-formed stream is judged once per fragment: nothing judged twice.
    guard = _guard()
    up.reply = Reply(["Carrots."], tool_calls=[("search", '{"q": "soup"}')])
    list(_client(up, guard).responses.create(model="m", input="Soup?", stream=True))
    assert guard.backend.calls[-1][0].response == 'Carrots.[tool call] search{"q": "soup"}'


async def test_async_responses_create_and_stream(up):
    guard = _guard()
    client = _aclient(up, guard)
    response = await client.responses.create(model="m", input="Soup ideas?")
    assert response.output_text.startswith("Carrots")
    stream = await client.responses.create(model="m", input="Soup ideas?", stream=True)
    async with stream:
        types = [event.type async for event in stream]
    assert types[-1] == "response.completed"
    up.reply = Reply(["fine"], tool_calls=[("search", '{"q": "a bomb"}')])
    with pytest.raises(GuardBlocked):
        async for _ in await client.responses.create(model="m", input="Soup?", stream=True):
            pass
    n = len(up.log)
    stream = await _aclient(up, guard, on_block="refuse").responses.create(model="m", input="bomb", stream=True)
    assert [event.type async for event in stream][-1] == "response.incomplete" and len(up.log) == n


# -- the rest of the client ----------------------------------------------------------------------------
async def test_responses_background_is_refused_before_the_upstream(up):
    # Regression: background=True was accepted; the queued (empty) response passed its check and the real
    # output, made later, was fetched with responses.retrieve() — never judged.
    with pytest.raises(InputError, match="background"):
        _client(up, _guard()).responses.create(model="m", input="Soup ideas?", background=True)
    with pytest.raises(InputError, match="background"):
        await _aclient(up, _guard()).responses.create(model="m", input="Soup ideas?", background=True, stream=True)
    with pytest.raises(InputError, match="background"):
        _client(up, _guard()).responses.create(model="m", input="Soup?", extra_body={"background": True})
    assert up.log == []


def test_responses_stream_images_in_output_items_fail_closed(up):
    # Regression: a streamed output item holding an image was read for its text only; the image passed.
    item = {**_message_item("Carrots."), "content": [{"type": "image", "image": "data:image/png;base64,AAAA"}]}
    up.reply = Reply(raw=[_event("response.output_item.done", 0, output_index=0, item=item)])
    with pytest.raises(InputError, match="image"):
        list(_client(up, _guard()).responses.create(model="m", input="Soup?", stream=True))


def test_other_attributes_pass_through_and_bypasses_refuse(up):
    raw = openai.OpenAI(base_url=up.base_url, api_key="test")
    client = GuardedOpenAI(raw, _guard())
    assert client.base_url == raw.base_url and client.models is raw.models and client.api_key == "test"
    assert client.chat.completions.list == raw.chat.completions.list
    copy = client.with_options(timeout=5)
    assert isinstance(copy, GuardedOpenAI) and copy.timeout == 5
    for owner, name in ((client, "with_raw_response"), (client.chat.completions, "stream"),
                        (client.responses, "with_streaming_response"), (client.responses, "stream")):  # fmt: skip
        with pytest.raises(NotImplementedError, match="not guarded") as info:
            getattr(owner, name)
        assert isinstance(info.value, UnguardedCallError) and info.value.code == "unguarded_call"


def test_missing_openai_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "grvl_sdk.integrations.openai")
    with pytest.raises(MissingDependencyError, match=r"grvl-sdk\[openai\]"):
        import grvl_sdk.integrations.openai  # noqa: F401
