"""VAE with Implicit Optimal Priors (Takahashi et al., AAAI 2019), from scratch.

This file is the paper, top to bottom in its order:

1. distributions: Gaussian and Bernoulli log-densities, the closed-form KL of Eq. (3);
2. networks: the gated encoder and decoder (Sec. 5.2), AVB's implicit encoder;
3. the density ratio trick (Eqs. 12-14): the estimator T_psi and its loss;
4. the four methods: standard VAE (Eq. 3), VampPrior (Eq. 9), the implicit
   optimal prior (IOP, Eqs. 10-21) and AVB, behind one contract (``VAEMethod``);
5. Algorithm 1: ``Trainer.train``, one loop with the algorithm's line numbers;
6. evaluation: the ELBO and the importance-sampled log-likelihood log p(x).

Runs (configurations, checkpoints) are in ``runs.py`` and the command line in
``cli.py``; ``python iopvae.py train|evaluate|sample|table2`` hands over to it.  The
smallest complete example is ``examples/onehot_iop.py``.

All array code asks ``autograd_lite`` for the array module, so it runs on NumPy
or CuPy alike; data cross to the device once, when a data set is loaded, and
numbers come back to the host only for logging (one transfer per round of
Algorithm 1, ``read_numbers``) and checkpoints.
"""
import contextlib
import math
import time

import numpy as np

import autograd_lite as ag
from autograd_lite import nn
from autograd_lite.optim import Adam
from datasets import binarize  # dynamic binarisation of training batches

LOG_2PI = math.log(2 * math.pi)
# The encoder's ln sigma^2 bounds, a guard the paper does not give (VampPrior's public
# code has the same).
ENCODER_LOGVAR_BOUNDS = (-6.0, 2.0)
# A Gaussian decoder's ln sigma^2: the paper bounds only the mean. The lower bound is a
# guard that should never decide a pixel: e^-12 is below a 1/256 grey level squared.
DECODER_LOGVAR_BOUNDS = (-12.0, 0.0)


# =============================================================================
# 1. Distributions.  Every log-density is summed over the last axis.
# =============================================================================
def standard_normal(rng, shape, dtype=np.float32):
    """A constant tensor of N(0, 1) draws from the backend generator ``rng``."""
    return ag.Tensor(rng.standard_normal(shape, dtype=dtype))


def reparameterize(mu, logvar, eps):
    """z = mu + sigma * eps, the reparameterisation trick under Eq. (18)."""
    return mu + ag.exp(0.5 * logvar) * eps


def log_normal_diag(z, mu, logvar):
    """log N(z | mu, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * ((z - mu) ** 2 * ag.exp(-logvar) + logvar + LOG_2PI).sum(axis=-1)


def log_standard_normal(z):
    """log N(z | 0, I): the standard Gaussian prior p(z)."""
    return -0.5 * (z * z + LOG_2PI).sum(axis=-1)


def kl_standard_normal(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, the first term of Eq. (3)."""
    return 0.5 * (mu * mu + ag.exp(logvar) - logvar - 1.0).sum(axis=-1)


def log_bernoulli(x, logits):
    """log B(x | sigmoid(logits)) = -BCE-with-logits, summed over pixels (Sec. 2.1)."""
    return -ag.binary_cross_entropy_with_logits(logits, x).sum(axis=-1)


def log_normal_mixture(z, mu, logvar, block_elements=1 << 22):
    """log (1/K) sum_k N(z | mu_k, diag exp(logvar_k)) for z (B, d), mu, logvar (K, d) -> (B,).

    The one Gaussian-mixture density of this file: the VampPrior of Eq. (9) (K
    pseudo-inputs; differentiable, the pseudo-inputs learn through it) and the
    empirical aggregated posterior of Eq. (8) (one component per training point,
    ``log_aggregated_posterior``).  With s = exp(logvar), the quadratic of every
    pair (z_b, component k), sum_d (z_bd - mu_kd)^2 / s_kd, is expanded into one
    matrix product,

        [z^2, z, 1] @ [1/s, -2 mu/s, sum_d (mu^2/s + log s) + d log 2 pi]^T,

    so B points against K components cost a (B, 2d+1) x (2d+1, K) product (taken
    in row blocks of about ``block_elements`` entries), then a max-shifted
    logsumexp over k.  The expansion subtracts large numbers: in float32
    (VampPrior's training) it is off by about 1e-3 nats at MNIST's sizes;
    evaluation works in float64, where the error is about 1e-11.
    """
    xp = ag.xp()
    B, d = z.shape
    K = mu.shape[0]
    precision = ag.exp(-logvar)
    constant = (mu * mu * precision + logvar).sum(axis=1, keepdims=True) + d * LOG_2PI
    components = ag.concatenate([precision, -2.0 * mu * precision, constant], axis=1).T
    rows = max(1, block_elements // K)
    blocks = []
    for start in range(0, B, rows):
        zb = z[start:start + rows]
        ones = ag.Tensor(xp.ones((zb.shape[0], 1), dtype=zb.dtype))
        quadratic = ag.matmul(ag.concatenate([zb * zb, zb, ones], axis=1), components)
        blocks.append(ag.logsumexp(-0.5 * quadratic, axis=1))            # (rows, K) -> rows
    log_sum = blocks[0] if len(blocks) == 1 else ag.concatenate(blocks, axis=0)
    return log_sum - math.log(K)


# =============================================================================
# 2. Networks (Sec. 5.2: two layers of 500 units, gated for the encoder and the
#    decoder, Glorot initialisation).
# =============================================================================
class Encoder(nn.Module):
    """q_phi(z|x) = N(z | mu_phi(x), diag sigma^2_phi(x)) (Sec. 2.1), its
    log-variance bounded to ``logvar_bounds``."""

    def __init__(self, dim, latent, hidden, rng, logvar_bounds=ENCODER_LOGVAR_BOUNDS):
        self.body = nn.mlp((dim, hidden, hidden), "gated", rng=rng)
        self.head = nn.Linear(hidden, 2 * latent, rng)
        self.latent, self.logvar_bounds = latent, tuple(logvar_bounds)

    def forward(self, x):
        h = self.head(self.body(x))
        mu, logvar = h[:, :self.latent], h[:, self.latent:]
        return mu, ag.hardtanh(logvar, *self.logvar_bounds)


class ImplicitEncoder(nn.Module):
    """AVB's q_phi(z|x) without a density: z = f_phi(x, eps), eps ~ N(0, I) (Mescheder et al.)."""

    def __init__(self, dim, latent, hidden, noise_dim, rng):
        self.body = nn.mlp((dim + noise_dim, hidden, hidden), "gated", rng=rng)
        self.head = nn.Linear(hidden, latent, rng)
        self.noise_dim = noise_dim

    def forward(self, x, eps):
        return self.head(self.body(ag.concatenate([x, eps], axis=1)))


class Decoder(nn.Module):
    """p_theta(x|z): Bernoulli logits for binary data; for grey images a Gaussian
    whose mean is squashed into [0, 1] by a sigmoid and whose log-variance is
    bounded to ``logvar_bounds`` (Sec. 5.2)."""

    def __init__(self, dim, latent, hidden, likelihood, rng,
                 logvar_bounds=DECODER_LOGVAR_BOUNDS):
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"unknown likelihood {likelihood!r}: bernoulli or gaussian")
        self.likelihood, self.dim, self.logvar_bounds = likelihood, dim, tuple(logvar_bounds)
        self.body = nn.mlp((latent, hidden, hidden), "gated", rng=rng)
        self.head = nn.Linear(hidden, dim if likelihood == "bernoulli" else 2 * dim, rng)

    def forward(self, z):
        """Bernoulli logits, or the Gaussian (mean, logvar)."""
        h = self.head(self.body(z))
        if self.likelihood == "bernoulli":
            return h
        mean = ag.sigmoid(h[:, :self.dim])
        return mean, ag.hardtanh(h[:, self.dim:], *self.logvar_bounds)

    def log_likelihood(self, x, z):
        """log p_theta(x | z) per row."""
        out = self(z)
        if self.likelihood == "bernoulli":
            return log_bernoulli(x, out)
        return log_normal_diag(x, *out)

    def mean(self, z):
        """E[x | z]: what a sample image shows."""
        out = self(z)
        return ag.sigmoid(out) if self.likelihood == "bernoulli" else out[0]


# =============================================================================
# 3. The density ratio trick (Eqs. 12-14): a classifier of z1 ~ q(z) (label 1)
#    against z0 ~ p(z) (label 0) whose logit, at its optimum, is ln q(z) / p(z).
# =============================================================================
class DensityRatio(nn.Module):
    """T_psi(z), the classifier's logit: two tanh layers with dropout (keep 0.5).

    Trained by Eq. (13)/(20), its optimum is T*(z) = ln q_phi(z) / p(z) (Eq. 14).
    Also AVB's T(x, z), fed the concatenation [x, z].
    """

    def __init__(self, dim, hidden, rng, keep=0.5):
        self.body = nn.mlp((dim, hidden, hidden), "tanh", dropout_keep=keep, rng=rng)
        self.head = nn.Linear(hidden, 1, rng)

    def forward(self, z):
        out = self.head(self.body(z))
        return ag.reshape(out, (out.shape[0],))


def density_ratio_loss(t_positive, t_negative):
    """-[mean ln sigma(T(z1)) + mean ln(1 - sigma(T(z0)))]: Eq. (13)/(20), negated.

    With logits, -ln sigma(t) = BCE(t, 1) and -ln(1 - sigma(t)) = BCE(t, 0).
    """
    xp = ag.xp()
    ones = xp.ones(t_positive.shape, dtype=t_positive.dtype)
    zeros = xp.zeros(t_negative.shape, dtype=t_negative.dtype)
    return (ag.binary_cross_entropy_with_logits(t_positive, ones).mean()
            + ag.binary_cross_entropy_with_logits(t_negative, zeros).mean())


def density_ratio_loss_on(density_ratio, z1, z0):
    """-Eq. (20) of the classifier ``density_ratio`` on z1 (label 1) and z0 (label 0).

    T runs once over the stacked batch [z1; z0]: T acts row by row (its dropout too),
    so this is the same as T(z1) and T(z0) apart, with half the per-operation work.
    """
    t = density_ratio(ag.concatenate([z1, z0]))
    n = z1.shape[0]
    return density_ratio_loss(t[:n], t[n:])


# =============================================================================
# 4. The four methods.  Each gives, per data point, the reconstruction term
#    E_q[log p(x|z)] and its (estimated) KL term; the ELBO is their difference.
# =============================================================================
class VAEMethod(nn.Module):
    """What Algorithm 1 and the evaluation call on a method: the contract of the four.

    A method is an encoder q_phi(z|x), a decoder p_theta(x|z) and a prior
    p_lambda(z) (here N(0, I); VampPrior and IOP override it).  The trainer calls

    - ``loss(x, rng, beta)``: minus the training objective on a batch, the ELBO of
      Eq. (3) or (9), or Eq. (19) for IOP (Alg. 1, line 4);
    - ``vae_parameters()``: theta and phi, updated on that loss (line 5);

    and, for the methods with a density ratio estimator (``density_ratio`` is T_psi):

    - ``discriminator_loss(x, rng, posterior=None)``: minus the objective of Eq. (20)
      (lines 8-10), given the (mu, logvar) of x where the trainer has them cached;
    - ``discriminator_parameters()``: psi, updated on it (line 11).

    The evaluation calls ``elbo_terms``, ``posterior_sample``, ``log_prior`` and
    ``prior_sample``.  ``explicit_posterior`` says whether q(z|x) has a density
    (needed to importance-sample log p(x)).
    """

    name = None
    explicit_posterior = True
    density_ratio = None  # T_psi for IOP and AVB

    def __init__(self, encoder, decoder, latent):
        self.encoder, self.decoder, self.latent = encoder, decoder, latent

    # --- what each method defines -------------------------------------------------
    def posterior_sample(self, x, rng):
        """z ~ q_phi(z|x)."""
        raise NotImplementedError

    def elbo_terms(self, x, rng):
        """(E_q[log p(x|z)], KL estimate) per row, one sample of z each (L = 1)."""
        raise NotImplementedError

    def log_prior(self, z):
        """log p_lambda(z)."""
        return log_standard_normal(z)

    def prior_sample(self, n, rng, data=None):
        """z ~ p_lambda(z)."""
        return standard_normal(rng, (n, self.latent))

    def init_from_data(self, train_x, rng):
        """A hook for methods whose start depends on the training data (VampPrior)."""

    # --- what Algorithm 1 calls ------------------------------------------------------
    def loss(self, x, rng, beta=1.0):
        """-(reconstruction - beta * KL), averaged over the batch (beta: warm-up)."""
        reconstruction, kl = self.elbo_terms(x, rng)
        return -(reconstruction - beta * kl).mean()

    def vae_parameters(self):
        """theta and phi (and, for VampPrior, the pseudo-inputs)."""
        return self.encoder.parameters() + self.decoder.parameters()

    @property
    def has_discriminator(self):
        """Whether the method trains a density ratio estimator T_psi (IOP, AVB)."""
        return self.density_ratio is not None

    def discriminator_loss(self, x, rng, posterior=None):
        """-Eq. (20) on the batch ``x`` (methods with a density ratio estimator)."""
        raise NotImplementedError(f"{self.name} has no density ratio estimator")

    def discriminator_parameters(self):
        """psi: the parameters of T_psi (none without one)."""
        return self.density_ratio.parameters() if self.has_discriminator else []


class StandardVAE(VAEMethod):
    """VAE with the standard Gaussian prior p(z) = N(0, I): the ELBO of Eq. (3)."""

    name = "vae"

    def __init__(self, dim, likelihood, latent, hidden, rng,
                 decoder_logvar_bounds=DECODER_LOGVAR_BOUNDS,
                 encoder_logvar_bounds=ENCODER_LOGVAR_BOUNDS):
        super().__init__(Encoder(dim, latent, hidden, rng, encoder_logvar_bounds),
                         Decoder(dim, latent, hidden, likelihood, rng, decoder_logvar_bounds),
                         latent)

    def posterior_sample(self, x, rng):
        """z ~ q_phi(z|x) by reparameterisation (Eq. 18)."""
        mu, logvar = self.encoder(x)
        return reparameterize(mu, logvar, standard_normal(rng, mu.shape))

    def elbo_terms(self, x, rng):
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, standard_normal(rng, mu.shape))
        return self.decoder.log_likelihood(x, z), self.kl(z, mu, logvar)

    def kl(self, z, mu, logvar):
        """KL(q(z|x) || N(0, I)) in closed form (Eq. 3)."""
        return kl_standard_normal(mu, logvar)


class VampPrior(StandardVAE):
    """VAE with the VampPrior p(z) = (1/K) sum_k q(z | u_k) (Eq. 9).

    The pseudo-inputs u_k are parameters, mapped into [0, 1] by the clipped
    ReLU min(max(u, 0), 1).  Their start matters: if they all start near one
    value they never separate and the prior stays one Gaussian.  ``pseudo_init``:
    ``"uniform"`` (U[0, 1], the default), ``"data"`` (random training points,
    given later by ``init_from_data``) or ``"constant"`` (0.5 + N(0, 0.01^2),
    the failure case, for experiments).
    """

    name = "vamp"
    PSEUDO_INITS = ("uniform", "data", "constant")

    def __init__(self, dim, likelihood, latent, hidden, rng,
                 decoder_logvar_bounds=DECODER_LOGVAR_BOUNDS,
                 encoder_logvar_bounds=ENCODER_LOGVAR_BOUNDS,
                 components=500, pseudo_init="uniform"):
        super().__init__(dim, likelihood, latent, hidden, rng, decoder_logvar_bounds,
                         encoder_logvar_bounds)
        if pseudo_init == "uniform" or pseudo_init == "data":
            u = rng.random((components, dim), dtype=np.float32)
        elif pseudo_init == "constant":
            u = 0.5 + 0.01 * rng.standard_normal((components, dim), dtype=np.float32)
        else:
            raise ValueError(f"unknown pseudo_init {pseudo_init!r}: uniform, data or constant")
        self.pseudo_inputs = nn.Parameter(u)
        self.pseudo_init = pseudo_init

    def init_from_data(self, train_x, rng):
        """For ``pseudo_init="data"``: start from K random training points."""
        if self.pseudo_init == "data":
            n, k = train_x.shape[0], self.pseudo_inputs.shape[0]
            if k > n:
                raise ValueError(f"pseudo_init='data' needs at least K = {k} training points "
                                 f"(got {n})")
            idx = shuffled(n, rng)[:k]                     # K distinct points
            self.pseudo_inputs.data = train_x[idx].copy()

    def vae_parameters(self):
        return super().vae_parameters() + [self.pseudo_inputs]

    def components(self):
        """(mu_k, logvar_k) = encoder(clipped_relu(u_k)), k = 1..K."""
        return self.encoder(ag.clipped_relu(self.pseudo_inputs))

    def log_prior(self, z):
        """log (1/K) sum_k q(z | u_k), Eq. (9)."""
        return log_normal_mixture(z, *self.components())

    def kl(self, z, mu, logvar):
        """One-sample Monte Carlo KL: log q(z|x) - log p(z) at z ~ q(z|x)."""
        return log_normal_diag(z, mu, logvar) - self.log_prior(z)

    def prior_sample(self, n, rng, data=None):
        mu, logvar = self.components()
        k = rng.integers(0, mu.shape[0], n)
        return reparameterize(mu[k], logvar[k], standard_normal(rng, (n, self.latent)))


class ImplicitOptimalPrior(StandardVAE):
    """The proposed method: the aggregated posterior q_phi(z) as the prior (Eq. 6).

    KL(q(z|x) || q(z)) = KL(q(z|x) || N(0, I)) - E_q[ln q(z)/p(z)]  (Eq. 10),
    and ln q(z)/p(z) is estimated by the density ratio estimator T_psi(z)
    (Eqs. 12-15).  The VAE maximises Eq. (19) with psi fixed; psi maximises
    Eq. (20) with theta, phi fixed (Algorithm 1).
    """

    name = "iop"

    def __init__(self, dim, likelihood, latent, hidden, rng,
                 decoder_logvar_bounds=DECODER_LOGVAR_BOUNDS,
                 encoder_logvar_bounds=ENCODER_LOGVAR_BOUNDS,
                 keep=0.5):
        super().__init__(dim, likelihood, latent, hidden, rng, decoder_logvar_bounds,
                         encoder_logvar_bounds)
        self.density_ratio = DensityRatio(latent, hidden, rng, keep)

    # --- Eq. (19): training theta and phi -------------------------------------------
    def objective_terms(self, x, rng):
        """The three terms of Eq. (19) per data point, at one z ~ q(z|x) (L = 1):
        KL(q(z|x) || N(0, I)) in closed form, ln p(x|z) and T_psi(z), with
        z = mu(x) + sigma(x) * eps (Eq. 18).  z is not detached: the gradient through
        z into T reaches the encoder (docs/derivation.md, Section 6)."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, standard_normal(rng, mu.shape))
        return kl_standard_normal(mu, logvar), self.decoder.log_likelihood(x, z), \
            self.density_ratio(z)

    def loss(self, x, rng, beta=1.0):
        """Minus Eq. (19) on a mini-batch x_1..x_K:

            -(1/K) sum_i [ -KL(q(z|x_i) || N(0, I)) + ln p(x_i | z_i) + T_psi(z_i) ].

        During the warm-up, ``beta`` < 1 weighs the KL estimate, -KL + T (Eq. 15).
        Called inside ``frozen(model.density_ratio)``: psi is fixed (Algorithm 1)."""
        kl_normal, log_likelihood, t = self.objective_terms(x, rng)
        return -(-beta * kl_normal + log_likelihood + beta * t).mean()

    def elbo_terms(self, x, rng):
        """(ln p(x|z), estimated KL(q(z|x) || q(z))) per row: Eq. (15) at one z ~ q(z|x),
        the two parts of the estimated ELBO."""
        kl_normal, log_likelihood, t = self.objective_terms(x, rng)
        return log_likelihood, kl_normal - t

    def log_prior(self, z):
        """log q(z) ~ log N(z) + T_psi(z) (Eq. 14): an estimate, not a normalised density."""
        return log_standard_normal(z) + self.density_ratio(z)

    # --- Eq. (20): training T_psi ----------------------------------------------------
    def aggregated_posterior_sample(self, x, rng, posterior=None):
        """Ancestral sampling from q_phi(z) = E_pD(x)[q(z|x)] (Eq. 6): for data points
        x drawn from the training set, z ~ q(z|x).  The encoder is fixed (no graph).
        ``posterior``: (mu, logvar) of q(z|x) for these points, if already known (then
        ``x`` is not encoded again); the draw of z is the same either way."""
        if posterior is None:
            with ag.no_grad():
                posterior = self.encoder(x)
        mu, logvar = posterior
        return reparameterize(mu, logvar, standard_normal(rng, mu.shape))

    def discriminator_loss(self, x, rng, posterior=None):
        """-Eq. (20) on one batch: BCE of T on z1 ~ q(z) (label 1) and z0 ~ N(0, I) (label 0).

        ``x`` is a mini-batch of training points (freshly binarized for MNIST and
        OMNIGLOT, as the authors do per batch), so z1 is one ancestral sample each;
        or ``posterior``, their (mu, logvar) cached for the round by the trainer.
        """
        z1 = self.aggregated_posterior_sample(x, rng, posterior)  # Algorithm 1, line 9
        z0 = standard_normal(rng, z1.shape)              # line 8
        return density_ratio_loss_on(self.density_ratio, z1, z0)

    def prior_sample(self, n, rng, data=None):
        """The paper's way: ancestral sampling from the aggregated posterior (needs data)."""
        if data is None:
            raise ValueError("sampling the implicit prior needs training data (ancestral "
                             "sampling); or use estimators.sir_prior_sample")
        idx = rng.integers(0, data.shape[0], n)
        return self.posterior_sample(ag.Tensor(data[idx]), rng)


class AVB(VAEMethod):
    """Adversarial Variational Bayes (Mescheder et al. 2017) with prior N(0, I).

    Implicit encoder z = f_phi(x, eps), eps ~ N(0, I_10); T(x, z) trained with
    sigmoid-BCE estimates ln q(z|x)/p(z), and the ELBO is estimated by
    E_q[log p(x|z) - T(x, z)].  q(z|x) has no density, so AVB has no
    importance-sampled log-likelihood.
    """

    name = "avb"
    explicit_posterior = False

    def __init__(self, dim, likelihood, latent, hidden, rng,
                 decoder_logvar_bounds=DECODER_LOGVAR_BOUNDS,
                 noise_dim=10, keep=0.5):
        super().__init__(ImplicitEncoder(dim, latent, hidden, noise_dim, rng),
                         Decoder(dim, latent, hidden, likelihood, rng, decoder_logvar_bounds),
                         latent)
        self.density_ratio = DensityRatio(dim + latent, hidden, rng, keep)

    def posterior_sample(self, x, rng):
        """z = f_phi(x, eps): a sample of the implicit q(z|x)."""
        return self.encoder(x, standard_normal(rng, (x.shape[0], self.encoder.noise_dim)))

    def elbo_terms(self, x, rng):
        z = self.posterior_sample(x, rng)
        t = self.density_ratio(ag.concatenate([x, z], axis=1))
        return self.decoder.log_likelihood(x, z), t

    def discriminator_loss(self, x, rng, posterior=None):
        """T(x, z) separates z ~ q(z|x) (label 1) from z ~ p(z) (label 0) on a batch x.

        ``posterior`` is always None: z = f_phi(x, eps) needs the encoder with fresh
        noise eps at every draw, so there are no posterior parameters to cache."""
        with ag.no_grad():
            z_q = self.posterior_sample(x, rng)
        z_p = standard_normal(rng, z_q.shape)
        return density_ratio_loss_on(self.density_ratio, ag.concatenate([x, z_q], axis=1),
                                     ag.concatenate([x, z_p], axis=1))


METHODS = {cls.name: cls for cls in (StandardVAE, VampPrior, ImplicitOptimalPrior, AVB)}


# =============================================================================
# 5. Training: Algorithm 1.
# =============================================================================
@contextlib.contextmanager
def frozen(*modules):
    """Inside this block the parameters of ``modules`` get no gradient and the modules
    run in eval mode (no dropout): psi while theta and phi are updated, and theta, phi
    while psi is (Algorithm 1, "update theta, phi with psi fixed" and the reverse).
    On leaving, each parameter's ``requires_grad`` and each module's mode are set
    back to what they were on entering, so a parameter frozen before stays frozen
    and a nested ``frozen`` of the same module leaves the outer one in force.
    ``None`` entries are skipped: ``frozen(model.density_ratio)`` does nothing for
    methods without T."""
    modules = [m for m in modules if m is not None]
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    for p, _ in flags:
        p.requires_grad = False
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad = flag
        for sub, mode in modes:
            sub.training = mode


@contextlib.contextmanager
def evaluation(model):
    """Inside this block ``model`` runs in eval mode (no dropout) and ops record no
    graph; every module's mode is restored on leaving."""
    modules = model.modules()
    modes = [m.training for m in modules]
    model.eval()
    try:
        with ag.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def shuffled(n, rng):
    """A random permutation of range(n) on the device: the order of ``n`` uniform draws.

    CuPy's Generator has no ``permutation`` (nor ``choice``), so the shuffle is
    built from what both NumPy and CuPy have, the same way on both; with
    float64 draws, ties (which would make the order depend on the sort) are
    practically impossible.
    """
    return ag.xp().argsort(rng.random(n))


def minibatches(n, batch_size, rng):
    """Indices of mini-batches of ``batch_size`` from a fresh shuffle of range(n) (an epoch).

    The indices stay on the device (no transfer per step)."""
    order = shuffled(n, rng)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def warmup_beta(epoch, warmup):
    """KL weight of the warm-up (Bowman et al. 2015): epoch / warmup, capped at 1."""
    return 1.0 if warmup <= 0 else min(1.0, epoch / warmup)


def mean_loss(losses):
    """The mean of an epoch's batch losses, summed on the device in batch order."""
    total = 0.0
    for loss in losses:
        total = total + loss
    return total / max(len(losses), 1)


def read_numbers(*values):
    """Python floats of scalars on the device (or the host), with one device-to-host
    transfer for all of them; ``None`` stays ``None``.

    On a GPU each read waits until the device has finished its queued work, so
    a training loop that read its loss every step would stall every step.  The
    trainer keeps an epoch's losses on the device and reads the round's numbers
    here, once, for the log and the NaN check.
    """
    xp = ag.xp()
    present = [xp.asarray(v, dtype=np.float64) for v in values if v is not None]
    host = iter(ag.to_numpy_all(present))   # one float64 group: one transfer
    return tuple(None if v is None else float(next(host)) for v in values)


def _hms(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class TrainingDiverged(RuntimeError):
    """A loss or the validation ELBO became NaN or infinite, or beyond ``Trainer.check_diverged``'s
    bounds."""


# The divergence rule (Trainer.check_diverged): numbers no working run reaches.
DIVERGED_NATS_PER_DIMENSION = 1e4   # |VAE loss| or |validation ELBO| per point and data dimension
DIVERGED_DENSITY_RATIO_LOSS = 10 * 2 * math.log(2)  # T's loss: ten times a coin flip's (1.39)


class Trainer:
    """Algorithm 1 alone (no files: runs.Trainer is the same with checkpoints), with
    the paper's setup (Sec. 5.2): Adam, mini-batches of 100,
    KL warm-up over the first ``warmup`` epochs, early stopping on the validation
    ELBO after ``patience`` epochs without progress.

    One epoch is one round of Algorithm 1: ``j1`` VAE epochs, then (IOP and AVB)
    ``j2`` epochs of the density ratio estimator.  ``save()`` is called after
    every round and does nothing here; runs.py's Trainer writes a checkpoint.
    """

    def __init__(self, model, data, rng, *, lr=1e-3, lr_density_ratio=1e-3, batch_size=100,
                 epochs=1000, warmup=100, patience=50, j1=1, j2=10, valid_samples=1,
                 log=print):
        self.model, self.data, self.rng, self.log = model, data, rng, log
        self.batch_size, self.epochs, self.warmup, self.patience = (batch_size, epochs, warmup,
                                                                    patience)
        self.j1, self.j2, self.valid_samples = j1, j2, valid_samples
        self.train_x, self.valid_x = ag.as_array(data.train), ag.as_array(data.valid)
        model.init_from_data(self.train_x, rng)
        self.vae_opt = Adam(model.vae_parameters(), lr=lr)
        self.disc_opt = (Adam(model.discriminator_parameters(), lr=lr_density_ratio)
                         if model.has_discriminator else None)
        self.epoch, self.history, self.bad_epochs = 0, [], 0
        self.best = {"epoch": 0, "valid_elbo": -math.inf, "state": None}

    @ag.denormals_flushed()  # numbers below about 1e-38 are 0: autograd_lite/denormals.py
    def train(self, epochs=None):
        """Algorithm 1 until ``epochs`` rounds (default: all) or early stopping; returns
        the history, one record per round."""
        model, rng, n, K = self.model, self.rng, self.train_x.shape[0], self.batch_size
        last = epochs or self.epochs
        self.clock = (time.time(), self.epoch)
        while self.epoch < last and not self.converged():           # 1: while not converged
            started, epoch = time.time(), self.epoch + 1
            beta = warmup_beta(epoch, self.warmup)
            model.train()
            with frozen(model.density_ratio):                    # psi fixed, T without dropout
                for _ in range(self.j1):                         # 2: for J1 steps (epochs)
                    vae_losses = []
                    for idx in minibatches(n, K, rng):           # 3: sample a minibatch from X
                        loss = model.loss(self.batch(idx), rng, beta)  # -Eq. (19), psi fixed
                        self.vae_opt.zero_grad()
                        loss.backward()                          # 4: gradients wrt theta, phi
                        self.vae_opt.step()                      # 5: update theta and phi
                        vae_losses.append(loss.data)
            disc_losses = None                                   # no T: VAE, VampPrior
            if model.has_discriminator:
                disc_losses = []                                 # (and none with j2 = 0)
                with frozen(model.encoder, model.decoder):       # theta, phi fixed
                    posteriors = self.round_posteriors()         # q(z|x) of X, if it can't change
                    for _ in range(self.j2):                     # 7: for J2 steps (epochs)
                        disc_losses = []
                        for idx in minibatches(n, K, rng):
                            # 8-9: z0 ~ p(z) and z1 ~ q(z) from a training minibatch; -Eq. (20)
                            x, posterior = self.discriminator_batch(idx, posteriors)
                            loss = model.discriminator_loss(x, rng, posterior)
                            self.disc_opt.zero_grad()
                            loss.backward()                      # 10: gradient wrt psi
                            self.disc_opt.step()                 # 11: update psi
                            disc_losses.append(loss.data)
            valid_elbo = elbo(model, self.valid_x, rng, K, self.valid_samples)  # this round's
            # the round's numbers reach the host together: one transfer per round
            loss, disc_loss, valid_elbo = read_numbers(
                mean_loss(vae_losses), None if disc_losses is None else mean_loss(disc_losses),
                valid_elbo)
            record = {"epoch": epoch, "beta": beta, "loss": loss, "disc_loss": disc_loss,
                      "valid_elbo": valid_elbo, "seconds": time.time() - started}
            self.check_diverged(record)         # NaN or huge: stop before saving
            self.epoch = epoch
            self.history.append(record)
            self.early_stopping(record)         # keep the best weights, count bad epochs
            self.after_round(record)            # more measurements, if a subclass wants them
            self.save()                         # a checkpoint in runs.py; nothing here
            self.log(self.progress(record, last))
        if self.converged():
            self.log(f"early stopping at epoch {self.epoch}: no better validation ELBO "
                     f"for {self.patience} epochs (best {self.best['valid_elbo']:.4f} "
                     f"at epoch {self.best['epoch']})")
        return self.history

    # --- the helpers of the loop ------------------------------------------------------
    def batch(self, idx):
        """The training points ``idx``, freshly binarized for MNIST and OMNIGLOT."""
        x = self.train_x[idx]
        return ag.Tensor(binarize(x, self.rng) if self.data.dynamic_binarization else x)

    def round_posteriors(self):
        """(mu_n, logvar_n) of q(z|x_n) for every training point, encoded once at the
        start of a round of T (lines 7-12) when they cannot change during it: the
        encoder is fixed there and x is not binarized afresh (OneHot, FreyFaces,
        Histopathology).  IOP's T steps then draw z1 = mu + sigma * eps from the rows
        of their minibatch instead of encoding it again: the same z for the same noise,
        with one encoder pass over X per round instead of J2.  ``None`` for MNIST and
        OMNIGLOT (each minibatch is a fresh binarization) and for AVB, whose implicit
        q(z|x) has no parameters to keep: each draw z = f(x, eps) needs fresh noise
        through the encoder."""
        if self.data.dynamic_binarization or not self.model.explicit_posterior:
            return None
        return aggregated_posterior_components(self.model, self.train_x)

    def discriminator_batch(self, idx, posteriors):
        """The training points ``idx`` for a step of T: (x, None), or (None, their rows
        of the round's ``posteriors``) where those are cached."""
        if posteriors is None:
            return self.batch(idx), None
        mu, logvar = posteriors
        return None, (ag.Tensor(mu[idx]), ag.Tensor(logvar[idx]))

    def converged(self):
        """Early stopping: ``patience`` epochs after the warm-up without a better
        validation ELBO (never, with patience 0)."""
        return self.patience > 0 and self.bad_epochs >= self.patience

    def check_diverged(self, record):
        """Stop a round whose numbers show divergence, even finite ones (a huge step size
        gives finite garbage: losses of 1e9 to 1e23 on OneHot).  The rule: a loss or the
        validation ELBO is NaN or infinite; or the VAE loss or validation ELBO (per point)
        exceeds ``DIVERGED_NATS_PER_DIMENSION`` = 1e4 nats times the data dimension in
        size (a working run stays below about 10 per dimension, Gaussian decoders at
        their tightest variance below about 4e3); or T's loss (Eq. 20) exceeds
        ``DIVERGED_DENSITY_RATIO_LOSS`` = 10 x 2 log 2, ten times that of T = 0, a
        classifier that guesses (a working T stays below 2 log 2)."""
        bound = DIVERGED_NATS_PER_DIMENSION * self.train_x.shape[1]
        for key, name, limit in (("loss", "the VAE loss", bound),
                                 ("disc_loss", "T's loss", DIVERGED_DENSITY_RATIO_LOSS),
                                 ("valid_elbo", "the validation ELBO", bound)):
            value = record[key]
            if value is None:
                continue
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged at epoch {record['epoch']}: {name} "
                                       f"is {value}")
            if abs(value) > limit:
                raise TrainingDiverged(f"training diverged at epoch {record['epoch']}: {name} "
                                       f"is {value:.4g}, beyond {limit:.4g} (the divergence "
                                       "rule); try a smaller step size")

    def early_stopping(self, record):
        """Keep the best weights by validation ELBO and count epochs without progress,
        from the end of the warm-up on: a warm-up epoch optimises another objective
        (beta < 1), so it can be neither the best epoch nor a bad one."""
        if record["beta"] < 1.0:
            return
        if record["valid_elbo"] > self.best["valid_elbo"]:
            # a copy on the device: keeping the best weights costs no transfer
            self.best = {"epoch": record["epoch"], "valid_elbo": record["valid_elbo"],
                         "state": self.model.state_dict(device=True)}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    def after_round(self, record):
        """Called after every round with its record; reproduce_onehot.py adds IOP's exact
        ELBO here.  Nothing by default."""

    def save(self):
        """Called after every round; runs.py's Trainer writes a checkpoint here."""

    def progress(self, record, last):
        """One line per round: losses, validation ELBO, beta, time and ETA."""
        start_time, start_epoch = self.clock
        elapsed = time.time() - start_time
        eta = elapsed / max(record["epoch"] - start_epoch, 1) * (last - record["epoch"])
        disc = "" if record["disc_loss"] is None else f" | T loss {record['disc_loss']:.4f}"
        return (f"epoch {record['epoch']:4d}/{last} | loss {record['loss']:.4f}{disc} | valid "
                f"ELBO {record['valid_elbo']:.4f} | beta {record['beta']:.2f} | "
                f"{record['seconds']:.1f}s | elapsed {_hms(elapsed)} | ETA {_hms(eta)}")

    def best_model(self):
        """The model with the weights of the best validation epoch after warm-up (early
        stopping); the last weights if training ended before the warm-up did."""
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        return self.model


# =============================================================================
# 6. Evaluation.
# =============================================================================
def row_batches(x, batch_size):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size]


def log_mean_exp(a, axis):
    """log mean(exp(a)) along ``axis`` of a plain array, with the max shift of
    ``logsumexp``: the Monte Carlo average of weights kept in log space."""
    return ag.logsumexp(ag.Tensor(a), axis=axis).data - math.log(a.shape[axis])


def mean_elbo_terms(model, x, rng, batch_size=100, samples=1):
    """Means over the rows of ``x`` of E_q[log p(x|z)] and of the KL estimate, with
    ``samples`` posterior draws per row (more draws: a less noisy curve)."""
    reconstruction, kl = 0.0, 0.0
    with evaluation(model):
        for _ in range(samples):
            for batch in row_batches(x, batch_size):
                r, k = model.elbo_terms(ag.Tensor(batch), rng)
                reconstruction = reconstruction + r.data.sum()
                kl = kl + k.data.sum()
    return reconstruction / (x.shape[0] * samples), kl / (x.shape[0] * samples)


def elbo(model, x, rng, batch_size=100, samples=1):
    """Mean ELBO (Eq. 2/3; estimated for AVB and IOP) of the rows of ``x``."""
    reconstruction, kl = mean_elbo_terms(model, x, rng, batch_size, samples)
    return reconstruction - kl


def importance_sampled_log_likelihood(x, posterior, log_likelihood, log_prior, samples, rng,
                                      batch_size=100, chunk=10_000):
    """log p(x) ~ log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x), z_s ~ q(z|x) (Burda et al. 2015).

    ``posterior(x) -> (mu, logvar)`` of a Gaussian proposal; ``log_likelihood(x, z)``
    and ``log_prior(z)`` are per-row log-densities.  Test points are processed
    ``batch_size`` at a time, with as many samples per pass as fit in ``chunk``
    decoder rows.  Returns a per-point array (on the backend).
    """
    xp = ag.xp()
    out = []
    with ag.no_grad():
        for batch in row_batches(x, batch_size):
            B = batch.shape[0]
            mu, logvar = posterior(ag.Tensor(batch))
            per_pass = max(1, min(samples, chunk // B))
            log_w = []
            for done in range(0, samples, per_pass):
                s = min(per_pass, samples - done)
                eps = standard_normal(rng, (s, B, mu.shape[1]), dtype=mu.dtype)
                z = reparameterize(mu, logvar, eps)                 # (s, B, d)
                log_q = log_normal_diag(z, mu, logvar).data         # (s, B)
                z = ag.reshape(z, (s * B, mu.shape[1]))
                xs = ag.Tensor(xp.broadcast_to(batch, (s,) + batch.shape).reshape(s * B, -1))
                log_joint = (log_likelihood(xs, z) + log_prior(z)).data.reshape(s, B)
                log_w.append((log_joint - log_q).astype(np.float64))
            out.append(log_mean_exp(xp.concatenate(log_w, axis=0), axis=0))
    return xp.concatenate(out)


def test_log_likelihood(model, x, samples, rng, batch_size=100, log_prior=None):
    """Importance-sampled log p(x) of each row under ``model`` (not for AVB).

    For IOP the prior density is log N(z) + T(z), so the result is an estimate.
    ``log_prior``: another prior for the same encoder and decoder (for example
    ``log_standard_normal``: IOP without T, the part of its score that T adds).
    """
    if not model.explicit_posterior:
        raise ValueError(f"{model.name}: q(z|x) is implicit, so log p(x) cannot be "
                         "importance-sampled")
    with evaluation(model):
        return importance_sampled_log_likelihood(x, model.encoder, model.decoder.log_likelihood,
                                                 log_prior or model.log_prior, samples, rng,
                                                 batch_size)


def aggregated_posterior_components(model, train_x, batch_size=1000):
    """(mu_n, logvar_n) of q(z | x_n) for every training point: the N components of
    the aggregated posterior q(z) (Eqs. 6 and 8), IOP's true prior.  ``train_x``
    must be what the encoder saw in training (one fixed binarization of binary
    data sets).  The exact estimators below take these components."""
    mus, logvars = [], []
    with evaluation(model):
        for batch in row_batches(train_x, batch_size):
            mu, logvar = model.encoder(ag.Tensor(batch))
            mus.append(mu.data)
            logvars.append(logvar.data)
    xp = ag.xp()
    return xp.concatenate(mus), xp.concatenate(logvars)


def log_aggregated_posterior(z, components):
    """log q(z) = log (1/N) sum_n q(z | x_n), the empirical aggregated posterior of
    Eq. (8) given by its ``components`` (``aggregated_posterior_components``): the
    mixture density ``log_normal_mixture`` in float64, for a plain array of points
    z; a plain (M,) float64 array out."""
    mu_n, logvar_n = (ag.Tensor(a.astype(np.float64)) for a in components)
    with ag.no_grad():
        return log_normal_mixture(ag.Tensor(z.astype(np.float64)), mu_n, logvar_n).data


if __name__ == "__main__":  # the command line lives in cli.py
    import sys

    from cli import main
    sys.exit(main())
