"""Reading JSON and JSON-lines files record by record, with the line each record starts on.

- :func:`iter_json_lines` streams a JSON-lines file, split on ``b"\\n"`` only: U+2028, U+2029 and
  U+0085 are legal inside a JSON string and never end a record (``str.splitlines`` would cut there).
  Blank lines are skipped. A last line cut short by an interrupted write (no final newline, not valid
  JSON) is an error, or skipped with ``torn_tail="skip"`` (files this code appends to).
- :func:`iter_json_array` reads the items of a JSON list with the line each item starts on.
- :func:`iter_records` picks one of them from the content: a JSON list, one JSON object (a ``.json``
  file), or JSON lines.

Every problem raises :class:`~grvl_sdk.errors.DataError` naming the file and line
(``train.jsonl:3: not valid JSON: ...``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from grvl_sdk.errors import DataError

__all__ = ["data_files", "iter_json_array", "iter_json_lines", "iter_records", "repair_tail"]

TornTail = Literal["error", "skip"]
_WHITESPACE = " \t\r\n"
_BOM = b"\xef\xbb\xbf"


def _open(path: Path) -> Any:
    try:
        return path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", file=str(path)) from exc


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start + 1} of the line)", file=str(path), line=number) from exc


def iter_json_lines(
    path: str | os.PathLike[str],
    *,
    torn_tail: TornTail = "error",
    bad_lines: Literal["raise", "skip"] = "raise",
    skipped: list[int] | None = None,
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON-lines file, streamed.

    ``torn_tail="skip"``: a last line without its newline that is not valid JSON (an interrupted
    append) is left out instead of raising. ``bad_lines="skip"``: any line that is not valid JSON (or
    not UTF-8) is left out; the numbers of left-out lines are appended to ``skipped``.
    """
    path = Path(path)
    with _open(path) as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if not raw.strip():
                continue
            try:
                value = json.loads(_decode(raw, path, number))
            except (json.JSONDecodeError, DataError) as exc:
                torn = not raw.endswith(b"\n")
                if bad_lines == "skip" or (torn and torn_tail == "skip"):
                    if skipped is not None:
                        skipped.append(number)
                    continue
                if isinstance(exc, DataError):
                    raise
                hint = " (the file ends mid-record: an interrupted write?)" if torn else ""
                raise DataError(
                    f"not valid JSON: {exc.msg} (column {exc.colno}){hint}", file=str(path), line=number
                ) from exc
            yield number, value


def _skip_ws(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def _read_text(path: Path) -> str:
    with _open(path) as handle:
        data = handle.read()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError("not UTF-8 text", file=str(path), line=line) from exc


def iter_json_array(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """``(line, item)`` of a JSON list, ``line`` being where the item starts."""
    path = Path(path)
    text = _read_text(path)
    position = _skip_ws(text, 0)
    if position >= len(text) or text[position] != "[":
        raise DataError("not a JSON list", file=str(path), line=text.count("\n", 0, position) + 1)
    decoder = json.JSONDecoder()
    position = _skip_ws(text, position + 1)
    line = text.count("\n", 0, position) + 1
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno) from exc
        yield line, value
        line += text.count("\n", position, end)
        position = _skip_ws(text, end)
        if position < len(text) and text[position] == ",":
            start = _skip_ws(text, position + 1)
            line += text.count("\n", end, start)
            position = start
            continue
        if position < len(text) and text[position] == "]":
            return
        bad_line = text.count("\n", 0, position) + 1
        raise DataError("not valid JSON: expected ',' or ']' between list items", file=str(path), line=bad_line)


def _first_char(path: Path) -> str:
    """The first non-whitespace character of a file (``""`` when it has none), read a block at a time."""
    with _open(path) as handle:
        first = True
        while block := handle.read(65536):
            if first and block.startswith(_BOM):
                block = block[len(_BOM) :]
            first = False
            stripped = block.lstrip(_WHITESPACE.encode())
            if stripped:
                return chr(stripped[0])
    return ""


def iter_records(path: str | os.PathLike[str], *, torn_tail: TornTail = "error") -> Iterator[tuple[int, Any]]:
    """``(line, record)`` of a JSON list, of a file holding one JSON value (not ``.jsonl``), or of JSON lines."""
    path = Path(path)
    first = _first_char(path)
    if first == "[":
        yield from iter_json_array(path)
        return
    if first and path.suffix.lower() != ".jsonl":
        text = _read_text(path)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            pass  # JSON lines saved as .json
        else:
            yield text.count("\n", 0, _skip_ws(text, 0)) + 1, value
            return
    yield from iter_json_lines(path, torn_tail=torn_tail)


def repair_tail(path: str | os.PathLike[str]) -> bool:
    """Make a JSON-lines file end with a newline before appending to it: a last line cut short by an
    interrupted write is removed; a complete last line missing only its newline gets one. Returns
    whether the file changed."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        start = size
        while start > 0:  # find the start of the last line, a block at a time
            step = min(65536, start)
            handle.seek(start - step)
            block = handle.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                start = start - step + cut + 1
                break
            start -= step
        handle.seek(start)
        tail = handle.read()
        try:
            json.loads(tail.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            handle.truncate(start)
        else:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
    return True


def data_files(path: str | os.PathLike[str], suffixes: tuple[str, ...]) -> list[Path]:
    """``[path]`` for a file; the files of a folder with one of ``suffixes``, sorted. :class:`DataError`
    when the path does not exist or the folder holds no such file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise DataError(f"no {'/'.join(suffixes)} files in the folder", file=str(path))
        return found
    if not path.is_file():
        raise DataError("no such file or folder", file=str(path))
    return [path]
