"""Finding a checkpoint before loading it: a local folder, a cached hub model, or a downloadable one —
failing fast, with guidance, when none of these holds (no network and not cached)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from grvl_sdk._constants import MODEL_ENV_VAR
from grvl_sdk.errors import ModelLoadError

__all__ = ["resolve_model"]


def _looks_like_path(model_id: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
        if constants.HF_HUB_OFFLINE:
            return False
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        endpoint = "https://huggingface.co"
    parsed = urlparse(endpoint)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _is_cached(model_id: str, revision: str | None, cache_dir: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_id, "config.json", revision=revision, cache_dir=cache_dir)
        return isinstance(found, str)
    except Exception:
        return False


def resolve_model(
    model_id: str, *, revision: str | None = None, cache_dir: str | None = None, advice: str | None = None
) -> tuple[str, bool]:
    """Check that ``model_id`` can be loaded before loading it; returns (id, local_files_only).

    Fails fast with :class:`ModelLoadError` when the id is a missing folder, or a hub id that is
    neither cached nor downloadable (no network): the message says how to pass a local path —
    ``advice`` when given (the caller's own way: a CLI flag, a config field), else the guard's ways.
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelLoadError("model id must be a non-empty string (a hub id or a local folder)")
    try:
        path = Path(model_id).expanduser()
    except RuntimeError as exc:  # "~user" with no such user
        raise ModelLoadError(f"cannot resolve model path {model_id!r}: {exc}") from exc
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"{str(path)!r} holds a LoRA adapter, not a full checkpoint: load it with "
                "grvl_sdk.trainer.load_adapter_guard(path), or merge it first with `grvl train merge ADAPTER OUT`",
                model=model_id,
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{str(path)!r} is a folder but holds no config.json: not a model checkpoint")
        return str(path), True
    if _looks_like_path(model_id):
        raise ModelLoadError(f"model folder {model_id!r} does not exist")
    if _is_cached(model_id, revision, cache_dir):
        return model_id, not _hub_reachable(timeout=1.0)
    if not _hub_reachable():
        raise ModelLoadError(
            f"cannot load model {model_id!r}: it is not in the local Hugging Face cache and the hub cannot be "
            "reached (no network). "
            + (
                advice
                or f"Pass a local checkpoint folder instead: `--model /path/to/model` on the command line, "
                f"{MODEL_ENV_VAR}=/path/to/model in the environment, or Guard.from_pretrained('/path/to/model') "
                "in Python."
            ),
            model=model_id,
        )
    return model_id, False
