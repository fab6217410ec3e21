"""Relative paths in a training config file are relative to the file's folder, not to the working directory.

``grvl train sft --config my-run/rsft.yaml`` reads ``train_data: [synth/records.jsonl]`` as
``my-run/synth/records.jsonl`` whichever folder the command runs from, so a config and its data move
together. The rule, for every config file of ``grvl train`` (R-SFT, RL, pipeline):

- **paths** (``output_dir``, a ``resume_from_checkpoint`` folder, the pipeline's evaluation ``data_dir``)
  and **data sources** (``train_data`` / ``eval_data`` entries, and the ``path`` / ``image_root`` of a
  source given as a dict) are joined to the file's folder when relative;
- a **model** (``model_name_or_path``) or a **benchmark** entry may be a hub id or a name as well as a
  folder: it is joined to the file's folder when it starts with ``./`` or ``../``, or when that folder
  holds it; otherwise it is kept as written (a hub id, a benchmark name); the ``PATH`` of a ``NAME=PATH``
  benchmark entry is a path (joined when relative);
- absolute paths, ``~`` paths (expanded) and values given outside the file (``--set``, ``--output-dir``,
  Python arguments) are left alone: those are relative to the working directory as usual.

Joined paths are made absolute, so errors name the path that was looked for, and the settings file a run
writes (``rsft_config.yaml``) reads back from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["rebase_benchmark", "rebase_model", "rebase_path", "rebase_settings", "rebase_sources"]

#: Fields holding plain paths, data sources and models in the training configs.
PATH_FIELDS = ("output_dir", "data_dir")
SOURCE_FIELDS = ("train_data", "eval_data")
MODEL_FIELDS = ("model_name_or_path", "model")
#: Values of ``resume_from_checkpoint`` that are not paths.
_RESUME_WORDS = ("true", "false", "last", "auto", "none", "null")


def rebase_path(value: Any, base: Path) -> Any:
    """``value`` (a relative path) joined to ``base`` and made absolute; anything else unchanged."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        return value
    text = os.fspath(value)
    if text.startswith("~"):
        return os.path.expanduser(text)
    if os.path.isabs(text):
        return text
    return os.path.normpath(os.path.join(os.path.abspath(base), text))


def _explicitly_relative(text: str) -> bool:
    return text.startswith(("./", "../", ".\\", "..\\")) or text in (".", "..")


def rebase_model(value: Any, base: Path) -> Any:
    """A model id or folder: joined to ``base`` when written ``./…``/``../…`` or when ``base`` holds it."""
    if not isinstance(value, str) or not value.strip() or os.path.isabs(value):
        return value
    if value.startswith("~"):
        return os.path.expanduser(value)
    if _explicitly_relative(value) or (base / value).exists():
        return rebase_path(value, base)
    return value  # a hub id


def rebase_benchmark(value: Any, base: Path) -> Any:
    """A benchmark entry: a name stays a name; a file or folder beside the config is joined (as a model); in
    ``NAME=PATH`` / ``NAME:TASK=PATH`` the ``PATH`` part is a path, joined to ``base`` when relative."""
    if isinstance(value, str) and "=" in value and not (base / value).exists():
        name, _, file = value.partition("=")
        return f"{name}={rebase_path(file, base)}"
    return rebase_model(value, base)


def rebase_sources(value: Any, base: Path) -> Any:
    """Data sources (a path, a dict with ``path`` / ``image_root``, or a list of them) joined to ``base``."""
    if isinstance(value, (str, os.PathLike)):
        return rebase_path(value, base)
    if isinstance(value, Mapping):
        out = dict(value)
        for key in ("path", "image_root"):
            if key in out:
                out[key] = rebase_path(out[key], base)
        return out
    if isinstance(value, list):
        return [rebase_sources(item, base) for item in value]
    return value


def rebase_settings(values: Mapping[str, Any], base: Path, *, sections: Iterable[str] = ()) -> dict[str, Any]:
    """``values`` (a config file's settings) with its relative paths joined to ``base`` by the module's rule.

    ``sections`` name nested mappings of settings (the pipeline's ``rsft``, ``rl``, ``evaluate``...) that
    follow the same rule.
    """
    out = dict(values)
    for key in PATH_FIELDS:
        if key in out:
            out[key] = rebase_path(out[key], base)
    for key in SOURCE_FIELDS:
        if key in out:
            out[key] = rebase_sources(out[key], base)
    for key in MODEL_FIELDS:
        if key in out:
            out[key] = rebase_model(out[key], base)
    resume = out.get("resume_from_checkpoint")
    if isinstance(resume, str) and resume.strip().lower() not in _RESUME_WORDS:
        out["resume_from_checkpoint"] = rebase_path(resume, base)
    benchmarks = out.get("benchmarks")
    if isinstance(benchmarks, list):
        out["benchmarks"] = [rebase_benchmark(item, base) for item in benchmarks]
    elif isinstance(benchmarks, str):
        out["benchmarks"] = rebase_benchmark(benchmarks, base)
    for name in sections:
        if isinstance(out.get(name), Mapping):
            out[name] = rebase_settings(out[name], base)
    return out
