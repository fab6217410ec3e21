"""Deprecated location: reasoning SFT lives in :mod:`grvl_sdk.trainer.rsft_trainer` (TRL's naming)."""

from grvl_sdk._deprecation import deprecated_module

deprecated_module(__name__, "grvl_sdk.trainer.rsft_trainer")
