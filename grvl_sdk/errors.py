"""The SDK's exceptions. Every error it raises derives from :class:`GRVLError`.

Each class carries a stable ``code`` string (safe to match on in logs and metrics)::

    GRVLError                      code "grvl_error"
    ├── InputError                 code "invalid_input"        bad arguments to check()/format_prompt()
    │   └── ImageError             code "invalid_image"        unreadable, corrupt or unsupported image
    │       └── ImageTooLargeError code "image_too_large"      decompression bomb / over the pixel limit
    ├── ParseError                 code "unparseable_output"   the guard's output has no usable verdict
    ├── ModelLoadError             code "model_load_failed"    model id/path not found, bad checkpoint
    ├── MissingDependencyError     code "missing_dependency"   an optional extra is not installed
    └── BackendError               code "backend_error"        generation failed inside the backend

``MissingDependencyError`` is also an ``ImportError``; ``InputError`` is also a ``ValueError``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "GRVLError",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ParseError",
]


class GRVLError(Exception):
    """Base class of every error raised by grvl-sdk."""

    code: ClassVar[str] = "grvl_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description: ``{"code", "type", "message", **details}``."""
        return {
            "code": self.code,
            "type": type(self).__name__,
            "message": self.message,
            **{k: v for k, v in self.details.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }


class InputError(GRVLError, ValueError):
    """The caller passed something the guard cannot check (no text and no image, wrong types...)."""

    code: ClassVar[str] = "invalid_input"


class ImageError(InputError):
    """An image could not be read: unknown type, corrupt data, unsupported format."""

    code: ClassVar[str] = "invalid_image"


class ImageTooLargeError(ImageError):
    """An image exceeds the decompression-bomb limit."""

    code: ClassVar[str] = "image_too_large"


class ParseError(GRVLError):
    """The guard's output holds no parseable request label (truncated, malformed, empty)."""

    code: ClassVar[str] = "unparseable_output"

    def __init__(self, message: str, *, output: str = "", **details: Any) -> None:
        super().__init__(message, **details)
        self.output = output


class ModelLoadError(GRVLError):
    """The model could not be loaded (not found, no network and not cached, broken checkpoint)."""

    code: ClassVar[str] = "model_load_failed"


class MissingDependencyError(GRVLError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    code: ClassVar[str] = "missing_dependency"


class BackendError(GRVLError):
    """The backend failed while generating (out of memory, device error, server error...)."""

    code: ClassVar[str] = "backend_error"
