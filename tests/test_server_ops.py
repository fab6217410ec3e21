"""Operations of the guard server: health and readiness, metrics, settings, the ``grvl serve`` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from grvl_sdk import Guard, InputError  # noqa: E402
from grvl_sdk.server import BackgroundServer, ServerConfig, create_app  # noqa: E402
from grvl_sdk.testing import ScriptedBackend, wait_until  # noqa: E402
from tests._server_upstream import Harness, start_upstream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "hello there"}]


def test_ready_waits_for_the_guard_to_load():
    loaded = threading.Event()

    def load() -> Guard:
        loaded.wait(10)
        return Guard(ScriptedBackend.flagging("bomb"))

    with BackgroundServer(create_app(load, config=ServerConfig())) as server:
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}
        waiting = httpx.get(server.url + "/ready")
        assert waiting.status_code == 503 and waiting.json()["error"]["code"] == "not_ready"
        early = httpx.post(server.url + "/v1/moderations", json={"input": "hi"})
        assert early.status_code == 503 and early.headers["retry-after"]
        loaded.set()
        for _ in range(200):
            if httpx.get(server.url + "/ready").status_code == 200:
                break
            time.sleep(0.02)
        assert httpx.get(server.url + "/ready").json() == {"status": "ready", "model": "scripted"}
        assert httpx.post(server.url + "/v1/moderations", json={"input": "hi"}).status_code == 200
        # no upstream configured: the proxy says so
        answer = httpx.post(server.url + "/v1/chat/completions", json={"model": "m", "messages": USER})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_upstream"


def test_a_guard_that_fails_to_load_is_reported():
    def load() -> Guard:
        raise RuntimeError("no such checkpoint")

    with BackgroundServer(create_app(load)) as server:
        assert wait_until(lambda: server.app.state.grvl.load_error is not None, timeout=20)
        answer = httpx.get(server.url + "/ready")
        assert answer.status_code == 503 and "failed to load" in answer.json()["error"]["message"]


def test_metrics():
    with Harness() as h:
        client = h.client()
        client.chat.completions.create(model="m", messages=USER)
        client.chat.completions.create(model="m", messages=USER)  # a cache hit
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a bomb"}])
        list(client.chat.completions.create(model="m", messages=USER, stream=True))
        client.moderations.create(input=["hi", "a bomb"])
        text = httpx.get(h.url + "/metrics").text
    for line in (
        'grvl_checks_total{decision="allow",endpoint="chat",stage="request"}',
        'grvl_checks_total{decision="block",endpoint="chat",stage="request"} 1.0',
        'grvl_checks_total{decision="allow",endpoint="chat",stage="response"}',
        'grvl_checks_total{decision="block",endpoint="moderations",stage="request"} 1.0',
        'grvl_requests_total{endpoint="/v1/chat/completions",status="200"} 4.0',
        "grvl_check_seconds_bucket",
        "grvl_request_seconds_bucket",
        "grvl_queue_depth 0.0",
        "grvl_requests_in_flight 0.0",
        "grvl_cache_hits_total",
        "grvl_cache_hit_ratio",
        "grvl_ready 1.0",
    ):
        assert line in text, line
    hits = float(next(x for x in text.splitlines() if x.startswith("grvl_cache_hits_total")).split()[-1])
    assert hits >= 1


def test_settings_from_files_and_their_checks(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text('upstream = "http://127.0.0.1:9/v1"\nblock_style = "error"\napi_keys = ["k-0123456789abcdef"]\n'
                    '[policy]\nstream_mode = "passthrough"\n')  # fmt: skip
    config = ServerConfig.from_file(toml, port=9001)
    assert (config.block_style, config.port, config.guard_policy().stream_mode) == ("error", 9001, "passthrough")
    assert config.guard_policy().on_block == "refuse" and config.guard_policy().deadline == 60.0
    assert "k-0123456789abcdef" not in repr(config) and "k-0123456789abcdef" not in json.dumps(config.public())
    (tmp_path / "s.json").write_text(json.dumps({"max_images": 3}))
    assert ServerConfig.from_file(tmp_path / "s.json").max_images == 3
    env = ServerConfig().with_env_keys({"GRVL_SERVER_API_KEYS": "first-key-0123456789, second-key-0123456789"})
    assert len(env.api_keys) == 2
    bad_settings = [
        {"policy": {"on_block": "raise"}},
        {"policy": {"colour": "red"}},
        {"upstream": "ftp://x"},
        {"api_keys": ["short"]},
        {"max_images": 11},
        {"forward_headers": ["cookie"]},
        {"nonsense": 1},
    ]
    for bad in bad_settings:
        with pytest.raises(InputError):
            ServerConfig(**bad)
    with pytest.raises(InputError):
        ServerConfig.from_file(tmp_path / "missing.toml")


def test_protect_proxy_requires_our_key_in_its_own_header():
    key = "grvl-proxy-key-0123456789"
    with Harness(api_keys=(key,), protect_proxy=True) as h:
        with pytest.raises(openai.AuthenticationError):
            h.client().chat.completions.create(model="m", messages=USER)
        client = h.client(default_headers={"x-grvl-api-key": key})
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content
        assert h.script.log[0]["authorization"] == "Bearer sk-upstream-secret-0001"  # ours is not forwarded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(process: subprocess.Popen, base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            assert process.stderr is not None
            pytest.fail(f"grvl serve did not become ready:\n{process.stderr.read().decode()[-3000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> str:
    """SIGTERM, as a process manager stops it: a graceful shutdown; returns the logs."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once stopped
    assert process.stderr is not None
    logs = process.stderr.read().decode()
    assert "guard server stopped" in logs
    return logs


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "grvl_sdk.cli", "serve", *args, "--log-format", "json"]
    return subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)  # fmt: skip


def test_grvl_serve_command_with_a_guard_server(tmp_path):
    """``grvl serve --guard-server``: the guard model found on the guard server, keys from the environment,
    JSON access logs without secrets, SIGTERM."""
    from grvl_sdk.testing import guard_output

    guard_server, guard_script = start_upstream()  # an OpenAI-compatible server answering as the guard

    def judge(body: dict) -> str:  # the toy rule, on the guard's prompt
        prompt = json.dumps(body)
        label = "harmful" if "bomb" in prompt else "unharmful"
        return guard_output(label, None if "AI assistant:\\nNone" in prompt else label)

    guard_script.reply = judge
    upstream, script = start_upstream()
    port = _free_port()
    settings = tmp_path / "server.json"
    settings.write_text(json.dumps({"guard_deadline": 30, "max_concurrency": 8}))
    process = _serve(
        [
            "--upstream",
            upstream.url + "/v1",
            "--guard-server",
            guard_server.url + "/v1",
            "--port",
            str(port),
            "--config",
            str(settings),
        ],
        {"GRVL_SERVER_API_KEYS": "serve-test-key-0123456789"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(process, base, 60)
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-upstream-secret-0001", max_retries=0)
        harmful = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "a bomb"}])  # fmt: skip
        assert harmful.parse().choices[0].finish_reason == "content_filter"
        assert harmful.headers["x-grvl-decision"] == "block"
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == (
            "Echo: hello there"
        )
        assert guard_script.log[0]["body"]["model"] == "upstream-vlm"  # the guard server's only model
        assert httpx.get(base + "/metrics").status_code == 401  # keys from $GRVL_SERVER_API_KEYS
        headers = {"authorization": "Bearer serve-test-key-0123456789"}
        assert httpx.get(base + "/metrics", headers=headers).status_code == 200
        logs = _stop(process)
        records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        access = [r for r in records if r["logger"] == "grvl_sdk.server.access"]
        assert any(r["path"] == "/v1/chat/completions" and r["status"] == 200 for r in access)
        assert "sk-upstream-secret-0001" not in logs and "serve-test-key" not in logs
        assert [entry["body"]["messages"][0]["content"] for entry in script.log] == ["hello there"]
    finally:
        if process.poll() is None:
            process.kill()
        upstream.stop()
        guard_server.stop()


@pytest.mark.slow
def test_grvl_serve_command_with_a_local_model(trained_tiny_guard_path):
    """``grvl serve --model``: the trained tiny guard (judging the toy rule) loaded in the background."""
    checkpoint = trained_tiny_guard_path
    upstream, script = start_upstream()
    port = _free_port()
    process = _serve(["--upstream", upstream.url + "/v1", "--model", str(checkpoint), "--device", "cpu",
                      "--max-new-tokens", "96", "--port", str(port)], {})  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(process, base, 120)
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-upstream-secret-0001", max_retries=0)
        blocked = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a bomb"}])
        assert blocked.choices[0].finish_reason == "content_filter"
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == (
            "Echo: hello there"
        )
        _stop(process)
        assert [entry["body"]["messages"][0]["content"] for entry in script.log] == ["hello there"]
    finally:
        if process.poll() is None:
            process.kill()
        upstream.stop()


def test_grvl_serve_says_clearly_what_it_cannot_reach(caplog, capsys):
    """An unreachable guard server (or one without the named model), a checkpoint that does not exist, or a
    guard that fails to load once the server runs, stops ``grvl serve`` with a clear message; an
    unreachable upstream is a clear warning (it may come up later)."""
    import logging

    from grvl_sdk.cli import main
    from grvl_sdk.cli.serve import EXIT_LOAD, _probe_upstream
    from grvl_sdk.server import serve

    closed = f"http://127.0.0.1:{_free_port()}/v1"
    guard_server, _ = start_upstream()
    try:
        for args, said in (
            (["--guard-server", closed, "--guard-model", "g"], f"cannot reach the guard server at {closed}"),
            (["--guard-server", guard_server.url + "/v1", "--guard-model", "g"],
             f"the guard server at {guard_server.url}/v1 does not serve 'g' (it serves ['upstream-vlm'])"),
            (["--model", str(ROOT / "no-such-guard")], "model folder"),
        ):  # fmt: skip
            assert main(["serve", *args, "--upstream", closed]) == EXIT_LOAD
            assert f"grvl serve: error: {said}" in capsys.readouterr().err
    finally:
        guard_server.stop()

    def load() -> Guard:
        raise RuntimeError("CUDA out of memory")

    started = time.monotonic()
    assert serve(create_app(load), port=_free_port(), log_level="warning") == "RuntimeError: CUDA out of memory"
    assert time.monotonic() - started < 10  # stopped at once, not left running unready

    log = logging.getLogger("grvl_sdk.server")
    with caplog.at_level(logging.WARNING, logger="grvl_sdk.server"):
        assert _probe_upstream(closed, log) is False
    assert f"cannot reach the upstream at {closed}" in caplog.text and "upstream_unavailable" in caplog.text
    upstream, _ = start_upstream()
    try:
        assert _probe_upstream(upstream.url + "/v1", log) is True
    finally:
        upstream.stop()


def test_grvl_serve_help_and_bad_flags(capsys):
    from grvl_sdk.cli import main

    with pytest.raises(SystemExit) as shown:
        main(["serve", "--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--upstream", "--model", "--guard-server", "--guard-model", "--quantization", "--host", "--port",
                 "--config"):  # fmt: skip
        assert flag in text
    for bad, said in ((["--bogus"], "unrecognized arguments: --bogus"), (["--port", "abc"], "invalid int value"),
                      (["--model", "a", "--guard-server", "http://x/v1"], "not allowed with argument")):  # fmt: skip
        with pytest.raises(SystemExit) as failed:
            main(["serve", *bad])
        assert failed.value.code == 2 and said in capsys.readouterr().err
    assert main(["serve", "--upstream", "ftp://x"]) == 2
    assert "grvl serve: error: invalid ServerConfig: upstream" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
