"""log Z of N(z) exp T(z) by annealed importance sampling (``estimators.annealed_log_normalizer``,
Neal 2001): against closed forms where plain Monte Carlo from N(0, I) fails, against a grid
integral for an IOP model in OneHot's 2-D latent space, and the same numbers, read in one
transfer, on the simulated GPU."""
import functools
import math

import numpy as np
import pytest

import autograd_lite as ag
import estimators
import iopvae
from autograd_lite import nn

SETTINGS = {"chains": 500, "temperatures": 1000, "leapfrog": 2}  # 1,000,000 evaluations of T


def quadratic(latent, precision, mean):
    """T(z) = -(z - m)^T diag(p) (z - m) / 2: N(z) exp T(z) is an unnormalised Gaussian, with
    log Z = -sum_i [ln(1 + p_i) + p_i m_i^2 / (1 + p_i)] / 2.  Returns (T, log Z)."""
    p = np.broadcast_to(np.asarray(precision, dtype=np.float64), (latent,))
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (latent,))

    def log_ratio(z):
        diff = z - ag.Tensor(ag.as_array(m, dtype=z.dtype))
        return -0.5 * (diff * diff * ag.Tensor(ag.as_array(p, dtype=z.dtype))).sum(axis=1)
    return log_ratio, float(-0.5 * (np.log1p(p) + p * m * m / (1 + p)).sum())


def coordinate_mixture(latent, weight=0.3, mean=1.0, narrow=0.5, broad=2.0):
    """T(z) = ln prod_i [w N(z_i | m, narrow^2) + (1 - w) N(z_i | 0, broad^2)] - ln N(z | 0, I):
    a Gaussian mixture (2^latent components) over N(0, I), Z = 1.  The broad component gives
    exp T heavy tails relative to N(0, I): as broad^2 > 2, plain Monte Carlo's weights exp T
    have infinite variance.  ln(e^a + e^b) = b + softplus(a - b).  Returns (T, log Z = 0)."""
    def log_ratio(z):
        a = -0.5 / narrow ** 2 * (z - mean) * (z - mean) + math.log(weight / narrow)
        b = -0.5 / broad ** 2 * z * z + math.log((1 - weight) / broad)
        return (b + ag.softplus(a - b) + 0.5 * z * z).sum(axis=1)
    return log_ratio, 0.0


CASES = {  # name: (latent, a maker of (T, log Z), called on the backend in use)
    # the mass near (4.5, -4), standard deviations 0.32 and 0.45: log Z = -23.2
    "gaussian-2d": (2, lambda: quadratic(2, [9.0, 4.0], [5.0, -5.0])),
    # means +-0.6 to +-0.96 in each coordinate, sd 0.45 to 0.71 (5.3 from 0): log Z = -44.3
    "gaussian-40d": (40, lambda: quadratic(40, np.linspace(1, 4, 40),
                                           1.2 * (-1.0) ** np.arange(40))),
    "heavy-tailed-40d": (40, lambda: coordinate_mixture(40)),               # log Z = 0
}


class FixedRatio(nn.Module):
    """A fixed T(z), no parameters."""

    def __init__(self, log_ratio):
        self.log_ratio = log_ratio

    def forward(self, z):
        return self.log_ratio(z)


class FixedPrior(nn.Module):
    """A stand-in for an IOP model, as the estimators of log Z see one: ``latent`` and a
    fixed T."""

    def __init__(self, log_ratio, latent):
        self.density_ratio, self.latent = FixedRatio(log_ratio), latent


@functools.lru_cache(maxsize=None)
def estimates(case, seed=0):
    """(true log Z, AIS's result, plain Monte Carlo's log Z^ at AIS's evaluations of T)."""
    latent, make = CASES[case]
    log_ratio, log_z = make()
    ais = estimators.annealed_log_normalizer(log_ratio, latent, ag.default_rng(seed),
                                             **SETTINGS)
    plain = estimators.density_ratio_log_normalizer(FixedPrior(log_ratio, latent),
                                                    ag.default_rng(seed + 1),
                                                    samples=ais["evaluations"])
    return log_z, ais, float(plain)


@pytest.mark.parametrize("case", list(CASES))
def test_ais_finds_a_known_log_z_where_plain_monte_carlo_misses(case):
    """AIS lands within 3 of its standard errors and 0.2 nat of the true log Z; plain Monte
    Carlo from N(0, I), given as many evaluations of T (AIS's each with a gradient, so about
    three times the work), misses by more, and by over 0.2 nat (where N(0, I) rarely visits
    the mass, or exp T has heavy tails)."""
    log_z, ais, plain = estimates(case)
    error = abs(ais["log_z"] - log_z)
    assert error < 3 * ais["stderr"] and error < 0.2, (log_z, ais)
    assert abs(plain - log_z) > max(error, 0.2), (log_z, plain, ais)
    assert ais["evaluations"] == 500 * (1 + 999 * 2)


@pytest.mark.parametrize("case", list(CASES))
def test_the_convergence_fields_agree(case):
    """Half and a quarter of the temperatures give the same log Z^ on these cases, the HMC
    step size keeps the acceptance near its target, and the ESS is a fair part of the
    chains."""
    _, ais, _ = estimates(case)
    assert abs(ais["log_z_half"] - ais["log_z"]) < 0.1, ais
    assert abs(ais["log_z_quarter"] - ais["log_z"]) < 0.2, ais
    assert 0.6 < ais["acceptance"] < 0.7, ais
    assert 0.5 * SETTINGS["chains"] < ais["ess"] <= SETTINGS["chains"], ais
    assert ais["evaluations_total"] == ais["evaluations"] + 500 * (1 + 499 * 2 + 1 + 249 * 2)


def test_the_simulated_gpu_gives_the_same_numbers_in_one_transfer():
    """On cupy-sim the same seed gives the same bits as on NumPy, and all the numbers
    (three runs) come back in one device-to-host transfer."""
    results = {}
    for backend in ("numpy", "cupy-sim"):
        ag.set_backend(backend)
        log_ratio, _ = CASES["gaussian-2d"][1]()
        with ag.count_syncs() as counted:
            results[backend] = estimators.annealed_log_normalizer(
                log_ratio, 2, ag.default_rng(3), chains=50, temperatures=40, leapfrog=3)
    assert results["numpy"] == results["cupy-sim"]
    assert counted.syncs == 1


def onehot_model(seed=0, hidden=16):
    """An untrained IOP model of OneHot's shape (4 inputs, 2-D latent space) in float64, its
    T made far from flat: the first layer's weights tripled, the head's times 4, random
    biases (so T is not odd in z)."""
    g = np.random.default_rng(seed)
    model = iopvae.ImplicitOptimalPrior(4, "bernoulli", 2, hidden, ag.default_rng(seed))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    ratio = model.density_ratio
    ratio.body.layers[0].W.data *= 3.0
    ratio.head.W.data *= 4.0
    for layer in (ratio.body.layers[0], ratio.body.layers[3], ratio.head):
        layer.b.data = g.normal(0.0, 1.0, layer.b.shape)
    return model


def grid_log_normalizer(model, extent=8.0, cells=600):
    """log of the trapezoid rule's integral of N(z) exp T(z) over [-extent, extent]^2."""
    axis = np.linspace(-extent, extent, cells + 1)
    weights = np.full(cells + 1, axis[1] - axis[0])
    weights[[0, -1]] /= 2
    z = ag.Tensor(np.stack([a.ravel() for a in np.meshgrid(axis, axis)], axis=1))
    with iopvae.evaluation(model):
        log_f = (iopvae.log_standard_normal(z) + model.density_ratio(z)).data
    top = log_f.max()
    return top + math.log(weights @ np.exp(log_f - top).reshape(cells + 1, cells + 1) @ weights)


def test_onehot_model_agrees_with_a_grid_integral():
    """For an IOP model with a 2-D latent space, log Z from the model's own T by
    ``density_ratio_log_normalizer_ais`` (T in eval mode) equals the grid integral within
    max(3 standard errors, 0.05); inside ``iopvae.evaluation`` (no gradients) it refuses."""
    model = onehot_model()
    exact = grid_log_normalizer(model)
    got = estimators.density_ratio_log_normalizer_ais(model, ag.default_rng(1), chains=300,
                                                      temperatures=200, leapfrog=2)
    assert abs(exact) > 1.0                     # T is far from 0: Z far from 1
    assert abs(got["log_z"] - exact) < max(3 * got["stderr"], 0.05), (exact, got)
    assert all(m.training for m in model.modules())  # T's mode was restored
    with iopvae.evaluation(model), pytest.raises(RuntimeError, match="gradients"):
        estimators.density_ratio_log_normalizer_ais(model, ag.default_rng(1))
