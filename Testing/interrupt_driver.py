"""``aiportal segment`` with the test's SleepyBackend registered: a CLI run that waits to be interrupted."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runner_backends import ENTRY  # noqa: E402

from aiportal.cli import main  # noqa: E402
from aiportal.models.catalog import BackendRef, get_catalog  # noqa: E402

get_catalog().register(ENTRY, BackendRef("runner_backends:SleepyBackend"))
sys.exit(main(sys.argv[1:]))
