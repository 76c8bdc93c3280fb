"""Slicer Extensions Index acceptance: the Index's own check scripts on this checkout, with no network.

The scripts (../shared/slicer-reference/extensions-index/scripts) need Python 3.12 and their own requirements,
so they run in a cached environment (scripts/slicer_python_env.py) through Testing/extensions_index_driver.py,
which answers their downloads locally. What they cannot see offline: the GitHub repository's topics.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess

import pytest
from slicer_reference import REFERENCE, REPO

INDEX = REFERENCE / "extensions-index"
SCHEMA = REPO / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extension_index = _script("extension_index")
slicer_python_env = _script("slicer_python_env")


@pytest.fixture(scope="module")
def metadata() -> dict[str, str]:
    if not INDEX.is_dir():
        pytest.fail(f"the Extensions Index's scripts are not at {INDEX}: check out ../shared beside the repository")
    return extension_index.cmake_metadata()


def test_description_file_is_the_one_the_cmake_metadata_gives(metadata):
    assert extension_index.main(["--check"]) == 0, "run scripts/extension_index.py and commit the result"


def test_description_has_the_shape_of_the_accepted_ai_extensions(metadata):
    ours = json.loads(extension_index.description_path(metadata).read_text())
    for accepted in ("MONAIAuto3DSeg", "TotalSegmentator"):
        theirs = json.loads((INDEX / f"{accepted}.json").read_text())
        assert ours.keys() == theirs.keys(), accepted
        assert ours["$schema"] == theirs["$schema"] and ours["category"] == theirs["category"]
        assert ours["build_subdirectory"] == theirs["build_subdirectory"] == "."


def test_cmake_metadata_is_complete(metadata):
    # what the Index's pull-request checklist asks beyond its scripts
    assert re.fullmatch(r"[^()]+ \([^()]+\)(, [^()]+ \([^()]+\))*", metadata["CONTRIBUTORS"]), \
        "EXTENSION_CONTRIBUTORS: 'Name (Organisation), ...'"
    assert metadata["HOMEPAGE"].startswith("https://github.com/") and metadata["DESCRIPTION"]
    for url in [metadata["ICONURL"], *metadata["SCREENSHOTURLS"].split()]:
        prefix = metadata["HOMEPAGE"].replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
        assert url.startswith(prefix), url
        assert (REPO / url.removeprefix(prefix)).read_bytes().startswith(b"\x89PNG"), url
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()


def test_the_index_checks_pass_on_this_checkout(metadata, tmp_path):
    python = slicer_python_env.index_tools_env()
    run = subprocess.run(
        [str(python), str(REPO / "Testing" / "extensions_index_driver.py"), str(INDEX), str(REPO),
         str(extension_index.description_path(metadata)), str(SCHEMA), str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    result = json.loads(report.split("RESULT ", 1)[1].splitlines()[0])
    assert result == {"description": 0, "structure": 0, "skipped": ["check_git_repository_topics"]}, report[-4000:]
    assert ":x:" not in report, report[-4000:]
    for check in ("Clone repository", "Check JSON schema", "Check extension name", "Check git repository name",
                  "Check CMakeLists.txt content", "Check license file"):
        assert f":white_check_mark: {check} completed successfully" in report, check
    assert report.count(":white_check_mark: Extension screenshot URL") == len(metadata["SCREENSHOTURLS"].split())
