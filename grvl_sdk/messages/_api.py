"""The three entry points: :func:`to_messages`, :func:`response_messages`, :func:`chunk_deltas`."""

from __future__ import annotations

from typing import Any

from grvl_sdk.messages import _anthropic, _gemini, _langchain, _openai, _responses
from grvl_sdk.messages._base import Context, Delta, Loc, Message, get, is_list, is_record, type_name

_MESSAGE_FIELDS = ("role", "content", "tool_calls", "function_call", "refusal")


def _one(value: Any, loc: Loc, ctx: Context) -> list[Message]:
    if isinstance(value, str):
        return [Message(role="user", text=value)]
    if isinstance(value, Message):
        return [value]
    if _langchain.is_role_tuple(value):
        return _openai.message_messages(_langchain.tuple_message(value), loc, ctx)
    if not is_record(value):
        loc.fail(f"a message must be a string, a (role, content) tuple or an object, got {type_name(value)}")
    if _responses.is_item(value):
        return _responses.item_messages(value, loc, ctx)
    if _gemini.is_content(value):
        return _gemini.content_messages(value, loc, ctx)
    return _openai.message_messages(value, loc, ctx)


def to_messages(value: Any) -> list[Message]:
    """The request side: every message of a chat, normalised.

    Accepts a string (one user message); a list or tuple of messages in any supported shape, mixed; a
    LangChain ``PromptValue``; a single message (object, dict, or ``(role, content)`` tuple). Raises
    :class:`~grvl_sdk.errors.InputError` (with the message ``index`` and ``field``) for anything it
    cannot read.
    """
    if _langchain.is_prompt_value(value):
        value = _langchain.prompt_messages(value)
    ctx = Context()
    if isinstance(value, (bytes, bytearray, memoryview)):
        Loc("message", 0).fail("bytes are not a message; decode them first")
    if (isinstance(value, tuple) and _langchain.is_role_tuple(value)) or not is_list(value):
        return _one(value, Loc("message", 0), ctx)
    out: list[Message] = []
    for index, message in enumerate(value):
        out.extend(_one(message, Loc("message", index), ctx))
    return out


def response_messages(value: Any) -> list[Message]:
    """The response side: one assistant :class:`Message` per choice / candidate, in index order.

    Accepts an OpenAI ``ChatCompletion`` (or legacy ``Completion``), a Responses API ``Response`` (one
    message from all its output items), an Anthropic ``Message``, a LangChain ``AIMessage``, a Gemini
    response (``candidates``), a string, or an object / dict with ``content`` (or ``text``). An empty
    ``choices`` list gives ``[]``. Raises :class:`~grvl_sdk.errors.InputError` when unreadable.
    """
    loc = Loc("response", 0)
    if isinstance(value, str):
        return [Message(role="assistant", text=value)]
    if isinstance(value, Message):
        if value.role != "assistant":
            loc.at("role").fail(f"a response must be an assistant message, got role {value.role!r}")
        return [value]
    if not is_record(value):
        loc.fail(f"cannot read a response from a {type_name(value)}")
    choices = get(value, "choices")
    if choices is not None:
        return _openai.choice_messages(choices)
    candidates = get(value, "candidates")
    if candidates is not None:
        return _gemini.candidate_messages(candidates)
    if _responses.is_response(value):
        return [_responses.response_message(value)]
    if _gemini.is_content(value):
        return _gemini.content_messages(value, loc, Context(), "assistant")
    if any(get(value, key) is not None for key in _MESSAGE_FIELDS):
        return [_openai.assistant_message(value, loc)]
    text = get(value, "text")
    if isinstance(text, str):
        return [Message(role="assistant", text=text)]
    loc.fail(f"cannot read a response from a {type_name(value)} (no choices, output, content or text)")


def chunk_deltas(chunk: Any) -> list[Delta]:
    """The stream side: the text one chunk adds, per choice.

    An OpenAI ``ChatCompletionChunk`` gives one :class:`Delta` per choice it carries (text may be
    empty; no choices: ``[]``); a LangChain ``AIMessageChunk``, a string, or an object / dict with
    ``content`` / ``text`` give one :class:`Delta`; Responses API and Anthropic stream events give one
    :class:`Delta` when they carry text, else ``[]``. ``bytes`` raise :class:`~grvl_sdk.errors.InputError`:
    the stream reader decodes bytes itself (incrementally: a UTF-8 character may span two chunks).
    """
    loc = Loc("chunk", 0)
    if isinstance(chunk, str):
        return [Delta(text=chunk)]
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        loc.fail("bytes chunks are decoded by the stream reader, not here")
    if not is_record(chunk):
        loc.fail(f"cannot read the text of a stream chunk of type {type_name(chunk)}")
    if get(chunk, "choices") is not None:
        return _openai.chunk_choice_deltas(get(chunk, "choices"))
    if get(chunk, "candidates") is not None:
        return _gemini.candidate_messages(get(chunk, "candidates"), stream=True)
    if _responses.is_event(chunk):
        return _responses.event_deltas(chunk)
    if _anthropic.is_event(chunk):
        return _anthropic.event_deltas(chunk)
    if _langchain.is_chunk(chunk):
        return _langchain.chunk_deltas(chunk)
    if any(get(chunk, key) is not None for key in _MESSAGE_FIELDS):  # a whole message as one chunk
        message = _openai.assistant_message(chunk, loc)
        if message.images:
            loc.at("content").fail("images in a stream chunk cannot be judged")
        return [Delta(text=message.text)]
    text = get(chunk, "text")
    if isinstance(text, str):
        return [Delta(text=text)]
    loc.fail(f"cannot read the text of a stream chunk of type {type_name(chunk)}")


__all__ = ["chunk_deltas", "response_messages", "to_messages"]
