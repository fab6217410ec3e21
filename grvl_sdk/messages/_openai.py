"""Chat messages (OpenAI Chat Completions, and the same fields on LangChain / Anthropic messages),
``ChatCompletion`` choices and ``ChatCompletionChunk`` deltas.

Shapes (OpenAI API reference, Chat Completions): a request message ``ChatCompletionMessageParam``
(``role``, ``content`` str / parts / ``None``, ``refusal``, ``tool_calls``, legacy ``function_call``,
``name``, ``tool_call_id``, ``audio``); a response ``ChatCompletion.choices[].message``
(``ChatCompletionMessage``); a stream ``ChatCompletionChunk.choices[].delta`` (``content``, ``refusal``,
``tool_calls[].function.name/arguments`` fragments, ``function_call``); legacy Completions
``choices[].text``. LangChain messages add ``tool_calls`` (``{"name", "args", "id"}``),
``invalid_tool_calls``, ``tool_call_chunks`` and ``additional_kwargs`` (``refusal`` and the legacy
``function_call`` are read; ``audio`` cannot be judged: ``InputError``).
"""

from __future__ import annotations

from typing import Any

from grvl_sdk.messages._base import (
    REASONING_KWARGS,
    ROLES,
    Context,
    Delta,
    Loc,
    Message,
    Role,
    call_fragment,
    get,
    is_list,
    is_record,
    role_of,
    type_name,
)
from grvl_sdk.messages._parts import Builder, add_content, add_function_call, add_tool_calls

# LangChain message classes' ``type`` values beyond the role names.
_LANGCHAIN_TYPES = {
    "AIMessageChunk": "ai",
    "HumanMessageChunk": "human",
    "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool",
    "FunctionMessageChunk": "function",
}


def role_name(message: Any) -> Any:
    """The role of a message: ``role``, else a LangChain ``type`` (``human``, ``ai``, ``AIMessageChunk``...)."""
    role = get(message, "role")
    if role is not None:
        return role
    kind = get(message, "type")
    if isinstance(kind, str):
        return _LANGCHAIN_TYPES.get(kind, kind)
    return None


def _tool_name(message: Any, ctx: Context, loc: Loc) -> str | None:
    name = get(message, "name")
    if name is not None:
        if not isinstance(name, str):
            loc.at("name").fail(f"must be a string, got {type_name(name)}")
        return name
    call_id = get(message, "tool_call_id")
    return ctx.tool_names.get(call_id) if isinstance(call_id, str) else None


def message_builder(message: Any, loc: Loc, ctx: Context, role: Role | None = None) -> Builder:
    """Read one chat message (all its fields) into a :class:`Builder`."""
    if role is None:
        name = role_name(message)
        if get(message, "role") is None and isinstance(name, str) and name.lower() not in ROLES:
            loc.at("type").fail(f"unsupported message or item type {name[:40]!r}")
        role = role_of(name, loc.at("role"))
    b = Builder(role, ctx, _tool_name(message, ctx, loc) if role == "tool" else None)
    content = get(message, "content")
    if content is None and isinstance(get(message, "text"), str):  # {"role", "text"}: text is its content
        content = get(message, "text")
    add_content(b, content, loc.at("content"), results=role == "user")
    refusal = get(message, "refusal")
    if refusal is not None:
        if not isinstance(refusal, str):
            loc.at("refusal").fail(f"must be a string, got {type_name(refusal)}")
        b.text(refusal)
    add_function_call(b, get(message, "function_call"), loc.at("function_call"))
    chunks = get(message, "tool_call_chunks")
    if chunks:  # an AIMessageChunk: its raw chunks; tool_calls holds a best-effort parse of them
        add_tool_calls(b, chunks, loc.at("tool_call_chunks"))
    else:
        add_tool_calls(b, get(message, "tool_calls"), loc.at("tool_calls"))
        add_tool_calls(b, get(message, "invalid_tool_calls"), loc.at("invalid_tool_calls"))
    extra = get(message, "additional_kwargs")
    if is_record(extra):  # a LangChain message: what provider integrations keep beside the content
        refusal = get(extra, "refusal")
        if isinstance(refusal, str) and not b.has_text(refusal):
            b.text(refusal)
        for key in REASONING_KWARGS:  # reasoning kept beside the content (ChatDeepSeek, ChatOllama...)
            reasoning = get(extra, key)
            if isinstance(reasoning, str) and not b.has_text(reasoning):
                b.text(reasoning)
        add_function_call(b, get(extra, "function_call"), loc.at("additional_kwargs").at("function_call"))
        if get(extra, "audio") is not None:
            loc.at("additional_kwargs").at("audio").fail("audio cannot be judged by the guard")
    if get(message, "audio") is not None:
        loc.at("audio").fail("audio cannot be judged by the guard")
    return b


def message_messages(message: Any, loc: Loc, ctx: Context) -> list[Message]:
    """A request-side chat message as one message (or more: Anthropic ``tool_result`` blocks)."""
    return message_builder(message, loc, ctx).messages()


def assistant_message(message: Any, loc: Loc) -> Message:
    """A response-side message: it must be the assistant's (or carry no role)."""
    name = role_name(message)
    if name is not None and role_of(name, loc.at("role")) != "assistant":
        loc.at("role").fail(f"a response must be an assistant message, got role {str(name)[:20]!r}")
    return message_builder(message, loc, Context(), "assistant").single(loc)


def ordered(items: Any, what: str) -> list[tuple[int, Any]]:
    """``(index, item)`` for each choice/candidate, sorted by its ``index`` (its position when absent)."""
    if not is_list(items):
        Loc(what, 0).fail(f"{what}s must be a list, got {type_name(items)}")
    out = []
    for position, item in enumerate(items):
        index = get(item, "index")
        if index is None:
            index = position
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            Loc(what, position, "index").fail(f"must be a non-negative integer, got {type_name(index)}")
        out.append((index, item))
    return sorted(out, key=lambda pair: pair[0])


def choice_messages(choices: Any) -> list[Message]:
    """``ChatCompletion.choices`` (``message``) or legacy ``Completion.choices`` (``text``), one per choice."""
    out = []
    for index, choice in ordered(choices, "choice"):
        loc = Loc("choice", index)
        if not is_record(choice):
            loc.fail(f"must be an object, got {type_name(choice)}")
        message = get(choice, "message")
        if message is not None:
            out.append(assistant_message(message, loc.at("message")))
        elif isinstance(get(choice, "text"), str):
            out.append(Message(role="assistant", text=get(choice, "text")))
        else:
            loc.fail("has no message (nor text)")
    return out


def chunk_choice_deltas(choices: Any) -> list[Delta]:
    """``ChatCompletionChunk.choices``: one :class:`Delta` per choice (text may be empty)."""
    out = []
    for index, choice in ordered(choices, "choice"):
        loc = Loc("choice", index)
        if not is_record(choice):
            loc.fail(f"must be an object, got {type_name(choice)}")
        delta = get(choice, "delta")
        if delta is None:
            text = get(choice, "text")  # legacy Completions stream
            if not isinstance(text, str):
                loc.fail("has no delta (nor text)")
            out.append(Delta(index=index, text=text))
            continue
        out.append(Delta(index=index, text=delta_text(delta, loc.at("delta"))))
    return out


def delta_text(delta: Any, loc: Loc) -> str:
    """The text one ``ChoiceDelta`` adds: content, refusal, then tool-call name/argument fragments."""
    if not is_record(delta):
        loc.fail(f"must be an object, got {type_name(delta)}")
    parts: list[str] = []
    for key in ("content", "refusal"):
        value = get(delta, key)
        if value is not None:
            if not isinstance(value, str):
                loc.at(key).fail(f"must be a string, got {type_name(value)}")
            parts.append(value)
    legacy = get(delta, "function_call")
    if legacy is not None:
        if not is_record(legacy):
            loc.at("function_call").fail(f"must be an object, got {type_name(legacy)}")
        parts.append(call_fragment(get(legacy, "name"), get(legacy, "arguments"), loc.at("function_call")))
    calls = get(delta, "tool_calls")
    if calls is not None:
        if not is_list(calls):
            loc.at("tool_calls").fail(f"must be a list, got {type_name(calls)}")
        for i, call in enumerate(calls):
            here = loc.at("tool_calls").at(i)
            if not is_record(call):
                here.fail(f"must be an object, got {type_name(call)}")
            function = get(call, "function")
            if function is not None:
                if not is_record(function):
                    here.at("function").fail(f"must be an object, got {type_name(function)}")
                parts.append(call_fragment(get(function, "name"), get(function, "arguments"), here.at("function")))
    if get(delta, "audio") is not None:
        loc.at("audio").fail("audio cannot be judged by the guard")
    return "".join(parts)
