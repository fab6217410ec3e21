"""Shared fixtures: one tiny offline guard per test session (random, and trained on the toy rule), and the
shared data folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GRVL_SHARED_DATA", ROOT.parent / "shared" / "data"))

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_guard_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL guard checkpoint, built once per session."""
    pytest.importorskip("transformers")
    from grvl_sdk.testing import build_tiny_guard

    return build_tiny_guard(tmp_path_factory.mktemp("tiny-guard"))


@pytest.fixture(scope="session")
def tiny_guard(tiny_guard_path: Path):
    """A ``Guard`` over the tiny checkpoint (fp32, CPU), shared by the session: do not mutate it."""
    from grvl_sdk import Guard

    return Guard.from_pretrained(str(tiny_guard_path), device="cpu", max_new_tokens=24)


@pytest.fixture(scope="session")
def trained_tiny_guard_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny guard trained on the toy rule of ``grvl_sdk.testing.toy_rule`` ("bomb"/"poison" => harmful).

    Built once per recipe and machine into the build cache (``$GRVL_CACHE_DIR``, else
    ``~/.cache/grvl-sdk``; 10-40 s on 2 cores the first time), then copied here in well under a second.
    """
    pytest.importorskip("transformers")
    from grvl_sdk.testing import build_tiny_guard

    return build_tiny_guard(tmp_path_factory.mktemp("trained-tiny-guard"), trained=True)


@pytest.fixture(scope="session")
def trained_tiny_guard(trained_tiny_guard_path: Path):
    """A ``Guard`` over the trained tiny checkpoint (fp32, CPU, 64 new tokens), shared: do not mutate it."""
    from grvl_sdk import Guard

    return Guard.from_pretrained(str(trained_tiny_guard_path), device="cpu", max_new_tokens=64)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real benchmark files and GuardReasoner outputs); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (needs ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def rgb_image():
    from PIL import Image

    return Image.new("RGB", (96, 72), (200, 30, 30))
