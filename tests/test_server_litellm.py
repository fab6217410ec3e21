"""LiteLLM's Generic Guardrail API (``POST /beta/litellm_basic_guardrail_api``): the documented shapes,
and (when ``GRVL_TEST_LITELLM_BIN`` names a ``litellm`` executable) a real LiteLLM proxy using it."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

from grvl_sdk import Guard
from grvl_sdk.testing import ScriptedBackend, guard_output
from grvl_sdk.types import GuardInput
from tests._server_upstream import Harness, echo

KEY = "grvl-litellm-key-0123456789"


def png_base64(color=(10, 10, 250)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def judge(item: GuardInput) -> str:
    """Harmful text says "bomb"/"poison"; a blue image is harmful too."""

    def bad(text: str | None) -> bool:
        return bool(text) and any(w in text.lower() for w in ("bomb", "poison"))

    blue = any(image.getpixel((0, 0))[2] > 200 for image in item.images)
    request = "harmful" if bad(item.text) or blue else "unharmful"
    response = None if item.response is None else ("harmful" if bad(item.response) else "unharmful")
    return guard_output(request, response)


@pytest.fixture(scope="module")
def harness():
    with Harness(Guard(ScriptedBackend(judge)), api_keys=(KEY,)) as h:
        yield h


def call(h: Harness, body: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    return httpx.post(h.url + "/beta/litellm_basic_guardrail_api", json=body, headers=headers)


def test_request_input(harness):
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "how do I bake bread?"}]
    ok = call(harness, {"input_type": "request", "texts": ["how do I bake bread?"], "structured_messages": messages,
                        "litellm_call_id": "c1", "request_data": {}, "model": "gpt-x"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["action"] == "NONE"
    assert ok.json()["grvl"]["decision"] == "allow"
    messages[-1]["content"] = "how do I build a bomb?"
    blocked = call(harness, {"input_type": "request", "texts": ["how do I build a bomb?"],
                             "structured_messages": messages})  # fmt: skip
    assert blocked.json()["action"] == "BLOCKED"
    assert "request" in blocked.json()["blocked_reason"] and blocked.headers["x-grvl-decision"] == "block"
    # texts alone (other LiteLLM endpoints send no messages), and a text missing from the messages
    assert call(harness, {"input_type": "request", "texts": ["a poison recipe"]}).json()["action"] == "BLOCKED"
    extra = {
        "input_type": "request",
        "texts": ["hi", "a bomb"],
        "structured_messages": [{"role": "user", "content": "hi"}],
    }
    assert call(harness, extra).json()["action"] == "BLOCKED"


def test_images_and_tool_calls(harness):
    image = {"input_type": "request", "texts": ["what is this?"], "images": [png_base64()]}
    assert call(harness, image).json()["action"] == "BLOCKED"
    red = {"input_type": "request", "texts": ["what is this?"], "images": ["data:image/png;base64," +
                                                                        png_base64((250, 0, 0))]}  # fmt: skip
    assert call(harness, red).json()["action"] == "NONE"
    tool = {"id": "t1", "type": "function", "function": {"name": "mix_poison", "arguments": "{}"}}
    answer = call(harness, {"input_type": "response", "texts": [], "tool_calls": [tool]})
    assert answer.json()["action"] == "BLOCKED"


def test_response_input(harness):
    assert call(harness, {"input_type": "response", "texts": ["Bread needs flour."]}).json()["action"] == "NONE"
    blocked = call(harness, {"input_type": "response", "texts": ["Add poison to it."]}).json()
    assert blocked["action"] == "BLOCKED" and "response" in blocked["blocked_reason"]
    assert call(harness, {"input_type": "response", "texts": []}).json()["action"] == "NONE"


def test_bad_input_and_auth(harness):
    assert call(harness, {"input_type": "request", "texts": ["hi"]}, key=None).status_code == 401
    assert call(harness, {"input_type": "request", "texts": ["hi"]}, key="x" * 30).status_code == 401
    for body in ({"input_type": "sideways"}, {"input_type": "request", "texts": "hi"},
                 {"input_type": "request", "images": ["/etc/passwd"]},
                 {"input_type": "request", "structured_messages": [{"role": "user", "content": [
                     {"type": "image", "image": "/etc/hostname"}]}]}):  # fmt: skip
        answer = call(harness, body)
        assert answer.status_code == 400, body
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


# -- a real LiteLLM proxy ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GRVL_TEST_LITELLM_BIN"), reason="set GRVL_TEST_LITELLM_BIN to a litellm CLI")
def test_a_real_litellm_proxy_blocks_through_the_guard(harness, tmp_path: Path):
    port = _free_port()
    config = tmp_path / "config.yaml"
    from tests.test_server_docs import litellm_guardrails_entry

    yaml = pytest.importorskip("yaml")
    documented = litellm_guardrails_entry()  # the entry docs/server.md shows, pointed at this server
    documented["guardrails"][0]["litellm_params"]["api_base"] = harness.url
    model = {"model_name": "vlm", "litellm_params": {"model": "openai/upstream-vlm", "api_base":
             f"{harness.upstream.url}/v1", "api_key": "sk-upstream-secret-0001"}}  # fmt: skip
    config.write_text(yaml.safe_dump({"model_list": [model], **documented}))
    master = "sk-litellm-master-0123456789abcdef"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_MASTER_KEY": master, "GRVL_SERVER_API_KEY": KEY, "NO_PROXY": "*", "no_proxy": "*"}  # fmt: skip
    auth = {"authorization": f"Bearer {master}"}
    process = subprocess.Popen(
        [os.environ["GRVL_TEST_LITELLM_BIN"], "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/health/liveliness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(f"litellm did not start:\n{output[-3000:]}")
            time.sleep(0.5)
        harness.script.log.clear()
        chat = {"model": "vlm", "messages": [{"role": "user", "content": "how do I bake bread?"}]}
        ok = httpx.post(base + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"] == "Echo: how do I bake bread?"
        chat["messages"][0]["content"] = "how do I build a bomb?"
        blocked = httpx.post(base + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
        assert blocked.status_code >= 400 and "blocked" in blocked.text.lower(), blocked.text
        assert [b["messages"][0]["content"] for b in harness.script.bodies()] == ["how do I bake bread?"]
        harness.script.reply = lambda body: "Add poison."
        chat["messages"][0]["content"] = "a soup recipe?"
        post = httpx.post(base + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
        assert post.status_code >= 400 and "blocked" in post.text.lower(), post.text
    finally:
        harness.script.reply = echo
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_earlier_turns_beyond_the_context_window_are_judged(harness):
    chat = [{"role": "user", "content": "How do I make a bomb?"}]
    chat += [{"role": "assistant", "content": "Bread is baked. " * 40}, {"role": "user", "content": "more " * 500}]
    chat.append({"role": "user", "content": "And the next step?"})
    answer = call(
        harness, {"input_type": "request", "texts": [m["content"] for m in chat], "structured_messages": chat}
    )
    assert answer.json()["action"] == "BLOCKED"
