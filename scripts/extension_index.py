#!/usr/bin/env python3
"""The Slicer Extensions Index description file (<ExtensionName>.json), made from the top-level CMakeLists.txt.

The Index takes one JSON file per extension (schema slicer-extension-catalog-entry v1.0.1); everything else
(homepage, icon, screenshots, contributors) is read from the extension's own CMakeLists.txt, so this file only
carries what the CMake metadata implies: the name (project()), the category, the build dependencies and the
repository. Run with no arguments to rewrite Resources/ExtensionsIndex/<name>.json; --check exits 1 when the
committed file differs from what the CMake metadata gives.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
# Tier 1 (experimental) is what a new extension is listed as; the Index's maintainers raise it
TIER = 1
SCM_REVISION = "main"


def cmake_metadata(cmake_file: Path = REPO / "CMakeLists.txt") -> dict[str, str]:
    """project() name and every set(EXTENSION_* "...") of the top-level CMakeLists.txt."""
    text = cmake_file.read_text()
    metadata = {"NAME": re.search(r"^\s*project\s*\(\s*([^\s)]+)", text, re.MULTILINE | re.IGNORECASE).group(1)}
    for key, value in re.findall(r'^\s*set\s*\(\s*(EXTENSION_\w+)\s+"([^"]*)"', text, re.MULTILINE):
        metadata[key.removeprefix("EXTENSION_")] = value
    return metadata


def description(metadata: dict[str, str]) -> dict:
    """The Index's JSON entry, keys in the order of the accepted extensions' files."""
    depends = metadata.get("DEPENDS", "NA")
    return {
        "$schema": SCHEMA_URL,
        "build_dependencies": [] if depends == "NA" else depends.replace(";", " ").split(),
        "build_subdirectory": ".",
        "category": metadata["CATEGORY"],
        "scm_revision": SCM_REVISION,
        # the homepage is the repository (github.com/<owner>/Slicer<Name>), as for the accepted AI extensions
        "scm_url": metadata["HOMEPAGE"],
        "tier": TIER,
    }


def description_text(metadata: dict[str, str]) -> str:
    return json.dumps(description(metadata), indent=2) + "\n"


def description_path(metadata: dict[str, str]) -> Path:
    return REPO / "Resources" / "ExtensionsIndex" / f"{metadata['NAME']}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed file")
    args = parser.parse_args(argv)
    metadata = cmake_metadata()
    path, text = description_path(metadata), description_text(metadata)
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path.relative_to(REPO)} is out of date: run scripts/extension_index.py", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
