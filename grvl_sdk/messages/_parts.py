"""Content parts (blocks) of every source, read into one turn: texts, images, tool calls, tool results.

Block shapes, by source (API doc names):

- OpenAI Chat Completions (``ChatCompletionContentPartParam``): ``text``, ``image_url``
  (``{"url", "detail"}`` or a string), ``refusal``; ``input_audio`` and ``file`` are refused.
- OpenAI Responses (``ResponseInputContent`` / ``ResponseOutputMessage``): ``input_text``,
  ``output_text``, ``refusal``, ``input_image`` (``image_url``; ``file_id`` alone is refused),
  ``input_file`` / ``input_audio`` refused; ``reasoning``, ``function_call``, ``custom_tool_call``
  items also appear as blocks in LangChain's ``responses/v1`` content.
- Anthropic Messages (``ContentBlockParam`` / ``ContentBlock``): ``text``, ``image`` (``source``
  ``base64`` / ``url``; ``file`` refused), ``tool_use``, ``server_tool_use``, ``tool_result`` (a tool
  turn of its own), ``thinking``, ``redacted_thinking`` (opaque: nothing to read); ``document``,
  ``search_result``, server tool results and ``container_upload`` are refused.
- LangChain standard content blocks (``langchain_core.messages.content``): ``text``, ``reasoning``,
  ``refusal``, ``image`` (``url`` / ``base64`` + ``mime_type``; v0.3 ``source_type``; ``file_id``
  refused), ``tool_call``, ``tool_call_chunk``, ``invalid_tool_call``, ``server_tool_call``,
  ``text-plain`` (with ``text``); ``audio``, ``video``, ``file``, ``non_standard`` refused.
- This SDK: ``{"type": "image", "image": <anything load_image takes>}``; a plain string part is text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grvl_sdk.messages._base import (
    Context,
    Loc,
    Message,
    Role,
    arguments_text,
    compact_json,
    get,
    is_list,
    is_record,
    render_call,
    text_field,
    type_name,
)
from grvl_sdk.messages._images import image_of

_UNREADABLE = {
    "input_audio": "audio",
    "audio": "audio",
    "file": "a file",
    "input_file": "a file",
    "document": "a document",
    "video": "video",
    "input_video": "video",
    "video_url": "video",
}


@dataclass
class _Turn:
    texts: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)


class Builder:
    """Collects one input message: its own turn, plus tool-result turns (Anthropic) in block order."""

    def __init__(self, role: Role, ctx: Context, name: str | None = None) -> None:
        self.role: Role = role
        self.ctx = ctx
        self.name = name
        self._out: list[_Turn | Message] = []
        self._turn: _Turn | None = None
        self._call_ids: set[str] = set()
        self._calls: set[str] = set()

    def _current(self) -> _Turn:
        if self._turn is None:
            self._turn = _Turn()
            self._out.append(self._turn)
        return self._turn

    def text(self, text: str) -> None:
        """Add a text part (empty texts add nothing)."""
        if text:
            self._current().texts.append(text)

    def has_text(self, text: str) -> bool:
        return any(text in turn.texts for turn in self._out if isinstance(turn, _Turn))

    def image(self, source: Any) -> None:
        self._current().images.append(source)

    def call(self, name: Any, arguments: str, call_id: Any, loc: Loc, *, dedupe: bool = False) -> None:
        """Add ``[tool call] name(arguments)``. With ``dedupe`` (a message's ``tool_calls`` field), a call
        already given by a content block (same id, or same rendering when there is no id) is not repeated."""
        rendered = render_call(name, arguments, loc)
        has_id = isinstance(call_id, str) and bool(call_id)
        if dedupe and ((has_id and call_id in self._call_ids) or (not has_id and rendered in self._calls)):
            return
        if has_id:
            self._call_ids.add(call_id)
            self.ctx.tool_names[call_id] = name
        self._calls.add(rendered)
        self.text(rendered)

    def result(self, message: Message) -> None:
        """Add a tool-result turn; later parts of this message start a new turn of its own role."""
        self._out.append(message)
        self._turn = None

    def messages(self) -> list[Message]:
        """The messages, in order; a message with nothing at all is one empty turn."""
        if not self._out:
            return [Message(role=self.role, text="", name=self.name)]
        return [
            item
            if isinstance(item, Message)
            else Message(role=self.role, text="\n".join(item.texts), images=tuple(item.images), name=self.name)
            for item in self._out
        ]

    def single(self, loc: Loc) -> Message:
        messages = self.messages()
        if len(messages) != 1:
            loc.fail("a tool result cannot appear here")
        return messages[0]


def add_content(b: Builder, content: Any, loc: Loc, *, results: bool = False) -> None:
    """Add a message's ``content``: ``None``, a string, or a list of parts (``results``: allow ``tool_result``)."""
    if content is None:
        return
    if isinstance(content, str):
        b.text(content)
        return
    if not is_list(content):
        loc.fail(f"content must be a string or a list of parts, got {type_name(content)}")
    for i, part in enumerate(content):
        add_part(b, part, loc.at(i), results=results)


def _kind(part: Any, loc: Loc) -> str:
    kind = get(part, "type")
    if kind is None:
        for key in ("text", "image_url", "image"):
            if get(part, key) is not None:
                return key
        loc.fail("content part has no type")
    if not isinstance(kind, str):
        loc.at("type").fail(f"must be a string, got {type_name(kind)}")
    return kind


def add_part(b: Builder, part: Any, loc: Loc, *, results: bool = False) -> None:
    """Add one content part (see the module docstring for the shapes)."""
    if isinstance(part, str):
        b.text(part)
        return
    if not is_record(part):
        loc.fail(f"a content part must be a string or an object, got {type_name(part)}")
    kind = _kind(part, loc)
    if kind in ("text", "input_text", "output_text"):
        b.text(text_field(part, "text", loc) or "")
    elif kind == "refusal":
        b.text(text_field(part, "refusal", loc) or "")
    elif kind == "reasoning":
        for text in reasoning_texts(part, loc):
            b.text(text)
    elif kind == "thinking":
        b.text(text_field(part, "thinking", loc) or "")
    elif kind == "redacted_thinking":
        return  # encrypted by the provider: nobody can read it, the guard included
    elif kind in ("image_url", "input_image", "image"):
        b.image(image_of(part, kind, loc))
    elif kind in ("tool_call", "server_tool_call", "tool_call_chunk", "invalid_tool_call", "server_tool_call_chunk"):
        b.call(get(part, "name"), arguments_text(get(part, "args"), loc.at("args")), get(part, "id"), loc)
    elif kind in ("tool_use", "server_tool_use"):
        b.call(get(part, "name"), _tool_use_input(part, loc), get(part, "id"), loc)
    elif kind == "function_call":
        args = arguments_text(get(part, "arguments"), loc.at("arguments"))
        b.call(get(part, "name"), args, get(part, "call_id") or get(part, "id"), loc)
    elif kind == "custom_tool_call":
        args = arguments_text(get(part, "input"), loc.at("input"))
        b.call(get(part, "name"), args, get(part, "call_id") or get(part, "id"), loc)
    elif kind == "tool_result":
        if not results:
            loc.fail("a tool_result block belongs in a user message")
        b.result(tool_result(part, b.ctx, loc))
    elif kind == "text-plain":
        if get(part, "text") is None:
            loc.fail("a text-plain block without its text (base64, url or file_id only) cannot be judged")
        b.text(text_field(part, "text", loc) or "")
    elif kind in _UNREADABLE:
        loc.fail(f"{kind!r} content ({_UNREADABLE[kind]}) cannot be judged by the guard")
    else:
        loc.fail(f"unsupported content part type {kind[:40]!r}")


def _tool_use_input(part: Any, loc: Loc) -> str:
    """Anthropic ``tool_use.input`` as compact JSON; LangChain's merged stream blocks keep the arguments
    in ``partial_json`` while ``input`` stays ``{}``."""
    partial = get(part, "partial_json")
    value = get(part, "input")
    if isinstance(partial, str) and partial and not value:
        return partial
    if value is None:
        return ""
    return compact_json(value, loc.at("input"))


def reasoning_texts(part: Any, loc: Loc) -> list[str]:
    """Readable reasoning: LangChain ``reasoning``, Responses ``summary[].text`` and ``content[].text``."""
    texts: list[str] = []
    reasoning = text_field(part, "reasoning", loc, required=False)
    if reasoning:
        texts.append(reasoning)
    for key in ("summary", "content"):
        items = get(part, key)
        if items is None:
            continue
        if not is_list(items):
            loc.at(key).fail(f"must be a list, got {type_name(items)}")
        for i, item in enumerate(items):
            if not is_record(item):
                loc.at(key).at(i).fail(f"must be an object with text, got {type_name(item)}")
            text = text_field(item, "text", loc.at(key).at(i)) or ""
            if text:
                texts.append(text)
    return texts


def tool_result(part: Any, ctx: Context, loc: Loc) -> Message:
    """An Anthropic ``tool_result`` block as a ``tool`` message (its content: text and images)."""
    use_id = get(part, "tool_use_id")
    name = ctx.tool_names.get(use_id) if isinstance(use_id, str) else None
    inner = Builder("tool", ctx, name)
    add_content(inner, get(part, "content"), loc.at("content"))
    return inner.single(loc)


def add_tool_calls(b: Builder, calls: Any, loc: Loc) -> None:
    """A message's ``tool_calls`` (or ``invalid_tool_calls``): OpenAI ``{"function": {name, arguments}}`` /
    ``{"type": "custom", "custom": {name, input}}``, or LangChain ``{"name", "args"}``."""
    if calls is None:
        return
    if not is_list(calls):
        loc.fail(f"must be a list of tool calls, got {type_name(calls)}")
    for i, call in enumerate(calls):
        here = loc.at(i)
        if not is_record(call):
            here.fail(f"a tool call must be an object, got {type_name(call)}")
        function = get(call, "function")
        custom = get(call, "custom")
        if function is not None:
            args = arguments_text(get(function, "arguments"), here.at("function.arguments"))
            b.call(get(function, "name"), args, get(call, "id"), here.at("function"), dedupe=True)
        elif custom is not None:
            args = arguments_text(get(custom, "input"), here.at("custom.input"))
            b.call(get(custom, "name"), args, get(call, "id"), here.at("custom"), dedupe=True)
        else:
            args = arguments_text(get(call, "args"), here.at("args"))
            b.call(get(call, "name"), args, get(call, "id"), here, dedupe=True)


def add_function_call(b: Builder, call: Any, loc: Loc) -> None:
    """OpenAI's legacy ``function_call: {"name", "arguments"}``."""
    if call is None:
        return
    if not is_record(call):
        loc.fail(f"must be an object, got {type_name(call)}")
    b.call(get(call, "name"), arguments_text(get(call, "arguments"), loc.at("arguments")), None, loc, dedupe=True)
