"""Estimators beyond the paper, for checking what IOP learned.

The paper evaluates with the importance-sampled log-likelihood (``iopvae.test_log_likelihood``).
These go further, each to answer one question about a trained model:

- ``exact_aggregated_log_likelihood`` and ``exact_aggregated_elbo``: IOP's scores with its true
  prior, the exact aggregated posterior of the training set (Eqs. 6, 8), instead of
  N(z) exp T(z);
- ``density_ratio_log_normalizer``: log Z, how far N(z) exp T(z) is from a density;
- ``prior_log_likelihood``: log p(x) by plain Monte Carlo over the prior (Eq. 1), exact
  enough in OneHot's two latent dimensions;
- ``sir_prior_sample``: IOP's prior sampled without data, through T alone;
- ``density_ratio_against_truth``: T beside the exact log-ratio it estimates.
"""
import math

import numpy as np

import autograd_lite as ag
from iopvae import (
    density_ratio_loss,
    evaluation,
    importance_sampled_log_likelihood,
    log_aggregated_posterior,
    log_mean_exp,
    log_normal_diag,
    log_standard_normal,
    reparameterize,
    row_batches,
    standard_normal,
)


def exact_aggregated_log_likelihood(model, x, components, samples, rng, batch_size=100):
    """IOP's log p(x) with its true prior, not the learned estimate.

    The prior IOP trains towards is the aggregated posterior q(z) = (1/N) sum_n
    q(z | x_n) over the training set (Eqs. 6, 8); T only estimates log q(z)/N(z).
    Here log q(z) is computed exactly (``log_aggregated_posterior`` of
    ``components``, from ``aggregated_posterior_components``) and used as the prior
    of the importance-sampled log-likelihood, with the same proposal.
    """
    def log_prior(z):
        return ag.Tensor(log_aggregated_posterior(z.data, components))

    with evaluation(model):
        return importance_sampled_log_likelihood(x, model.encoder, model.decoder.log_likelihood,
                                                 log_prior, samples, rng, batch_size)


def exact_aggregated_elbo(model, x, components, samples, rng, batch_size=100):
    """IOP's ELBO with its true prior: mean of log p(x|z) + log q(z) - log q(z|x),
    z ~ q(z|x), ``samples`` draws per row, with q(z) the exact aggregated posterior
    given by its ``components`` (Eqs. 2, 6, 8).  What IOP's estimated ELBO (Eq. 15,
    via T) approximates; cheap when the training set is small (OneHot)."""
    xp = ag.xp()
    total = 0.0
    with evaluation(model):
        for batch in row_batches(xp.concatenate([x] * samples), batch_size):
            mu, logvar = model.encoder(ag.Tensor(batch))
            z = reparameterize(mu, logvar, standard_normal(rng, mu.shape))
            log_ratio = (log_aggregated_posterior(z.data, components)
                         - log_normal_diag(z, mu, logvar).data)
            total = total + (model.decoder.log_likelihood(ag.Tensor(batch), z).data
                             + log_ratio).sum()
    return total / (x.shape[0] * samples)


def density_ratio_log_normalizer(model, rng, samples=100_000, batch_size=10_000,
                                 components=None):
    """log Z = log integral N(z) exp T(z) dz: how far log N(z) + T(z) is from a density.

    With the Bayes-optimal T* = ln q(z)/p(z) (Eq. 14), Z = 1 exactly; a learned T
    gives Z != 1.  IOP's estimated log-likelihood uses the prior N(z) exp T(z) =
    Z p_T(z), with p_T the normalised learned prior, so it is exactly log Z plus
    the same importance-sampled estimate under p_T.  log Z bounds nothing about the
    distance to the aggregated posterior itself: the estimate and the exact value
    (``exact_aggregated_log_likelihood``) can differ by far more than |log Z| (on
    FreyFaces by hundreds of nats, docs/results.md).
    Without ``components``: a plain Monte Carlo average of exp T(z) over N(0, I)
    draws, which in many dimensions rarely reaches where q(z) has its mass (so it
    tends to come out low).  With ``components`` = (mu_n, logvar_n) of the training
    points: importance sampling from the defensive mixture r = (N(0, I) + q(z)) / 2,
    half the draws from each, weights N(z) exp T(z) / r(z) <= 2 exp T(z).  Float64.
    """
    xp = ag.xp()
    log_w = []
    with evaluation(model):
        for done in range(0, samples, batch_size):
            m = min(batch_size, samples - done)
            z = standard_normal(rng, (m, model.latent))
            if components is not None:  # turn the first half into draws of q(z)
                mu_n, logvar_n = components
                idx = rng.integers(0, mu_n.shape[0], m // 2)
                z_q = reparameterize(ag.Tensor(mu_n[idx]), ag.Tensor(logvar_n[idx]), z[:m // 2])
                z = ag.concatenate([z_q, z[m // 2:]], axis=0)
            log_n = log_standard_normal(z).data.astype(np.float64)
            log_r = log_n                                            # r = N(0, I)
            if components is not None:                               # r = (N(0, I) + q(z)) / 2
                log_q = log_aggregated_posterior(z.data, components)
                log_r = xp.logaddexp(log_n, log_q) - math.log(2)
            log_w.append(log_n + model.density_ratio(z).data.astype(np.float64) - log_r)
    return log_mean_exp(xp.concatenate(log_w), axis=0)


def prior_log_likelihood(model, x, prior_samples, rng, data=None, chunk=2000):
    """log p(x) = log E_{p(z)}[p(x|z)] by plain Monte Carlo over prior samples (Eq. 1).

    For a Bernoulli decoder; accurate in a 2-D latent space (OneHot), whatever
    the ELBO estimates say.  For IOP the prior is the aggregated posterior,
    sampled ancestrally from ``data``.  Each prior sample is decoded once and
    scored against every row of ``x``: log p(x|z) = x . l - sum softplus(l)
    for logits l.
    """
    if model.decoder.likelihood != "bernoulli":
        raise ValueError("prior_log_likelihood is written for Bernoulli decoders")
    xp = ag.xp()
    log_px = []
    with evaluation(model):
        for done in range(0, prior_samples, chunk):
            z = model.prior_sample(min(chunk, prior_samples - done), rng, data)
            logits = model.decoder(z).data.astype(np.float64)
            log_norm = ag.softplus(ag.Tensor(logits)).data.sum(axis=1)
            log_px.append(logits @ x.astype(np.float64).T - log_norm[:, None])
    return log_mean_exp(xp.concatenate(log_px, axis=0), axis=0)


def sir_prior_sample(model, n, rng, candidates=None):
    """IOP's prior by sampling-importance-resampling from N(0, I), weights exp T(z) ~ q/p.

    Not in the paper: it needs no data, only the trained T.  Draws
    ``candidates`` (default 20 n) from N(0, I) and resamples n of them, with
    replacement, by inverting the weights' cumulative sum at n uniform draws
    (CuPy's Generator has no ``choice``; this runs on the device).
    """
    xp = ag.xp()
    m = candidates or 20 * n
    z = standard_normal(rng, (m, model.latent))
    t = model.density_ratio(z).data.astype(np.float64)
    cumulative = xp.cumsum(xp.exp(t - t.max()))
    # the first candidate whose cumulative weight exceeds u * total: candidate i with
    # probability w_i / total (never one of weight 0); min() guards rounding at the top
    idx = xp.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right")
    return z[xp.minimum(idx, m - 1)]


def density_ratio_against_truth(model, components, rng, samples=3000):
    """IOP's T against the log-ratio it estimates, ln q(z)/N(z) (Eq. 14), with q(z) the
    exact aggregated posterior of the training points given by their ``components``
    (Eq. 8).  On ``samples`` draws of each class, T in eval mode: T's loss (-Eq. 20),
    E_q[T], the exact E_q[ln q(z)/N(z)] = KL(q(z) || N(0, I)) with its Monte Carlo
    standard error, and the correlation of T with the true log-ratio under q(z)."""
    mu_n, logvar_n = components
    idx = rng.integers(0, mu_n.shape[0], samples)
    with evaluation(model):
        q = (ag.Tensor(mu_n[idx]), ag.Tensor(logvar_n[idx]))       # q(z|x) of random x_n
        z1 = model.aggregated_posterior_sample(None, rng, q)      # z1 ~ q(z)
        z0 = standard_normal(rng, z1.shape)                       # z0 ~ N(0, I)
        t1, t0 = (model.density_ratio(z).data.astype(np.float64) for z in (z1, z0))
        loss = density_ratio_loss(ag.Tensor(t1), ag.Tensor(t0)).data
    z = z1.data.astype(np.float64)
    truth = log_aggregated_posterior(z, components) - log_standard_normal(ag.Tensor(z)).data
    covariance = ((t1 - t1.mean()) * (truth - truth.mean())).mean()
    loss, mean_t, kl, se, covariance, spread = ag.read_numbers(
        loss, t1.mean(), truth.mean(), truth.std() / math.sqrt(samples - 1), covariance,
        t1.std() * truth.std())
    return {"t_loss": loss, "mean_t": mean_t, "exact_kl": kl, "exact_kl_se": se,
            "correlation": covariance / spread if spread > 0 else None}  # None: T constant
