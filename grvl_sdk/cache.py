"""The verdict cache: an LRU of judgements keyed by a hash of the input, the model and the settings.

Only judgements are cached (labels, scores, reasoning): the policy decision is made afresh on every
hit, so a per-call policy override applies to cached verdicts too. Failed verdicts are never cached
(a timeout or a server error may not happen again).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from grvl_sdk.errors import InputError
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Verdict

__all__ = ["ContentHashes", "VerdictCache", "content_hashes"]


@dataclass(frozen=True)
class ContentHashes:
    """SHA-256 digests of one input's parts (hex): request text, response text, each image's pixels."""

    text: str | None
    response: str | None
    images: tuple[str, ...]

    def key(self, *settings: object) -> str:
        """One digest of all parts plus ``settings`` (model id, generation settings...)."""
        digest = hashlib.sha256()
        for part in (*settings, self.text, self.response, *self.images):
            encoded = repr(part).encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hashes(item: GuardInput) -> ContentHashes:
    """Hash an input. Images are hashed by their decoded RGB pixels, so the same picture given as a
    path, bytes or a PIL image hashes the same."""
    images = tuple(
        _sha256(f"{image.mode}:{image.width}x{image.height}:".encode() + image.tobytes()) for image in item.images
    )
    text = None if item.text is None else _sha256(item.text.encode("utf-8", "surrogatepass"))
    response = None if item.response is None else _sha256(item.response.encode("utf-8", "surrogatepass"))
    return ContentHashes(text, response, images)


class VerdictCache:
    """A thread-safe LRU of verdicts. ``maxsize=0`` disables it."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise InputError(f"cache size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._entries: OrderedDict[str, Verdict] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0

    def get(self, key: str) -> Verdict | None:
        with self._lock:
            verdict = self._entries.get(key)
            if verdict is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return verdict

    def put(self, key: str, verdict: Verdict) -> None:
        """Store a judgement; failed verdicts are ignored."""
        if not self.enabled or verdict.failed:
            return
        with self._lock:
            self._entries[key] = verdict
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
