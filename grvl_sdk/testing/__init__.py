"""Helpers for testing guarded apps offline: tiny guards, scripted backends, loopback and faulty servers.

=========================================  ====================================================================
:mod:`grvl_sdk.testing.scripted`           :class:`ScriptedBackend` (replies from a script), :func:`guard_output`
:mod:`grvl_sdk.testing.tiny`               :func:`build_tiny_guard` (random, or ``trained=True``), chat template
:mod:`grvl_sdk.testing.toy_rule`           the toy rule the trained tiny guard follows (:func:`toy_label`)
:mod:`grvl_sdk.testing.trained`            training and caching the trained tiny guard
:mod:`grvl_sdk.testing.server`             :class:`LoopbackServer`: an OpenAI-compatible server over a local guard
:mod:`grvl_sdk.testing.faults`             :class:`FaultServer`: a server that hangs, trickles or answers junk
=========================================  ====================================================================

Every name above is importable from ``grvl_sdk.testing``. The server names (``LoopbackServer``,
``ServerFaults``, ``ServerState``, ``create_app``) and the training helpers are imported on first use,
so importing this package needs neither FastAPI nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grvl_sdk.testing.faults import FaultServer, completion, wait_until
from grvl_sdk.testing.scripted import ScriptedBackend, ScriptedReply, guard_output
from grvl_sdk.testing.tiny import QWEN2_5_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, build_tiny_guard
from grvl_sdk.testing.toy_rule import TOY_RULE_WORDS, toy_completion, toy_label

if TYPE_CHECKING:
    from grvl_sdk.testing.server import LoopbackServer, ServerFaults, ServerState, create_app
    from grvl_sdk.testing.trained import trained_guard_cache_key

__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "TOY_RULE_WORDS",
    "FaultServer",
    "LoopbackServer",
    "ScriptedBackend",
    "ScriptedReply",
    "ServerFaults",
    "ServerState",
    "build_tiny_guard",
    "completion",
    "create_app",
    "guard_output",
    "toy_completion",
    "toy_label",
    "trained_guard_cache_key",
    "wait_until",
]

# Imported on first use: the server needs FastAPI/uvicorn, and ``python -m grvl_sdk.testing.server`` must
# not find its module already imported by this package.
_LAZY = {
    "LoopbackServer": "grvl_sdk.testing.server",
    "ServerFaults": "grvl_sdk.testing.server",
    "ServerState": "grvl_sdk.testing.server",
    "create_app": "grvl_sdk.testing.server",
    "trained_guard_cache_key": "grvl_sdk.testing.trained",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grvl_sdk.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
