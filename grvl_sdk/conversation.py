"""Multi-turn chats reduced to the one request (and response) the guard judges.

The guard was trained on single exchanges (one request, one response). A chat — any shape
:func:`grvl_sdk.messages.to_messages` reads: OpenAI chat or Responses items, Anthropic blocks, LangChain
messages, tuples or prompt values — is reduced to:

- **request**: the latest user turn, preceded, when there are earlier turns, by those turns as
  context (system, user, assistant and tool turns alike), newest first up to ``context_chars``
  characters (the oldest part is cut, marked ``…``), and followed by what came after it that is not
  the final answer (assistant tool calls, tool results)::

      [Earlier in the conversation]
      System: you are a helpful assistant
      User: first part of the plan...
      Assistant: ...
      [Latest user message]
      now do the second part
      [After it]
      Assistant: [tool call] search({"q": "..."})
      Tool (search): ...

  so a harmful request split across turns, or planted in a tool result, is judged as a whole.
- **response**: the assistant turn(s) that end the chat after the latest user turn (``None`` when the
  chat does not end with one).
- **images**: every image of the latest user turn and of the turns after it, in any role (more than
  the per-check limit is an ``InputError``: the guard must see every new image the model sees); images
  of earlier turns, newest first, while the per-check limit allows (they were judged when they were new).

A chat with a single user turn gives exactly the request of a plain ``guard.check``. Images given as
remote ``http(s)`` URLs stay :class:`~grvl_sdk.messages.RemoteImage` sources: ``Guard.prepare`` fetches
them when the guard's ``image_fetch`` policy allows, and refuses them with ``InputError`` otherwise (the
guard must see every image the model sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grvl_sdk._constants import DEFAULT_CONTEXT_CHARS, MAX_IMAGES_PER_CHECK
from grvl_sdk.errors import InputError

__all__ = ["ConversationInput", "conversation_input", "message_text_and_images"]

_CONTEXT_HEADER = "[Earlier in the conversation]\n"
_LATEST_HEADER = "\n[Latest user message]\n"
_AFTER_HEADER = "\n[After it]\n"
_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass(frozen=True)
class ConversationInput:
    """What the guard judges for a chat: ``guard.check(text, images=images, response=response)``."""

    text: str | None
    images: list[Any] = field(default_factory=list)
    response: str | None = None


def message_text_and_images(message: Any, index: int = 0) -> tuple[str, list[Any]]:
    """The text and the image sources of one message of any supported shape."""
    from grvl_sdk.messages import to_messages

    turns = to_messages([message])
    return "\n".join(t.text for t in turns), [image for t in turns for image in t.images]


def _cut(text: str, budget: int) -> str:
    return text if len(text) <= budget else "…" + text[len(text) - budget + 1 :]


def _line(turn: Any) -> str:
    label = _LABELS[turn.role] + (f" ({turn.name})" if turn.role == "tool" and turn.name else "")
    return f"{label}: {turn.text}" + (" (image)" * len(turn.images))


def conversation_input(
    messages: Any,
    *,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
    max_images: int = MAX_IMAGES_PER_CHECK,
) -> ConversationInput:
    """Reduce a chat to the guard's request and response (see the module docstring).

    Raises :class:`InputError` for unreadable messages, a chat without a user turn, or more new images
    than one check takes."""
    from grvl_sdk.messages import to_messages

    if isinstance(messages, (str, bytes)):
        raise InputError("messages must be a list of chat messages (use guard.check for a single text)")
    if context_chars < 0:
        raise InputError(f"context_chars must be >= 0, got {context_chars}")
    turns = to_messages(messages)
    users = [i for i, turn in enumerate(turns) if turn.role == "user"]
    if not users:
        raise InputError("the conversation has no user message to check")
    last = users[-1]
    tail = turns[last + 1 :]
    answer_start = len(tail)
    while answer_start > 0 and tail[answer_start - 1].role == "assistant":
        answer_start -= 1
    middle, answers = tail[:answer_start], tail[answer_start:]
    response = "\n".join(t.text for t in answers) if answers else None
    latest = turns[last]
    new_images = [image for t in (latest, *middle, *answers) for image in t.images]
    if len(new_images) > max_images:
        raise InputError(
            f"{len(new_images)} images in the latest turns; at most {max_images} fit one check", field="images"
        )

    lines: list[str] = []
    context_images: list[Any] = []
    budget = context_chars
    for turn in reversed(turns[:last]):
        if budget <= 0:
            break
        line = _line(turn)
        lines.append(_cut(line, budget))
        budget -= len(line) + 1
        room = max_images - len(new_images) - len(context_images)
        if room > 0 and turn.images:
            context_images[:0] = list(turn.images)[-room:]
    after = "\n".join(_line(t) for t in middle)
    if not lines and not after:
        return ConversationInput(latest.text or None, list(latest.images) + [i for t in answers for i in t.images],
                                 response)  # fmt: skip
    text = (_CONTEXT_HEADER + "\n".join(reversed(lines)) if lines else "") + _LATEST_HEADER + latest.text
    if after:
        text += _AFTER_HEADER + after
    return ConversationInput(text.lstrip("\n"), context_images + new_images, response)
