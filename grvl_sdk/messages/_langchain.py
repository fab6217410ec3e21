"""LangChain inputs: ``PromptValue``\\s, ``(role, content)`` tuples, and ``AIMessageChunk`` stream chunks.

Shapes (langchain-core reference): ``ChatPromptValue.to_messages()`` / ``StringPromptValue`` (one human
message); message-like tuples ``("human" | "user" | "ai" | "assistant" | "system" | ..., content)``
(``langchain_core.messages.utils.convert_to_messages``); ``AIMessageChunk`` (``content`` str or
blocks, ``tool_call_chunks`` ``{"name", "args", "id", "index"}``). Message classes (``HumanMessage``,
``AIMessage``, ``SystemMessage``, ``ToolMessage``) are chat messages with a ``type`` instead of a
``role``, read by :mod:`grvl_sdk.messages._openai`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grvl_sdk.messages._base import (
    REASONING_KWARGS,
    ROLES,
    Delta,
    Loc,
    call_fragment,
    compact_json,
    get,
    is_list,
    is_record,
    kind_of,
    text_field,
    type_name,
)
from grvl_sdk.messages._parts import reasoning_texts

# Content blocks of a streamed chunk that are tool-call fragments (mirrored in ``tool_call_chunks``).
# Server-side tool calls are not client tool calls: LangChain does not mirror them, so they are always read.
_CALL_BLOCKS = frozenset({"tool_call_chunk", "tool_use", "input_json_delta", "function_call"})


def is_prompt_value(value: Any) -> bool:
    """A LangChain ``PromptValue`` (duck-typed: ``to_messages()`` and ``to_string()``)."""
    return (
        not isinstance(value, Mapping)
        and is_record(value)
        and callable(get(value, "to_messages"))
        and callable(get(value, "to_string"))
    )


def prompt_messages(value: Any) -> Any:
    try:
        return value.to_messages()
    except Exception as exc:
        Loc("prompt", 0).fail(f"cannot read the prompt's messages: {exc}")


def is_role_tuple(value: Any) -> bool:
    """``("user", content)``: a 2-sequence whose first item is a role name."""
    return (
        isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str) and value[0].lower() in ROLES
    )


def tuple_message(value: Any) -> dict[str, Any]:
    return {"role": value[0], "content": value[1]}


def is_chunk(value: Any) -> bool:
    return kind_of(value) == "AIMessageChunk"


def _block_fragment(block: Any, loc: Loc) -> str:
    if isinstance(block, str):
        return block
    if not is_record(block):
        loc.fail(f"a content part must be a string or an object, got {type_name(block)}")
    kind = get(block, "type")
    if kind in ("text", "output_text"):
        return text_field(block, "text", loc) or ""
    if kind in ("refusal", "thinking"):
        return text_field(block, kind, loc) or ""
    if kind == "reasoning":
        return "".join(reasoning_texts(block, loc))
    if kind == "redacted_thinking":
        return ""
    if kind == "input_json_delta":
        return text_field(block, "partial_json", loc) or ""
    if kind in ("tool_call_chunk", "server_tool_call_chunk"):
        return call_fragment(get(block, "name"), get(block, "args"), loc)
    if kind == "function_call":
        return call_fragment(get(block, "name"), get(block, "arguments"), loc)
    if kind in ("tool_use", "server_tool_use"):  # arguments stream in input_json_delta blocks; input starts {}
        args = get(block, "partial_json")
        if args is None and get(block, "input"):
            args = compact_json(get(block, "input"), loc.at("input"))
        return call_fragment(get(block, "name"), args, loc)
    loc.at("type").fail(f"a {str(kind)[:40]!r} block cannot be judged in a stream chunk")


def chunk_deltas(chunk: Any) -> list[Delta]:
    """An ``AIMessageChunk``: one :class:`Delta` (index 0) with its content and tool-call fragments."""
    loc = Loc("chunk", 0)
    parts: list[str] = []
    chunks = get(chunk, "tool_call_chunks")
    content = get(chunk, "content")
    if isinstance(content, str):
        parts.append(content)
    elif is_list(content):
        for i, block in enumerate(content):
            if chunks and is_record(block) and kind_of(block) in _CALL_BLOCKS:
                continue  # the same fragment is in tool_call_chunks
            parts.append(_block_fragment(block, loc.at("content").at(i)))
    elif content is not None:
        loc.at("content").fail(f"must be a string or a list of parts, got {type_name(content)}")
    extra = get(chunk, "additional_kwargs")
    if is_record(extra):  # what provider integrations stream beside the content
        if isinstance(get(extra, "refusal"), str):
            parts.append(get(extra, "refusal"))
        parts.extend(get(extra, key) for key in REASONING_KWARGS if isinstance(get(extra, key), str))
        legacy = get(extra, "function_call")  # OpenAI's legacy function calling
        if legacy is not None:
            here = loc.at("additional_kwargs").at("function_call")
            if not is_record(legacy):
                here.fail(f"must be an object, got {type_name(legacy)}")
            parts.append(call_fragment(get(legacy, "name"), get(legacy, "arguments"), here))
        if get(extra, "audio") is not None:
            loc.at("additional_kwargs").at("audio").fail("audio cannot be judged by the guard")
    if chunks is not None:
        if not is_list(chunks):
            loc.at("tool_call_chunks").fail(f"must be a list, got {type_name(chunks)}")
        for i, call in enumerate(chunks):
            here = loc.at("tool_call_chunks").at(i)
            if not is_record(call):
                here.fail(f"must be an object, got {type_name(call)}")
            parts.append(call_fragment(get(call, "name"), get(call, "args"), here))
    return [Delta(text="".join(parts))]
