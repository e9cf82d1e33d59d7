"""examples/onehot_iop.py, the bare Algorithm 1 on OneHot, in a few tiny epochs."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["iop", "vae"])
def test_onehot_example_prints_elbo_and_log_px_and_draws_the_posterior(tmp_path, method):
    """Three epochs with 8 hidden units: exit status 0, one line per epoch with a finite
    validation ELBO, the optimum -ln 4 and a test log p(x) <= 0 (a probability of binary
    vectors); for IOP also the exact ELBO under the aggregated posterior and T's loss
    (positive: a sum of two cross-entropies) and the line on why the estimate can pass
    -ln 4; and the scatter of q(z|x) as a PNG."""
    out = tmp_path / "example"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "onehot_iop.py"),
                             "--epochs", "3", "--hidden", "8", "--out", str(out),
                             "--method", method],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3
    for line in lines:
        fields = dict(part.strip().rsplit(" ", 1) for part in
                      line.replace(" (estimated)", "").split("|"))
        assert math.isfinite(float(fields["valid ELBO"]))
        assert float(fields["optimum"]) == pytest.approx(-math.log(4), abs=1e-4)
        assert float(fields["test log p(x)"]) <= 0
        if method == "iop":
            assert math.isfinite(float(fields["exact ELBO"]))
            assert float(fields["T loss"]) > 0
        else:
            assert "exact ELBO" not in fields and "T loss" not in fields
    assert ("can sit above -ln 4" in result.stdout) == (method == "iop")
    png = out / f"posterior-{method}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
