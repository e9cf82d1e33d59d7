"""``iopvae gradcheck`` (experiments/gradcheck): the table, the exit status, and
that it catches planted gradient bugs with and without PyTorch."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import iopvae
from autograd_lite import ops
from experiments import cli
from experiments.gradcheck import check as cg
from experiments.gradcheck import torch_mirror

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = cg.torch_available()
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")


def table_rows(text):
    """(method, loss, parameter) -> (fd error, torch error as printed) from the table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] in cg.METHODS:
            rows[tuple(parts[:3])] = (parts[4], parts[5])
    return rows


def expected_rows(methods):
    """(method, loss, parameter) for every parameter each loss differentiates."""
    return {(method, label, name) for method in methods
            for label, case in cg.loss_cases(method) for name in case.names}


def failed_section(text):
    """The offending rows listed after the FAILED line."""
    assert "FAILED" in text, text
    return table_rows(text.split("FAILED", 1)[1])


@pytest.fixture
def tanh_backward_off_by_half(monkeypatch):
    """A planted bug: tanh's backward 1.5 times too large (T's hidden layers use tanh)."""
    backward = ops.Tanh.backward
    monkeypatch.setattr(ops.Tanh, "backward", lambda self, gy: 1.5 * backward(self, gy))


@pytest.fixture
def no_torch(monkeypatch):
    """PyTorch made unimportable: ``import torch`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "torch", None)


# =============================================================================
# The correct code passes
# =============================================================================
def test_all_methods_pass_with_a_row_per_parameter(capsys):
    """On the code as it is, every method's check exits 0 and the table has exactly one
    row per parameter of each loss (VAE step; T's loss for IOP and AVB), each with
    both errors printed within the stated tolerances."""
    assert cli.main(["gradcheck", "--method", "all", "--coordinates", "4", "--verbose"]) == 0
    text = capsys.readouterr().out
    rows = table_rows(text)
    assert set(rows) == expected_rows(cg.METHODS)
    assert ("vamp", "vae", "pseudo_inputs") in rows
    assert ("iop", "T", "density_ratio.head.W") in rows
    assert ("avb", "T", "density_ratio.head.W") in rows
    assert f"finite differences {cg.FD_TOLERANCE:.0e}" in text
    assert f"PyTorch {cg.TORCH_TOLERANCE:.0e}" in text
    assert f"OK: all {len(rows)} gradients" in text
    for fd, torch_error in rows.values():
        assert float(fd) <= cg.FD_TOLERANCE
        if HAS_TORCH:
            assert float(torch_error) <= cg.TORCH_TOLERANCE
        else:
            assert torch_error == "-"


def test_default_output_is_one_summary_line_per_method(capsys):
    """Without --verbose: no parameter rows, one line per method with its losses, the
    number of parameters checked and the worst error of each column; the header says
    what 0.7 is and what "vae" means for IOP."""
    assert cli.main(["gradcheck", "--method", "all", "--coordinates", "2"]) == 0
    text = capsys.readouterr().out
    assert table_rows(text) == {}
    summary = {line.split()[0]: line.split() for line in text.splitlines()
               if line.split() and line.split()[0] in cg.METHODS}
    assert list(summary) == list(cg.METHODS)
    for method, parts in summary.items():
        names = expected_rows([method])
        assert parts[1] == ("vae+T" if method in ("iop", "avb") else "vae")
        assert int(parts[2]) == len(names)
        assert float(parts[3]) <= cg.FD_TOLERANCE
    assert f"beta = {cg.BETA} the warm-up weight" in text
    assert "minus Eq. (19) for iop" in text


def test_gaussian_decoder_passes_too(capsys):
    """The Gaussian decoder (sigmoid mean, clipped log-variance) checks out as well."""
    assert cli.main(["gradcheck", "--method", "vae", "--likelihood", "gaussian",
                     "--coordinates", "3"]) == 0
    assert "gaussian decoder" in capsys.readouterr().out


def test_iopvae_subcommand_runs_the_same_check(capsys):
    """``cli.main(["gradcheck", ...])`` runs this check and returns 0 when it passes."""
    assert cli.main(["gradcheck", "--method", "vamp", "--coordinates", "2", "--verbose"]) == 0
    assert set(table_rows(capsys.readouterr().out)) == expected_rows(["vamp"])


def test_command_line_exit_status_zero():
    """``iopvae gradcheck`` as a user runs it: exit status 0 and a table."""
    done = subprocess.run([sys.executable, "-m", "experiments", "gradcheck", "--method", "vae",
                           "--coordinates", "2", "--verbose"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(table_rows(done.stdout)) == expected_rows(["vae"])


# =============================================================================
# Planted bugs fail, naming the rows
# =============================================================================
def test_wrong_tanh_backward_fails_and_names_the_rows(tanh_backward_off_by_half, capsys):
    """With tanh's backward wrong, exactly the gradients that pass back through T's
    tanh layers fail: T's hidden layers in Eq. (20), and the encoders of IOP and AVB
    (whose z feeds T in the VAE step).  Decoders, T's linear head and the methods
    without T pass.  Both columns catch it."""
    assert cli.main(["gradcheck", "--method", "all", "--coordinates", "4"]) == 1
    text = capsys.readouterr().out
    failed = failed_section(text)
    for method, loss, name in expected_rows(cg.METHODS):
        through_tanh = (loss == "T" and ".body." in name) or (
            method in ("iop", "avb") and loss == "vae" and name.startswith("encoder."))
        assert ((method, loss, name) in failed) == through_tanh, (method, loss, name)
    fd, torch_error = failed[("iop", "T", "density_ratio.body.layers.0.W")]
    assert float(fd) > cg.FD_TOLERANCE
    if HAS_TORCH:
        assert float(torch_error) > cg.TORCH_TOLERANCE


def test_iopvae_subcommand_exits_1_on_a_bug(tanh_backward_off_by_half, capsys):
    """Through ``iopvae gradcheck`` a failing check ends with exit status 1."""
    assert cli.main(["gradcheck", "--method", "iop", "--coordinates", "3"]) == 1
    assert ("iop", "T", "density_ratio.body.layers.0.W") in failed_section(
        capsys.readouterr().out)


def test_detaching_z_before_T_in_iop_fails_on_the_encoder(monkeypatch, capsys):
    """The pitfall of Eq. (21): cutting z off from T(z) in the VAE step.  The loss
    still depends on the encoder through T(z), so finite differences (and PyTorch)
    disagree with the encoder's gradient; decoder and T rows still pass."""
    forward = iopvae.DensityRatio.forward
    monkeypatch.setattr(iopvae.DensityRatio, "forward", lambda self, z: forward(self, z.detach()))
    assert cli.main(["gradcheck", "--method", "iop", "--coordinates", "5"]) == 1
    failed = failed_section(capsys.readouterr().out)
    assert failed, "no row failed"
    assert all(loss == "vae" and name.startswith("encoder.") for _, loss, name in failed)
    assert ("iop", "vae", "encoder.head.W") in failed


# =============================================================================
# Without PyTorch
# =============================================================================
def test_without_torch_the_fd_column_still_runs(no_torch, capsys):
    """With torch unimportable the check still runs, prints how to install the extra,
    leaves the torch column empty, and exits 0 on correct code."""
    assert not cg.torch_available()
    assert cli.main(["gradcheck", "--method", "iop", "--coordinates", "3", "--verbose"]) == 0
    text = capsys.readouterr().out
    assert "pip install 'iopvae[torch]'" in text
    rows = table_rows(text)
    assert set(rows) == expected_rows(["iop"])
    assert all(torch_error == "-" and float(fd) <= cg.FD_TOLERANCE
               for fd, torch_error in rows.values())


def test_without_torch_finite_differences_alone_catch_a_bug(no_torch, tanh_backward_off_by_half,
                                                            capsys):
    """The finite-difference column is a check of its own: without PyTorch a wrong
    backward still exits 1."""
    assert cli.main(["gradcheck", "--method", "avb", "--coordinates", "3"]) == 1
    assert ("avb", "T", "density_ratio.body.layers.0.W") in failed_section(
        capsys.readouterr().out)


def test_mirror_without_torch_names_the_extra(no_torch):
    """Using the mirror without PyTorch raises ImportError with the install command."""
    spec = cg.mirror_spec(cg.float64_model("vae"))
    with pytest.raises(ImportError, match=r"pip install 'iopvae\[torch\]'"):
        torch_mirror.vae_loss(spec, {}, cg.small_data(), [np.zeros((cg.BATCH, cg.LATENT))])


# =============================================================================
# The pieces
# =============================================================================
def test_relative_error_is_scaled_by_the_largest_entry():
    """A deviation is measured against the parameter's largest gradient entry: a tiny
    entry that is off by 1e-12 does not blow up, a 1% error of the largest does show,
    and NaN fails the tolerance."""
    reference = np.array([1.0, 1e-14, -0.5])
    assert cg.relative_error(reference + [0, 1e-12, 0], reference) < 1e-11
    assert cg.relative_error(reference * [1.01, 1, 1], reference) == pytest.approx(0.01 / 1.01)
    assert cg.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert cg.Row("vae", "vae", "w", (3,), float("nan")).failed()
    assert not cg.Row("vae", "vae", "w", (3,), 0.0, None).failed()
    assert cg.Row("vae", "vae", "w", (3,), 0.0, 1e-6).failed()


def test_replay_rng_repeats_its_draws_and_refuses_other_shapes():
    """After ``rewind`` the same arrays come back in the same order (so a loss is a
    deterministic function of the parameters); a different request is an error."""
    rng = cg.ReplayRNG(seed=0)
    first = [rng.standard_normal((2, 3)), rng.random((4,)), rng.standard_normal((1,))]
    rng.rewind()
    again = [rng.standard_normal((2, 3)), rng.random((4,)), rng.standard_normal((1,))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert first[0].dtype == np.float64 and not np.array_equal(first[0][0], first[0][1])
    rng.rewind()
    with pytest.raises(RuntimeError, match="different normal draw"):
        rng.standard_normal((3, 2))


@needs_torch
def test_finite_differences_agree_with_torch_where_both_are_computed():
    """The two references agree with each other, so neither column is vacuous: on
    IOP's T loss, the sampled finite differences match PyTorch's gradient to 1e-6."""
    case = dict(cg.loss_cases("iop"))["T"]
    case.autograd()
    numeric = case.finite_differences(6, np.random.default_rng(0))
    _, reference = case.torch_gradients()
    for name, (indices, fd) in numeric.items():
        assert len(indices) == min(6, reference[name].size)
        np.testing.assert_allclose(fd, reference[name].reshape(-1)[indices], rtol=1e-6,
                                   atol=1e-6 * np.abs(reference[name]).max(), err_msg=name)
