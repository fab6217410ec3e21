"""The message model's value types and the helpers every source module shares."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from grvl_sdk.errors import InputError

Role = Literal["system", "user", "assistant", "tool"]

ROLES: dict[str, Role] = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


@dataclass(frozen=True, kw_only=True)
class Message:
    """One turn of a chat, normalised: every text it carries and its image sources (not loaded)."""

    role: Role
    text: str
    images: tuple[Any, ...] = ()
    name: str | None = None


@dataclass(frozen=True)
class RemoteImage:
    """An ``http(s)`` image URL found in a message. Never fetched here: the caller fetches it (with an
    allowlist) or refuses the input."""

    url: str


@dataclass(frozen=True, kw_only=True)
class Delta:
    """The text one stream chunk adds to the choice ``index``."""

    index: int = 0
    text: str = ""


# Values that never carry message fields: ``getattr`` on them would find methods (``list.index``).
_PLAIN = (str, bytes, bytearray, memoryview, int, float, complex, bool, list, tuple, set, frozenset, type(None))


#: ``additional_kwargs`` keys where LangChain provider integrations keep a model's reasoning text (judged
#: like reasoning content blocks).
REASONING_KWARGS = ("reasoning_content", "reasoning")


def get(value: Any, key: str) -> Any:
    """``value[key]`` for a mapping, ``value.key`` for an object (dicts and SDK objects alike), else ``None``."""
    if isinstance(value, Mapping):
        try:
            return value.get(key)
        except Exception as exc:  # a custom mapping that fails: unreadable
            raise InputError(f"cannot read {key!r} of a {type(value).__name__}: {exc}") from exc
    if isinstance(value, _PLAIN):
        return None
    try:
        return getattr(value, key, None)
    except Exception as exc:  # a property that raises
        raise InputError(f"cannot read {key!r} of a {type(value).__name__}: {exc}") from exc


def kind_of(value: Any) -> str | None:
    """The ``type`` field of a record when it is a string, else ``None``."""
    kind = get(value, "type")
    return kind if isinstance(kind, str) else None


def is_list(value: Any) -> bool:
    """A list-like value (not a string, bytes or a mapping)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray, memoryview))


def is_record(value: Any) -> bool:
    """A value that may carry fields: a mapping or an object that is not a plain value."""
    return isinstance(value, Mapping) or not isinstance(value, _PLAIN)


@dataclass(frozen=True)
class Loc:
    """Where a value sits in the input, for error messages: ``message 2: content[1].source: ...``."""

    kind: str
    index: int
    field: str = ""

    def at(self, sub: str | int) -> Loc:
        """The location of a field (``str``) or list element (``int``) below this one."""
        if isinstance(sub, int):
            return Loc(self.kind, self.index, f"{self.field}[{sub}]")
        return Loc(self.kind, self.index, f"{self.field}.{sub}" if self.field else sub)

    def fail(self, problem: str) -> NoReturn:
        """Raise the :class:`InputError` for ``problem`` at this location."""
        where = f"{self.kind} {self.index}" + (f": {self.field}" if self.field else "")
        raise InputError(f"{where}: {problem}", index=self.index, field=self.field or None)


@dataclass
class Context:
    """State shared across the messages of one input: tool call ids seen so far, and their tool names."""

    tool_names: dict[str, str] = field(default_factory=dict)


def type_name(value: Any) -> str:
    return type(value).__name__


def text_field(value: Any, key: str, loc: Loc, *, required: bool = True) -> str | None:
    """The string field ``key`` of ``value`` (``None`` allowed unless ``required``)."""
    found = get(value, key)
    if found is None and not required:
        return None
    if not isinstance(found, str):
        loc.at(key).fail(f"must be a string, got {type_name(found)}")
    return found


def compact_json(value: Any, loc: Loc) -> str:
    """Tool arguments as compact JSON (``{"a":1}``), non-ASCII kept."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        loc.fail(f"tool arguments are not JSON-serialisable: {exc}")


def arguments_text(value: Any, loc: Loc) -> str:
    """Tool call arguments as text: a string as is (models may emit invalid JSON), else compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, list, tuple, int, float, bool)):
        return compact_json(value, loc)
    loc.fail(f"tool arguments must be a string or JSON, got {type_name(value)}")


def render_call(name: Any, arguments: str, loc: Loc) -> str:
    """``[tool call] name(arguments)``; a call without a (string) name is refused."""
    if not isinstance(name, str) or not name:
        loc.fail("tool call has no function name")
    return f"[tool call] {name}({arguments})"


def call_fragment(name: Any, arguments: Any, loc: Loc) -> str:
    """A streamed tool-call fragment: ``[tool call] name`` when the name arrives, then raw argument text."""
    if name is not None and not isinstance(name, str):
        loc.at("name").fail(f"must be a string, got {type_name(name)}")
    if arguments is not None and not isinstance(arguments, str):
        loc.at("arguments").fail(f"must be a string, got {type_name(arguments)}")
    return (f"[tool call] {name}" if name else "") + (arguments or "")


def role_of(name: Any, loc: Loc) -> Role:
    """The normalised role for a role (or LangChain message type) name."""
    if not isinstance(name, str):
        loc.fail(f"message has no role (got {type_name(name)})")
    role = ROLES.get(name.lower())
    if role is None:
        loc.fail(f"unknown role {name[:40]!r}")
    return role
