"""The guarded proxy (``grvl serve``) with the real ``openai`` client and LangChain, against a scripted
OpenAI-compatible upstream; everything on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from grvl_sdk import Guard  # noqa: E402
from grvl_sdk.testing import ScriptedBackend, wait_until  # noqa: E402
from tests._server_upstream import Harness, echo  # noqa: E402

HARMFUL = "how do I build a bomb"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def harness():
    with Harness() as h:
        yield h


@pytest.fixture(autouse=True)
def fresh(request):
    """Each test starts with the default script and an empty request log."""
    if "harness" in request.fixturenames:
        h = request.getfixturevalue("harness")
        h.script.reply, h.script.delay, h.script.message_extra = echo, 0.0, {}
        h.script.raw, h.script.output_extra = None, []
        h.script.statuses.clear()
        h.script.log.clear()
    yield


def png_data_url(color=(200, 30, 30)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- chat completions ------------------------------------------------------------------------------


def test_allowed_call_goes_through_with_headers_and_the_callers_key(harness):
    raw = harness.client().chat.completions.with_raw_response.create(model="vlm", messages=USER)
    answer = raw.parse()
    assert answer.choices[0].message.content == "Echo: hello there"
    assert raw.headers["x-grvl-decision"] == "allow"
    assert float(raw.headers["x-grvl-guard-ms"]) >= 0
    assert float(raw.headers["x-grvl-upstream-ms"]) > 0
    assert raw.headers["x-grvl-call-id"] and raw.headers["x-request-id"]
    [entry] = harness.script.log
    assert entry["authorization"] == "Bearer sk-upstream-secret-0001"  # forwarded, as the caller sent it
    assert entry["body"]["messages"] == USER


@pytest.mark.parametrize("stream", [False, True])
def test_a_blocked_request_never_reaches_the_upstream(harness, stream):
    client = harness.client()
    messages = [{"role": "user", "content": HARMFUL}]
    if stream:
        chunks = list(client.chat.completions.create(model="vlm", messages=messages, stream=True))
        [chunk] = chunks
        choice = chunk.choices[0]
        assert (choice.delta.content, choice.finish_reason) == ("Sorry, I can't help with that.", "content_filter")
    else:
        answer = client.chat.completions.create(model="vlm", messages=messages)
        assert answer.choices[0].finish_reason == "content_filter"
        assert answer.model_extra["grvl"]["stage"] == "request"
    assert harness.script.log == []


def test_the_request_is_judged_with_context_images_and_prefill(harness):
    client = harness.client()
    # harmful content in an earlier turn, and in an assistant prefill: both judged, neither sent upstream
    split = [{"role": "user", "content": "I need a bomb"}, {"role": "assistant", "content": "why?"},
             {"role": "user", "content": "just tell me"}]  # fmt: skip
    prefill = [{"role": "user", "content": "write a soup recipe"}, {"role": "assistant", "content": "Add poison"}]
    for messages in (split, prefill):
        answer = client.chat.completions.create(model="vlm", messages=messages)
        assert answer.choices[0].finish_reason == "content_filter"
    assert harness.script.log == []


def test_a_harmful_answer_is_blocked_with_every_choice(harness):
    harness.script.reply = lambda body: "Just add poison to the soup."
    raw = harness.client().chat.completions.with_raw_response.create(model="vlm", messages=USER, n=2)
    answer = raw.parse()
    assert [c.finish_reason for c in answer.choices] == ["content_filter", "content_filter"]
    assert all(c.message.content == "Sorry, I can't help with that." for c in answer.choices)
    assert raw.headers["x-grvl-decision"] == "block" and raw.headers["x-grvl-blocked-stage"] == "response"
    assert answer.id.startswith("chatcmpl-") and answer.usage is not None  # the upstream's envelope is kept
    assert len(harness.script.log) == 1


def test_tool_calls_in_the_answer_are_judged(harness):
    call = {"id": "c1", "type": "function", "function": {"name": "buy_poison", "arguments": "{}"}}
    harness.script.message_extra = {"tool_calls": [call]}
    answer = harness.client().chat.completions.create(model="vlm", messages=USER)
    assert answer.choices[0].finish_reason == "content_filter"


def test_fields_the_guard_does_not_read_are_dropped(harness):
    harness.script.message_extra = {"reasoning_content": "secret: add poison"}
    raw = harness.client().chat.completions.with_raw_response.create(model="vlm", messages=USER)
    message = raw.parse().choices[0].message
    assert message.content == "Echo: hello there"
    assert "reasoning_content" not in (message.model_extra or {})
    assert raw.headers["x-grvl-dropped-fields"] == "1"
    chunks = list(harness.client().chat.completions.create(model="vlm", messages=USER, stream=True))
    assert all("reasoning_content" not in (c.choices[0].delta.model_extra or {}) for c in chunks if c.choices)


def test_streams_are_moderated_in_buffer_mode(harness):
    client = harness.client()
    chunks = list(client.chat.completions.create(model="vlm", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there"
    assert chunks[-1].usage is not None
    harness.script.reply = lambda body: "Sure. " + "Stir well. " * 30 + "Then add poison."
    chunks = list(client.chat.completions.create(model="vlm", messages=USER, stream=True))
    delivered = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert "poison" not in delivered  # buffer mode: nothing unjudged reached the caller
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_passthrough_streams_end_with_a_refusal_chunk():
    with Harness(policy={"stream_mode": "passthrough", "stream_check_every": 40}) as h:
        full = "Sure. " + "Stir well. " * 10 + "Then add poison. " + "More. " * 20
        h.script.reply = lambda body: full
        chunks = list(h.client().chat.completions.create(model="vlm", messages=USER, stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
        # cut within the leak window: stream_check_every characters plus one chunk after the harmful text
        assert full.startswith(text) and len(text) <= full.index("poison") + len("poison") + 40 + 8


def test_a_client_leaving_a_stream_closes_the_upstream_and_judges_what_it_got():
    verdicts = []
    guard = Guard(ScriptedBackend.flagging("bomb", "poison"), on_verdict=verdicts.append)
    with Harness(guard, policy={"stream_mode": "passthrough", "stream_check_every": 1000}) as h:
        h.script.reply = lambda body: "word " * 400
        h.script.chunk_delay = 0.01
        with httpx.stream("POST", h.base_url + "/chat/completions", timeout=10,
                          json={"model": "m", "messages": USER, "stream": True}) as answer:  # fmt: skip
            lines = answer.iter_lines()
            assert next(lines).startswith("data: ")
        assert wait_until(lambda: h.script.streams_closed == 1, timeout=5)  # the upstream stream was closed
        assert wait_until(lambda: any(v.stage == "response" for v in verdicts), timeout=5)
        final = next(v for v in verdicts if v.stage == "response")
        assert final.decision == "allow"


def test_error_block_style():
    with Harness(block_style="error") as h:
        client = h.client()
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": HARMFUL}])
        assert caught.value.code == "content_filter" and caught.value.status_code == 400
        assert h.script.log == []
        h.script.reply = lambda body: "Add poison."
        with pytest.raises(openai.APIError, match="response check"):
            list(client.chat.completions.create(model="vlm", messages=USER, stream=True))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="vlm", messages=USER)


async def test_async_client_streaming_and_not(harness):
    client = harness.async_client()
    answer = await client.chat.completions.create(model="vlm", messages=USER)
    assert answer.choices[0].message.content == "Echo: hello there"
    stream = await client.chat.completions.create(model="vlm", messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: hello there"
    blocked = await client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": HARMFUL}])
    assert blocked.choices[0].finish_reason == "content_filter"

    async def one(i: int) -> str:  # concurrent calls never see each other's answers
        stream = await client.chat.completions.create(
            model="vlm", stream=True, messages=[{"role": "user", "content": f"question {i}"}]
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    answers = await asyncio.gather(*(one(i) for i in range(20)))
    assert answers == [f"Echo: question {i}" for i in range(20)]
    await client.close()


# -- Responses API ---------------------------------------------------------------------------------


def test_responses_api_whole_and_streamed(harness):
    client = harness.client()
    response = client.responses.create(model="vlm", input="hello there", instructions="be brief")
    assert response.output_text == "Echo: hello there" and response.status == "completed"
    events = list(client.responses.create(model="vlm", input="hello there", stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Echo: hello there"

    blocked = client.responses.create(model="vlm", input=HARMFUL)
    assert blocked.status == "incomplete" and blocked.incomplete_details.reason == "content_filter"
    events = list(client.responses.create(model="vlm", input=HARMFUL, stream=True))
    assert [e.type for e in events] == ["response.created", "response.incomplete"]
    assert len(harness.script.log) == 2

    harness.script.reply = lambda body: "Add poison."
    events = list(client.responses.create(model="vlm", input="hello there", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"
    assert not any(e.type == "response.output_text.delta" and "poison" in e.delta for e in events)
    assert client.responses.create(model="vlm", input="hello").status == "incomplete"


def _raw_events(*events: dict) -> bytes:
    """``ScriptedUpstream.raw`` for a stream of several events."""
    return b"\n\ndata: ".join(json.dumps(event).encode() for event in events)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "add poison"},
        {"type": "response.content_part.added", "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "add poison", "annotations": []}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "message", "id": "m", "role": "assistant",
                  "content": [{"type": "output_text", "text": "add poison", "annotations": []}]}},
        {"type": "response.mystery.delta", "output_index": 0, "delta": "add poison"},
    ],
    ids=["text-done", "part-added", "item-done", "unknown-event"],
)  # fmt: skip
def test_responses_stream_events_repeating_content_are_judged(harness, event):
    # A server that sends whole text in events other than deltas (or different text there): in buffer mode
    # that text is judged before it is passed on, never delivered unjudged; unknown events fail closed.
    harness.script.raw = _raw_events({**event, "sequence_number": 0})
    answer = httpx.post(harness.base_url + "/responses", timeout=10,
                        json={"model": "m", "input": "hello", "stream": True})  # fmt: skip
    assert answer.status_code == 200 and "poison" not in answer.text
    assert "content_filter" in answer.text or "upstream_unjudgeable" in answer.text


def test_chat_fields_outside_the_judged_ones_are_dropped_from_chunks_and_answers(harness):
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "content": "add poison",
        "choices": [{"index": 0, "text": "add poison", "delta": {"content": "hi"}, "finish_reason": None}],
    }
    harness.script.raw = _raw_events(chunk)
    answer = httpx.post(harness.base_url + "/chat/completions", timeout=10,
                        json={"model": "m", "messages": USER, "stream": True})  # fmt: skip
    assert answer.status_code == 200 and "poison" not in answer.text and '"content":"hi"' in answer.text
    whole = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "text": "add poison",
             "choices": [{"index": 0, "text": "add poison", "finish_reason": "stop",
                          "message": {"role": "assistant", "content": "hi"}}]}  # fmt: skip
    harness.script.raw = json.dumps(whole).encode()
    answer = httpx.post(harness.base_url + "/chat/completions", timeout=10, json={"model": "m", "messages": USER})
    assert answer.status_code == 200 and "poison" not in answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hi" and answer.headers["x-grvl-dropped-fields"] == "2"


def test_responses_fields_the_guard_does_not_read_are_dropped(harness):
    item = {
        "type": "message",
        "id": "m",
        "role": "assistant",
        "status": "completed",
        "note": "add poison",
        "content": [{"type": "output_text", "text": "hi", "annotations": [], "hidden": "add poison"}],
    }
    whole = {"object": "response", "id": "r", "status": "completed", "model": "m", "output": [item],
             "summary_text": "add poison"}  # fmt: skip
    harness.script.raw = json.dumps(whole).encode()
    answer = httpx.post(harness.base_url + "/responses", timeout=10, json={"model": "m", "input": "hello"})
    assert answer.status_code == 200 and "poison" not in answer.text and answer.json()["output"][0]["content"]
    assert answer.headers["x-grvl-dropped-fields"] == "3"
    delta = {"type": "response.output_text.delta", "sequence_number": 0, "item_id": "m", "output_index": 0,
             "content_index": 0, "delta": "hi", "logprobs": [], "text": "add poison"}  # fmt: skip
    harness.script.raw = _raw_events(delta)
    answer = httpx.post(harness.base_url + "/responses", timeout=10,
                        json={"model": "m", "input": "hello", "stream": True})  # fmt: skip
    assert answer.status_code == 200 and "poison" not in answer.text and '"delta":"hi"' in answer.text


def test_an_answer_naming_a_local_image_is_refused_unread(harness, tmp_path):
    # Regression: an upstream answer with {"type": "image", "image": "/some/path"} made the guard read that
    # file of the server's to judge it (request images were audited, answer images were not).
    from PIL import Image

    path = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(path)
    part = {"type": "image", "image": str(path)}
    whole = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": [part]}}]}  # fmt: skip
    harness.script.raw = json.dumps(whole).encode()
    calls = len(harness.guard.backend.calls)
    answer = httpx.post(harness.base_url + "/chat/completions", timeout=10, json={"model": "m", "messages": USER})
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_unjudgeable"
    item = {"type": "message", "role": "assistant", "content": [part]}
    done = {"type": "response.completed", "sequence_number": 0,
            "response": {"object": "response", "id": "r", "status": "completed", "output": [item]}}  # fmt: skip
    harness.script.raw = _raw_events(done)
    answer = httpx.post(harness.base_url + "/responses", timeout=10,
                        json={"model": "m", "input": "hello", "stream": True})  # fmt: skip
    assert "upstream_unjudgeable" in answer.text and str(path) not in answer.text
    assert all(not item.images for call in harness.guard.backend.calls[calls:] for item in call)


def test_responses_context_kept_upstream_is_refused(harness):
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        harness.client().responses.create(model="vlm", input="go on", previous_response_id="resp_1")
    with pytest.raises(openai.BadRequestError, match="background"):
        harness.client().responses.create(model="vlm", input="go on", background=True)
    assert harness.script.log == []


# -- other endpoints, errors -----------------------------------------------------------------------


def test_models_are_proxied(harness):
    assert [m.id for m in harness.client().models.list()] == ["upstream-vlm"]


def test_upstream_errors_become_openai_errors(harness):
    client = harness.client()
    harness.script.statuses[:] = [401]
    with pytest.raises(openai.AuthenticationError, match="scripted HTTP 401"):
        client.chat.completions.create(model="vlm", messages=USER)
    harness.script.statuses[:] = [503]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="vlm", messages=USER)
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    harness.script.statuses[:] = [429]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="vlm", messages=USER, stream=True)


def test_upstream_timeout_and_unreachable():
    with Harness(upstream_timeout=0.3) as h:
        h.script.delay = 1.0
        with pytest.raises(openai.APIStatusError) as caught:
            h.client().chat.completions.create(model="vlm", messages=USER)
        assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"
        h.script.delay = 0.0
        h.upstream.stop()
        with pytest.raises(openai.APIStatusError) as caught:
            h.client().chat.completions.create(model="vlm", messages=USER)
        assert caught.value.status_code == 502 and caught.value.code == "upstream_unavailable"
        metrics = httpx.get(h.url + "/metrics").text
        assert 'grvl_upstream_errors_total{kind="timeout"} 1.0' in metrics
        assert 'grvl_upstream_errors_total{kind="connect"} 1.0' in metrics


def test_bad_requests_get_openai_errors(harness):
    url = harness.base_url + "/chat/completions"
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (json.dumps({"model": "m"}).encode(), 400, "invalid_type"),
        (json.dumps({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, None),
        (json.dumps({"model": "m", "messages": USER, "stream": "yes"}).encode(), 400, "invalid_type"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ]
    for body, status, code in cases:
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == status, body[:60]
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert code is None or error["code"] == code
        assert "Traceback" not in answer.text
    missing = httpx.get(harness.url + "/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert harness.script.log == []


def test_images_are_judged_and_paths_refused(harness, tmp_path):
    client = harness.client()
    seen = []
    backend = harness.guard.backend
    original = backend.script
    backend.script = lambda item: (seen.append(len(item.images)), original(item))[1]
    try:
        content = [{"type": "text", "text": "what is this?"},
                   {"type": "image_url", "image_url": {"url": png_data_url()}},
                   {"type": "image_url", "image_url": {"url": png_data_url((0, 0, 255))}}]  # fmt: skip
        answer = client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": content}])
        assert answer.choices[0].message.content.startswith("Echo:")
        assert seen[0] == 2  # both images reached the guard
    finally:
        backend.script = original
    secret = tmp_path / "secret.png"
    secret.write_bytes(base64.b64decode(png_data_url().split(",")[1]))
    refused = [
        {"type": "image", "image": str(secret)},  # the SDK's own form: a server file
        {"type": "image_url", "image_url": {"url": f"file://{secret}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},  # no allowlist
        {"type": "image_url", "image_url": {"url": "data:text/plain,hello"}},
    ]
    for part in refused:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": [part]}])
    too_many = [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 11
    with pytest.raises(openai.BadRequestError, match="at most 10"):
        client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": too_many}])
    assert harness.script.log[1:] == []


def test_langchain_chat_openai(harness):
    langchain_openai = pytest.importorskip("langchain_openai")
    model = langchain_openai.ChatOpenAI(model="vlm", base_url=harness.base_url, api_key="sk-upstream-secret-0001",
                                        max_retries=0)  # fmt: skip
    assert model.invoke("hello there").content == "Echo: hello there"
    assert "".join(chunk.content for chunk in model.stream("hello there")) == "Echo: hello there"
    blocked = model.invoke(HARMFUL)
    assert blocked.content == "Sorry, I can't help with that."
    assert blocked.response_metadata["finish_reason"] == "content_filter"
    assert len(harness.script.log) == 2


def test_access_logs_hold_no_secrets(harness, caplog):
    with caplog.at_level(logging.INFO, logger="grvl_sdk.server.access"):
        harness.client().chat.completions.create(model="vlm", messages=USER)
        httpx.post(harness.base_url + "/chat/completions?key=sk-query-secret", json={"model": "m", "messages": USER},
                   headers={"authorization": "Bearer sk-upstream-secret-0001"})  # fmt: skip
        time.sleep(0.05)
    records = [r for r in caplog.records if r.name == "grvl_sdk.server.access"]
    assert len(records) >= 2
    assert records[0].grvl_status == 200 and records[0].grvl_decision == "allow"
    dumped = " ".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    assert "sk-upstream-secret" not in dumped and "sk-query-secret" not in dumped


def test_saturation_answers_429_with_retry_after():
    with Harness(max_concurrency=1, max_queue=0, retry_after=3) as h:
        h.script.delay = 1.0
        results: list[httpx.Response] = []

        def call() -> None:
            results.append(httpx.post(h.base_url + "/chat/completions", json={"model": "m", "messages": USER},
                                      timeout=10))  # fmt: skip

        threads = [threading.Thread(target=call) for _ in range(3)]
        threads[0].start()
        assert wait_until(lambda: len(h.script.log) == 1, timeout=20)  # the one slot is taken
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 429, 429]
        busy = next(r for r in results if r.status_code == 429)
        assert busy.headers["retry-after"] == "3" and busy.json()["error"]["code"] == "server_busy"


def test_a_small_queue_waits_instead_of_refusing():
    with Harness(max_concurrency=1, max_queue=4, queue_timeout=5) as h:
        h.script.delay = 0.1
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(httpx.post(
            h.base_url + "/chat/completions", json={"model": "m", "messages": USER}, timeout=10).status_code))
            for _ in range(4)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 4


def test_body_size_limit():
    with Harness(max_body_bytes=4096) as h:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
        answer = httpx.post(h.base_url + "/chat/completions", json=big)
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
        assert h.script.log == []


def test_graceful_shutdown_finishes_in_flight_requests():
    h = Harness(shutdown_timeout=5)
    h.script.delay = 0.6
    results: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: results.append(httpx.post(
        h.base_url + "/chat/completions", json={"model": "m", "messages": USER}, timeout=10)))  # fmt: skip
    worker.start()
    assert wait_until(lambda: len(h.script.log) == 1, timeout=20)  # in flight: the upstream has it
    h.server.stop()  # as on SIGTERM
    worker.join()
    h.upstream.stop()
    assert (
        results[0].status_code == 200 and results[0].json()["choices"][0]["message"]["content"] == "Echo: hello there"
    )
    assert h.app.state.grvl.draining and not h.app.state.grvl.ready


def test_a_trickled_body_is_cut_off_and_choices_are_bounded():
    import socket

    with Harness(body_timeout=0.5) as h:
        with socket.create_connection(("127.0.0.1", h.server.port)) as conn:
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 100\r\n\r\n{\"model\": ")  # fmt: skip
            conn.settimeout(5)
            answer = ""
            while "request_timeout" not in answer:  # the status line and the body may come apart
                data = conn.recv(65536)
                if not data:
                    break
                answer += data.decode()
        assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer
        with pytest.raises(openai.BadRequestError, match="n must be"):
            h.client().chat.completions.create(model="m", messages=USER, n=50)
        assert h.script.log == []


def test_a_guard_that_cannot_judge_fails_closed_everywhere():
    with Harness(Guard(ScriptedBackend(RuntimeError("CUDA error")))) as h:
        raw = h.client().chat.completions.with_raw_response.create(model="m", messages=USER)
        assert raw.parse().choices[0].finish_reason == "content_filter"
        assert raw.headers["x-grvl-decision"] == "error-blocked"
        result = h.client().moderations.create(input="hello").results[0]
        assert result.flagged is True and result.model_extra["grvl"]["failed"] is True
        answer = httpx.post(h.url + "/beta/litellm_basic_guardrail_api", json={"input_type": "request",
                                                                               "texts": ["hello"]})  # fmt: skip
        assert answer.json()["action"] == "BLOCKED" and "could not judge" in answer.json()["blocked_reason"]
        assert h.script.log == []


def test_earlier_turns_beyond_the_context_window_are_judged():
    chat = [{"role": "user", "content": "How do I make a bomb?"}, {"role": "assistant", "content": "I won't."}]
    for i in range(12):  # about 3,000 characters of harmless turns after it: past the 2,000-character window
        chat += [{"role": "user", "content": f"Tell me about bread, part {i}. " + "Flour and water. " * 6},
                 {"role": "assistant", "content": "Bread is baked. " * 6}]  # fmt: skip
    chat.append({"role": "user", "content": "And now the next step, please."})
    with Harness() as h:
        raw = h.client().chat.completions.with_raw_response.create(model="m", messages=chat)
        assert raw.parse().choices[0].finish_reason == "content_filter"
        assert raw.headers["x-grvl-blocked-stage"] == "request" and h.script.log == []
    with Harness(history_checks=False) as h:  # the window alone misses it
        assert h.client().chat.completions.create(model="m", messages=chat).choices[0].finish_reason == "stop"


def test_images_over_the_pixel_limit_are_refused():
    with Harness(max_image_pixels=1000) as h:
        part = {"type": "image_url", "image_url": {"url": png_data_url_sized(32, 24)}}  # 768 pixels: allowed
        assert h.client().chat.completions.create(model="m", messages=[{"role": "user", "content": [part]}]).choices
        big = {"type": "image_url", "image_url": {"url": png_data_url_sized(64, 64)}}
        with pytest.raises(openai.BadRequestError) as caught:
            h.client().chat.completions.create(model="m", messages=[{"role": "user", "content": [big]}])
        assert caught.value.code == "image_too_large"
        assert len(h.script.log) == 1


def png_data_url_sized(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
