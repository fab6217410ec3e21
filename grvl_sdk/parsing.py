"""Deprecated location: output parsing lives in :mod:`grvl_sdk.protocol.parsing`."""

from grvl_sdk._deprecation import deprecated_module

deprecated_module(__name__, "grvl_sdk.protocol.parsing")
