"""``grvl_sdk.testing`` as a package: the old import paths keep working, the server loads on first use, and
both ``python -m`` entry points of the loopback server serve."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_public_names_import_as_before():
    from grvl_sdk.testing import (
        QWEN2_5_VL_CHAT_TEMPLATE,
        QWEN_SPECIAL_TOKENS,
        ScriptedBackend,
        build_tiny_guard,
        guard_output,
    )
    from grvl_sdk.testing.scripted import ScriptedBackend as scripted
    from grvl_sdk.testing.tiny import build_tiny_guard as tiny

    assert ScriptedBackend is scripted and build_tiny_guard is tiny
    assert QWEN_SPECIAL_TOKENS[0] == "<|endoftext|>" and "<|image_pad|>" in QWEN2_5_VL_CHAT_TEMPLATE
    assert guard_output("harmful", "unharmful").endswith("Request: harmful\nResponse: unharmful\n</result>")
    import grvl_sdk.testing as testing

    assert set(testing.__all__) <= set(dir(testing)) | set(testing._LAZY)
    with pytest.raises(AttributeError):
        testing.nothing_here  # noqa: B018


def test_importing_the_package_leaves_the_server_unloaded():
    code = "import sys, grvl_sdk.testing; print('grvl_sdk.testing.server' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_the_old_server_module_is_a_deprecated_alias():
    sys.modules.pop("grvl_sdk.testing_server", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("grvl_sdk.testing_server")
    from grvl_sdk.testing import server

    assert old is server and old.LoopbackServer is server.LoopbackServer
    assert any(
        issubclass(w.category, DeprecationWarning) and "grvl_sdk.testing.server" in str(w.message) for w in caught
    )
    from grvl_sdk.testing import LoopbackServer, ServerFaults, ServerState, create_app

    assert (LoopbackServer, ServerFaults, ServerState, create_app) == (
        server.LoopbackServer,
        server.ServerFaults,
        server.ServerState,
        server.create_app,
    )


def test_fault_server_is_public_and_the_old_test_helper_reexports_it():
    from grvl_sdk.testing import FaultServer, completion, guard_output
    from tests._fault_server import FaultServer as old

    assert old is FaultServer
    pytest.importorskip("httpx")
    import httpx

    with FaultServer("body", body=completion(guard_output("harmful")), status=200) as server:
        answer = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m"}, timeout=5).json()
        assert "Request: harmful" in answer["choices"][0]["message"]["content"] and server.requests == 1


@pytest.mark.parametrize("module", ["grvl_sdk.testing.server", "grvl_sdk.testing_server"])
def test_python_m_serves_the_guard(tiny_guard_path, module):
    pytest.importorskip("fastapi")
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-W", "always::DeprecationWarning", "-m", module, "--model", str(tiny_guard_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:"), process.stderr.read() if process.poll() is not None else line
        models = httpx.get(f"{line.split()[1]}/models", timeout=10).json()
        assert models["data"][0]["id"] == str(tiny_guard_path)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    deprecated = "deprecated; use python -m grvl_sdk.testing.server" in stderr
    assert deprecated == (module == "grvl_sdk.testing_server")
    assert "RuntimeWarning" not in stderr  # runpy finds no half-imported module
