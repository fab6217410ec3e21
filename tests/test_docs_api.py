"""docs/api.md is checked against the code: every exported name, every public method and property of the
main classes with its parameters, every option and policy field must be documented there."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import grvl_sdk
from grvl_sdk import Guard, GuardedCall, GuardOptions, Policy, Verdict

API = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")


def _public(cls: type) -> list[str]:
    return [name for name in vars(cls) if not name.startswith("_")]


def _documented(name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", API) is not None


@pytest.mark.parametrize("name", sorted(grvl_sdk.__all__))
def test_every_exported_name_is_documented(name):
    assert _documented(name), f"grvl_sdk.{name} is exported but not in docs/api.md"


@pytest.mark.parametrize(("cls", "name"), [(c, n) for c in (Guard, GuardedCall, Verdict) for n in _public(c)])
def test_every_public_method_and_property_is_documented(cls, name):
    if name in ("model_config", "model_fields", "model_computed_fields"):
        return
    assert _documented(name), f"{cls.__name__}.{name} is not in docs/api.md"


@pytest.mark.parametrize(("cls", "name"), [(c, n) for c in (GuardOptions, Policy) for n in c.model_fields])
def test_every_option_and_policy_field_is_documented(cls, name):
    assert re.search(rf"\| `{name}` \|", API), f"{cls.__name__}.{name} has no row in docs/api.md"


@pytest.mark.parametrize(
    "method",
    [Guard.check, Guard.acheck, Guard.check_batch, Guard.check_conversation, Guard.check_input, Guard.call,
     Guard.with_options, Guard.prepare, Guard.format_prompt, Guard.from_server, Guard.from_pretrained],
)  # fmt: skip
def test_documented_signatures_name_every_parameter(method):
    for parameter in inspect.signature(method).parameters.values():
        if parameter.name in ("self", "cls") or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert _documented(parameter.name), f"{method.__qualname__}({parameter.name}) is not in docs/api.md"
