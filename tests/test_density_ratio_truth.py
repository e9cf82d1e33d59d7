"""``estimators.density_ratio_against_truth``: IOP's T beside the exact log-ratio
ln q(z)/N(z) it estimates (Eq. 14), q(z) the aggregated posterior of Eq. (8)."""
import math

import numpy as np

import autograd_lite as ag
import estimators
import iopvae
from autograd_lite import nn

LATENT = 3


class FixedRatio(nn.Module):
    """A stand-in for T: a fixed function of z, no parameters."""

    def __init__(self, function):
        self.function = function

    def forward(self, z):
        return ag.Tensor(self.function(z.data))


def model_with(function, seed=0):
    model = iopvae.ImplicitOptimalPrior(4, "bernoulli", LATENT, 8, np.random.default_rng(seed))
    model.density_ratio = FixedRatio(function)
    return model


def components(n=5, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 1.5, (n, LATENT)).astype(np.float32),
            rng.normal(-1.0, 0.3, (n, LATENT)).astype(np.float32))


def true_log_ratio(comps):
    def function(z):
        z64 = z.astype(np.float64)
        return (iopvae.log_aggregated_posterior(z64, comps)
                - iopvae.log_standard_normal(ag.Tensor(z64)).data)
    return function


def test_the_optimal_t_matches_the_truth_exactly():
    """With T = T* = ln q(z)/N(z), E_q[T] is the exact KL on the same draws, and their
    correlation is 1."""
    comps = components()
    got = estimators.density_ratio_against_truth(model_with(true_log_ratio(comps)), comps,
                                                 np.random.default_rng(2), samples=2000)
    assert math.isclose(got["mean_t"], got["exact_kl"], rel_tol=1e-9)
    assert got["correlation"] > 1 - 1e-9
    assert 0 < got["t_loss"] < 2 * math.log(2)


def test_a_guessing_t_and_the_exact_kl_of_one_gaussian():
    """T = 0 guesses: its loss is 2 ln 2 and E_q[T] = 0.  With one component, q(z) is one
    Gaussian, whose KL to N(0, I) has a closed form (Eq. 3's first term): the Monte Carlo
    estimate lies within four of its standard errors."""
    comps = components(n=1)
    got = estimators.density_ratio_against_truth(model_with(lambda z: np.zeros(len(z))), comps,
                                                 np.random.default_rng(3), samples=4000)
    assert math.isclose(got["t_loss"], 2 * math.log(2), rel_tol=1e-12)
    assert got["mean_t"] == 0.0 and got["correlation"] is None
    exact = float(iopvae.kl_standard_normal(ag.Tensor(comps[0].astype(np.float64)),
                                            ag.Tensor(comps[1].astype(np.float64))).data[0])
    assert abs(got["exact_kl"] - exact) < 4 * got["exact_kl_se"]
    assert 0 < got["exact_kl_se"] < 0.1 * exact


def test_measuring_along_training_changes_no_number_of_training():
    """The grid's IOP runs measure T against the truth at a quarter, half and three
    quarters of their epochs, with a random stream of their own."""
    import datasets
    from experiments import runs
    from experiments.grid import density_ratio_along_training

    histories = []
    for measures in ((), (density_ratio_along_training,)):
        config = runs.Config(dataset="onehot", method="iop", hidden=8, epochs=4, warmup=1)
        trainer = runs.Trainer(config, datasets.load("onehot"), out_dir=None,
                               log=lambda line: None)
        trainer.measures = measures
        histories.append(trainer.train())
    plain, measured = histories
    assert [r["epoch"] for r in measured if "density_ratio_truth" in r] == [1, 2, 3]
    keys = ("loss", "disc_loss", "valid_elbo")
    assert [[r[k] for k in keys] for r in plain] == [[r[k] for k in keys] for r in measured]


def test_leave_one_out_mixture_drops_each_rows_own_component():
    """log (1/(N-1)) sum_{m != own} q(z | x_m) against a brute-force sum, also where the own
    component outweighs the others by far more than float64 could subtract (z at its own
    mean, the others 30 standard deviations away), and in several row blocks."""
    rng = np.random.default_rng(0)
    mu = np.concatenate([np.zeros((1, LATENT)), 30.0 + rng.normal(size=(4, LATENT))])
    logvar = rng.uniform(-1.0, 0.5, size=(5, LATENT))
    own = np.array([0, 0, 3, 1, 4, 2])
    z = mu[own] + np.exp(0.5 * logvar[own]) * rng.normal(size=(6, LATENT)) * 0.1
    z[0] = 0.0

    def log_normal(zi, k):
        return float(np.sum(-0.5 * ((zi - mu[k]) ** 2 / np.exp(logvar[k]) + logvar[k]
                                    + math.log(2 * math.pi))))

    expected = [np.logaddexp.reduce([log_normal(zi, k) for k in range(5) if k != o])
                - math.log(4) for zi, o in zip(z, own)]
    got = estimators.leave_one_out_log_aggregated_posterior(z, own, (mu, logvar))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    full = iopvae.log_aggregated_posterior(z, (mu, logvar))
    assert full[0] - got[0] > 100  # the own component dominated: no cancellation left in


def test_truth_gives_the_leave_one_out_reference_below_the_full_mixture():
    """At z ~ q(z|x_n) the mixture without x_n's component puts less mass there than the
    full one: the leave-one-out reference is the smaller of the two."""
    model = model_with(lambda z: z.sum(axis=1) * 0.0)
    rng = np.random.default_rng(1)
    components = (rng.normal(size=(50, LATENT)) * 2.0, np.full((50, LATENT), -3.0))
    truth = estimators.density_ratio_against_truth(model, components, ag.default_rng(2), 500)
    assert truth["exact_kl_loo"] < truth["exact_kl"] - 1.0
    assert 0 < truth["exact_kl_loo_se"] < 5.0
