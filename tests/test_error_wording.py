"""Error messages read as sentences: no nested parentheses (in the code's messages, or composed at run
time), one hint at a time, and the failures a new user meets first say what to do."""

from __future__ import annotations

import ast
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from grvl_sdk import Guard
from grvl_sdk.errors import InputError, RemoteBackendError
from grvl_sdk.testing import ScriptedBackend

ROOT = Path(__file__).resolve().parent.parent


def depth(text: str) -> int:
    """The deepest nesting of prose parentheses in ``text``: a call in a code sample (``f(x)``, a ``(``
    right after a name) is not one, and an interval ``(0, 1]`` closes with its bracket."""
    stack: list[bool] = []  # True: a prose parenthesis
    deepest = 0
    for i, char in enumerate(text):
        if char in "([":
            stack.append(char == "(" and not (i and (text[i - 1].isalnum() or text[i - 1] in "_.")))
            deepest = max(deepest, sum(stack))
        elif char in ")]" and stack:
            stack.pop()
    return deepest


def _message_literals(node: ast.AST) -> list[str]:
    """The literal text of each argument of a raised error's call (``{}`` for an interpolated value)."""
    out = []
    for arg in node.args if isinstance(node, ast.Call) else []:
        if isinstance(arg, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in arg.values))
        elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            out.append(arg.value)
    return out


def test_the_depth_of_parentheses():
    old = "output cut at max_new_tokens before a verdict (no 'Request: ...' label in the guard output (untagged))"
    assert depth(old) == 2
    assert depth("pass Guard(image_fetch=FetchPolicy(allow=[...])) (see grvl_sdk.fetch)") == 1
    assert depth("beta must be in (0, 1], got 2 (a float)") == 1


def test_no_raised_message_in_the_package_nests_parentheses():
    nested = []
    for path in sorted((ROOT / "grvl_sdk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for text in _message_literals(node.exc):
                    if depth(text) >= 2:
                        nested.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text[:120]}")
    assert not nested, "\n".join(nested)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            "Let me think about whether this",
            "the guard output was cut off at max_new_tokens before a complete verdict; no 'Request: "
            "harmful|unharmful' label in the guard output, which has no <result> block",
        ),
        (
            "<think>The request is about",
            "the guard output was cut off at max_new_tokens before a complete verdict; truncated guard output: "
            "the reasoning's <think> is never closed",
        ),
    ],
)
def test_a_cut_off_output_says_so_in_one_sentence(output, message):
    verdict = Guard(ScriptedBackend(output, finished=False)).check("hello")
    assert verdict.failed and verdict.error.code == "unparseable_output"
    assert verdict.error.message == message and depth(message) == 0


def test_a_finished_output_without_a_result_block():
    verdict = Guard(ScriptedBackend("<think>fine</think> Request: unharmful")).check("hello")
    assert verdict.error.message == "no <result> block after the reasoning's </think>"


def test_a_scripted_backend_out_of_replies_says_what_to_do():
    guard = Guard(ScriptedBackend(["<think>x</think><result>Request: unharmful\nResponse: None</result>"]))
    assert guard.check("first").decision == "allow"
    verdict = guard.check("second")
    assert verdict.failed and verdict.error.code == "backend_error" and verdict.blocked
    assert "index out of range" not in verdict.error.message
    assert verdict.error.message == (
        "ScriptedBackend ran out of replies after 1: reply 2 was asked for; give it more replies, or a callable "
        "script(item) -> reply"
    )


def test_an_image_url_without_a_fetch_policy():
    with pytest.raises(InputError) as info:
        Guard(ScriptedBackend("x")).check("what is this?", image="https://example.com/a.png")
    assert depth(info.value.message) == 1 and "Guard(image_fetch=FetchPolicy(allow=[...]))" in info.value.message


class _NotFound(BaseHTTPRequestHandler):
    """What FastAPI answers (vLLM, SGLang, grvl serve) for a path it does not serve."""

    def _answer(self) -> None:
        body = json.dumps({"detail": "Not Found"}).encode()
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_found_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_base_url_without_v1_gets_a_hint(not_found_server):
    guard = Guard.from_server(not_found_server, model="m", max_retries=0)
    verdict = guard.check("hello")
    assert verdict.failed and verdict.error.code == "remote_error"
    assert verdict.error.message == (
        'guard server answered HTTP 404: {"detail": "Not Found"}; is the \'/v1\' missing from base_url? '
        f"The server was asked at {not_found_server}/chat/completions"
    )
    with pytest.raises(RemoteBackendError, match="answered HTTP 404 to GET /models; is the '/v1' missing"):
        guard.backend.list_models()
    guard.close()

    with_v1 = Guard.from_server(not_found_server + "/v1", model="m", max_retries=0)
    message = with_v1.check("hello").error.message
    assert message == 'guard server answered HTTP 404: {"detail": "Not Found"}' and "/v1' missing" not in message
    with_v1.close()
