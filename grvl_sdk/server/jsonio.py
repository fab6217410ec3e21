"""Strict JSON for the server: what it reads must be JSON it can write again.

Python's ``json`` accepts more than JSON: ``NaN`` / ``Infinity``, numbers that overflow to infinity
(``1e999``) and lone UTF-16 surrogates (``"\\ud800"``, not Unicode). None of them can be sent on —
httpx and Starlette encode with ``allow_nan=False`` and strict UTF-8 — so a value holding one would
fail deep inside a library after the guard had judged it. :func:`loads` refuses them up front, for
request bodies, upstream answers and upstream stream events alike.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["InvalidJson", "loads"]

#: An escaped UTF-16 surrogate (``\uD800``-``\uDFFF``) or a surrogate's UTF-8 lead bytes: only then can a
#: parsed value hold a lone surrogate (a valid pair is combined into one character by the parser).
_SURROGATE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class InvalidJson(ValueError):
    """Not JSON, or JSON with a value that cannot be sent on (see the module docstring)."""


def _constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"the number {text[:40]} is out of range")
    return value


def loads(data: bytes | str) -> Any:
    """``data`` parsed as JSON; :class:`InvalidJson` (a ``ValueError``) when it is not JSON, holds
    ``NaN``/``Infinity``, a number out of a double's range, or a lone UTF-16 surrogate;
    ``RecursionError`` when nested too deeply."""
    try:
        value = json.loads(data, parse_constant=_constant, parse_float=_float)
    except InvalidJson:
        raise
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digits limit, bad encoding
        raise InvalidJson(str(exc)[:200]) from None
    pattern = _SURROGATE_BYTES if isinstance(data, (bytes, bytearray)) else _SURROGATE_TEXT
    if pattern.search(data):  # type: ignore[arg-type]
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJson("a string holds a lone UTF-16 surrogate (not valid Unicode)") from None
    return value
