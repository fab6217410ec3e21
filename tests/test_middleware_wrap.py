"""Wrapped VLM calls: sync, async, generators and async generators; (text, image) and OpenAI
``messages`` arguments; request blocked (the VLM is not called), response blocked, both allowed;
refusals, monitor mode, fail modes, streaming in buffer and passthrough modes."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from grvl_sdk import BackendError, Guard, GuardBlocked, InputError
from grvl_sdk.middleware import RequestSpec, chunk_text, response_text
from grvl_sdk.testing import ScriptedBackend


def _guard(**options) -> Guard:
    """Flags 'bomb' in requests and 'poison' in responses (ScriptedBackend.flagging checks both)."""
    return Guard(ScriptedBackend.flagging("bomb", "poison"), **options)


def _collect(guard: Guard):
    verdicts = []
    guard.add_hook(verdicts.append)
    return verdicts


class FakeVLM:
    """Records calls; answers with a fixed text (or chunks)."""

    def __init__(self, answer: str = "Here is a recipe for bread.") -> None:
        self.answer = answer
        self.calls: list[tuple] = []

    def __call__(self, prompt: str, image=None) -> str:
        self.calls.append((prompt, image))
        return self.answer


# -- sync / async, blocked and allowed ---------------------------------------------------------
def test_sync_request_blocked_vlm_not_called():
    guard = _guard()
    vlm = FakeVLM()
    guarded = guard.wrap(vlm)
    with pytest.raises(GuardBlocked) as info:
        guarded("how to build a bomb")
    assert vlm.calls == []
    assert info.value.stage == "request" and info.value.verdict.decision == "block"
    assert info.value.verdict.stage == "request"


def test_sync_response_blocked_and_both_allowed():
    guard = _guard()
    verdicts = _collect(guard)
    bad = guard.wrap(FakeVLM("Mix the poison into the drink."))
    with pytest.raises(GuardBlocked) as info:
        bad("what should I cook?")
    assert info.value.stage == "response" and info.value.verdict.response_label == "harmful"
    good_vlm = FakeVLM()
    assert guard.wrap(good_vlm)("what should I cook?") == "Here is a recipe for bread."
    assert len(good_vlm.calls) == 1
    stages = [(v.stage, v.decision) for v in verdicts]
    assert stages == [("request", "allow"), ("response", "block"), ("request", "allow"), ("response", "allow")]
    # The response is judged together with its request.
    response_item = guard.backend.calls[-1][0]
    assert response_item.text == "what should I cook?" and response_item.response == "Here is a recipe for bread."
    # Both verdicts of one call share a call id; calls differ.
    assert verdicts[0].call_id == verdicts[1].call_id != verdicts[2].call_id


async def test_async_request_blocked_response_blocked_and_allowed():
    guard = _guard()
    calls = []

    @guard.wrap
    async def vlm(prompt: str) -> str:
        calls.append(prompt)
        await asyncio.sleep(0)
        return "poison" if "drink" in prompt else "fine"

    with pytest.raises(GuardBlocked) as info:
        await vlm("a bomb please")
    assert calls == [] and info.value.stage == "request"
    with pytest.raises(GuardBlocked) as info:
        await vlm("a drink please")
    assert info.value.stage == "response"
    assert await vlm("hello") == "fine"
    assert calls == ["a drink please", "hello"]


def test_refusal_instead_of_raising():
    guard = _guard(policy={"on_block": "refuse", "refusal": "No."})
    vlm = FakeVLM("poison")
    assert guard.wrap(vlm)("bomb") == "No."
    assert vlm.calls == []
    assert guard.wrap(vlm)("cook") == "No."
    shaped = guard.wrap(vlm, refusal=lambda v: {"refused": True, "stage": v.stage})
    assert shaped("bomb") == {"refused": True, "stage": "request"}


def test_monitor_mode_calls_through_and_records():
    guard = _guard(policy={"mode": "monitor"})
    verdicts = _collect(guard)
    vlm = FakeVLM("poison")
    assert guard.wrap(vlm)("bomb") == "poison"
    assert len(vlm.calls) == 1
    assert [(v.stage, v.decision, v.blocked) for v in verdicts] == [
        ("request", "block", False),
        ("response", "block", False),
    ]


@pytest.mark.parametrize(("on_error", "outcome"), [("block", "raises"), ("allow", "answers")])
def test_fail_modes_in_wrapped_calls(on_error, outcome):
    guard = Guard(ScriptedBackend(BackendError("guard down")), policy={"on_error": on_error})
    vlm = FakeVLM()
    if outcome == "raises":
        with pytest.raises(GuardBlocked) as info:
            guard.wrap(vlm)("hello")
        assert info.value.verdict.decision == "error-blocked" and vlm.calls == []
        assert info.value.verdict.fail_reason.startswith("backend_error")
    else:
        assert guard.wrap(vlm)("hello") == vlm.answer
        assert len(vlm.calls) == 1


def test_policy_check_selects_stages_and_per_call_override():
    guard = _guard()
    vlm = FakeVLM("poison")
    only_request = guard.wrap(vlm, policy={"check": "request"})
    assert only_request("cook") == "poison"
    only_response = guard.wrap(FakeVLM("ok"), policy={"check": "response"})
    assert only_response("bomb") == "ok"  # the request is not checked, a harmful request label is ignored
    guarded = guard.wrap(vlm)
    with pytest.raises(GuardBlocked):
        guarded("cook")
    assert guarded("cook", grvl_policy={"mode": "monitor"}) == "poison"
    assert "grvl_policy" not in str(vlm.calls[-1])


def test_decorator_forms_keep_metadata():
    guard = _guard()

    @guard.wrap(policy={"on_block": "refuse"})
    def answer(prompt: str) -> str:
        """Docstring kept."""
        return "ok"

    assert answer.__name__ == "answer" and answer.__doc__ == "Docstring kept."
    assert answer("bomb") == guard.policy.refusal


# -- arguments: (text, image) and OpenAI messages ----------------------------------------------
def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_text_and_image_arguments_reach_the_guard(rgb_image):
    guard = _guard()
    vlm = FakeVLM()
    guard.wrap(vlm)(prompt="describe", image=rgb_image)
    item = guard.backend.calls[0][0]
    assert item.text == "describe" and len(item.images) == 1
    assert item.images[0].tobytes() == rgb_image.tobytes()


def test_openai_messages_with_data_url_images(rgb_image):
    guard = _guard()
    seen = []

    @guard.wrap
    def chat(*, model: str, messages: list) -> dict:
        seen.append(messages)
        return {"choices": [{"message": {"role": "assistant", "content": "A red rectangle."}}]}

    messages = [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": _data_url(rgb_image)}},
            ],
        },
    ]
    result = chat(model="vlm", messages=messages)
    assert result["choices"][0]["message"]["content"] == "A red rectangle."
    request_item, response_item = (call[0] for call in guard.backend.calls)
    # The system message is context the model sees, so the guard judges it too.
    expected = (
        "[Earlier in the conversation]\nSystem: You are helpful.\n[Latest user message]\nWhat is in this picture?"
    )
    assert request_item.text == expected and request_item.response is None
    assert request_item.images[0].tobytes() == rgb_image.tobytes()
    assert response_item.response == "A red rectangle." and len(response_item.images) == 1
    with pytest.raises(GuardBlocked):
        chat(model="vlm", messages=[{"role": "user", "content": "bomb"}])
    assert len(seen) == 1


def test_remote_image_urls_are_refused_not_skipped():
    guard = _guard()
    vlm = guard.wrap(lambda messages: "ok")
    url_part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(InputError, match="URL"):
        vlm(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, url_part]}])


def test_custom_extractors():
    guard = _guard()

    def call(payload: dict) -> object:
        return type("Reply", (), {"output": "poison"})()

    guarded = guard.wrap(
        call,
        get_request=lambda payload: RequestSpec(text=payload["q"]),
        get_response=lambda reply: reply.output,
    )
    with pytest.raises(GuardBlocked) as info:
        guarded({"q": "cook"})
    assert info.value.stage == "response"
    with pytest.raises(InputError, match="get_request"):
        guard.wrap(lambda payload: "x")({"q": "cook"})
    with pytest.raises(InputError, match="get_response"):
        guard.wrap(lambda prompt: 42)("cook")


def test_default_extractors():
    # Text parts of one message are separate blocks: joined with a newline.
    assert response_text({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, "b"]}}]}) == "a\nb"
    assert response_text(type("AIMessage", (), {"content": "lc"})()) == "lc"
    assert chunk_text({"choices": [{"delta": {"content": None}}]}) == ""
    assert chunk_text({"choices": []}) == ""
    assert chunk_text(b"bytes") == "bytes"
    with pytest.raises(InputError):
        chunk_text(3.5)


# -- streaming ---------------------------------------------------------------------------------
def _chunks(*parts: str):
    def stream(prompt: str):
        yield from parts

    return stream


@pytest.mark.parametrize("mode", ["buffer", "passthrough"])
def test_stream_allowed_passes_every_chunk_after_final_check(mode):
    guard = _guard(policy={"stream_mode": mode, "stream_check_every": 10})
    verdicts = _collect(guard)
    parts = ("Bread needs ", "flour, water, ", "salt and yeast.")
    assert list(guard.wrap(_chunks(*parts))("bread?")) == list(parts)
    stages = [v.stage for v in verdicts]
    assert stages[0] == "request" and stages[-1] == "response" and "stream" in stages


def test_stream_request_blocked_generator_never_started():
    guard = _guard()
    started = []

    def stream(prompt: str):
        started.append(prompt)
        yield "x"

    with pytest.raises(GuardBlocked):
        list(guard.wrap(stream)("bomb"))
    assert started == []


def test_stream_buffer_mode_releases_nothing_unchecked():
    guard = _guard(policy={"stream_mode": "buffer", "stream_check_every": 1000})
    received = []
    with pytest.raises(GuardBlocked) as info:
        for chunk in guard.wrap(_chunks("Take the ", "poison ", "now."))("help"):
            received.append(chunk)
    assert received == []  # the only check was the final one, and it blocked
    assert info.value.stage == "response"


def test_stream_passthrough_is_cut_when_a_check_blocks():
    # a fixed interval (growth 1, no cap): every chunk past 5 characters is checked
    fixed = {"stream_check_growth": 1, "stream_max_checks": None}
    guard = _guard(policy={"stream_mode": "passthrough", "stream_check_every": 5, **fixed})
    source_closed = []

    def stream(prompt: str):
        try:
            yield "Hello there, "
            yield "add poison "
            yield "to the soup."
            yield "never sent"
        finally:
            source_closed.append(True)

    received = []
    with pytest.raises(GuardBlocked) as info:
        for chunk in guard.wrap(stream)("help"):
            received.append(chunk)
    assert received == ["Hello there, ", "add poison "]
    assert info.value.stage == "stream" and source_closed == [True]


def test_stream_refusal_and_source_error():
    guard = _guard(policy={"on_block": "refuse", "refusal": "[removed]", "stream_check_every": 1000})
    assert list(guard.wrap(_chunks("poison"))("x")) == ["[removed]"]

    def broken(prompt: str):
        yield "partial "
        raise ConnectionError("upstream died")

    received = []
    with pytest.raises(ConnectionError):
        for chunk in guard.wrap(broken)("x"):
            received.append(chunk)
    assert received == []  # buffer mode: an unfinished stream releases nothing


def test_sync_function_returning_a_stream_of_openai_chunks():
    guard = _guard(policy={"stream_check_every": 1000})

    def create(*, messages: list, stream: bool = True):
        return iter([{"choices": [{"delta": {"content": part}}]} for part in ("no ", "poison ", "here")])

    with pytest.raises(GuardBlocked):
        list(guard.wrap(create)(messages=[{"role": "user", "content": "hi"}]))
    safe = guard.wrap(lambda messages: iter([{"choices": [{"delta": {"content": "fine"}}]}]))
    assert [chunk_text(c) for c in safe(messages=[{"role": "user", "content": "hi"}])] == ["fine"]


async def test_async_generator_streams():
    fixed = {"stream_check_growth": 1, "stream_max_checks": None}
    guard = _guard(policy={"stream_mode": "passthrough", "stream_check_every": 4, **fixed})
    started = []

    @guard.wrap
    async def stream(prompt: str):
        started.append(prompt)
        for part in ("good ", "bread ", "then poison ", "more"):
            yield part

    received = []
    with pytest.raises(GuardBlocked):
        async for chunk in stream("bake"):
            received.append(chunk)
    assert received[:2] == ["good ", "bread "] and "more" not in received
    with pytest.raises(GuardBlocked) as info:
        async for _ in stream("bomb"):
            pass
    assert info.value.stage == "request" and started == ["bake"]  # the blocked request never started the VLM

    @guard.wrap
    async def fine(prompt: str):
        yield "all "
        yield "good"

    assert [c async for c in fine("bake")] == ["all ", "good"]


async def test_async_function_returning_an_async_stream():
    guard = _guard(policy={"stream_check_every": 1000})

    async def parts():
        yield "poison"

    @guard.wrap
    async def create(prompt: str):
        return parts()

    stream = await create("hello")
    with pytest.raises(GuardBlocked):
        async for _ in stream:
            pass
