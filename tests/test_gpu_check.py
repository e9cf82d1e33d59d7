"""benchmarks/gpu_check.py, the one-command GPU check, in its dry run: the same script on
the simulated device (cupy-sim) with small sizes, so it is known to work before a GPU is
lent.  Not a timing test: the numbers are only checked to be there."""
import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_dry_run_writes_every_part_to_its_json_and_table(tmp_path):
    out = tmp_path / "gpu_check"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                             "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["device", "tests", "bench_step", "mnist_epochs", "onehot_quick"]
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(parts, "ok"), \
        result.stdout[-3000:]
    assert result.returncode == 0
    assert report["dry_run"] is True and report["backend"] == "cupy-sim"
    assert parts["device"]["matmul_ok"] is True
    assert parts["tests"]["tests"] > 0 and parts["tests"]["failures"] == 0
    assert set(parts["bench_step"]["table"]) >= {"median ms / step, interleaved",
                                                 "median ms / step, alone"}
    epochs = parts["mnist_epochs"]["methods"]
    assert set(epochs) == {"vae", "vamp", "iop", "avb"}
    # one read of the device per round of Algorithm 1 (tests/test_iopvae_device.py)
    assert all(m["syncs_per_epoch"] == 1 and m["uploads_per_epoch"] == 0
               for m in epochs.values())
    assert set(parts["onehot_quick"]["methods"]) == {"iop"}
    table = (out / "gpu_check.txt").read_text()
    assert table in result.stdout and all(name in table for name in parts)
