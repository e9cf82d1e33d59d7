"""VAE with Implicit Optimal Priors (Takahashi et al., AAAI 2019), from scratch.

The paper alone, top to bottom in its order: 1. distributions; 2. networks (Sec. 5.2);
3. the density ratio trick (Eqs. 12-14); 4. the four methods behind one contract
(``VAEMethod``); 5. Algorithm 1 (``Trainer.train``); 6. the importance-sampled log p(x).
Estimators beyond the paper are in estimators.py; runs, checkpoints, experiments and the
command line (``iopvae train ...``) are in the package experiments/, which this file never
imports.

Array code asks ``autograd_lite`` for the array module, so it runs on NumPy or CuPy
alike; data cross to the device when a data set is loaded, and a round of Algorithm 1
reads its numbers back in one transfer.
"""
import contextlib
import math

import numpy as np

import autograd_lite as ag
from autograd_lite import nn
from autograd_lite.optim import Adam
from datasets import binarize  # dynamic binarisation of training batches

LOG_2PI = math.log(2 * math.pi)
# ln sigma^2 bounds the paper does not give: the encoder's as in VampPrior's public code;
# the decoder's lower one is below a 1/256 grey level squared (e^-12).
ENCODER_LOGVAR_BOUNDS = (-6.0, 2.0)
DECODER_LOGVAR_BOUNDS = (-12.0, 0.0)


# ==== 1. Distributions (every log-density is summed over the last axis) =========
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


def log_normal_components(z, mu, logvar, block_elements=1 << 22):
    """The (B, K) matrix ln N(z_b | mu_k, diag exp(logvar_k)), z (B, d), mu, logvar (K, d),
    in row blocks of about ``block_elements``.

    With s = exp(logvar) every pair's quadratic is one matrix product,
    [z^2, z, 1] @ [1/s, -2 mu/s, sum_d (mu^2/s + log s) + d log 2 pi]^T.  The expansion
    loses about 1e-3 nats in float32 at MNIST's sizes, 1e-11 in float64 (evaluation)."""
    xp = ag.xp()
    B, d = z.shape
    K = mu.shape[0]
    precision = ag.exp(-logvar)
    constant = (mu * mu * precision + logvar).sum(axis=1, keepdims=True) + d * LOG_2PI
    components = ag.concatenate([precision, -2.0 * mu * precision, constant], axis=1).T
    rows = max(1, block_elements // K)
    for start in range(0, B, rows):
        zb = z[start:start + rows]
        ones = ag.Tensor(xp.ones((zb.shape[0], 1), dtype=zb.dtype))
        yield -0.5 * ag.matmul(ag.concatenate([zb * zb, zb, ones], axis=1), components)


def log_normal_mixture(z, mu, logvar, block_elements=1 << 22):
    """log (1/K) sum_k N(z | mu_k, diag exp(logvar_k)), z (B, d), mu, logvar (K, d) -> (B,):
    the VampPrior of Eq. (9) and the empirical aggregated posterior of Eq. (8), a
    max-shifted logsumexp over each block of ``log_normal_components``."""
    blocks = [ag.logsumexp(block, axis=1)
              for block in log_normal_components(z, mu, logvar, block_elements)]
    log_sum = blocks[0] if len(blocks) == 1 else ag.concatenate(blocks, axis=0)
    return log_sum - math.log(mu.shape[0])


# ==== 2. Networks (Sec. 5.2: two layers of 500 units; gated, Glorot init) ========
class Encoder(nn.Module):
    """q_phi(z|x) = N(z | mu_phi(x), diag sigma^2_phi(x)) (Sec. 2.1), ln sigma^2 bounded."""

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
    """p_theta(x|z): Bernoulli logits, or for grey images a Gaussian, its mean squashed
    into [0, 1] by a sigmoid (Sec. 5.2), its log-variance bounded."""

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


# ==== 3. The density ratio trick (Eqs. 12-14): T tells z1 ~ q(z) from z0 ~ p(z) ===
class DensityRatio(nn.Module):
    """T_psi(z), the classifier's logit: two tanh layers with dropout (keep 0.5) after each,
    or (``dropout="last"``, as the authors' code) before the output layer alone; trained
    by Eq. (20), its optimum is T*(z) = ln q_phi(z) / p(z) (Eq. 14).  AVB's T(x, z) too."""

    def __init__(self, dim, hidden, rng, keep=0.5, dropout="every"):
        every = {"every": keep, "last": None}[dropout]  # where the dropout layers go
        self.body = nn.mlp((dim, hidden, hidden), "tanh", dropout_keep=every, rng=rng)
        if dropout == "last" and keep < 1.0:
            self.body.layers.append(nn.Dropout(keep, rng))
        self.head = nn.Linear(hidden, 1, rng)

    def forward(self, z):
        out = self.head(self.body(z))
        return ag.reshape(out, (out.shape[0],))


def density_ratio_loss(t_positive, t_negative):
    """-[mean ln sigma(T(z1)) + mean ln(1 - sigma(T(z0)))]: Eq. (13)/(20), negated, with
    -ln sigma(t) = BCE(t, 1) and -ln(1 - sigma(t)) = BCE(t, 0) on logits."""
    xp = ag.xp()
    ones = xp.ones(t_positive.shape, dtype=t_positive.dtype)
    zeros = xp.zeros(t_negative.shape, dtype=t_negative.dtype)
    return (ag.binary_cross_entropy_with_logits(t_positive, ones).mean()
            + ag.binary_cross_entropy_with_logits(t_negative, zeros).mean())


def density_ratio_loss_on(density_ratio, z1, z0):
    """-Eq. (20) of ``density_ratio`` on z1 (label 1) and z0 (label 0), T run once on
    [z1; z0] (it acts row by row, dropout too: the same as apart, at half the calls)."""
    t = density_ratio(ag.concatenate([z1, z0]))
    n = z1.shape[0]
    return density_ratio_loss(t[:n], t[n:])


# ==== 4. The four methods: per point, E_q[log p(x|z)] and the (estimated) KL =====
class VAEMethod(nn.Module):
    """The contract of the four methods: an encoder q_phi(z|x), a decoder p_theta(x|z)
    and a prior p_lambda(z) (N(0, I) unless overridden).  Algorithm 1 calls ``loss``
    (minus the ELBO of Eq. (2): Eq. (3) with N(0, I), the VampPrior of Eq. (9) as the
    prior, or minus Eq. (19) for IOP) and ``vae_parameters``; with a density ratio
    estimator T_psi (``density_ratio``), also ``aggregated_posterior_sample`` (z1,
    line 9), ``density_ratio_loss`` (-Eq. 20) and ``density_ratio_parameters``.
    ``explicit_posterior``: whether q(z|x) has a density (importance sampling needs it).
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
    def has_density_ratio(self):
        """Whether the method trains a density ratio estimator T_psi (IOP, AVB)."""
        return self.density_ratio is not None

    def aggregated_posterior_sample(self, x, rng, posterior=None):
        """z1 ~ q(z) (methods with a density ratio estimator)."""
        raise NotImplementedError(f"{self.name} has no density ratio estimator")

    def density_ratio_loss(self, z1, z0, x=None):
        """-Eq. (20) on z1 ~ q(z) and z0 ~ p(z) (methods with a density ratio estimator)."""
        raise NotImplementedError(f"{self.name} has no density ratio estimator")

    def density_ratio_parameters(self):
        """psi: the parameters of T_psi (none without one)."""
        return self.density_ratio.parameters() if self.has_density_ratio else []


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
    """VAE with the VampPrior p(z) = (1/K) sum_k q(z | u_k) (Eq. 9), pseudo-inputs u_k
    clipped into [0, 1].  ``pseudo_init``: U[0, 1] (``"uniform"``), training points
    (``"data"``; plus N(0, 0.01^2), ``"noisy_data"``, as VampPrior's code) or 0.5 + N(0,
    0.01^2) (``"constant"``, the failure case: the prior stays one Gaussian)."""

    name = "vamp"
    PSEUDO_INITS = ("uniform", "data", "noisy_data", "constant")

    def __init__(self, dim, likelihood, latent, hidden, rng,
                 decoder_logvar_bounds=DECODER_LOGVAR_BOUNDS,
                 encoder_logvar_bounds=ENCODER_LOGVAR_BOUNDS,
                 components=500, pseudo_init="uniform"):
        super().__init__(dim, likelihood, latent, hidden, rng, decoder_logvar_bounds,
                         encoder_logvar_bounds)
        if pseudo_init in ("uniform", "data", "noisy_data"):
            u = rng.random((components, dim), dtype=np.float32)
        elif pseudo_init == "constant":
            u = 0.5 + 0.01 * rng.standard_normal((components, dim), dtype=np.float32)
        else:
            raise ValueError(f"unknown pseudo_init {pseudo_init!r}: uniform, data or constant")
        self.pseudo_inputs = nn.Parameter(u)
        self.pseudo_init = pseudo_init

    def init_from_data(self, train_x, rng):
        """For the starts from data: K distinct random training points (plus noise)."""
        n, k = train_x.shape[0], self.pseudo_inputs.shape[0]
        if self.pseudo_init in ("data", "noisy_data"):
            if k > n:
                raise ValueError(f"pseudo_init={self.pseudo_init!r} needs at least K = {k} "
                                 f"training points (got {n})")
            u = train_x[shuffled(n, rng)[:k]].copy()
            if self.pseudo_init == "noisy_data":
                u = u + 0.01 * rng.standard_normal(u.shape, u.dtype)
            self.pseudo_inputs.data = u

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


def aggregated_posterior_components(model, train_x, batch_size=1000):
    """(mu_n, logvar_n) of q(z | x_n), the N components of the aggregated posterior q(z)
    of the training points ``train_x`` as the encoder saw them (Eqs. 6, 8)."""
    mus, logvars = [], []
    with evaluation(model):
        for batch in row_batches(train_x, batch_size):
            mu, logvar = model.encoder(ag.Tensor(batch))
            mus.append(mu.data)
            logvars.append(logvar.data)
    xp = ag.xp()
    return xp.concatenate(mus), xp.concatenate(logvars)


def log_aggregated_posterior(z, components):
    """log q(z) = log (1/N) sum_n q(z | x_n) (Eq. 8) of its ``components``, in float64,
    for a plain array z."""
    mu_n, logvar_n = (ag.Tensor(a.astype(np.float64)) for a in components)
    with ag.no_grad():
        return log_normal_mixture(ag.Tensor(z.astype(np.float64)), mu_n, logvar_n).data


class ImplicitOptimalPrior(StandardVAE):
    """The proposed method: the aggregated posterior q_phi(z) as the prior (Eq. 6).
    KL(q(z|x) || q(z)) = KL(q(z|x) || N(0, I)) - E_q[ln q(z)/p(z)] (Eq. 10), the
    log-ratio estimated by T_psi(z) (Eqs. 12-15)."""

    name = "iop"

    def __init__(self, dim, likelihood, latent, hidden, rng,
                 decoder_logvar_bounds=DECODER_LOGVAR_BOUNDS,
                 encoder_logvar_bounds=ENCODER_LOGVAR_BOUNDS, keep=0.5, dropout="every"):
        super().__init__(dim, likelihood, latent, hidden, rng, decoder_logvar_bounds,
                         encoder_logvar_bounds)
        self.density_ratio = DensityRatio(latent, hidden, rng, keep, dropout)

    def objective_terms(self, x, rng):
        """The three terms of Eq. (19) per point at one z = mu + sigma * eps (Eq. 18):
        KL(q(z|x) || N(0, I)), ln p(x|z) and T_psi(z).  z is not detached: the gradient
        through T reaches the encoder (docs/derivation.md, Section 6)."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, standard_normal(rng, mu.shape))
        return kl_standard_normal(mu, logvar), self.decoder.log_likelihood(x, z), \
            self.density_ratio(z)

    def loss(self, x, rng, beta=1.0):
        """Minus Eq. (19) on a mini-batch, -(1/K) sum_i [-KL_i + ln p(x_i|z_i) + T(z_i)];
        ``beta`` < 1 weighs the KL estimate -KL + T (Eq. 15) during the warm-up."""
        kl_normal, log_likelihood, t = self.objective_terms(x, rng)
        return -(-beta * kl_normal + log_likelihood + beta * t).mean()

    def elbo_terms(self, x, rng):
        """(ln p(x|z), KL(q(z|x) || q(z)) estimated by Eq. (15)) per row."""
        kl_normal, log_likelihood, t = self.objective_terms(x, rng)
        return log_likelihood, kl_normal - t

    def log_prior(self, z):
        """log q(z) ~ log N(z) + T_psi(z) (Eq. 14): an estimate, not a normalised density."""
        return log_standard_normal(z) + self.density_ratio(z)

    def aggregated_posterior_sample(self, x, rng, posterior=None):
        """z ~ q_phi(z) = E_pD(x)[q(z|x)] (Eq. 6) by ancestral sampling: z ~ q(z|x) for
        training points x, the encoder fixed; or from their (mu, logvar), ``posterior``,
        where already known (the same z for the same noise)."""
        if posterior is None:
            with ag.no_grad():
                posterior = self.encoder(x)
        mu, logvar = posterior
        return reparameterize(mu, logvar, standard_normal(rng, mu.shape))

    def density_ratio_loss(self, z1, z0, x=None):
        """-Eq. (20): BCE of T on z1 ~ q(z) (label 1) and z0 ~ N(0, I) (label 0)."""
        return density_ratio_loss_on(self.density_ratio, z1, z0)

    def prior_sample(self, n, rng, data=None):
        """The paper's way: ancestral sampling from the aggregated posterior (needs data)."""
        if data is None:
            raise ValueError("sampling the implicit prior needs training data (ancestral "
                             "sampling); or use estimators.sir_prior_sample")
        idx = rng.integers(0, data.shape[0], n)
        return self.posterior_sample(ag.Tensor(data[idx]), rng)


class AVB(VAEMethod):
    """Adversarial Variational Bayes (Mescheder et al. 2017), prior N(0, I): an implicit
    encoder z = f_phi(x, eps); T(x, z) estimates ln q(z|x)/p(z), so the ELBO is
    E_q[log p(x|z) - T(x, z)].  No density, so no importance-sampled log p(x)."""

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

    def aggregated_posterior_sample(self, x, rng, posterior=None):
        """z = f_phi(x, eps) for training points x, the encoder fixed (``posterior`` is
        always None: each draw needs fresh noise through the encoder)."""
        with ag.no_grad():
            return self.posterior_sample(x, rng)

    def density_ratio_loss(self, z1, z0, x=None):
        """T(x, z) separates (x, z1), z1 ~ q(z|x) (label 1) from (x, z0), z0 ~ p(z) (label 0)."""
        return density_ratio_loss_on(self.density_ratio, ag.concatenate([x, z1], axis=1),
                                     ag.concatenate([x, z0], axis=1))


METHODS = {cls.name: cls for cls in (StandardVAE, VampPrior, ImplicitOptimalPrior, AVB)}


# ==== 5. Training: Algorithm 1 ==================================================
@contextlib.contextmanager
def frozen(*modules):
    """Algorithm 1's "with psi fixed" (and "with theta, phi fixed"): inside the block the
    parameters of ``modules`` get no gradient and the modules run in eval mode (no
    dropout); on leaving, each flag and mode is set back as it was (so nesting works).
    ``None`` is skipped: ``frozen(model.density_ratio)`` does nothing without T."""
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
    """A random permutation of range(n) on the device, the order of n float64 uniform
    draws (CuPy's Generator has no ``permutation``)."""
    return ag.xp().argsort(rng.random(n))


def minibatches(n, batch_size, rng):
    """Indices (on the device) of the mini-batches of one epoch, freshly shuffled."""
    order = shuffled(n, rng)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def warmup_beta(epoch, warmup):
    """KL weight of the warm-up (Bowman et al. 2015): epoch / warmup, capped at 1."""
    return 1.0 if warmup <= 0 else min(1.0, epoch / warmup)


def mean_loss(losses):
    """The mean of an epoch's batch losses, summed on the device in batch order."""
    return None if losses is None else sum(losses[1:], losses[0]) / len(losses)


class Trainer:
    """Algorithm 1 with the paper's setup (Sec. 5.2): Adam, mini-batches of 100, KL
    warm-up, early stopping on the validation ELBO after ``patience`` epochs (0: never).
    A round: ``j1`` VAE epochs, then ``j2`` epochs of T.  The hooks ``check`` and
    ``after_round`` do nothing here; runs.Trainer fills them in (divergence, timing,
    progress, checkpoints)."""

    def __init__(self, model, data, rng, *, lr=1e-3, lr_density_ratio=1e-3, batch_size=100,
                 epochs=1000, warmup=100, patience=50, j1=1, j2=10, valid_samples=1):
        self.model, self.data, self.rng = model, data, rng
        self.batch_size, self.epochs, self.warmup, self.patience = (batch_size, epochs, warmup,
                                                                    patience)
        self.j1, self.j2, self.valid_samples = j1, j2, valid_samples
        self.train_x, self.valid_x = ag.as_array(data.train), ag.as_array(data.valid)
        model.init_from_data(self.train_x, rng)
        self.vae_opt = Adam(model.vae_parameters(), lr=lr)
        self.density_ratio_opt = (Adam(model.density_ratio_parameters(), lr=lr_density_ratio)
                         if model.has_density_ratio else None)
        self.epoch, self.history, self.bad_epochs = 0, [], 0
        self.best = {"epoch": 0, "valid_elbo": -math.inf, "state": None}

    def train(self, epochs=None):
        """Algorithm 1 until ``epochs`` rounds (default: all) or early stopping; returns
        the history, one record per round."""
        model, rng, n, K = self.model, self.rng, self.train_x.shape[0], self.batch_size
        while self.epoch < (epochs or self.epochs) and not self.converged():  # 1: while
            epoch = self.epoch + 1
            beta = warmup_beta(epoch, self.warmup)
            model.train()
            with frozen(model.density_ratio):                  # psi fixed, T without dropout
                for _ in range(self.j1):                       # 2: for J1 steps (epochs)
                    vae_losses = []
                    for idx in minibatches(n, K, rng):         # 3: minibatch x(1..K) of X
                        loss = model.loss(self.batch(idx), rng, beta)  # -Eq. (19)
                        self.vae_opt.zero_grad()
                        loss.backward()                        # 4: gradients wrt theta, phi
                        self.vae_opt.step()                    # 5: update theta and phi
                        vae_losses.append(loss.data)
            density_ratio_losses = None                                 # no T: VAE, VampPrior
            if model.has_density_ratio:
                with frozen(model.encoder, model.decoder):     # theta, phi fixed
                    cached = self.round_posteriors()
                    for _ in range(self.j2):                   # 7: for J2 steps (epochs)
                        density_ratio_losses = []
                        for idx in minibatches(n, K, rng):
                            x, q = self.density_ratio_batch(idx, cached)
                            z1 = model.aggregated_posterior_sample(x, rng, q)  # 9: z1 ~ q(z)
                            z0 = standard_normal(rng, z1.shape)  # 8: z0 ~ p(z) = N(0, I)
                            loss = model.density_ratio_loss(z1, z0, x)  # -Eq. (20)
                            self.density_ratio_opt.zero_grad()
                            loss.backward()                    # 10: gradient wrt psi
                            self.density_ratio_opt.step()               # 11: update psi
                            density_ratio_losses.append(loss.data)
            valid_elbo = elbo(model, self.valid_x, rng, K, self.valid_samples)
            loss, t_loss, valid_elbo = ag.read_numbers(  # one device-to-host read a round
                mean_loss(vae_losses), mean_loss(density_ratio_losses), valid_elbo)
            record = {"epoch": epoch, "beta": beta, "loss": loss, "disc_loss": t_loss,
                      "valid_elbo": valid_elbo}
            self.check(record)
            self.epoch = epoch
            self.history.append(record)
            self.early_stopping(record)
            self.after_round(record)
        return self.history

    # --- the helpers of the loop ------------------------------------------------------
    def batch(self, idx):
        """The training points ``idx``, freshly binarized for MNIST and OMNIGLOT."""
        x = self.train_x[idx]
        return ag.Tensor(binarize(x, self.rng) if self.data.dynamic_binarization else x)

    def round_posteriors(self):
        """q(z|x_n) of every training point, encoded once a round where it cannot change
        (x not binarized afresh; not AVB): line 9 then draws z1 from its rows."""
        if self.data.dynamic_binarization or not self.model.explicit_posterior:
            return None
        return aggregated_posterior_components(self.model, self.train_x)

    def density_ratio_batch(self, idx, posteriors):
        """(x, None) for the points ``idx``, or (None, their rows of ``posteriors``)."""
        if posteriors is None:
            return self.batch(idx), None
        mu, logvar = posteriors
        return None, (ag.Tensor(mu[idx]), ag.Tensor(logvar[idx]))

    def converged(self):
        """Early stopping: ``patience`` epochs without a better validation ELBO (0: never)."""
        return self.patience > 0 and self.bad_epochs >= self.patience

    def early_stopping(self, record):
        """Keep the best weights by validation ELBO and count epochs without progress,
        after the warm-up (beta < 1 optimises another objective)."""
        if record["beta"] < 1.0:
            return
        if record["valid_elbo"] > self.best["valid_elbo"]:
            # a copy on the device: keeping the best weights costs no transfer
            self.best = {"epoch": record["epoch"], "valid_elbo": record["valid_elbo"],
                         "state": self.model.state_dict(device=True)}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    def check(self, record):
        """Hook: called with each round's record before it is accepted."""

    def after_round(self, record):
        """Hook: called after each round with its record."""

    def best_model(self):
        """The model with the weights of the best validation epoch after warm-up (early
        stopping); the last weights if training ended before the warm-up did."""
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        return self.model


# ==== 6. Evaluation ==============================================================
def row_batches(x, batch_size):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size]


def log_mean_exp(a, axis):
    """log mean(exp(a)) along ``axis`` of a plain array, max-shifted (``logsumexp``)."""
    return ag.logsumexp(ag.Tensor(a), axis=axis).data - math.log(a.shape[axis])


def mean_elbo_terms(model, x, rng, batch_size=100, samples=1):
    """Means over the rows of ``x`` of E_q[log p(x|z)] and the KL, ``samples`` draws a row."""
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
                                      batch_size=100, chunk=10_000, progress=None):
    """log p(x) ~ log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x), z_s ~ q(z|x) (Burda et al.
    2015), per point: ``posterior(x) -> (mu, logvar)`` the proposal, ``log_likelihood``
    and ``log_prior`` per-row log-densities; as many samples a pass as fit ``chunk``.
    ``progress(n)``, if given, hears of the n (point, sample) pairs of each pass."""
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
                if progress:
                    progress(s * B)
            out.append(log_mean_exp(xp.concatenate(log_w, axis=0), axis=0))
    return xp.concatenate(out)


def test_log_likelihood(model, x, samples, rng, batch_size=100, log_prior=None, progress=None):
    """Importance-sampled log p(x) of each row (not for AVB); for IOP an estimate, with
    log N(z) + T(z) as the log prior.  ``log_prior``: another prior for the same weights;
    ``progress``: as in ``importance_sampled_log_likelihood``."""
    if not model.explicit_posterior:
        raise ValueError(f"{model.name}: q(z|x) is implicit, so log p(x) cannot be "
                         "importance-sampled")
    with evaluation(model):
        return importance_sampled_log_likelihood(x, model.encoder, model.decoder.log_likelihood,
                                                 log_prior or model.log_prior, samples, rng,
                                                 batch_size, progress=progress)


if __name__ == "__main__":  # this file is the paper; the command line is the tools'
    import sys
    words = " ".join(sys.argv[1:]) or "--help"
    print(f"error: iopvae.py holds the paper's code and runs no command; the command line is "
          f"`iopvae {words}` (after `pip install -e .`), or `python -m experiments {words}` "
          "from the source tree", file=sys.stderr)
    sys.exit(2)
