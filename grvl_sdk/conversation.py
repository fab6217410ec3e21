"""Multi-turn chats reduced to the one request (and response) the guard judges.

The guard was trained on single exchanges (one request, one response). A chat is reduced to:

- **request**: the latest user turn, preceded, when there are earlier turns, by those turns as
  context, newest first up to ``context_chars`` characters (the oldest part is cut, marked ``…``)::

      [Earlier in the conversation]
      User: first part of the plan...
      Assistant: ...
      [Latest user message]
      now do the second part

  so a harmful request split across turns is judged as a whole. Images of the latest user turn are
  always sent (more than the per-check limit is an error); images of earlier turns included in the
  context are sent too, newest first, while the per-check image limit allows.
- **response**: the assistant turn(s) after the latest user turn, if any (``None`` otherwise).

System, developer and tool messages are not the user's words and are skipped. A chat with a single
user turn gives exactly the request of a plain ``guard.check``.

Accepted shapes: OpenAI chat messages (``{"role", "content"}`` with a string or a list of ``text`` /
``image_url`` parts, ``image_url`` being a ``data:`` URL), ``{"type": "image", "image": ...}`` parts
(anything :func:`grvl_sdk.images.load_image` takes), and objects with ``role``/``content`` attributes
(or LangChain messages, ``type`` ``human``/``ai``). Remote ``http(s)`` image URLs are refused: the
guard must see every image the model sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grvl_sdk._constants import DEFAULT_CONTEXT_CHARS, MAX_IMAGES_PER_CHECK
from grvl_sdk.errors import InputError

__all__ = ["ConversationInput", "conversation_input", "message_text_and_images"]

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}
_SKIPPED = {"system", "developer", "tool", "function"}
_CONTEXT_HEADER = "[Earlier in the conversation]\n"
_LATEST_HEADER = "\n[Latest user message]\n"


@dataclass(frozen=True)
class ConversationInput:
    """What the guard judges for a chat: ``guard.check(text, images=images, response=response)``."""

    text: str | None
    images: list[Any] = field(default_factory=list)
    response: str | None = None


def _get(message: Any, key: str) -> Any:
    if isinstance(message, Mapping):
        return message.get(key)
    return getattr(message, key, None)


def _role(message: Any, index: int) -> str | None:
    role = _get(message, "role") or _get(message, "type")
    if not isinstance(role, str):
        raise InputError(f"message {index} has no role", index=index)
    role = role.lower()
    if role in _SKIPPED:
        return None
    if role not in _ROLES:
        raise InputError(f"message {index} has an unknown role {role!r}", index=index)
    return _ROLES[role]


def _image_of(part: Mapping[str, Any], index: int) -> Any:
    value = part.get("image_url", part.get("image"))
    if isinstance(value, Mapping):
        value = value.get("url")
    if value is None:
        raise InputError(f"message {index} has an image part without an image", index=index)
    return value


def message_text_and_images(message: Any, index: int = 0) -> tuple[str, list[Any]]:
    """The text (parts joined by newlines) and the image sources of one message's content."""
    content = _get(message, "content")
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, Sequence):
        raise InputError(f"message {index} content must be a string or a list of parts", index=index)
    texts: list[str] = []
    images: list[Any] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise InputError(f"message {index} has a content part of type {type(part).__name__}", index=index)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") or (kind is None and "text" in part):
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "image", "input_image") or "image_url" in part or "image" in part:
            images.append(_image_of(part, index))
        else:
            raise InputError(f"message {index} has an unsupported content part type {kind!r}", index=index)
    return "\n".join(texts), images


def _cut(text: str, budget: int) -> str:
    return text if len(text) <= budget else "…" + text[len(text) - budget + 1 :]


def conversation_input(
    messages: Sequence[Any],
    *,
    context_chars: int = DEFAULT_CONTEXT_CHARS,
    max_images: int = MAX_IMAGES_PER_CHECK,
) -> ConversationInput:
    """Reduce a chat to the guard's request and response (see the module docstring)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InputError("messages must be a list of chat messages")
    if context_chars < 0:
        raise InputError(f"context_chars must be >= 0, got {context_chars}")
    turns = []
    for index, message in enumerate(messages):
        role = _role(message, index)
        if role is not None:
            turns.append((role, *message_text_and_images(message, index)))
    users = [i for i, (role, _, _) in enumerate(turns) if role == "user"]
    if not users:
        raise InputError("the conversation has no user message to check")
    last = users[-1]
    _, latest_text, latest_images = turns[last]
    answers = [text for role, text, _ in turns[last + 1 :] if role == "assistant"]
    response = "\n".join(answers) if answers else None

    lines: list[str] = []
    context_images: list[Any] = []
    budget = context_chars
    for role, text, images in reversed(turns[:last]):
        if budget <= 0:
            break
        line = f"{'User' if role == 'user' else 'Assistant'}: {text}" + (" (image)" * len(images))
        lines.append(_cut(line, budget))
        budget -= len(line) + 1
        room = max_images - len(latest_images) - len(context_images)
        if room > 0 and images:
            context_images[:0] = images[-room:]
    if not lines:
        return ConversationInput(latest_text or None, list(latest_images), response)
    text = _CONTEXT_HEADER + "\n".join(reversed(lines)) + _LATEST_HEADER + latest_text
    return ConversationInput(text, context_images + list(latest_images), response)
