"""ruff's lint and format checks, configured in pyproject.toml, run in the fast lane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert "No module named ruff" not in out.stderr, (
        "ruff is missing: install the test extra (pip install -e '.[test]')"
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
