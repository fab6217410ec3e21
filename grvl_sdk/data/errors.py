"""One error for bad data, wherever it is read: :class:`~grvl_sdk.errors.DataError`.

Every reader of the data layer, the trainer's loaders and evaluation's readers raise a ``DataError``
(an ``InputError``, so also a ``ValueError``) whose ``file``, ``line`` and ``field`` say where the
problem is. Evaluation raises :class:`EvalDataError`: a ``DataError`` that is also the older
:class:`~grvl_sdk.errors.DataFormatError` (and so an ``EvalError``), so code written as
``except DataFormatError`` keeps catching what evaluation's readers raise. New code catches
``DataError`` for both.

:class:`ErrorPolicy` is how a loader either raises the first bad record (``on_error="raise"``) or skips
it, collecting the error (``on_error="skip"``).
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

from grvl_sdk.errors import DataError, DataFormatError

__all__ = ["DataError", "ErrorPolicy", "EvalDataError", "OnError", "as_eval_error", "locate"]

logger = logging.getLogger("grvl_sdk")

OnError = Literal["raise", "skip"]


class EvalDataError(DataError, DataFormatError):
    """A benchmark or prediction file cannot be read: a :class:`DataError` that old code catches as
    :class:`~grvl_sdk.errors.DataFormatError` (its ``code`` stays ``"invalid_data"``)."""

    code: ClassVar[str] = "invalid_data"


def locate(error: DataError, file: str | None, line: int | None, field_prefix: str = "") -> DataError:
    """``error`` (raised without a location) again, with the record's file and line."""
    name = error.field
    if name and field_prefix:
        name = f"{field_prefix}{name}"
    return type(error)(error.problem, file=file, line=line, field=name)


def as_eval_error(error: DataError, where: str | None = None) -> EvalDataError:
    """``error`` as an :class:`EvalDataError`; ``where`` (e.g. ``"x.json item 3"``) prefixes a message
    that has no location of its own."""
    if isinstance(error, EvalDataError):
        return error
    if where and not error.file:
        prefix = f"field {error.field!r}: " if error.field else ""
        return EvalDataError(f"{where}: {prefix}{error.problem}")
    return EvalDataError(error.problem, file=error.file, line=error.line, field=error.field)


class ErrorPolicy:
    """Raise a bad record's error, or skip the record and collect the error (``sink``), logging the first five."""

    def __init__(self, on_error: OnError, sink: list[DataError] | None = None, *, what: str = "record") -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}", field="on_error")
        self.on_error = on_error
        self.sink = sink
        self.skipped = 0
        self.what = what

    def handle(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped += 1
        if self.sink is not None:
            self.sink.append(error)
        if self.skipped <= 5:
            logger.warning("skipping a bad %s: %s", self.what, error)
