"""Deprecated location: the prompt protocol lives in :mod:`grvl_sdk.protocol.prompt`."""

from grvl_sdk._deprecation import deprecated_module

deprecated_module(__name__, "grvl_sdk.protocol.prompt")
