"""Renames without breakage: old names keep working for a while, with a ``DeprecationWarning``.

``deprecated_module(__name__, "grvl_sdk.protocol.prompt")`` in an old module path re-exports the new
module and warns once on import; :func:`warn_deprecated` warns for a renamed argument or function.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

__all__ = ["deprecated_module", "warn_deprecated"]

#: The release in which deprecated names are removed (stated in every warning).
REMOVAL = "grvl-sdk 0.3"


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated; use {new} (removed in {REMOVAL})", DeprecationWarning, stacklevel=stacklevel)


def deprecated_module(old: str, new: str) -> Any:
    """Make module ``old`` an alias of module ``new`` (call it from ``old``'s body), warning once."""
    module = importlib.import_module(new)
    warn_deprecated(f"the module {old}", new, stacklevel=4)
    sys.modules[old] = module
    return module
