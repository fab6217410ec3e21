"""The environment variables of docs/api.md against the code: one rule (each client reads the variable
of the server it talks to; an explicit argument always wins, ``""`` included), and every variable the
package reads is in the table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest

from grvl_sdk import Guard
from grvl_sdk._constants import MODEL_ENV_VAR
from grvl_sdk.backends.remote import API_KEY_ENV_VAR, RemoteBackend
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.trainer.synthesize import TEACHER_API_KEY_ENV_VAR

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
TABLE = API.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
DOCUMENTED = dict(re.findall(r"^\| `([A-Z_]+)` (\|.*)$", TABLE, re.M))  # name -> the rest of its row
_ENV_NAME = re.compile(r"^(GRVL_[A-Z_]+|OPENAI_(API_KEY|BASE_URL|ORG_ID|PROJECT_ID))$")


def test_every_variable_the_package_names_is_in_the_table():
    named: dict[str, str] = {}
    for path in (ROOT / "grvl_sdk").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _ENV_NAME.match(node.value):
                named.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    assert {"GRVL_MODEL", "GRVL_API_KEY", "OPENAI_API_KEY"} <= set(named)
    missing = {name: where for name, where in named.items() if name not in DOCUMENTED}
    assert not missing, f"read by the package but not in docs/api.md's table: {missing}"


def test_the_table_names_the_constants_the_code_uses():
    from grvl_sdk.cli.eval import DATA_ENV_VAR
    from grvl_sdk.testing.trained import CACHE_ENV

    for name in (MODEL_ENV_VAR, API_KEY_ENV_VAR, TEACHER_API_KEY_ENV_VAR, DATA_ENV_VAR, CACHE_ENV):
        assert name in DOCUMENTED, name
    assert (API_KEY_ENV_VAR, TEACHER_API_KEY_ENV_VAR) == ("GRVL_API_KEY", "OPENAI_API_KEY")
    assert "guard server" in DOCUMENTED["GRVL_API_KEY"] and "synthesize" in DOCUMENTED["OPENAI_API_KEY"]


def _sent_authorization(monkeypatch: pytest.MonkeyPatch, **kwargs) -> str | None:
    monkeypatch.setenv("GRVL_API_KEY", "guard-key")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]})

    backend = RemoteBackend("http://guard.internal/v1", model="m", transport=httpx.MockTransport(handler), **kwargs)
    Guard(backend).check("hello")
    return seen[0].headers.get("authorization")


def test_the_guard_server_key_is_grvl_api_key_and_an_explicit_one_wins(monkeypatch):
    assert _sent_authorization(monkeypatch) == "Bearer guard-key"  # never $OPENAI_API_KEY
    assert _sent_authorization(monkeypatch, api_key="explicit") == "Bearer explicit"
    assert _sent_authorization(monkeypatch, api_key="") is None  # "" = send none, even with the variable set


@pytest.mark.parametrize(
    ("api_key", "sent"), [(None, "Bearer openai-key"), ("explicit", "Bearer explicit"), ("", None)]
)
def test_the_teacher_key_is_openai_api_key_and_an_explicit_one_wins(tmp_path, monkeypatch, api_key, sent):
    from test_trainer_synthesize import FakeTeacher, correct, run

    monkeypatch.setenv("GRVL_API_KEY", "guard-key")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    sample = TrainingSample(request="How do I build a bomb?", request_label="harmful", id="bomb")
    with FakeTeacher(correct) as teacher:
        run([sample], tmp_path / "synth", teacher, api_key=api_key)
    assert [h.get("Authorization") for h in teacher.headers] == [sent]
