"""Run the Slicer Extensions Index's own acceptance checks on this checkout, with no network.

Run by Testing/test_extensions_index.py with a Python 3.12 that has the Index's scripts/requirements.txt (the
scripts use 3.12 syntax). Every check and assertion is the Index's; only what would leave the machine is
answered locally:
- `git clone https://github.com/<owner>/<repo>` clones a local git repository holding this checkout's files
  on branch main (git's url.<local>.insteadOf, so the Index's real clone and checkout commands run);
- `requests.get` of the schema URL returns the schema file given; of a raw.githubusercontent.com URL, the file
  at that revision and path of the local repository (404 when absent), with the Content-Type its bytes have;
- the GitHub topics query (a repository setting, not in any file) is reported as not checkable offline.

    python extensions_index_driver.py INDEX_DIR CHECKOUT DESCRIPTION_JSON SCHEMA_JSON WORK_DIR
prints the Index's report and a last line `RESULT {"description": rc, "structure": rc, ...}`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}


class LocalResponse:
    """The part of requests.Response the Index's scripts read."""

    def __init__(self, url: str, status_code: int, content: bytes, content_type: str):
        self.url, self.status_code, self.content = url, status_code, content
        self.headers = {"Content-Type": content_type}
        self.text = content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)

    def raise_for_status(self):
        import requests

        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code} for url: {self.url}", response=self)


def local_remote(checkout: Path, work: Path) -> Path:
    """A git repository with the checkout's files (tracked and untracked, not ignored) committed on main."""
    remote = work / "remote"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=checkout,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = checkout / name
        if source.is_file():
            (remote / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, remote / name)
    git = ["git", "-c", "user.name=index-check", "-c", "user.email=index-check@localhost"]
    subprocess.run(git + ["init", "-q", "-b", "main"], cwd=remote, check=True)
    subprocess.run(git + ["add", "-A"], cwd=remote, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "checkout under test"], cwd=remote, check=True)
    return remote


def raw_file(remote: Path, path: str) -> bytes | None:
    """/<owner>/<repo>/<revision>/<file> of raw.githubusercontent.com, read from the local repository."""
    _owner, _repo, revision, file = path.lstrip("/").split("/", 3)
    shown = subprocess.run(["git", "show", f"{revision}:{file}"], cwd=remote, capture_output=True)
    return shown.stdout if shown.returncode == 0 else None


def local_get(remote: Path, schema: Path, schema_url: str):
    def get(url, *args, **kwargs):
        parts = urllib.parse.urlsplit(url)
        if url.split("#")[0] == schema_url.split("#")[0]:
            return LocalResponse(url, 200, schema.read_bytes(), "application/json")
        if parts.netloc == "raw.githubusercontent.com":
            content = raw_file(remote, parts.path)
            if content is None:
                return LocalResponse(url, 404, b"404: Not Found", "text/plain")
            kind = next((t for magic, t in IMAGE_TYPES.items() if content.startswith(magic)), "text/plain")
            return LocalResponse(url, 200, content, kind)
        raise AssertionError(f"the Index's checks asked for {url}, which has no local equivalent")
    return get


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(index: Path, checkout: Path, description: Path, schema: Path, work: Path) -> dict:
    # the Index's repository as a pull request adding our description file would leave it
    index_copy = work / "ExtensionsIndex"
    shutil.copytree(index, index_copy, ignore=shutil.ignore_patterns("*.json", "__pycache__"))
    shutil.copy2(description, index_copy / description.name)
    remote = local_remote(checkout, work)
    metadata = json.loads(description.read_text())
    os.environ.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{remote}.insteadOf",
                       "GIT_CONFIG_VALUE_0": metadata["scm_url"]})
    tempfile.tempdir = str(work)

    checks = load(index_copy / "scripts" / "check_description_files.py", "check_description_files")
    checks.requests.get = local_get(remote, schema, metadata["$schema"])
    skipped = []

    def topics_not_checkable_offline(extension_name, metadata):
        skipped.append("check_git_repository_topics")
        print("  (GitHub topics are a repository setting: not checkable offline; add '3d-slicer-extension')")
    checks.check_git_repository_topics = topics_not_checkable_offline

    os.chdir(index_copy)
    sys.argv = ["check_description_files.py", description.name]
    description_rc = checks.main()
    structure = subprocess.run([sys.executable, str(index_copy / "scripts" / "check_repository_structure.py")],
                               capture_output=True, text=True)
    print(structure.stdout, structure.stderr)
    return {"description": description_rc, "structure": structure.returncode, "skipped": skipped}


if __name__ == "__main__":
    result = main(*(Path(arg).resolve() for arg in sys.argv[1:6]))
    print("RESULT " + json.dumps(result))
