"""Deprecated: the loopback guard server moved to :mod:`grvl_sdk.testing.server` (removed in grvl-sdk 0.3).

``import grvl_sdk.testing_server`` gives that module (with a ``DeprecationWarning``), and
``python -m grvl_sdk.testing_server --model PATH`` still serves, through its ``main``.
"""

from grvl_sdk._deprecation import deprecated_module, warn_deprecated

if __name__ == "__main__":
    warn_deprecated("python -m grvl_sdk.testing_server", "python -m grvl_sdk.testing.server", stacklevel=2)
    from grvl_sdk.testing.server import main

    main()
else:
    deprecated_module(__name__, "grvl_sdk.testing.server")
