"""``python -m aiportal.server serve|key ...`` (the same commands as ``aiportal serve`` / ``aiportal server-key``)."""

import sys

from aiportal.server.cli import main

sys.exit(main())
