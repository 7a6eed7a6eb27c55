"""The fuzzing tool's own environment: schemathesis lives in ``.venv-fuzz`` at the project root
(requirements-fuzz.txt, made by scripts/setup.sh), apart from the environment the tests and the
functions run in, so that its pins never hold back the functions' own."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from localdb.cluster import ROOT

FUZZ_ENV = ROOT / ".venv-fuzz"


def fuzz_tool(name: str) -> Path:
    """The executable ``name`` of the fuzz environment (its scripts directory is named as this
    interpreter's is: ``bin``, or ``Scripts`` on Windows). Fails, saying how to make it, when
    the environment is missing."""
    scripts = Path(sysconfig.get_path("scripts")).name
    suffix = ".exe" if sys.platform == "win32" else ""
    tool = FUZZ_ENV / scripts / f"{name}{suffix}"
    if not tool.exists():
        raise AssertionError(f"{tool.relative_to(ROOT)} is missing: run scripts/setup.sh")
    return tool
