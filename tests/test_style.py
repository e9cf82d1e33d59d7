"""One house style: the whole repository passes ``ruff check`` with pyproject.toml's rules."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    """E, F, W and I (pycodestyle, pyflakes, import order), line length 100, Python 3.9."""
    pytest.importorskip("ruff", reason="ruff is not installed (pip install ruff)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
