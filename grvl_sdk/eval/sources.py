"""Benchmark specs: which file holds which benchmark.

A spec is one of:

- ``NAME`` — a registered benchmark, found in ``data_dir`` by its file name (``ToxicChat`` finds
  ``0_8_toxic_chat.json`` or ``ToxicChat.jsonl``);
- ``PATH`` — a file whose name identifies a registered benchmark, or a folder of such files (the
  authors' ``{Benchmark}/generated_predictions.jsonl`` is named by its folder; SPA-VL-Eval's one file
  gives both ``SPA-VL-EvalPrompt`` and ``SPA-VL-EvalResponse``);
- ``NAME=PATH`` — an explicit file for a registered benchmark;
- ``NAME:TASK[:MODALITY]=PATH`` — your own benchmark (``TASK`` is ``request`` or ``response``;
  ``MODALITY`` is ``text`` (default), ``image`` or ``text-image``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grvl_sdk.errors import EvalError
from grvl_sdk.eval.registry import (
    MODALITIES,
    TASK_LABELS,
    Benchmark,
    benchmarks_for_file,
    expands_to_all,
    file_key,
    get_benchmark,
)

__all__ = ["BenchmarkSource", "find_benchmark_file", "parse_spec", "resolve_sources"]

_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class BenchmarkSource:
    """A benchmark and the file holding it."""

    benchmark: Benchmark
    path: Path


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())


def find_benchmark_file(benchmark: Benchmark, data_dir: str | Path) -> Path:
    """The file of ``benchmark`` under ``data_dir`` (searched recursively by normalised file name)."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise EvalError(f"data folder {folder} does not exist")
    keys = benchmark.match_keys()
    found = [p for p in _data_files(folder) if _key(p) in keys]
    # The benchmark's own name beats a shared stem (WildGuardTestPrompt.json over WildGuardTest.json).
    exact = [p for p in found if _key(p) == _key(Path(benchmark.name))]
    found = exact or found
    if len(found) == 1:
        return found[0]
    if not found:
        raise EvalError(f"no file for {benchmark.name} under {folder}; give it as {benchmark.name}=PATH")
    raise EvalError(f"several files for {benchmark.name} under {folder}: {[str(p) for p in found]}; pick one")


def _key(path: Path) -> str:
    return file_key(path)


def _named(name: str) -> Benchmark:
    parts = name.split(":")
    if len(parts) == 1:
        return get_benchmark(name)
    if len(parts) > 3 or not parts[0]:
        raise EvalError(f"bad benchmark spec {name!r}: use NAME, NAME=PATH or NAME:TASK[:MODALITY]=PATH")
    task, modality = parts[1], parts[2] if len(parts) == 3 else "text"
    if task not in TASK_LABELS:
        raise EvalError(f"bad task {task!r} in {name!r}; expected one of {sorted(TASK_LABELS)}")
    if modality not in MODALITIES:
        raise EvalError(f"bad modality {modality!r} in {name!r}; expected one of {list(MODALITIES)}")
    return Benchmark.custom(parts[0], task, modality)  # type: ignore[arg-type]


def _from_path(path: Path) -> list[BenchmarkSource]:
    if path.is_dir():
        sources: list[BenchmarkSource] = []
        for file in _data_files(path):
            matches = benchmarks_for_file(file)
            if len(matches) == 1 or expands_to_all(matches):
                sources.extend(BenchmarkSource(b, file) for b in matches)
        if not sources:
            raise EvalError(f"no file named after a registered benchmark in {path}")
        return sources
    matches = benchmarks_for_file(path)
    if len(matches) == 1 or expands_to_all(matches):
        return [BenchmarkSource(b, path) for b in matches]
    if matches:
        names = " or ".join(f"{b.name}={path}" for b in matches)
        raise EvalError(f"{path.name} may hold several benchmarks; name the one to use: {names}")
    raise EvalError(f"{path.name} is not named after a registered benchmark; give NAME=PATH or NAME:TASK=PATH")


def parse_spec(spec: str | Path, *, data_dir: str | Path | None = None) -> list[BenchmarkSource]:
    """The benchmark source(s) a spec names (see the module docstring)."""
    if isinstance(spec, Path):
        return _from_path(spec)
    if "=" in spec:
        name, _, file = spec.partition("=")
        path = Path(file).expanduser()
        if not path.is_file():
            raise EvalError(f"benchmark file {path} does not exist")
        return [BenchmarkSource(_named(name.strip()), path)]
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path)
    if any(sep in spec for sep in ("/", "\\")) or path.suffix.lower() in (".json", ".jsonl"):
        raise EvalError(f"no such file or folder: {path}")
    benchmark = _named(spec)
    if data_dir is None:
        raise EvalError(f"{spec!r} is not a file; give --data-dir to find {benchmark.name}, or {spec}=PATH")
    return [BenchmarkSource(benchmark, find_benchmark_file(benchmark, data_dir))]


def resolve_sources(
    specs: Sequence[str | Path | BenchmarkSource], *, data_dir: str | Path | None = None
) -> list[BenchmarkSource]:
    """All sources of ``specs``, in order; a benchmark named twice is an error."""
    sources: list[BenchmarkSource] = []
    for spec in specs:
        sources.extend([spec] if isinstance(spec, BenchmarkSource) else parse_spec(spec, data_dir=data_dir))
    names = [s.benchmark.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalError(f"benchmark(s) given twice: {dupes}")
    return sources
