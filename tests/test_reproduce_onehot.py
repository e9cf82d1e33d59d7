"""The one-command OneHot reproduction (Figures 1 and 2) in its --quick form."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce_onehot.py"), "--quick",
                             "--out", str(out)] + args, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_quick_run_writes_figures_and_a_finite_summary(tmp_path, jobs):
    """Both figures and summary.json exist; every method is in the summary with finite numbers.

    Catches a crash in any method's training or evaluation, a figure not written,
    a malformed JSON, or NaN / inf creeping into the reported numbers; with 2 jobs
    it also covers the parallel worker processes.
    """
    out, stdout = _run(["--jobs", jobs], tmp_path)
    for name in ("figure1_posteriors.png", "figure2_elbo.png"):
        path = out / name
        assert path.exists() and path.stat().st_size > 10_000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert [row["method"] for row in summary["methods"]] == ["vae", "avb", "vamp", "iop"]
    assert summary["settings"]["quick"] is True
    for row in summary["methods"]:
        for key in ("valid_elbo", "valid_reconstruction", "test_log_px_prior_mc"):
            assert math.isfinite(row[key]), (row["method"], key)
        # log p(x) of a 4-way categorical-like data set can't exceed 0
        assert row["test_log_px_prior_mc"] <= 1e-6
        assert row["valid_reconstruction"] <= 1e-6
    assert summary["optimum"] == pytest.approx(-math.log(4))
    assert "log p(x) (prior MC)" in stdout


def test_methods_option_and_bad_arguments(tmp_path):
    """--methods restricts the run; nonsense options fail with a usage error, not a traceback."""
    out, _ = _run(["--methods", "vae", "--jobs", "1"], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert [row["method"] for row in summary["methods"]] == ["vae"]
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce_onehot.py"), "--epochs",
                          "0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
