"""The guard server under odd input and odd upstreams: JSON that cannot be sent on, upstream answers that
cannot be passed back, Responses tool calls, in-stream errors, timeouts and shutdown with open streams.
Each test is a regression test for a kind of failure found by trying to break the server."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from grvl_sdk import Guard  # noqa: E402
from grvl_sdk.testing import ScriptedBackend, wait_until  # noqa: E402
from tests._server_upstream import Harness, echo  # noqa: E402

USER = [{"role": "user", "content": "hello there"}]
POISON_CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "buy_poison",
               "arguments": '{"grams": 5}', "status": "completed"}  # fmt: skip


@pytest.fixture(scope="module")
def harness():
    with Harness() as h:
        yield h


@pytest.fixture(autouse=True)
def fresh(request):
    if "harness" in request.fixturenames:
        h = request.getfixturevalue("harness")
        h.script.reply, h.script.raw, h.script.output_extra, h.script.delay = echo, None, [], 0.0
        h.script.log.clear()
    yield


# -- JSON that could not be sent on ----------------------------------------------------------------

UNSENDABLE = [
    (b'"\\ud800"', "lone UTF-16 surrogate"),  # escaped lone surrogate
    (b'"\xed\xa0\x80"', "lone UTF-16 surrogate"),  # a surrogate's raw UTF-8 bytes
    (b"NaN", "NaN"),
    (b"-Infinity", "Infinity"),
    (b"1e999", "out of range"),
]


@pytest.mark.parametrize(("value", "said"), UNSENDABLE)
def test_request_json_that_cannot_be_sent_on_is_a_400_everywhere(harness, value, said):
    bodies = {
        "/v1/chat/completions": b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":%s}',
        "/v1/responses": b'{"model":"m","input":"hi","instructions":%s}',
        "/v1/moderations": b'{"input":["hi",%s]}',
        "/beta/litellm_basic_guardrail_api": b'{"input_type":"request","texts":["hi"],"x":%s}',
    }
    for path, template in bodies.items():
        answer = httpx.post(harness.url + path, content=template % value, headers={"content-type": "application/json"})
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_json" and said in error["message"], error
    assert harness.script.log == []


def test_escaped_surrogate_pairs_are_fine(harness):
    body = b'{"model":"m","messages":[{"role":"user","content":"smile \\ud83d\\ude00"}]}'
    answer = httpx.post(harness.base_url + "/chat/completions", content=body,
                        headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Echo: smile \U0001f600"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"choices":[{"index":0,"message":{"role":"assistant","content":"\\udc00"},"finish_reason":"stop"}]}',
        b'{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"t":NaN}',
        b"<html>bad gateway</html>",
    ],
)
def test_upstream_answers_that_cannot_be_passed_back_are_502s(harness, raw):
    harness.script.raw = raw
    client = harness.client()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 502 and caught.value.code == "upstream_invalid_response"
    # streamed: the status was sent already, so the stream ends with an error event
    with pytest.raises(openai.APIError, match="not valid JSON"):
        list(client.chat.completions.create(model="m", messages=USER, stream=True))


def test_an_oversized_upstream_stream_event_ends_the_stream_with_an_error(harness, monkeypatch):
    from grvl_sdk.server import sse

    monkeypatch.setattr(sse, "MAX_EVENT_CHARS", 1000)
    harness.script.raw = json.dumps({"choices": [{"index": 0, "delta": {"content": "x" * 5000}}]}).encode()
    with pytest.raises(openai.APIError, match="over 1000 characters"):
        list(harness.client().chat.completions.create(model="m", messages=USER, stream=True))


# -- Responses API: tool calls, in-stream errors, async --------------------------------------------


def test_a_harmful_responses_function_call_is_blocked_whole_and_streamed(harness):
    harness.script.output_extra = [POISON_CALL]
    client = harness.client()
    whole = client.responses.with_raw_response.create(model="m", input="hello there")
    answer = whole.parse()
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "content_filter"
    assert not any(item.type == "function_call" for item in answer.output)
    assert whole.headers["x-grvl-blocked-stage"] == "response"
    events = list(client.responses.create(model="m", input="hello there", stream=True))
    assert events[-1].type == "response.incomplete"
    assert not any(getattr(e, "item", None) is not None and e.item.type == "function_call" for e in events)
    harness.script.output_extra = [{**POISON_CALL, "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert client.responses.create(model="m", input="hello there").output[1].name == "get_weather"


def test_error_block_style_ends_a_responses_stream_with_an_error_event():
    with Harness(block_style="error") as h:
        h.script.reply = lambda body: "Then add poison."
        events = list(h.client().responses.create(model="m", input="hello there", stream=True))
        assert events[-1].type == "error" and events[-1].code == "content_filter"
        assert not any(e.type == "response.completed" for e in events)
        with pytest.raises(openai.BadRequestError) as caught:
            h.client().responses.create(model="m", input="hello there")
        assert caught.value.code == "content_filter"


async def test_async_responses_streaming_and_not_concurrently(harness):
    client = harness.async_client()

    async def one(i: int, stream: bool) -> str:
        if not stream:
            return (await client.responses.create(model="m", input=f"question {i}")).output_text
        events = await client.responses.create(model="m", input=f"question {i}", stream=True)
        return "".join([e.delta async for e in events if e.type == "response.output_text.delta"])

    answers = await asyncio.gather(*(one(i, i % 2 == 0) for i in range(16)))
    assert answers == [f"Echo: question {i}" for i in range(16)]
    blocked = await client.responses.create(model="m", input="a bomb, please")
    assert blocked.status == "incomplete"
    await client.close()


# -- time limits and shutdown ----------------------------------------------------------------------


def test_a_slow_guard_hits_the_request_timeout():
    class Slow(ScriptedBackend):
        def generate(self, *args, **kwargs):
            time.sleep(1.5)
            return super().generate(*args, **kwargs)

    with Harness(Guard(Slow.flagging("bomb")), request_timeout=0.3, guard_deadline=30) as h:
        with pytest.raises(openai.APIStatusError) as caught:
            h.client().chat.completions.create(model="m", messages=USER)
        assert caught.value.status_code == 504 and caught.value.code == "request_timeout"
        assert h.script.log == []


def test_shutdown_lets_an_open_stream_finish():
    h = Harness(shutdown_timeout=10)
    h.script.reply = lambda body: "word " * 40
    h.script.chunk_delay = 0.04  # about 1 s of streaming
    received: list[str] = []

    def read() -> None:
        with httpx.stream("POST", h.base_url + "/chat/completions", timeout=10,
                          json={"model": "m", "messages": USER, "stream": True}) as answer:  # fmt: skip
            for line in answer.iter_lines():
                if line:
                    received.append(line)

    worker = threading.Thread(target=read)
    worker.start()
    assert wait_until(lambda: len(h.script.log) == 1, timeout=20)  # the upstream stream has started
    assert h.script.streams_closed == 0  # and is still running
    h.server.stop()  # as on SIGTERM, mid-stream
    worker.join()
    h.upstream.stop()
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in received if line.startswith("data: {"))  # fmt: skip
    assert text == "word " * 40 and received[-1] == "data: [DONE]"


# -- no server-side files, on any endpoint ---------------------------------------------------------


def test_no_endpoint_reads_a_file_of_the_server(tmp_path):
    """The SDK's parser takes ``{"type": "image", "image": PATH}``; a server must never: a request naming
    a file of the server (in any image form, on any endpoint) is a 400 and the file is never opened."""
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    path, url = str(secret), secret.as_uri()
    parts = [{"type": "image", "image": path}, {"type": "image", "url": path}, {"type": "image_url", "image_url": path},
             {"type": "image_url", "image_url": {"url": url}}, {"type": "input_image", "image_url": path},
             {"type": "input_image", "image_url": url}]  # fmt: skip
    backend = ScriptedBackend.flagging("bomb")
    with Harness(Guard(backend)) as h:
        for part in parts:
            content = [{"type": "text", "text": "what is this?"}, part]
            bodies = {
                "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": content}]},
                "/v1/responses": {"model": "m", "input": [{"role": "user", "content": content}]},
                "/v1/moderations": {"input": content},
                "/beta/litellm_basic_guardrail_api": {"input_type": "request",
                                                      "structured_messages": [{"role": "user", "content": content}]},
            }  # fmt: skip
            for endpoint, body in bodies.items():
                answer = httpx.post(h.url + endpoint, json=body)
                assert answer.status_code == 400, (endpoint, part, answer.text)
            answer = httpx.post(h.url + "/beta/litellm_basic_guardrail_api", json={"input_type": "request",
                                                                                  "images": [path]})  # fmt: skip
            assert answer.status_code == 400
        assert h.script.log == [] and backend.calls == []


def test_unreadable_images_get_errors_without_object_addresses(harness):
    # Regression: PIL's "cannot identify image file <_io.BytesIO object at 0x7f...>" reached the caller,
    # a heap address in an error body.
    import base64

    junk = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    root = harness.base_url.removesuffix("/v1")
    for path, body in [
        ("/v1/moderations", {"input": [{"type": "image_url", "image_url": {"url": junk}}]}),
        ("/beta/litellm_basic_guardrail_api", {"texts": ["hi"], "images": [junk], "input_type": "request"}),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": junk}}]}]}),
    ]:  # fmt: skip
        answer = httpx.post(root + path, json=body, timeout=10)
        assert answer.status_code == 400 and "cannot read image" in answer.text, (path, answer.text)
        assert "object at 0x" not in answer.text


def test_a_stream_lasts_no_longer_than_stream_timeout():
    # Regression: a proxied stream had no overall limit — a client that stops reading (or an upstream that
    # trickles) held its concurrency slot for as long as the stream went on.
    with Harness(stream_timeout=0.5) as h:
        h.script.reply = lambda body: "word " * 400
        h.script.chunk_delay = 0.02  # ~4 s of stream
        started = time.perf_counter()
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        answer = httpx.post(h.base_url + "/chat/completions", timeout=10, json=body)
        assert time.perf_counter() - started < 3
        assert answer.status_code == 200 and "stream_timeout" in answer.text
        assert wait_until(lambda: h.script.streams_closed == 1, timeout=5)  # the upstream stream was closed
