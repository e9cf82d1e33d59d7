"""steps/: every step runs with --quick, writes its figure, and its printed checks hold
("what: expected ..., got ...: ok", steps/checks.py)."""
import math
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steps import checks

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def run_step(name, out, *extra, env=None):
    """Run ``steps/<name>.py --quick --out <out>`` from another folder; its stdout."""
    result = subprocess.run([sys.executable, str(ROOT / "steps" / f"{name}.py"), "--quick",
                             "--out", str(out), *extra], capture_output=True, text=True,
                            timeout=300, cwd=out.parent, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def checks_of(text, *, ok, not_checked=(), reports=()):
    """The step's check lines (steps/checks.py): every name in ``ok`` held, every name in
    ``not_checked`` was a full run's expectation, every ``reports`` name was printed; no
    check failed, and the summary line counts them.  {what: value}."""
    found = checks.parse(text)
    assert not [w for w, (_, status) in found.items() if status == "FAIL"], text
    for what in ok:
        assert found[what][1] == "ok", (what, text)
    for what in not_checked:
        assert found[what][1].startswith("not checked"), (what, text)
    for what in reports:
        assert found[what][1] is None, (what, text)
    held = sum(status == "ok" for _, status in found.values())
    assert f"checks: {held} of {held} ok" in text
    return {what: value for what, (value, _) in found.items()}


def assert_png(path):
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


def test_a_check_prints_expected_got_ok_and_a_reading(capsys):
    """check() holds within the tolerance, fails outside it, and parse() reads it back."""
    assert checks.check("x", 1.05, 1.0, 0.1, "why")
    assert not checks.check("y", 0.9, 1.0, 0, "below", side=">")
    assert checks.check("z", 0.25, 0.3, 0, "a share", side="<", fmt=".1%")
    checks.check("w", float("nan"), 0, 1, "nan never holds")
    checks.check("v", 5.0, 0, 1, "a full run's", skip=True)
    checks.report("u", -2.5)
    text = capsys.readouterr().out
    assert "x: expected 1.0000 ± 0.1, got 1.0500: ok\n    why\n" in text
    assert "y: expected > 1.0000, got 0.9000: FAIL" in text
    found = checks.parse(text)
    assert found["x"] == (1.05, "ok") and found["y"] == (0.9, "FAIL")
    assert found["z"] == (0.25, "ok") and found["w"][1] == "FAIL"
    assert found["v"][1] == "not checked in a --quick run" and found["u"] == (-2.5, None)


def test_step1_standard_vae(tmp_path):
    out = tmp_path / "out"
    text = run_step("step1_standard_vae", out)
    found = checks_of(text, ok=["NumPy against iopvae, largest difference", "KL closed form",
                                "-(reconstruction - beta KL), written out", "validation ELBO"],
                      not_checked=["validation ELBO of a full run",
                                   "z ~ q(z|x) the decoder reads as another vector than x"],
                      reports=["reconstruction E_q[ln p(x|z)]", "KL(q(z|x) || N(0, I))"])
    assert found["validation ELBO"] == pytest.approx(
        found["reconstruction E_q[ln p(x|z)]"] - found["KL(q(z|x) || N(0, I))"], abs=2e-4)
    assert -6 <= found["the encoder's lowest ln σ² on the test points"] <= 2
    assert_png(out / "step1_posteriors.png")


def test_step2_the_two_sides_of_the_kl_split_agree(tmp_path):
    out = tmp_path / "out"
    text = run_step("step2_aggregated_posterior", out)
    found = checks_of(text, ok=["NumPy against log_aggregated_posterior",
                                "1,000 against 4 components",
                                "Eq. (10), the two sides' largest difference over x",
                                "information E_x KL(q(z|x) || q(z))", "KL(q(z) || N(0, I))",
                                "sampled E_q[ln q/N]"],
                      not_checked=["information of a full run",
                                   "KL(q(z) || N(0, I)) of a full run"],
                      reports=[f"E_q(z|e{k})[ln q(z)/N(z)]" for k in range(1, 5)])
    ratios = [found[f"E_q(z|e{k})[ln q(z)/N(z)]"] for k in range(1, 5)]
    assert np.mean(ratios) == pytest.approx(found["KL(q(z) || N(0, I))"], abs=1e-4)  # Eq. (6)
    assert_png(out / "step2_aggregated_posterior.png")


def test_step3_density_ratio(tmp_path):
    out = tmp_path / "out"
    text = run_step("step3_density_ratio", out)
    found = checks_of(text, ok=["-Eq. (20) in NumPy", "-Eq. (20) by density_ratio_loss_on",
                                "-Eq. (20) of the exact ratio T*", "-Eq. (20) of T"],
                      not_checked=["E_q[T] / KL(q(z) || N(0, I)) of a full run",
                                   "-Eq. (20) of T minus T*'s, a full run"],
                      reports=["E_q[T]", "E_q|T - ln q/N|", "the outside's share of "
                               "E_q|T - ln q/N|"])
    assert 0 <= found["the outside's share of E_q|T - ln q/N|"] <= 1
    assert_png(out / "step3_density_ratio.png")


def test_step4_implicit_optimal_prior(tmp_path):
    out = tmp_path / "out"
    text = run_step("step4_implicit_optimal_prior", out)
    found = checks_of(text, ok=["-Eq. (19) written out", "exact validation ELBO"],
                      not_checked=["exact validation ELBO of a full run",
                                   "z ~ q(z|x) the decoder reads as another vector than x"],
                      reports=["estimated validation ELBO (T in Eq. 15)",
                               "rounds with the estimate above the exact ELBO",
                               "the epoch of the best estimated ELBO (the one kept)"])
    assert 0 <= found["rounds with the estimate above the exact ELBO"] <= 3     # 3 rounds
    assert found["the best exact ELBO"] >= found["the exact ELBO at that epoch"]
    assert_png(out / "step4_implicit_optimal_prior.png")


def test_step5_images_on_a_small_file_in_freyfaces_format(tmp_path):
    """A FreyFaces pickle of the real shape and type (1,965 images of 560 grey levels), random."""
    folder = tmp_path / "data" / "freyfaces"
    folder.mkdir(parents=True)
    faces = np.random.default_rng(0).integers(0, 256, (1965, 560)).astype(np.uint8)
    (folder / "freyfaces.pkl").write_bytes(pickle.dumps([faces], protocol=2))
    out = tmp_path / "out"
    text = run_step("step5_images", out, "--data-dir", str(tmp_path / "data"), "--no-verify")
    found = checks_of(text, ok=["the same start for both, 1 if so"],
                      not_checked=["T's highest loss over the epochs",
                                   "E_q[T] / exact E_q[ln q/N], last epoch",
                                   "VAE's validation ELBO, last epoch"],
                      reports=["T's lowest loss over the epochs", "E_q[T], lowest over the epochs"])
    assert all(math.isfinite(v) for v in found.values())
    assert found["T's lowest loss over the epochs"] > 0
    assert_png(out / "step5_images.png")


def test_step5_without_data_says_how_to_get_them(tmp_path):
    out = tmp_path / "out"
    out.parent.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, str(ROOT / "steps" / "step5_images.py"), "--quick",
                             "--out", str(out), "--data-dir", str(tmp_path / "empty")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    assert "python datasets.py download freyfaces" in result.stderr
    assert not out.exists()


def step_error(tmp_path, *argv, shell="", before=True):
    """Step 1 with ``argv``, after ``shell`` (e.g. a ``ulimit``): its one error line
    (``before`` the training)."""
    command = [sys.executable, str(ROOT / "steps" / "step1_standard_vae.py"), *argv]
    if shell:
        command = ["bash", "-c", f'{shell}; exec "$@"', "bash", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), \
        result.stderr[-2000:]
    assert ("epoch" in result.stdout) != before
    return lines[0]


@pytest.mark.parametrize("case, said", [
    ("unknown", "--qiuck"), ("file", "is a file"), ("empty", "--out is empty"),
    ("png-folder", "is a folder"), ("below-a-file", "is a file")])
def test_a_bad_option_or_out_is_one_error_line_before_the_training(tmp_path, case, said):
    """--qiuck was ignored and the full run started; an --out that was a file, or held a
    folder in place of the PNG, failed with a traceback after the training."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "out" / "step1_posteriors.png").mkdir(parents=True)
    argv = {"unknown": ["--qiuck"], "file": ["--out", "file"], "empty": ["--out", ""],
            "png-folder": ["--out", "out"], "below-a-file": ["--out", "file/sub"]}[case]
    assert said in step_error(tmp_path, "--quick", *argv) if case != "unknown" else \
        said in step_error(tmp_path, *argv)


def test_a_full_disk_at_the_figure_is_one_error_line(tmp_path):
    line = step_error(tmp_path, "--quick", "--out", "out", shell="ulimit -f 2", before=False)
    assert "step1_posteriors.png not written: File too large" in line
    assert not list((tmp_path / "out").iterdir())  # no PNG, no temporary left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_one_error_line_before_the_training(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    assert "not writable" in step_error(tmp_path, "--quick", "--out", "locked/out")


def test_ctrl_c_says_interrupted(tmp_path):
    step = subprocess.Popen([sys.executable, str(ROOT / "steps" / "step1_standard_vae.py"),
                             "--out", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert step.stdout.readline().rstrip().endswith(": ok")  # its first check: training next
    step.send_signal(signal.SIGINT)
    _, err = step.communicate(timeout=120)
    assert step.returncode == -signal.SIGINT and err.strip() == "interrupted", err
