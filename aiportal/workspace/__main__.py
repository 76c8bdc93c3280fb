"""``python -m aiportal.workspace``: the same as ``aiportal workspace``."""

import sys

from aiportal.workspace.cli import main

sys.exit(main())
