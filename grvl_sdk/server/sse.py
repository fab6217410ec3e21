"""Server-sent events: reading an upstream's stream, writing ours (``data: {json}\\n\\n``, ``[DONE]``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "Event", "EventTooLarge", "encode", "read_events"]

DONE = b"data: [DONE]\n\n"
#: The longest event (characters of data) read from an upstream.
MAX_EVENT_CHARS = 8 * 1024 * 1024


class EventTooLarge(ValueError):
    """An upstream event over :data:`MAX_EVENT_CHARS` characters."""


@dataclass(frozen=True)
class Event:
    """One server-sent event: its ``event`` name (``None`` when unnamed) and its ``data``."""

    event: str | None
    data: str


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """The events of an SSE stream given as lines (comments and ``id``/``retry`` fields skipped)."""
    name: str | None = None
    data: list[str] = []
    size = 0
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, "\n".join(data))
            name, data, size = None, [], 0
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            size += len(value)
            if size > MAX_EVENT_CHARS:
                raise EventTooLarge(f"an upstream stream event is over {MAX_EVENT_CHARS} characters")
            data.append(value)
        elif field == "event":
            name = value
    if data:
        yield Event(name, "\n".join(data))


def encode(data: Any, event: str | None = None) -> bytes:
    """One event: ``event: NAME`` (when given) and ``data:`` the JSON of ``data``."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()
