"""The import graph follows the data flow (contract in pyproject.toml, checked by import-linter)."""

import subprocess
import sys
from pathlib import Path


def test_layers_hold():
    root = Path(__file__).resolve().parents[1]
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
