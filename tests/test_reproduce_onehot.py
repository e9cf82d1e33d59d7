"""The one-command OneHot reproduction (Figures 1 and 2) in its --quick form."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, backend="numpy"):
    out = tmp_path / "out"
    env = {**os.environ, "AUTOGRAD_LITE_BACKEND": backend}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce_onehot.py"), "--quick",
                             "--out", str(out)] + args, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


# backend -> jobs: two worker processes each, one BLAS thread per worker, so that the two
# backends compute in the same order (--jobs 1 uses every BLAS thread, which changes the
# last bits of the sums); test_methods_option_and_bad_arguments runs --jobs 1
QUICK_RUNS = {"numpy": "2", "cupy-sim": "2"}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """``reproduce_onehot.py --quick`` once per backend of QUICK_RUNS: (out folder, stdout)."""
    return {backend: _run(["--jobs", jobs], tmp_path_factory.mktemp(backend), backend)
            for backend, jobs in QUICK_RUNS.items()}


@pytest.mark.parametrize("backend", list(QUICK_RUNS))
def test_quick_run_writes_figures_and_a_finite_summary(quick_runs, backend):
    """Both figures and summary.json exist; every method is in the summary with finite numbers.

    Catches a crash in any method's training or evaluation, a figure not written,
    a malformed JSON, or NaN / inf creeping into the reported numbers, in the
    parallel worker processes, on NumPy and on the simulated GPU
    (AUTOGRAD_LITE_BACKEND=cupy-sim).
    """
    out, stdout = quick_runs[backend]
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
    assert "log p(x) prior MC" in stdout
    rows = {row["method"]: row for row in summary["methods"]}
    # importance-sampled log p(x) for the methods with a density q(z|x); for IOP also the
    # exact value under the aggregated posterior and log Z of the estimated prior
    for method in ("vae", "vamp", "iop"):
        assert math.isfinite(rows[method]["test_log_px_is"]) and rows[method]["test_log_px_is"] < 0
    assert "test_log_px_is" not in rows["avb"]
    assert -5 < rows["iop"]["test_log_px_is_exact"] <= 1e-6
    assert math.isfinite(rows["iop"]["log_normalizer"])
    # the same log Z by annealed importance sampling: in 2-D both estimators are accurate
    iop = rows["iop"]
    assert 0 < iop["log_normalizer_ais_stderr"] < 0.05
    assert abs(iop["log_normalizer_ais"] - iop["log_normalizer"]) < 0.1
    assert abs(iop["log_normalizer_ais_half"] - iop["log_normalizer_ais"]) < 0.1
    assert "[iop] log Z of N(z) exp T(z) by AIS: " in stdout
    assert summary["test_is_samples"] == 20 and summary["valid_samples"] == 50
    # the density-ratio figure of the IOP model, and its numbers
    path = out / "figure_density_ratio.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    numbers = json.loads((out / "density_ratio.json").read_text())
    assert numbers["epochs"] == summary["settings"]["epochs"]
    assert all(math.isfinite(numbers[k]) for k in ("mean_T_under_q", "kl_q_n",
                                                   "mean_abs_error_under_q"))
    assert numbers["kl_q_n"] >= 0       # a KL divergence, estimated on 20,000 samples


def test_figure2_records_iop_exact_elbo_every_few_epochs(tmp_path, monkeypatch):
    """IOP's history carries Figure 2's points every FIGURE2_EVERY epochs from the end of
    the warm-up on: the validation ELBO over VALID_SAMPLES draws and the exact one under
    the aggregated posterior; the warm-up epochs and those in between have none."""
    sys.path.insert(0, ROOT)
    import reproduce_onehot
    monkeypatch.setattr(reproduce_onehot, "FIGURE2_EVERY", 2)
    result = reproduce_onehot.train_one("iop", epochs=5, warmup=2, seed=0, prior_samples=100,
                                        is_samples=5)
    history = result["history"]
    points = [h for h in history if "figure2_elbo" in h]
    assert [h["epoch"] for h in points] == [2, 4]
    assert all("figure2_elbo_exact" not in h for h in history if h not in points)
    exact = [h["figure2_elbo_exact"] for h in points]
    assert all(math.isfinite(v) and v < 0 for v in exact)
    # the estimate and the exact value are different numbers (T is not the exact ratio)
    assert all(h["figure2_elbo"] != h["figure2_elbo_exact"] for h in points)
    assert set(result["timing"]) == {"training", "figure2", "final"}


def test_density_ratio_grid_of_an_exact_T_has_no_error():
    """Given T = the exact log q(z)/N(z) of the aggregated posterior it is compared with,
    the grid's two panels agree and the difference under q(z) is zero, while E_q[T] is
    KL(q || N) > 0; a grid or sample that mixed up points, or a sign error, fails."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import autograd_lite as ag
    import datasets
    import iopvae
    import reproduce_onehot
    model = iopvae.ImplicitOptimalPrior(4, "bernoulli", latent=2, hidden=8,
                                        rng=ag.default_rng(0))
    components = iopvae.aggregated_posterior_components(model, datasets.load("onehot").train)

    def exact_t(z):
        log_q = iopvae.log_aggregated_posterior(z.data, components)
        return ag.Tensor(log_q - iopvae.log_standard_normal(z).data.astype(np.float64))
    model.density_ratio = exact_t
    grid = reproduce_onehot.density_ratio_grid(model, components, ag.default_rng(1),
                                               points=21, samples=2000)
    np.testing.assert_allclose(grid["T"], grid["log_ratio"], rtol=0, atol=1e-9)
    assert np.asarray(grid["T"]).shape == (21, 21) and len(grid["axis"]) == 21
    assert grid["mean_abs_error_under_q"] < 1e-9
    assert grid["mean_T_under_q"] == grid["kl_q_n"] > 0


def test_quick_runs_give_the_same_numbers_on_numpy_and_cupy_sim(quick_runs):
    """The same seed gives the same summary on NumPy and on the simulated GPU (its
    generator is NumPy's; timings aside)."""
    rows = {}
    for backend, (out, _) in quick_runs.items():
        summary = json.loads((out / "summary.json").read_text())
        rows[backend] = [{k: v for k, v in row.items() if k not in ("seconds", "timing")}
                         for row in summary["methods"]]
    assert rows["numpy"] == rows["cupy-sim"]


def test_methods_option_and_bad_arguments(tmp_path):
    """--methods restricts the run; nonsense options fail with a usage error, not a traceback."""
    out, _ = _run(["--methods", "vae", "--jobs", "1"], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert [row["method"] for row in summary["methods"]] == ["vae"]
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce_onehot.py"), "--epochs",
                          "0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("backend", ["numpy"])
def test_the_final_evaluation_says_each_part(quick_runs, backend):
    """The final evaluations (up to 165 s for IOP) printed nothing while they ran."""
    _, stdout = quick_runs[backend]
    parts = [line for line in stdout.splitlines() if line.startswith("[iop] final evaluation")]
    assert [line.split(":")[0] for line in parts] == [
        f"[iop] final evaluation {i}/5" for i in range(1, 6)]
    assert "exact log p(x) by importance sampling, S = 20" in parts[3]


def test_the_whole_job_has_a_progress_line_with_an_eta(capsys):
    """The main job gave an ETA per method, none for the whole job."""
    import argparse
    import time

    sys.path.insert(0, ROOT)
    import reproduce_onehot

    done = [0.0] * 8  # vae's training and final evaluation, then avb's, vamp's, iop's
    args = argparse.Namespace(methods=["vae", "iop"], epochs=500, is_samples=1000)
    with reproduce_onehot.whole_job_progress(done, args, every=1e-9):
        for fraction in (0.5, 1.0):  # the VAE's training: half, then all of it
            done[0] = fraction
            time.sleep(1.5)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[whole")]
    vae, iop = reproduce_onehot.SECONDS["vae"], reproduce_onehot.SECONDS["iop"]
    share = vae[0] / (sum(vae) + sum(iop))
    assert f"[whole job: {100 * share / 2:.0f}% | elapsed" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith(f"[whole job: {100 * share:.0f}% |")
