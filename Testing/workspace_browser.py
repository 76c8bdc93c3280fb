"""Helpers for the browser tests of the workspace: a real server process, Debian's Chromium via Playwright.

Chromium is the system's (``/usr/bin/chromium``, Debian package ``chromium``); Playwright's own
browser downloads are never used. The server runs as ``python -m aiportal.workspace`` on a free
loopback port, with its own audit log and export folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from processes import free_port, log_tail, stop_process_group

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("AIPORTAL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 120  # import of Slicer core and trame on a cold, busy 2-core machine


def artifacts_dir(test_name: str) -> Path:
    """Where a test keeps its screenshots and downloads (``AIPORTAL_TEST_ARTIFACTS``, default build/)."""
    base = Path(os.environ.get("AIPORTAL_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
    folder = base / test_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class WorkspaceServer:
    """``python -m aiportal.workspace`` as a child process; stopped by its own process id."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/index.html"

    @property
    def audit_log(self) -> Path:
        return self.folder / "audit.jsonl"

    @property
    def export_dir(self) -> Path:
        return self.folder / "exports"

    @property
    def log_path(self) -> Path:
        return self.folder / f"server-{self.port}.log"

    def start(self) -> WorkspaceServer:
        env = {**os.environ, "AIPORTAL_AUDIT_LOG": str(self.audit_log), "PYTHONUNBUFFERED": "1"}
        env.pop("DISPLAY", None)  # as on a server: rendering must work without a display or GPU
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiportal.workspace", "--host", "127.0.0.1", "--port", str(self.port),
             "--export-dir", str(self.export_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"workspace server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"workspace server did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process_group(self.process)  # its own session: only what this test started

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


class ConsoleErrors:
    """JavaScript errors of a page: console.error messages, uncaught exceptions, failed requests."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("response", lambda response: response.status >= 400
                and self.errors.append(f"HTTP {response.status} {response.request.method} {response.url}"))


def open_and_segment(page, url: str, image, wait_ms: int) -> None:
    """Open the workspace, load ``image`` by its path and run the default AI model on it."""
    page.goto(url)
    page.get_by_test_id("ai-segment-toolbar").click(timeout=wait_ms)
    page.get_by_test_id("load-path").locator("input").fill(str(image))
    page.get_by_test_id("load-open").click()
    page.get_by_test_id("volume-name").wait_for(timeout=wait_ms)
    page.get_by_test_id("ai-run").click()
    page.get_by_test_id("ai-summary").wait_for(timeout=wait_ms)


def served_workspace(tmp_path_factory, artifacts_name: str):
    """A module fixture's body: a workspace server for the module's tests, its log kept in the artifacts."""
    workspace = WorkspaceServer(tmp_path_factory.mktemp("workspace")).start()
    yield workspace
    workspace.stop()
    shutil.copy(workspace.log_path, artifacts_dir(artifacts_name) / "server.log")
