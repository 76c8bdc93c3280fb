"""Shared fixtures: the real test data in ../shared/data and fresh headless Slicer scenes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("AIPORTAL_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    # every run the tests make (in-process or as child processes) audits into a scratch log, never the user's
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="aiportal-audit-"))
    os.environ["AIPORTAL_AUDIT_LOG"] = str(scratch / "audit.jsonl")
    # its HMAC key and anchors too, never the user's ~/.config/aiportal
    os.environ.setdefault("AIPORTAL_AUDIT_KEY", os.urandom(16).hex())
    os.environ["AIPORTAL_AUDIT_ANCHOR_DIR"] = str(scratch / "anchors")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real test images (never copied into the repository)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"test data not found at {SHARED_DATA}: check out ../shared beside the repository "
                    "or set AIPORTAL_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def runtime():
    """A fresh headless Slicer scene with the module logics registered."""
    from aiportal.runtime import build_headless_runtime

    rt = build_headless_runtime()
    yield rt
    rt.scene.Clear(1)


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by playwright (the test extra; never a downloaded browser), one per module."""
    from playwright import sync_api as playwright_api
    from workspace_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
