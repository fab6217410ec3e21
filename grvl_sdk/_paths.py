"""The user cache folder grvl-sdk writes to: trained tiny guards, vocabulary scans, benchmark models."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the cache folder (default ``~/.cache/grvl-sdk``).
CACHE_ENV = "GRVL_CACHE_DIR"

__all__ = ["CACHE_ENV", "cache_root"]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$GRVL_CACHE_DIR``, else ``~/.cache/grvl-sdk``.

    Raises ``RuntimeError`` (from :meth:`pathlib.Path.home`) when neither is set and the user has no home
    folder (no ``$HOME`` and no passwd entry)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grvl-sdk"
