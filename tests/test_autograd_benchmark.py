"""The benchmark script keeps working (a smoke run of two steps, not a timing test)."""
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("torch")


def test_bench_step_runs_and_prints_its_table():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--threads", "1",
               "--steps", "2", "--warmup", "1", "--batch", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("median ms / step, interleaved") for line in lines)
    assert any(line.startswith("peak RSS growth (MB)") for line in lines)
