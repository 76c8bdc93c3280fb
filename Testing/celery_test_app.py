"""The server's Celery app with the test's SleepyBackend registered as ``test-threshold``
(``celery -A celery_test_app worker``, with Testing/ on PYTHONPATH): a model run that stays quiet
until it is killed, as a long GPU inference does."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runner_backends import ENTRY  # noqa: E402

from aiportal.models.catalog import BackendRef, get_catalog  # noqa: E402
from aiportal.server.celery_app import make_celery  # noqa: E402
from aiportal.server.settings import ServerSettings  # noqa: E402

get_catalog().register(ENTRY, BackendRef("runner_backends:SleepyBackend"))
app = make_celery(ServerSettings.from_environment())
