"""Moved to :mod:`grvl_sdk.testing.faults` (public); kept for the tests and benchmarks that import it here."""

from grvl_sdk.testing.faults import FaultServer, completion, wait_until  # noqa: F401
