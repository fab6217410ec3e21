"""Lazy imports of optional (heavy) dependencies with a clear install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from grvl_sdk.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is needed for this feature: install grvl-sdk[{extra}] "
            f"(pip install 'grvl-sdk[{extra}]'). Import failed with: {exc}",
            package=module,
            extra=extra,
        ) from exc
