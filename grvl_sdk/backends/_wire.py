"""The OpenAI chat-completions wire format as the remote backend speaks it: request bodies (user text
that spells a special token neutralised, images as ``data:`` URLs, JSON that UTF-8 can carry) and
answers (choices, usage and logprobs read strictly; a malformed answer is a ``RemoteBackendError``)."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import httpx
from PIL import Image

from grvl_sdk.errors import InputError, RemoteBackendError
from grvl_sdk.protocol.parsing import verdict_end
from grvl_sdk.types import Generation, TokenLogprobs

__all__ = [
    "MAX_RESPONSE_BYTES",
    "bytes_data_url",
    "check_encoding",
    "choice_logprobs",
    "data_url",
    "encode_body",
    "neutralise",
    "parse_answer",
    "retry_after",
]

logger = logging.getLogger("grvl_sdk")

#: Largest answer body read from the guard server (bytes); a larger one is a ``RemoteBackendError``.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_SPECIAL = re.compile(r"<\|(?=[A-Za-z0-9_]+\|>)")


def neutralise(text: str | None) -> str | None:
    return None if text is None else _SPECIAL.sub("<\u200b|", text)


def data_url(image: Image.Image, image_format: str, jpeg_quality: int = 95) -> str:
    """``image`` as a ``data:`` URL: PNG (lossless, fast compression) or JPEG at ``jpeg_quality`` (1-100)."""
    buffer = io.BytesIO()
    if image_format == "PNG":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def bytes_data_url(data: bytes, mime: str) -> str:
    """Encoded image bytes (``mime``: ``image/jpeg``, ``image/png``, ``image/webp``) as a ``data:`` URL, as they are."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The JSON request body as bytes; text UTF-8 cannot carry is the caller's ``InputError``."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise InputError(f"the guard request cannot be encoded as JSON: {type(exc).__name__}: {exc}") from exc


def check_encoding(response: httpx.Response) -> None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RemoteBackendError(
            f"the guard server sent a compressed answer ({encoding!r}) although none was accepted",
            status_code=response.status_code,
        )


def _choice(choice: Any) -> tuple[str, str | None]:
    """(text, finish_reason) of one choice; ``TypeError`` when a field has the wrong type."""
    text = choice["message"].get("content")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TypeError(f"message.content must be a string, got {type(text).__name__}")
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise TypeError(f"finish_reason must be a string, got {type(finish_reason).__name__}")
    return text, finish_reason


def _count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"usage.{name} must be a non-negative number, got {value!r}")
    return int(value)


def retry_after(headers: httpx.Headers) -> float | None:
    try:
        value = float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def choice_logprobs(choice: Mapping[str, Any]) -> TokenLogprobs | None:
    """The choice's per-token log-probabilities; ``None`` (no scores, a warning) when absent or
    malformed — log-probabilities only feed scores, never the labels."""
    try:
        entries = (choice.get("logprobs") or {}).get("content")
        if not entries:
            return None
        tokens = tuple(entry["token"] for entry in entries)
        if not all(isinstance(token, str) for token in tokens):
            raise TypeError("a token is not a string")
    except (AttributeError, KeyError, TypeError) as exc:
        logger.warning("malformed logprobs from the guard server, no label scores: %s", exc)
        return None

    def alternatives(step: int) -> dict[str, float]:
        entry = entries[step]
        found = {
            str(alt["token"]): float(alt["logprob"])
            for alt in entry.get("top_logprobs") or ()
            if alt.get("logprob") is not None  # some servers write -inf as null
        }
        if entry.get("logprob") is not None:
            found.setdefault(str(entry["token"]), float(entry["logprob"]))
        return found

    return TokenLogprobs(tokens=tokens, alternatives=alternatives)


def parse_answer(status: int, content: bytes, latency_ms: float, n: int) -> list[Generation]:
    """The answer's ``n`` choices as generations, in index order (a malformed answer is a
    :class:`RemoteBackendError` of this call)."""
    try:
        body = json.loads(content)
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))[:n]
        if len(choices) != n:
            raise ValueError(f"{len(choices)} choices for n={n}")
        usage = body.get("usage") or {}
        prompt_tokens, completion_tokens = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
        parsed = [_choice(choice) for choice in choices]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:  # JSON and Unicode errors too
        raise RemoteBackendError(
            f"malformed chat completion from the guard server: {type(exc).__name__}: {exc}",
            status_code=status,
        ) from exc
    generations = []
    for choice, (text, finish_reason) in zip(choices, parsed, strict=True):
        end = verdict_end(text)
        generations.append(
            Generation(
                text=text if end is None else text[:end],
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens // n,
                latency_ms=latency_ms,
                finished=finish_reason != "length",
                logprobs=choice_logprobs(choice),
            )
        )
    return generations
