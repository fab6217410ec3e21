"""``python -m grvl_sdk.cli``."""

import sys

from grvl_sdk.cli import main

sys.exit(main())
