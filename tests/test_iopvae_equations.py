"""Numerical checks of the paper's equations as implemented in iopvae.py.

Every test compares a function of iopvae.py against an independent reference
(a closed form, scipy.stats, numerical quadrature, or a Monte Carlo estimate
written here with plain NumPy) under a stated tolerance.  Monte Carlo
tolerances are a multiple of the estimated standard error, so a correct
implementation passes for any seed while a wrong constant, a sign error or a
missing term (all much larger than the standard error) fails.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograd_lite as ag  # noqa: E402
import estimators  # noqa: E402
import iopvae  # noqa: E402
from autograd_lite.optim import Adam  # noqa: E402

LOG_2PI = math.log(2 * math.pi)
trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed trapz


def T(a):
    """A float64 constant tensor."""
    return ag.Tensor(np.asarray(a, dtype=np.float64))


def np_log_normal(z, mu, var):
    """Elementwise log N(z | mu, var) in plain NumPy (not summed)."""
    return -0.5 * ((z - mu) ** 2 / var + np.log(var) + LOG_2PI)


# =============================================================================
# Log-densities against scipy / explicit formulas
# =============================================================================
def test_log_normal_diag_matches_scipy():
    """log_normal_diag must be the diagonal Gaussian log-density summed over the
    last axis: a wrong 2*pi constant, variance vs log-variance mix-up or a
    missing 1/2 would show here."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the reference")
    g = np.random.default_rng(0)
    z, mu = g.normal(size=(7, 3)), g.normal(size=(7, 3))
    logvar = g.uniform(-3, 2, size=(7, 3))
    got = iopvae.log_normal_diag(T(z), T(mu), T(logvar)).data
    want = stats.norm.logpdf(z, loc=mu, scale=np.exp(0.5 * logvar)).sum(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # broadcasting a shared (d,) mean / log-variance, as the IS evaluation does
    got_b = iopvae.log_normal_diag(T(z), T(mu[0]), T(logvar[0])).data
    want_b = stats.norm.logpdf(z, loc=mu[0], scale=np.exp(0.5 * logvar[0])).sum(axis=-1)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-12)


def test_log_standard_normal_matches_scipy():
    """p(z) = N(0, I): checks the prior's log-density (used by VAE, AVB and, via
    Eq. 14, by the IOP prior)."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the reference")
    z = np.random.default_rng(1).normal(size=(6, 4)) * 2
    got = iopvae.log_standard_normal(T(z)).data
    np.testing.assert_allclose(got, stats.norm.logpdf(z).sum(axis=-1), rtol=1e-12)


def test_log_bernoulli_matches_scipy_and_is_stable():
    """log_bernoulli(x, logits) must be sum_i log Bernoulli(x_i | sigmoid(l_i)).
    A flipped sign or a log(sigmoid) that overflows for large logits (the
    decoder sees such logits late in training) would fail."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the reference")
    special = pytest.importorskip("scipy.special", reason="scipy is needed for the reference")
    g = np.random.default_rng(2)
    logits = g.normal(size=(8, 5)) * 3
    x = (g.random((8, 5)) < 0.5).astype(np.float64)
    got = iopvae.log_bernoulli(T(x), T(logits)).data
    want = stats.bernoulli.logpmf(x, special.expit(logits)).sum(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # extreme logits: the exact value is x*l - log(1 + e^l), finite everywhere
    big = np.array([[60.0, -60.0, 800.0, -800.0]])
    xb = np.array([[0.0, 1.0, 1.0, 0.0]])
    got_big = iopvae.log_bernoulli(T(xb), T(big)).data
    want_big = (xb * big - np.logaddexp(0.0, big)).sum(axis=-1)
    assert np.all(np.isfinite(got_big))
    np.testing.assert_allclose(got_big, want_big, rtol=1e-12)


def test_log_normal_mixture_matches_scipy_and_normalises():
    """log_normal_mixture (VampPrior, Eq. 9) must be log (1/K) sum_k N(z|mu_k, s_k^2):
    a missing -log K, a wrong axis in the logsumexp or a broadcast that pairs z_b
    only with mu_b would fail.  In 1-D it must also integrate to 1."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the reference")
    special = pytest.importorskip("scipy.special", reason="scipy is needed for the reference")
    g = np.random.default_rng(3)
    B, K, d = 9, 4, 3
    z, mu = g.normal(size=(B, d)), g.normal(size=(K, d))
    logvar = g.uniform(-2, 1, size=(K, d))
    got = iopvae.log_normal_mixture(T(z), T(mu), T(logvar)).data
    per = np.stack([stats.norm.logpdf(z, mu[k], np.exp(0.5 * logvar[k])).sum(-1)
                    for k in range(K)], axis=1)
    np.testing.assert_allclose(got, special.logsumexp(per, axis=1) - np.log(K), rtol=1e-12)
    # far in the tail the max-shifted logsumexp must stay finite
    far = iopvae.log_normal_mixture(T(np.full((1, d), 60.0)), T(mu), T(logvar)).data
    assert np.all(np.isfinite(far))
    # normalisation in 1-D by quadrature
    grid = np.linspace(-15, 15, 30001)
    mu1, lv1 = np.array([[-2.0], [0.5], [3.0]]), np.log(np.array([[0.3], [1.0], [0.6]]) ** 2)
    dens = np.exp(iopvae.log_normal_mixture(T(grid[:, None]), T(mu1), T(lv1)).data)
    assert abs(trapezoid(dens, grid) - 1.0) < 1e-6


# =============================================================================
# Eq. (3): closed-form KL
# =============================================================================
def test_kl_standard_normal_matches_monte_carlo():
    """kl_standard_normal (Eq. 3) against E_q[log q(z|x) - log p(z)] by Monte Carlo
    with 200,000 samples per row, float64, tolerance 5 standard errors + 1e-3.
    Catches a wrong sign of the log-variance term, a missing -1 or a missing 1/2."""
    g = np.random.default_rng(4)
    mu = g.normal(size=(3, 4))
    logvar = g.uniform(-3, 1.5, size=(3, 4))
    got = iopvae.kl_standard_normal(T(mu), T(logvar)).data
    n = 200_000
    z = mu + np.exp(0.5 * logvar) * g.standard_normal((n, 3, 4))
    terms = (np_log_normal(z, mu, np.exp(logvar)) - np_log_normal(z, 0.0, 1.0)).sum(-1)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n)
    assert np.all(np.abs(got - mc) < 5 * se + 1e-3), (got, mc, se)
    assert np.all(got >= 0)
    # KL is exactly zero at q = p
    assert iopvae.kl_standard_normal(T(np.zeros((1, 4))), T(np.zeros((1, 4)))).data[0] == 0.0


# =============================================================================
# Eq. (10): KL(q(z|x) || q(z)) = KL(q(z|x) || p(z)) - E_q[ln q(z)/p(z)]
# =============================================================================
def _eq10_sides(mus, logvars, row, n, g):
    """(LHS by MC, RHS with closed-form first term, standard error) for q(z|x) the
    row-th component and q(z) the equal-weight mixture of all components."""
    mu, lv = mus[row:row + 1], logvars[row:row + 1]
    z = mu + np.exp(0.5 * lv) * g.standard_normal((n, mus.shape[1]))
    log_q_x = iopvae.log_normal_diag(T(z), T(mu), T(lv)).data
    log_q_agg = iopvae.log_normal_mixture(T(z), T(mus), T(logvars)).data
    log_p = iopvae.log_standard_normal(T(z)).data
    lhs_terms = log_q_x - log_q_agg
    lhs = lhs_terms.mean()
    rhs = iopvae.kl_standard_normal(T(mu), T(lv)).data[0] - (log_q_agg - log_p).mean()
    se = max(lhs_terms.std(), (log_q_agg - log_p).std()) / math.sqrt(n)
    return lhs, rhs, se


def test_eq10_decomposition_1d_against_quadrature():
    """Eq. (10) in 1-D where q(z) is a known 3-component mixture of encoder Gaussians:
    both the direct KL to the aggregated posterior and the decomposed form (closed
    KL to N(0,1) minus E_q[ln q(z)/p(z)]) must equal the KL computed by quadrature
    (tolerance 5 standard errors of the 200,000-sample MC).  A sign error in the
    correction term or a KL to the wrong reference distribution fails."""
    mus = np.array([[-1.0], [0.5], [2.0]])
    logvars = np.log(np.array([[0.3], [0.8], [0.5]]) ** 2)
    grid = np.linspace(-12, 12, 48001)
    for row in range(3):
        q_x = np.exp(np_log_normal(grid, mus[row, 0], np.exp(logvars[row, 0])))
        q_agg = np.mean([np.exp(np_log_normal(grid, mus[k, 0], np.exp(logvars[k, 0])))
                         for k in range(3)], axis=0)
        p = np.exp(np_log_normal(grid, 0.0, 1.0))
        mask = q_x > 1e-300
        exact = trapezoid(np.where(mask, q_x * np.log(np.where(mask, q_x, 1) / q_agg), 0), grid)
        # the identity itself, by quadrature (independent of iopvae)
        kl_p = trapezoid(np.where(mask, q_x * np.log(np.where(mask, q_x, 1) / p), 0), grid)
        corr = trapezoid(q_x * np.log(q_agg / p), grid)
        assert abs(exact - (kl_p - corr)) < 1e-8
        lhs, rhs, se = _eq10_sides(mus, logvars, row, 200_000, np.random.default_rng(10 + row))
        assert abs(lhs - exact) < 5 * se, (row, lhs, exact, se)
        assert abs(rhs - exact) < 5 * se, (row, rhs, exact, se)


def test_eq10_decomposition_2d_monte_carlo():
    """Eq. (10) in 2-D (like OneHot's latent space) with q(z) a mixture of four
    encoder Gaussians: the two sides agree within 5 standard errors, and both
    are non-negative (a KL)."""
    mus = np.array([[-1.5, 0.0], [1.5, 0.2], [0.0, 1.4], [0.1, -1.3]])
    logvars = np.log(np.array([[0.4, 0.3], [0.2, 0.5], [0.6, 0.3], [0.3, 0.3]]) ** 2)
    for row in range(4):
        lhs, rhs, se = _eq10_sides(mus, logvars, row, 100_000, np.random.default_rng(20 + row))
        assert abs(lhs - rhs) < 5 * se, (row, lhs, rhs, se)
        assert lhs > 0 and rhs > 0
        # q(z|x) is one of four well separated components: KL close to ln 4
        assert abs(lhs - math.log(4)) < 0.3


# =============================================================================
# Eqs. (13), (14), (20): the density ratio estimator learns ln q(z)/p(z)
# =============================================================================
def test_density_ratio_loss_formula():
    """density_ratio_loss must be -[mean ln sigma(T1) + mean ln(1 - sigma(T0))]
    (Eq. 20 negated): swapped labels or a sum instead of a mean would fail.
    At T = 0 it equals ln 4, the chance level used by the training tests."""
    g = np.random.default_rng(5)
    t1, t0 = g.normal(size=7) * 3, g.normal(size=5) * 3
    got = iopvae.density_ratio_loss(T(t1), T(t0)).data
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    want = -(np.log(sig(t1)).mean() + np.log(1 - sig(t0)).mean())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    zero = iopvae.density_ratio_loss(T(np.zeros(4)), T(np.zeros(4))).data
    np.testing.assert_allclose(zero, math.log(4), rtol=1e-14)


def test_density_ratio_loss_on_stacked_batch_equals_two_passes():
    """density_ratio_loss_on runs T once over [z1; z0]; without dropout (keep 1) that is
    T(z1) and T(z0) apart: the same loss and the same gradient of every weight of T.
    A swapped label or a wrong cut of the stacked batch would change both."""
    g = np.random.default_rng(3)
    z1, z0 = T(g.normal(size=(6, 2)) + 1.0), T(g.normal(size=(6, 2)))
    ratio = iopvae.DensityRatio(2, 8, ag.default_rng(0), keep=1.0)
    for p in ratio.parameters():
        p.data = p.data.astype(np.float64)

    def loss_and_grads(loss_of):
        for p in ratio.parameters():
            p.grad = None
        loss = loss_of()
        loss.backward()
        return loss.data, [p.grad.copy() for p in ratio.parameters()]

    stacked = loss_and_grads(lambda: iopvae.density_ratio_loss_on(ratio, z1, z0))
    apart = loss_and_grads(lambda: iopvae.density_ratio_loss(ratio(z1), ratio(z0)))
    swapped = loss_and_grads(lambda: iopvae.density_ratio_loss(ratio(z0), ratio(z1)))
    np.testing.assert_allclose(stacked[0], apart[0], rtol=1e-12)
    for a, b in zip(stacked[1], apart[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert abs(stacked[0] - swapped[0]) > 1e-3


def test_density_ratio_estimator_reaches_bayes_optimal_log_ratio():
    """Eq. (14): trained with Eq. (20) on samples of q = N((0.5, -0.3), diag(0.7^2, 0.9^2))
    and p = N(0, I), DensityRatio (hidden 32, keep 1.0, Adam) must approximate the
    exact ln q(z)/p(z) on the grid |z_i| <= 1.5: mean absolute error < 0.15 (a
    swapped label would give the negated ratio, error ~1.7; before training ~0.9)."""
    mq, sq = np.array([0.5, -0.3]), np.array([0.7, 0.9])

    def exact(z):
        return (np_log_normal(z, mq, sq ** 2) - np_log_normal(z, 0.0, 1.0)).sum(-1)

    axis = np.linspace(-1.5, 1.5, 31)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    ratio = iopvae.DensityRatio(2, 32, ag.default_rng(0), keep=1.0)
    for p in ratio.parameters():
        p.data = p.data.astype(np.float64)

    def mae():
        with ag.no_grad():
            return np.abs(ratio(T(grid)).data - exact(grid)).mean()

    before = mae()
    opt = Adam(ratio.parameters(), lr=3e-3)
    g = np.random.default_rng(100)
    for step in range(1000):
        if step in (500, 800):
            opt.lr /= 3
        z1 = mq + sq * g.standard_normal((256, 2))
        z0 = g.standard_normal((256, 2))
        loss = iopvae.density_ratio_loss(ratio(T(z1)), ratio(T(z0)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mae()
    assert before > 0.3
    assert after < 0.15, after


# =============================================================================
# Importance-sampled log-likelihood against an exact linear-Gaussian model
# =============================================================================
class PPCA:
    """Probabilistic PCA: p(z) = N(0, I_d), p(x|z) = N(Wz + b, s^2 I_D),
    so p(x) = N(b, W W^T + s^2 I) exactly and the posterior is Gaussian."""

    def __init__(self, seed=3, D=5, d=2, s=0.5, n=12):
        g = np.random.default_rng(seed)
        self.D, self.d, self.s = D, d, s
        self.W, self.b = g.normal(size=(D, d)), 0.5 * g.normal(size=D)
        self.x = g.normal(size=(n, d)) @ self.W.T + self.b + s * g.normal(size=(n, D))
        self.post_cov = np.linalg.inv(np.eye(d) + self.W.T @ self.W / s ** 2)

    def exact_log_px(self, x):
        C = self.W @ self.W.T + self.s ** 2 * np.eye(self.D)
        diff = x - self.b
        maha = np.einsum("ij,ij->i", diff, np.linalg.solve(C, diff.T).T)
        return -0.5 * (maha + np.linalg.slogdet(C)[1] + self.D * LOG_2PI)

    def proposal_np(self, x):
        """Deliberately not the posterior: diagonal, mean shifted by half a posterior
        standard deviation, variance doubled."""
        sd = np.sqrt(np.diag(self.post_cov))
        mean = (x - self.b) @ self.W @ self.post_cov / self.s ** 2
        return mean + 0.5 * sd, np.broadcast_to(np.log(2.0 * sd ** 2), mean.shape).copy()

    def posterior(self, x):
        mu, logvar = self.proposal_np(x.data)
        return T(mu), T(logvar)

    def log_likelihood(self, x, z):
        mean = ag.matmul(z, T(self.W.T.copy())) + T(self.b)
        return iopvae.log_normal_diag(x, mean, T(np.full(self.D, 2 * math.log(self.s))))

    def exact_elbo(self, x):
        """E_q[log p(x|z) + log p(z) - log q(z|x)] in closed form for the proposal q."""
        m, logvar = self.proposal_np(x)
        v = np.exp(logvar)
        resid = x - m @ self.W.T - self.b
        tr = np.einsum("ij,bj,ij->b", self.W, v, self.W)  # tr(W diag(v_b) W^T)
        e_lik = -0.5 * self.D * math.log(2 * math.pi * self.s ** 2) \
            - 0.5 * ((resid ** 2).sum(1) + tr) / self.s ** 2
        e_prior = -0.5 * self.d * LOG_2PI - 0.5 * ((m ** 2).sum(1) + v.sum(1))
        entropy = 0.5 * np.log(2 * math.pi * math.e * v).sum(1)
        return e_lik + e_prior + entropy

    def estimate(self, samples, seed, x=None, **kw):
        return iopvae.importance_sampled_log_likelihood(
            self.x if x is None else x, self.posterior, self.log_likelihood,
            iopvae.log_standard_normal, samples, ag.default_rng(seed), **kw)


def test_importance_sampling_matches_exact_ppca_likelihood():
    """With S = 2000 samples from a mismatched Gaussian proposal, the IS estimate of
    log p(x) must be within 0.1 nats of the exact PPCA marginal for every point
    (mean abs error < 0.04), never more than 0.1 above it, and clearly above the
    ELBO of the same proposal.  A wrong weight (e.g. forgetting -log q, or
    averaging log-weights instead of weights) misses by far more."""
    m = PPCA()
    exact = m.exact_log_px(m.x)
    est = m.estimate(2000, seed=0, batch_size=5)
    err = est - exact
    assert est.shape == exact.shape
    assert np.all(np.abs(err) < 0.1), err
    assert np.abs(err).mean() < 0.04, err
    assert np.all(err < 0.1)
    gap = exact - m.exact_elbo(m.x)
    assert np.all(gap > 0.15)  # the proposal is poor enough to make the test sharp
    assert np.all(est > m.exact_elbo(m.x) + 0.5 * gap)


def test_importance_sampling_single_sample_is_elbo_in_expectation():
    """With S = 1 the estimator is log p(x|z) + log p(z) - log q(z|x) at one z, whose
    expectation is the ELBO: its mean over 20,000 independent draws must match the
    closed-form ELBO of the proposal within 5 standard errors."""
    m = PPCA()
    x = np.repeat(m.x[:1], 20_000, axis=0)
    single = m.estimate(1, seed=1, x=x, batch_size=1000)
    se = single.std() / math.sqrt(single.size)
    assert abs(single.mean() - m.exact_elbo(m.x[:1])[0]) < 5 * se


def test_importance_sampling_batching_and_chunking_do_not_change_the_result():
    """The chunking of samples (chunk) must not change anything: the draws are the
    same stream, so the result is identical; and processing the data in batches must
    equal processing each batch separately with the same generator (no mixing of
    rows between points or samples).  A reshape that pairs z of one point with x of
    another would break both."""
    m = PPCA()
    ref = m.estimate(300, seed=7, batch_size=4)
    for chunk in (4, 40, 250, 10_000):
        np.testing.assert_allclose(m.estimate(300, seed=7, batch_size=4, chunk=chunk), ref,
                                   rtol=1e-12, atol=1e-12)
    rng = ag.default_rng(7)
    parts = [iopvae.importance_sampled_log_likelihood(
        m.x[i:i + 4], m.posterior, m.log_likelihood, iopvae.log_standard_normal, 300, rng,
        batch_size=100) for i in range(0, m.x.shape[0], 4)]
    np.testing.assert_allclose(np.concatenate(parts), ref, rtol=1e-12, atol=1e-12)
    # other batch sizes draw the noise in another order: statistically equal
    other = m.estimate(300, seed=7, batch_size=5)
    assert np.abs(other - ref).max() < 0.15
    assert not np.array_equal(other, ref)


# =============================================================================
# Smaller pieces: reparameterisation, warm-up, dynamic binarisation
# =============================================================================
def test_reparameterize_moments():
    """z = mu + exp(logvar/2) eps must have mean mu and variance exp(logvar): using
    exp(logvar) as the standard deviation would fail the variance check."""
    mu, logvar = np.array([[1.0, -2.0, 0.0]]), np.array([[0.0, -2.0, 1.5]])
    eps = np.random.default_rng(6).standard_normal((200_000, 3))
    z = iopvae.reparameterize(T(mu), T(logvar), T(eps)).data
    np.testing.assert_allclose(z.mean(0), mu[0], atol=0.02)
    np.testing.assert_allclose(z.var(0), np.exp(logvar[0]), rtol=0.02)


def test_warmup_beta_schedule():
    """KL warm-up: beta = epoch / warmup, capped at 1, and 1 without warm-up."""
    assert [iopvae.warmup_beta(e, 4) for e in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert iopvae.warmup_beta(1, 0) == 1.0
    assert iopvae.warmup_beta(3, 100) == pytest.approx(0.03)
    betas = [iopvae.warmup_beta(e, 37) for e in range(1, 100)]
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:])) and betas[-1] == 1.0


def test_binarize_statistics():
    """Dynamic binarisation: values in {0, 1}, dtype kept, P(1) equal to the pixel
    intensity (within 5 standard errors), 0 and 1 kept exactly, and a new draw
    every call (a threshold at 0.5 or a fixed seed would fail)."""
    p = np.linspace(0, 1, 11, dtype=np.float32)
    x = np.tile(p, (40_000, 1))
    rng = np.random.default_rng(0)
    b1 = iopvae.binarize(x, rng)
    b2 = iopvae.binarize(x, rng)
    assert b1.dtype == np.float32 and b1.shape == x.shape
    assert set(np.unique(b1)) <= {0.0, 1.0}
    se = np.sqrt(p * (1 - p) / x.shape[0]) + 1e-12
    assert np.all(np.abs(b1.mean(0) - p) < 5 * se + 1e-9)
    assert np.all(b1[:, 0] == 0) and np.all(b1[:, -1] == 1)
    assert not np.array_equal(b1, b2)
    # pixels are drawn independently: two middle columns are uncorrelated
    assert abs(np.corrcoef(b1[:, 4], b1[:, 6])[0, 1]) < 0.03


def test_log_normal_mixture_blocks_give_the_same_values_and_gradients():
    """Many rows are split into blocks (to bound the (rows, K) array of the matrix product); the
    values and gradients must not depend on the block size, including a ragged last block."""
    rng = np.random.default_rng(3)
    z0, mu0 = rng.standard_normal((37, 3)), rng.standard_normal((5, 3))
    lv0 = 0.3 * rng.standard_normal((5, 3))
    results = []
    for block in (1 << 22, 60, 15):
        z, mu, lv = (ag.Tensor(a.copy(), requires_grad=True) for a in (z0, mu0, lv0))
        out = iopvae.log_normal_mixture(z, mu, lv, block_elements=block)
        (out * ag.Tensor(np.arange(37.0))).sum().backward()
        results.append([out.data, z.grad, mu.grad, lv.grad])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# =============================================================================
# IOP evaluated exactly: the aggregated posterior as a true mixture density
# =============================================================================
def _brute_force_mixture(z, mu, logvar):
    """log (1/N) sum_n N(z | mu_n, exp(logvar_n)) by the textbook formula, per z."""
    pairwise = np_log_normal(z[:, None, :], mu[None], np.exp(logvar)[None]).sum(axis=-1)
    peak = pairwise.max(axis=1, keepdims=True)
    return (peak + np.log(np.exp(pairwise - peak).mean(axis=1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("block_elements", [1, 37, 1 << 22])
def test_log_normal_mixture_matches_brute_force(block_elements):
    """The expanded-quadratic, row-blocked mixture density must equal the direct
    pairwise formula, including far-out z where every component is tiny (a
    missing max-shift gives -inf) and for any block size; the evaluation's
    log_aggregated_posterior (float32 points and components in, float64 out) too."""
    g = np.random.default_rng(0)
    mu, logvar = g.normal(size=(23, 3)) * 2, g.uniform(-6, 2, size=(23, 3))
    z = np.concatenate([g.normal(size=(40, 3)) * 2, np.full((1, 3), 100.0)]).astype(np.float32)
    want = _brute_force_mixture(z.astype(np.float64), mu, logvar)
    got = iopvae.log_normal_mixture(T(z.astype(np.float64)), T(mu), T(logvar),
                                    block_elements).data
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert np.isfinite(got[-1]) and got[-1] < -1000
    components = (mu.astype(np.float32), logvar.astype(np.float32))
    exact_components = _brute_force_mixture(z.astype(np.float64), *(c.astype(np.float64)
                                                                   for c in components))
    evaluated = iopvae.log_aggregated_posterior(z, components)
    assert evaluated.dtype == np.float64
    np.testing.assert_allclose(evaluated, exact_components, rtol=1e-9)


def test_log_normal_mixture_in_float32_stays_close_to_float64():
    """VampPrior trains in float32 through the expanded quadratic, which subtracts large
    numbers: at MNIST's sizes (d = 40, log-variances down to -6) the log-density near the
    data must stay within 1e-2 nats of the float64 value (it is about 1e-3)."""
    g = np.random.default_rng(1)
    mu, logvar = g.normal(size=(500, 40)) * 1.5, g.uniform(-6, 0, size=(500, 40))
    z = mu[:100] + np.exp(0.5 * logvar[:100]) * g.standard_normal((100, 40))
    exact = iopvae.log_normal_mixture(T(z), T(mu), T(logvar)).data
    single = iopvae.log_normal_mixture(*(ag.Tensor(a.astype(np.float32))
                                         for a in (z, mu, logvar))).data
    assert single.dtype == np.float32
    assert np.abs(single - exact).max() < 1e-2


def test_exact_aggregated_log_likelihood_matches_brute_force_importance_sampling():
    """IOP's exact log p(x): importance sampling with q(z|x) as proposal and the
    mixture of q(z|x_n) over the training points as the prior.  Recomputed here
    with plain NumPy from the model's own encoder/decoder outputs and the same
    noise; a prior built on the wrong points, or a dropped log N, fails."""
    rng = np.random.default_rng(1)
    train_x = (rng.random((30, 6)) < 0.5).astype(np.float32)
    x = (rng.random((5, 6)) < 0.5).astype(np.float32)
    model = iopvae.ImplicitOptimalPrior(6, "bernoulli", latent=2, hidden=8,
                                        rng=ag.default_rng(0))
    S = 7
    components = iopvae.aggregated_posterior_components(model, train_x)
    got = estimators.exact_aggregated_log_likelihood(model, x, components, S, ag.default_rng(5),
                                                 batch_size=5)
    model.eval()
    with ag.no_grad():
        mu_n, lv_n = (a.data.astype(np.float64) for a in model.encoder(ag.Tensor(train_x)))
        mu, lv = (a.data for a in model.encoder(ag.Tensor(x)))
        eps = ag.default_rng(5).standard_normal((S, 5, 2), dtype=np.float32)
        z = (mu + np.exp(0.5 * lv) * eps).astype(np.float32)
        logits = model.decoder(ag.Tensor(z.reshape(S * 5, 2))).data.reshape(S, 5, 6)
    log_px_z = (x * logits - np.logaddexp(0, logits)).sum(-1)
    log_q = np_log_normal(z, mu, np.exp(lv)).sum(-1)
    log_prior = _brute_force_mixture(z.reshape(-1, 2).astype(np.float64), mu_n, lv_n)
    log_w = log_px_z + log_prior.reshape(S, 5) - log_q
    want = np.log(np.exp(log_w - log_w.max(0)).mean(0)) + log_w.max(0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_density_ratio_log_normalizer():
    """log E_N(0,I)[exp T(z)]: exactly c for a constant T = c, and for T(z) = a.z
    (a linear T, no tanh saturation) the closed form |a|^2 / 2 within Monte
    Carlo error."""
    model = iopvae.ImplicitOptimalPrior(4, "bernoulli", latent=3, hidden=8,
                                        rng=ag.default_rng(0))
    model.density_ratio = lambda z: ag.Tensor(np.full(z.shape[0], 0.7, dtype=np.float32))
    assert abs(float(estimators.density_ratio_log_normalizer(model, ag.default_rng(0), 5000))
               - 0.7) < 1e-6
    a = np.array([0.3, -0.2, 0.1], dtype=np.float32)
    model.density_ratio = lambda z: ag.Tensor(z.data @ a)
    got = float(estimators.density_ratio_log_normalizer(model, ag.default_rng(1), 200_000))
    assert abs(got - float(a @ a) / 2) < 0.01


def test_exact_aggregated_elbo_is_a_lower_bound_of_the_exact_likelihood():
    """Jensen: the exact-prior ELBO must lie below the exact-prior importance-sampled
    log-likelihood with many samples, and equal the S = 1 importance-sampled value
    in expectation (same estimator, so within Monte Carlo error)."""
    rng = np.random.default_rng(2)
    train_x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 40)]
    x = np.eye(4, dtype=np.float32)
    model = iopvae.ImplicitOptimalPrior(4, "bernoulli", latent=2, hidden=8,
                                        rng=ag.default_rng(0))
    components = iopvae.aggregated_posterior_components(model, train_x)
    elbo = float(estimators.exact_aggregated_elbo(model, x, components, 4000, ag.default_rng(1)))
    ll = estimators.exact_aggregated_log_likelihood(model, x, components, 2000, ag.default_rng(2))
    single = np.mean([estimators.exact_aggregated_log_likelihood(
        model, x, components, 1, ag.default_rng(s)).mean() for s in range(300)])
    assert elbo < float(ll.mean())
    assert abs(elbo - single) < 0.05


def test_log_normalizer_by_defensive_importance_sampling():
    """With the training posteriors as components, log Z comes from the defensive mixture
    (N(0, I) + q(z)) / 2.  For T = log q(z)/N(z), the exact log-ratio of that mixture,
    Z = 1: the estimate must be 0 to Monte Carlo error, even where q(z) sits far from
    N(0, I) and the plain N(0, I) average falls short."""
    latent = 2
    mu_n = np.array([[4.0, 4.0], [4.5, 3.5], [-4.0, 4.0]])
    logvar_n = np.full((3, latent), -3.0)
    model = iopvae.ImplicitOptimalPrior(4, "bernoulli", latent=latent, hidden=8,
                                        rng=ag.default_rng(0))

    def exact_t(z):
        log_q = iopvae.log_aggregated_posterior(z.data, (mu_n, logvar_n))
        return ag.Tensor(log_q - iopvae.log_standard_normal(z).data.astype(np.float64))
    model.density_ratio = exact_t
    defensive = float(estimators.density_ratio_log_normalizer(
        model, ag.default_rng(0), 20_000, components=(mu_n, logvar_n)))
    plain = float(estimators.density_ratio_log_normalizer(model, ag.default_rng(0), 20_000))
    assert abs(defensive) < 0.02
    assert plain < -1.0  # N(0, I) almost never lands where q(z) is
