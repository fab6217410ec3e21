"""The vocabulary scan the local backend needs at load, cached per tokenizer.

Two id sets are found by looking at every token of the vocabulary: the **verdict triggers** (tokens whose
text holds ``>``: the stop check looks for ``</result>`` only after one) and the **label triggers**
(tokens after which a label may start: decoded text ending in ``:`` or ``*``, or only whitespace; label
scores are kept at those steps). Over Qwen's 151,665 tokens the scan costs about a second at every load;
the result is stored in the user cache (``$GRVL_CACHE_DIR/token-scans``, else
``~/.cache/grvl-sdk/token-scans``) under a SHA-256 key of the tokenizer's content, and later loads of
the same tokenizer read it back.

A cache file is never trusted blindly: it is used only when it parses, names the same key and vocabulary
size, holds in-range ids, and passes a spot check against the live tokenizer (every stored id and a
seeded sample of the others re-decoded); otherwise the scan runs again and the file is rewritten. A cache
that cannot be read or written is skipped (the scan result is the same, only slower).

What the spot check cannot see is an id left out of a stored set outside the sample (only a full scan
can). The key rules out another tokenizer's entry and the parse checks a damaged file; a file edited on
purpose is as trusted as the rest of the user's cache (whoever can write it can write the model's
weights). Its worst effect is bounded: a missing ``>`` trigger lets generation run on to the end-of-turn
token after ``</result>``, a missing label trigger leaves a score unread at that step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grvl_sdk._paths import cache_root

__all__ = ["TokenScan", "is_label_trigger", "scan_cache_dir", "scan_tokens", "scanned_tokens"]

logger = logging.getLogger("grvl_sdk")

# Bump when what a scan computes changes.
_SCAN_VERSION = 1
# Ids outside the stored sets re-checked on every cache read.
_SPOT_SAMPLE = 512


@dataclass(frozen=True)
class TokenScan:
    """``triggers``: ids whose token text holds ``>``; ``label_triggers``: ids after which a label may
    start (:func:`is_label_trigger` of the id decoded alone)."""

    triggers: frozenset[int]
    label_triggers: frozenset[int]


def is_label_trigger(text: str) -> bool:
    """A token's decoded text after which a label may start: ending in ``:`` or ``*`` (trailing
    whitespace ignored), or whitespace only."""
    return text.rstrip().endswith((":", "*")) or (bool(text) and not text.strip())


def decode_each(tokenizer: Any, ids: Any) -> list[str]:
    """Each id decoded alone (what ``tokenizer.batch_decode([[i] for i in ids])`` gives). A fast
    tokenizer that does not clean up spaces is decoded by its Rust backend directly: the same texts,
    without the per-id Python work (3-4x faster over a 151k vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return list(backend.decode_batch([[i] for i in ids], skip_special_tokens=False))
    return list(tokenizer.batch_decode([[i] for i in ids]))


def scan_tokens(tokenizer: Any) -> TokenScan:
    """The full scan over every id of ``tokenizer`` (no cache)."""
    triggers = frozenset(i for token, i in tokenizer.get_vocab().items() if ">" in token)
    ids = range(len(tokenizer))
    texts = decode_each(tokenizer, ids)
    return TokenScan(triggers, frozenset(i for i, text in zip(ids, texts, strict=True) if is_label_trigger(text)))


def scan_cache_dir() -> Path:
    """``$GRVL_CACHE_DIR/token-scans``, else ``~/.cache/grvl-sdk/token-scans``."""
    return cache_root() / "token-scans"


def _tokenizer_key(tokenizer: Any) -> str | None:
    """SHA-256 over the tokenizer's content: its ``tokenizer.json`` bytes when it was loaded from a local
    folder holding one (else the serialised backend), the live normalizer, pre-tokenizer and decoder (a
    change made in memory after loading changes the decoded texts), its class, size, added tokens and
    decoding flags, the tokenizers version and the scan version. ``None`` for a tokenizer without a fast
    backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256()
    source = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "tokenizer.json"
    try:
        digest.update(source.read_bytes() if source.is_file() else backend.to_str().encode())
    except OSError:
        digest.update(backend.to_str().encode())
    try:
        import tokenizers

        version = tokenizers.__version__
    except (ImportError, AttributeError):  # pragma: no cover - backend_tokenizer implies tokenizers
        version = "?"
    for part in ("normalizer", "pre_tokenizer", "decoder"):  # a few hundred bytes each
        state = getattr(getattr(backend, part, None), "__getstate__", lambda: None)()
        digest.update(f"{part}:".encode() + (state if isinstance(state, bytes) else repr(state).encode()))
    added = sorted((str(token), int(i)) for token, i in tokenizer.get_added_vocab().items())
    settings = [
        _SCAN_VERSION,
        version,
        type(tokenizer).__name__,
        len(tokenizer),
        added,
        bool(getattr(tokenizer, "clean_up_tokenization_spaces", True)),
    ]
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()


def _ids(value: Any, size: int) -> frozenset[int] | None:
    if not isinstance(value, list) or not all(type(i) is int and 0 <= i < size for i in value):
        return None
    return frozenset(value)


def _read(path: Path, key: str, tokenizer: Any) -> TokenScan | None:
    """The stored scan when the file is sound and agrees with ``tokenizer``; else ``None``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    size = len(tokenizer)
    if not isinstance(data, dict) or data.get("key") != key or data.get("size") != size:
        return None
    triggers, label_triggers = _ids(data.get("triggers"), size), _ids(data.get("label_triggers"), size)
    if triggers is None or label_triggers is None:
        return None
    # Spot check against the live tokenizer: every stored id, and a seeded sample of the others.
    others = [i for i in random.Random(key).sample(range(size), min(size, _SPOT_SAMPLE)) if i not in label_triggers]
    stored = sorted(label_triggers)
    texts = decode_each(tokenizer, stored + others)
    if not all(is_label_trigger(t) for t in texts[: len(stored)]) or any(
        is_label_trigger(t) for t in texts[len(stored) :]
    ):
        return None
    # Every stored trigger holds ">", and no sampled id left out does (a count over both would let a
    # file swap a sampled trigger for a plain id).
    unstored = sorted(set(others) - triggers)
    tokens = tokenizer.convert_ids_to_tokens(sorted(triggers) + unstored)
    if not all(">" in str(t) for t in tokens[: len(triggers)]) or any(">" in str(t) for t in tokens[len(triggers) :]):
        return None
    return TokenScan(triggers, label_triggers)


def _write(path: Path, key: str, size: int, scan: TokenScan) -> None:
    data = {
        "key": key,
        "size": size,
        "triggers": sorted(scan.triggers),
        "label_triggers": sorted(scan.label_triggers),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(staging, path)  # atomic: a concurrent reader sees the old file or the new one
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def scanned_tokens(tokenizer: Any, *, cache_dir: str | os.PathLike[str] | None = None) -> TokenScan:
    """:func:`scan_tokens` of ``tokenizer``, read from the cache when a sound entry exists, else
    computed and stored. ``cache_dir`` defaults to :func:`scan_cache_dir`."""
    key = _tokenizer_key(tokenizer)
    if key is None:
        return scan_tokens(tokenizer)
    try:
        folder = Path(cache_dir) if cache_dir is not None else scan_cache_dir()
    except RuntimeError as exc:  # Path.home(): no $HOME and no passwd entry (an arbitrary container uid)
        logger.debug("token scan not cached (no cache folder): %s", exc)
        return scan_tokens(tokenizer)
    path = folder / f"{key[:32]}.json"
    found = _read(path, key, tokenizer)
    if found is not None:
        return found
    scan = scan_tokens(tokenizer)
    try:
        _write(path, key, len(tokenizer), scan)
    except OSError as exc:
        logger.debug("token scan not cached (%s): %s", path, exc)
    return scan
