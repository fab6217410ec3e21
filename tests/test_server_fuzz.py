"""API fuzzing of every endpoint from the server's own OpenAPI schema (schemathesis): no 5xx, no
traceback in any body, OpenAI's error shape on every error. Bounded: a fixed number of examples per
operation, derandomised, so the run is short and repeatable."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from grvl_sdk import Guard  # noqa: E402
from grvl_sdk.testing import ScriptedBackend  # noqa: E402
from tests._server_upstream import Harness  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_harness():
    guard = Guard(ScriptedBackend.flagging("bomb", "poison"), cache_size=0)
    with Harness(guard, max_body_bytes=256 * 1024, request_timeout=10) as h:
        yield h


def _document() -> dict:
    """The OpenAPI document of the app (building it contacts nothing)."""
    from grvl_sdk.server import create_app

    return create_app(Guard(ScriptedBackend.flagging("bomb")), upstream="http://127.0.0.1:9/v1").openapi()


schema = schemathesis.openapi.from_dict(_document())


def no_traceback(ctx, response, case) -> None:
    """No body holds a traceback or a Python exception's repr; every error is OpenAI-shaped."""
    text = response.text if isinstance(response.text, str) else ""
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    if response.status_code >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_api_fuzz(case, fuzz_harness):
    response = case.call(base_url=fuzz_harness.url, timeout=15)
    case.validate_response(response, checks=[not_a_server_error, no_traceback])
