"""Deprecated location: ``RSFTConfig`` lives in :mod:`grvl_sdk.trainer.rsft_config` (shared settings in
:mod:`grvl_sdk.trainer.base_config`)."""

from grvl_sdk._deprecation import deprecated_module

deprecated_module(__name__, "grvl_sdk.trainer.rsft_config")
