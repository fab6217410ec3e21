"""Earlier turns the guard's context window leaves out, judged in extra checks.

A request check judges the latest user turn with earlier turns as context, newest first, up to the
guard's ``context_chars`` (see :mod:`grvl_sdk.conversation`). Through a stateless proxy the client sends
the whole chat, earlier turns included, and the model reads all of it: a harmful turn placed further
back than the window would reach the model unjudged. So when the earlier turns do not all fit, they are
also judged as requests, in chunks of at most ``context_chars`` characters (and the per-check image
limit), cut at turn boundaries counted from the start of the chat — so as a conversation grows, its
earlier chunks stay the same and hit the verdict cache.
"""

from __future__ import annotations

from typing import Any

from grvl_sdk._constants import DEFAULT_CONTEXT_CHARS, MAX_IMAGES_PER_CHECK
from grvl_sdk.messages import Message

__all__ = ["history_chunks"]

_HEADER = "[Earlier in the conversation]\n"
_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def history_chunks(
    messages: list[Message], context_chars: int, max_images: int = MAX_IMAGES_PER_CHECK
) -> list[tuple[str, list[Any]]]:
    """``(text, images)`` of each chunk of the turns before the latest user turn, or ``[]`` when they fit
    in the context window (``context_chars``; 0 means the default window size for chunking)."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        return []
    earlier = messages[: users[-1]]
    window = context_chars or DEFAULT_CONTEXT_CHARS
    # the window's own lines carry a label and a newline each: count them generously
    if context_chars and sum(len(m.text) + 16 for m in earlier) <= context_chars:
        return []
    chunks: list[tuple[str, list[Any]]] = []
    lines: list[str] = []
    images: list[Any] = []
    size = 0

    def flush() -> None:
        nonlocal lines, images, size
        if lines or images:
            chunks.append((_HEADER + "\n".join(lines), images))
        lines, images, size = [], [], 0

    for message in earlier:
        label = _LABELS[message.role] + (f" ({message.name})" if message.role == "tool" and message.name else "")
        text = f"{label}: {message.text}"
        for start in range(0, max(len(text), 1), window):
            piece = text[start : start + window]
            if lines and size + len(piece) + 1 > window:
                flush()
            lines.append(piece)
            size += len(piece) + 1
        for image in message.images:
            if len(images) >= max_images:
                flush()
            images.append(image)
    flush()
    return chunks
