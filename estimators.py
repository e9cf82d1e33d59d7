"""Estimators beyond the paper, for checking what IOP learned.

The paper evaluates with the importance-sampled log-likelihood (``iopvae.test_log_likelihood``).
These go further, each to answer one question about a trained model:

- ``exact_aggregated_log_likelihood`` and ``exact_aggregated_elbo``: IOP's scores with its true
  prior, the exact aggregated posterior of the training set (Eqs. 6, 8), instead of
  N(z) exp T(z);
- ``density_ratio_log_normalizer``: log Z, how far N(z) exp T(z) is from a density;
- ``annealed_log_normalizer`` (``density_ratio_log_normalizer_ais`` for a model): the same
  log Z by annealed importance sampling, where plain Monte Carlo misses by nats;
- ``prior_log_likelihood``: log p(x) by plain Monte Carlo over the prior (Eq. 1), exact
  enough in OneHot's two latent dimensions;
- ``sir_prior_sample``: IOP's prior sampled without data, through T alone;
- ``density_ratio_against_truth``: T beside the exact log-ratio it estimates.
"""
import functools
import math

import numpy as np

import autograd_lite as ag
from iopvae import (
    density_ratio_loss,
    evaluation,
    frozen,
    importance_sampled_log_likelihood,
    log_aggregated_posterior,
    log_mean_exp,
    log_normal_components,
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


# ---- log Z by annealed importance sampling (Neal 2001) --------------------------------
def sigmoid_schedule(temperatures, delta=4.0):
    """The inverse temperatures 0 = b_0 < b_1 < ... < b_K = 1, K = ``temperatures``: the
    sigmoid s(delta (2k/K - 1)) rescaled onto [0, 1], as in Grosse et al. (2015), "Sandwiching
    the marginal likelihood using bidirectional Monte Carlo" (delta = 4).  The steps are
    smallest at both ends (b_1 ~ 0.15 / K for delta = 4, against 1 / K evenly spaced): near
    b = 0 the chains are where N(0, I) put them, where T can be far below its values on q(z),
    so the increments (b_k - b_{k-1}) T(z) of the log weights need small steps of b."""
    ends = [1 / (1 + math.exp(delta)), 1 / (1 + math.exp(-delta))]
    sigmoids = [1 / (1 + math.exp(-delta * (2 * k / temperatures - 1)))
                for k in range(temperatures + 1)]
    return [0.0] + [(s - ends[0]) / (ends[1] - ends[0]) for s in sigmoids[1:-1]] + [1.0]


def value_and_gradient(log_ratio, z):
    """T(z) per row in float64 and dT/dz, by one forward and one backward pass of
    ``log_ratio`` (the gradient of sum_n T(z_n): rows are independent)."""
    leaf = ag.Tensor(z, requires_grad=True)
    t = log_ratio(leaf)
    t.sum().backward()
    return t.data.astype(np.float64), leaf.grad


def hamiltonian(z, p, t, beta):
    """H = U(z) + |p|^2 / 2 with U(z) = -ln f_b(z) = |z|^2 / 2 - b T(z) (+ a constant),
    per chain, in float64."""
    z, p = z.astype(np.float64), p.astype(np.float64)
    return 0.5 * ((z * z).sum(axis=1) + (p * p).sum(axis=1)) - beta * t


def hmc_transition(log_ratio, state, beta, step, leapfrog, rng):
    """One Hamiltonian Monte Carlo transition (Neal 2011, "MCMC using Hamiltonian dynamics")
    that leaves f_b(z) = N(z) exp(b T(z)) invariant, for every chain at once: momenta
    p ~ N(0, I), ``leapfrog`` steps of size ``step`` on U(z) = |z|^2 / 2 - b T(z), and a
    Metropolis accept/reject per chain.  ``state`` = (z, T(z), dT/dz) of the chains; returns
    the new state and whether each chain moved.  ``leapfrog`` evaluations of T and dT/dz."""
    xp = ag.xp()
    z, t, grad = state
    p = standard_normal(rng, z.shape, dtype=z.dtype).data
    z_new, p_new = z, p - 0.5 * step * (z - beta * grad)
    for i in range(leapfrog):
        z_new = z_new + step * p_new
        t_new, grad_new = value_and_gradient(log_ratio, z_new)
        kick = step if i < leapfrog - 1 else 0.5 * step     # the last half step closes it
        p_new = p_new - kick * (z_new - beta * grad_new)
    # a diverged trajectory gives H = nan or inf: the comparison is False, the chain stays
    log_ratio_mh = hamiltonian(z, p, t, beta) - hamiltonian(z_new, p_new, t_new, beta)
    accept = xp.log(rng.random(z.shape[0])) < log_ratio_mh
    keep = accept[:, None]
    return (xp.where(keep, z_new, z), xp.where(accept, t_new, t),
            xp.where(keep, grad_new, grad)), accept


def annealed_log_weights(log_ratio, latent, rng, chains, temperatures, leapfrog, step_size,
                         target_acceptance, dtype, progress=None):
    """One AIS run (Neal 2001, "Annealed importance sampling"): ``chains`` exact draws of
    f_0 = N(0, I) carried through f_b(z) = N(z) exp(b T(z)) for the b_k of
    ``sigmoid_schedule(temperatures)`` by one ``hmc_transition`` each, with the log weights
    ln w = sum_k (b_k - b_{k-1}) T(z_{k-1}) accumulated in float64.  All chains share one
    step size, multiplied after each temperature by exp(acceptance - target_acceptance)
    (so it shrinks after a low acceptance, grows after a high one).  Returns the log
    weights, the mean acceptance and the evaluations of T made (each with its gradient)."""
    xp = ag.xp()
    betas = sigmoid_schedule(temperatures)
    z = standard_normal(rng, (chains, latent), dtype=dtype).data
    state = (z, *value_and_gradient(log_ratio, z))
    log_w = xp.zeros(chains, dtype=np.float64)
    step = xp.asarray(step_size, dtype=dtype)
    acceptance = xp.zeros((), dtype=np.float64)
    for k in range(1, temperatures + 1):
        log_w = log_w + (betas[k] - betas[k - 1]) * state[1]
        if progress is not None:
            progress()  # one temperature done
        if k < temperatures:  # no transition at b_K = 1: it would not change the weights
            state, accept = hmc_transition(log_ratio, state, betas[k], step, leapfrog, rng)
            rate = accept.mean()
            acceptance = acceptance + rate
            step = (step * xp.exp(rate - target_acceptance)).astype(dtype)
    transitions = temperatures - 1
    return log_w, acceptance / max(transitions, 1), chains * (1 + transitions * leapfrog)


def importance_weights_summary(log_w):
    """From log importance weights (on the device): log Z^ = log mean w, the delta-method
    standard error of log Z^, std(w / mean w) / sqrt(n) (the std over the chains, n - 1 in
    its denominator), and the effective sample size (sum w)^2 / sum w^2."""
    xp = ag.xp()
    n = log_w.shape[0]
    log_z = log_mean_exp(log_w, axis=0)
    normalised = xp.exp(log_w - log_z)                 # w / mean(w): mean 1
    stderr = xp.sqrt(((normalised - 1.0) ** 2).sum() / ((n - 1) * n))
    return log_z, stderr, n / (normalised * normalised).mean()


def annealed_log_normalizer(log_ratio, latent, rng, chains=500, temperatures=1000, leapfrog=10,
                            step_size=0.5, target_acceptance=0.65, dtype=np.float64,
                            convergence=True, progress=None):
    """log Z = log integral N(z) exp T(z) dz by annealed importance sampling (Neal 2001,
    "Annealed importance sampling"), for ``log_ratio``: z (an ag.Tensor (n, ``latent``))
    -> T(z) (n,), differentiable in z (autograd_lite), so gradients must be on: not inside
    ``ag.no_grad`` or ``iopvae.evaluation``.  The path is geometric, ln f_b = ln N + b T,
    from exact draws of N(0, I) at b = 0 to b = 1 on ``sigmoid_schedule(temperatures)``,
    with one HMC transition of ``leapfrog`` steps at each b_k < 1 (``annealed_log_weights``,
    ``hmc_transition``); ``chains`` chains as one batch on the device, z in ``dtype``;
    ``progress()``, if given, is called after each temperature of each run (for a caller's
    progress line: the runs take temperatures x (1 + 1/2 + 1/4) calls with ``convergence``).

    Returned, as Python floats: ``log_z`` (log mean of the chains' weights), ``stderr``
    (its delta-method standard error, std(w / mean w) / sqrt(chains); with heavy-tailed
    weights it underestimates, so look at ``ess``), ``ess`` ((sum w)^2 / sum w^2), the
    mean ``acceptance`` of the HMC moves, ``evaluations`` (of T, each with its gradient,
    in the main run); with ``convergence``, also ``log_z_half`` and ``log_z_quarter``, log Z^
    of separate runs with 1/2 and 1/4 of the temperatures (what more temperatures still
    change: half and full should agree within their errors), and ``evaluations_total``.
    Where the weights degenerate (``ess`` a few percent of ``chains``), log Z^ still rises
    with more temperatures and leapfrog steps: on a trained FreyFaces T (40-D) the chains
    leave N(0, I)'s bulk, where T ~ -30, for where T ~ +25, within a narrow range of b, and
    mixing (``leapfrog``) matters there as much as ``temperatures`` (hence the defaults).

    Z^ is unbiased, so by Jensen's inequality E[log Z^] <= log Z: log Z^ is a stochastic
    lower bound, and a log-likelihood normalised with it (the estimate minus log Z^) leans
    high.  (The shared step size adapts to the acceptance of all the chains so far, so each
    chain's moves depend on its own past, weakly: Z^ is unbiased up to that O(1 / chains)
    effect.)  The reverse bound of
    bidirectional Monte Carlo (Grosse et al. 2015) would need exact samples of the
    normalised prior N(z) exp T(z) / Z, which we do not have.
    """
    if not ag.grad_enabled():
        raise RuntimeError("annealed_log_normalizer needs gradients of T: call it outside "
                           "ag.no_grad() and iopvae.evaluation()")
    run = functools.partial(annealed_log_weights, log_ratio, latent, rng, chains,
                            leapfrog=leapfrog, step_size=step_size,
                            target_acceptance=target_acceptance, dtype=dtype,
                            progress=progress)
    log_w, acceptance, evaluations = run(temperatures)
    log_z, stderr, ess = importance_weights_summary(log_w)
    numbers = {"log_z": log_z, "stderr": stderr, "ess": ess, "acceptance": acceptance}
    total = evaluations
    if convergence:
        for name, fraction in (("log_z_half", 2), ("log_z_quarter", 4)):
            log_w, _, spent = run(max(1, temperatures // fraction))
            numbers[name], total = log_mean_exp(log_w, axis=0), total + spent
    out = dict(zip(numbers, ag.read_numbers(*numbers.values())))  # one transfer
    out["evaluations"] = evaluations
    if convergence:
        out["evaluations_total"] = total
    return out


def density_ratio_log_normalizer_ais(model, rng, **settings):
    """``annealed_log_normalizer`` of IOP's learned prior N(z) exp T(z): T = the model's
    ``density_ratio`` in eval mode (no dropout) with its weights fixed, z in their dtype
    (float64 for a T without weights); ``settings`` go to ``annealed_log_normalizer``."""
    ratio = model.density_ratio
    dtype = next((p.dtype for p in ratio.parameters()), np.float64)
    with frozen(ratio):
        return annealed_log_normalizer(ratio, model.latent, rng, dtype=dtype, **settings)


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


def leave_one_out_log_aggregated_posterior(z, own, components):
    """log (1/(N - 1)) sum_{m != own_i} q(z_i | x_m), in float64: the aggregated posterior
    of Eq. (8) without the component each row z_i was drawn from (``own``), so without
    what lets the mixture recognise its own training point (at z ~ q(z|x_n) the n-th
    component dominates; the full mixture's log-ratio holds up to about ln N of that)."""
    mu_n, logvar_n = (ag.Tensor(a.astype(np.float64)) for a in components)
    logs, start = [], 0
    with ag.no_grad():
        for block in log_normal_components(ag.Tensor(z.astype(np.float64)), mu_n, logvar_n):
            rows = ag.xp().arange(block.shape[0])
            values = block.data.copy()
            values[rows, own[start:start + rows.shape[0]]] = -math.inf  # leave its own out
            logs.append(ag.logsumexp(ag.Tensor(values), axis=1).data)
            start += rows.shape[0]
    return ag.xp().concatenate(logs) - math.log(mu_n.shape[0] - 1)


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
    log_n = log_standard_normal(ag.Tensor(z)).data
    truth = log_aggregated_posterior(z, components) - log_n
    loo = (leave_one_out_log_aggregated_posterior(z, idx, components) - log_n
           if mu_n.shape[0] > 1 else truth * math.nan)  # one point: nothing left out
    covariance = ((t1 - t1.mean()) * (truth - truth.mean())).mean()
    loss, mean_t, kl, se, covariance, spread, kl_loo, se_loo = ag.read_numbers(
        loss, t1.mean(), truth.mean(), truth.std() / math.sqrt(samples - 1), covariance,
        t1.std() * truth.std(), loo.mean(), loo.std() / math.sqrt(samples - 1))
    return {"t_loss": loss, "mean_t": mean_t, "exact_kl": kl, "exact_kl_se": se,
            "correlation": covariance / spread if spread > 0 else None,  # None: T constant
            **({"exact_kl_loo": kl_loo, "exact_kl_loo_se": se_loo} if math.isfinite(kl_loo)
               else {})}
