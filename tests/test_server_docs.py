"""docs/server.md is checked against the code: every setting has a row, and the Python example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from grvl_sdk.server import ServerConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "server.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(ServerConfig.model_fields))
def test_every_setting_is_documented(name):
    assert re.search(rf"^\| [^|]*`{name}`", DOC, re.M), f"ServerConfig.{name} has no row in docs/server.md"


def test_the_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    example = next(b for b in blocks if "BackgroundServer" in b)
    exec(compile(example, "docs/server.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["ready", "[False,", "True]"]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.S)


def test_the_toml_example_is_a_valid_config(tmp_path):
    [toml] = _blocks("toml")
    (tmp_path / "server.toml").write_text(toml)
    config = ServerConfig.from_file(tmp_path / "server.toml")
    assert config.upstream == "http://vlm-host:8001/v1" and config.guard_policy().stream_mode == "buffer"


def test_the_command_lines_parse():
    import shlex

    from grvl_sdk.cli import build_parser

    commands = [line for block in _blocks("bash") for line in block.replace("\\\n", " ").splitlines()
                if line.strip().startswith("grvl serve")]  # fmt: skip
    assert len(commands) == 2
    for command in commands:
        args = build_parser().parse_args(shlex.split(command.split("#")[0])[1:])
        assert args.command == "serve" and args.upstream


def litellm_guardrails_entry() -> dict:
    """The LiteLLM ``config.yaml`` entry of docs/server.md (the real-LiteLLM test runs this very entry)."""
    yaml = pytest.importorskip("yaml")
    entry = next(yaml.safe_load(block) for block in _blocks("yaml") if "generic_guardrail_api" in block)
    return entry


def test_the_litellm_entry_has_the_documented_shape():
    [guardrail] = litellm_guardrails_entry()["guardrails"]
    params = guardrail["litellm_params"]
    assert params["guardrail"] == "generic_guardrail_api" and params["mode"] == ["pre_call", "post_call"]
    assert params["unreachable_fallback"] == "fail_closed" and params["default_on"] is True
    assert params["api_base"].startswith("http") and params["api_key"].startswith("os.environ/")
