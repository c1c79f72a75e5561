"""The package passes ruff (lint and format) and mypy, as the style guide asks."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "cmd",
    [
        ["ruff", "check", "src", "tests"],
        ["ruff", "format", "--check", "src", "tests"],
        ["mypy", "src/barenet"],
    ],  # fmt: skip
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool(cmd):
    exe = shutil.which(cmd[0]) or pytest.fail(f"{cmd[0]} is not installed: pip install '.[test]'")
    p = subprocess.run([exe, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PATH": str(Path(sys.executable).parent), "HOME": str(Path.home())})  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
