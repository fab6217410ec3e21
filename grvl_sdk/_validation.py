"""Settings models whose mistakes are ``InputError``s, not pydantic's ``ValidationError``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from grvl_sdk.errors import InputError

__all__ = ["SettingsModel", "describe"]


def describe(exc: ValidationError) -> str:
    """One clause per problem: ``field: message (got value)``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']} (got {error.get('input')!r})"
        for error in exc.errors()
    )


class SettingsModel(BaseModel):
    """A frozen pydantic model whose construction raises :class:`InputError` (``field`` = the model name)."""

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            name = type(self).__name__
            raise InputError(f"invalid {name}: {describe(exc)}", field=name) from exc
