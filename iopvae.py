"""VAE with Implicit Optimal Priors (Takahashi et al., AAAI 2019), from scratch.

The file reads top to bottom like the paper:

1. distributions: Gaussian and Bernoulli log-densities, the closed-form KL of Eq. (3);
2. networks: the gated encoder and decoder, the density ratio estimator T_psi(z);
3. the four methods: standard VAE (Eq. 3), VampPrior (Eq. 9), AVB, and the
   implicit optimal prior (IOP, Eqs. 10-21);
4. training: Algorithm 1 with warm-up, early stopping, checkpoints;
5. evaluation: ELBO and importance-sampled log-likelihood;
6. the command line: ``python iopvae.py train|evaluate|sample|table2``.

All array code asks ``autograd_lite`` for the array module, so it runs on NumPy
or CuPy alike; data cross to the device once, when a data set is loaded, and
numbers come back to the host only for logging and checkpoints.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

import autograd_lite as ag
from autograd_lite import nn
from autograd_lite.files import atomic_write
from datasets import binarize  # dynamic binarisation of training batches
from autograd_lite.optim import Adam

LOG_2PI = math.log(2 * math.pi)
ENCODER_LOGVAR_BOUNDS = (-6.0, 2.0)


# =============================================================================
# 1. Distributions.  Every log-density is summed over the last axis.
# =============================================================================
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

    The VampPrior of Eq. (9): every z against every component, then a
    max-shifted logsumexp over the K components.  The pairwise terms form a
    (rows, K, d) array, so many rows (evaluation) are taken in blocks of about
    ``block_elements`` elements; a training batch is one block.
    """
    B, d = z.shape
    K = mu.shape[0]
    rows = max(1, block_elements // (K * d))
    mu, logvar = ag.reshape(mu, (1, K, d)), ag.reshape(logvar, (1, K, d))
    blocks = []
    for start in range(0, B, rows):
        zb = z[start:start + rows]
        pairwise = log_normal_diag(ag.reshape(zb, (zb.shape[0], 1, d)), mu, logvar)
        blocks.append(ag.logsumexp(pairwise, axis=1))
    log_sum = blocks[0] if len(blocks) == 1 else ag.concatenate(blocks, axis=0)
    return log_sum - math.log(K)


def reparameterize(mu, logvar, eps):
    """z = mu + sigma * eps, the reparameterisation trick under Eq. (18)."""
    return mu + ag.exp(0.5 * logvar) * eps


# =============================================================================
# 2. Networks (Sec. 5.2: two layers of 500 units, gated for encoder and decoder,
#    tanh with dropout for the density ratio estimator, Glorot initialisation).
# =============================================================================
class Encoder(nn.Module):
    """q_phi(z|x) = N(z | mu_phi(x), diag sigma^2_phi(x)) (Sec. 2.1)."""

    def __init__(self, dim, latent, hidden, rng):
        self.body = nn.mlp((dim, hidden, hidden), "gated", rng=rng)
        self.head = nn.Linear(hidden, 2 * latent, rng)
        self.latent = latent

    def forward(self, x):
        h = self.head(self.body(x))
        mu, logvar = h[:, :self.latent], h[:, self.latent:]
        return mu, ag.hardtanh(logvar, *ENCODER_LOGVAR_BOUNDS)


class Decoder(nn.Module):
    """p_theta(x|z): Bernoulli logits for binary data; for grey images a Gaussian
    whose mean is squashed into [0, 1] by a sigmoid and whose log-variance is
    bounded to ``logvar_bounds`` (Sec. 5.2)."""

    def __init__(self, dim, latent, hidden, likelihood, rng, logvar_bounds=(-9.0, 0.0)):
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


class DensityRatio(nn.Module):
    """T_psi(z), a classifier's logit: two tanh layers with dropout (keep 0.5).

    Trained by Eq. (13)/(20), its optimum is T*(z) = ln q_phi(z) / p(z) (Eq. 14).
    Also AVB's discriminator T(x, z), fed the concatenation [x, z].
    """

    def __init__(self, dim, hidden, rng, keep=0.5):
        self.body = nn.mlp((dim, hidden, hidden), "tanh", dropout_keep=keep, rng=rng)
        self.head = nn.Linear(hidden, 1, rng)

    def forward(self, z):
        out = self.head(self.body(z))
        return ag.reshape(out, (out.shape[0],))


# =============================================================================
# 3. The four methods.  Each gives, per data point, the reconstruction term
#    E_q[log p(x|z)] and its (estimated) KL term; the ELBO is their difference.
# =============================================================================
class StandardVAE(nn.Module):
    """VAE with the standard Gaussian prior p(z) = N(0, I): the ELBO of Eq. (3)."""

    name = "vae"
    explicit_posterior = True

    def __init__(self, dim, likelihood, latent, hidden, rng, decoder_logvar_bounds=(-9.0, 0.0)):
        self.encoder = Encoder(dim, latent, hidden, rng)
        self.decoder = Decoder(dim, latent, hidden, likelihood, rng, decoder_logvar_bounds)
        self.latent = latent

    # --- what the trainer needs -------------------------------------------------
    def vae_parameters(self):
        """theta and phi (and, for VampPrior, the pseudo-inputs)."""
        return self.encoder.parameters() + self.decoder.parameters()

    def discriminators(self):
        """The density ratio networks trained on their own (psi); none here."""
        return []

    @property
    def has_discriminator(self):
        return bool(self.discriminators())

    def discriminator_parameters(self):
        return [p for module in self.discriminators() for p in module.parameters()]

    def posterior_sample(self, x, rng):
        """z ~ q_phi(z|x) by reparameterisation (Eq. 18)."""
        mu, logvar = self.encoder(x)
        return reparameterize(mu, logvar, standard_normal(rng, mu.shape))

    def init_from_data(self, train_x, rng):
        """A hook for methods whose start depends on the training data (VampPrior)."""

    def elbo_terms(self, x, rng):
        """(E_q[log p(x|z)], KL estimate) per row, one reparameterised sample (L = 1)."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, standard_normal(rng, mu.shape))
        return self.decoder.log_likelihood(x, z), self.kl(z, mu, logvar)

    def loss(self, x, rng, beta=1.0):
        """-(reconstruction - beta * KL), averaged over the batch (beta: warm-up)."""
        reconstruction, kl = self.elbo_terms(x, rng)
        return -(reconstruction - beta * kl).mean()

    def kl(self, z, mu, logvar):
        """KL(q(z|x) || N(0, I)) in closed form (Eq. 3)."""
        return kl_standard_normal(mu, logvar)

    # --- what evaluation needs ----------------------------------------------------
    def log_prior(self, z):
        """log p_lambda(z)."""
        return log_standard_normal(z)

    def prior_sample(self, n, rng, data=None):
        """z ~ p_lambda(z)."""
        return standard_normal(rng, (n, self.latent))


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

    def __init__(self, dim, likelihood, latent, hidden, rng, decoder_logvar_bounds=(-9.0, 0.0),
                 components=500, pseudo_init="uniform"):
        super().__init__(dim, likelihood, latent, hidden, rng, decoder_logvar_bounds)
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
            idx = rng.choice(train_x.shape[0], self.pseudo_inputs.shape[0], replace=False)
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

    Eq. (21) says T's own dependence on phi can be ignored.  The gradient
    through the reparameterised z = mu + sigma * eps into T(z) must still reach
    the encoder: z is never detached here.
    """

    name = "iop"

    def __init__(self, dim, likelihood, latent, hidden, rng, decoder_logvar_bounds=(-9.0, 0.0),
                 keep=0.5):
        super().__init__(dim, likelihood, latent, hidden, rng, decoder_logvar_bounds)
        self.density_ratio = DensityRatio(latent, hidden, rng, keep)

    def discriminators(self):
        return [self.density_ratio]

    def kl(self, z, mu, logvar):
        """Eq. (15): KL(q(z|x) || q(z)) ~ KL(q(z|x) || N(0, I)) - T_psi(z)."""
        return kl_standard_normal(mu, logvar) - self.density_ratio(z)

    def log_prior(self, z):
        """log q(z) ~ log N(z) + T_psi(z) (Eq. 14): an estimate, not a normalised density."""
        return log_standard_normal(z) + self.density_ratio(z)

    # --- Eq. (20): training T_psi ----------------------------------------------------
    def aggregated_posterior_sample(self, x, rng):
        """Ancestral sampling from q_phi(z) = E_pD(x)[q(z|x)] (Eq. 6): for data points
        x drawn from the training set, z ~ q(z|x).  The encoder is fixed (no graph)."""
        with ag.no_grad():
            mu, logvar = self.encoder(x)
        return reparameterize(mu, logvar, standard_normal(rng, mu.shape))

    def discriminator_loss(self, x, rng):
        """-Eq. (20) on one batch: BCE of T on z1 ~ q(z) (label 1) and z0 ~ N(0, I) (label 0).

        ``x`` is a mini-batch of training points (freshly binarized for MNIST and
        OMNIGLOT, as the authors do per batch), so z1 is one ancestral sample each.
        """
        z1 = self.aggregated_posterior_sample(x, rng)
        z0 = standard_normal(rng, z1.shape)
        return density_ratio_loss(self.density_ratio(z1), self.density_ratio(z0))

    def prior_sample(self, n, rng, data=None):
        """The paper's way: ancestral sampling from the aggregated posterior (needs data)."""
        if data is None:
            raise ValueError("sampling the implicit prior needs training data (ancestral "
                             "sampling); or use sir_prior_sample")
        idx = rng.integers(0, data.shape[0], n)
        return self.posterior_sample(ag.Tensor(data[idx]), rng)

    def sir_prior_sample(self, n, rng, candidates=None):
        """Sampling-importance-resampling from N(0, I) with weights exp(T(z)) ~ q(z)/p(z).

        Not in the paper: it needs no data, only the trained T.  Draws
        ``candidates`` (default 20 n) from N(0, I) and resamples n of them.
        """
        xp = ag.xp()
        m = candidates or 20 * n
        z = standard_normal(rng, (m, self.latent))
        t = self.density_ratio(z).data.astype(np.float64)
        w = xp.exp(t - t.max())
        idx = rng.choice(m, n, p=w / w.sum())
        return z[idx]


class AVB(StandardVAE):
    """Adversarial Variational Bayes (Mescheder et al. 2017) with prior N(0, I).

    Implicit encoder z = f_phi(x, eps), eps ~ N(0, I_10); a discriminator
    T(x, z) trained with sigmoid-BCE estimates ln q(z|x)/p(z), and the ELBO is
    estimated by E_q[log p(x|z) - T(x, z)].  q(z|x) has no density, so AVB has
    no importance-sampled log-likelihood.
    """

    name = "avb"
    explicit_posterior = False

    def __init__(self, dim, likelihood, latent, hidden, rng, decoder_logvar_bounds=(-9.0, 0.0),
                 noise_dim=10, keep=0.5):
        self.encoder = nn.Sequential(nn.mlp((dim + noise_dim, hidden, hidden), "gated", rng=rng),
                                     nn.Linear(hidden, latent, rng))
        self.decoder = Decoder(dim, latent, hidden, likelihood, rng, decoder_logvar_bounds)
        self.discriminator = DensityRatio(dim + latent, hidden, rng, keep)
        self.latent, self.noise_dim = latent, noise_dim

    def discriminators(self):
        return [self.discriminator]

    def posterior_sample(self, x, rng):
        """z = f_phi(x, eps): a sample of the implicit q(z|x)."""
        eps = standard_normal(rng, (x.shape[0], self.noise_dim))
        return self.encoder(ag.concatenate([x, eps], axis=1))

    def elbo_terms(self, x, rng):
        z = self.posterior_sample(x, rng)
        return self.decoder.log_likelihood(x, z), self.discriminator(ag.concatenate([x, z], axis=1))

    def discriminator_loss(self, x, rng):
        """T(x, z) separates z ~ q(z|x) (label 1) from z ~ p(z) (label 0) on a batch x."""
        with ag.no_grad():
            z_q = self.posterior_sample(x, rng)
        z_p = standard_normal(rng, z_q.shape)
        return density_ratio_loss(self.discriminator(ag.concatenate([x, z_q], axis=1)),
                                  self.discriminator(ag.concatenate([x, z_p], axis=1)))


METHODS = {cls.name: cls for cls in (StandardVAE, VampPrior, AVB, ImplicitOptimalPrior)}


def density_ratio_loss(t_positive, t_negative):
    """-[mean ln sigma(T(z1)) + mean ln(1 - sigma(T(z0)))]: Eq. (13)/(20), negated.

    With logits, -ln sigma(t) = BCE(t, 1) and -ln(1 - sigma(t)) = BCE(t, 0).
    """
    xp = ag.xp()
    ones = xp.ones(t_positive.shape, dtype=t_positive.dtype)
    zeros = xp.zeros(t_negative.shape, dtype=t_negative.dtype)
    return (ag.binary_cross_entropy_with_logits(t_positive, ones).mean()
            + ag.binary_cross_entropy_with_logits(t_negative, zeros).mean())


def standard_normal(rng, shape, dtype=np.float32):
    """A constant tensor of N(0, 1) draws from the backend generator ``rng``."""
    return ag.Tensor(rng.standard_normal(shape, dtype=dtype))


class frozen:
    """Context: the parameters of ``modules`` get no gradient and the modules run in
    eval mode (no dropout) -- psi while theta and phi are updated (Algorithm 1)."""

    def __init__(self, *modules):
        self.params = [p for m in modules for p in m.parameters()]
        self.modules = modules

    def __enter__(self):
        for p in self.params:
            p.requires_grad = False
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad = True
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)


# =============================================================================
# 4. Training: Algorithm 1.
# =============================================================================
@dataclasses.dataclass
class Config:
    """Everything that defines a run; stored as JSON beside each checkpoint."""

    dataset: str = "onehot"
    method: str = "iop"
    latent: int = 0            # 0: the paper's choice (2 for OneHot, 40 for images)
    hidden: int = 500
    lr: float = 1e-3           # Adam step size of the VAE (theta, phi; VampPrior's u)
    lr_density_ratio: float = 1e-3  # Adam step size of T (psi), IOP and AVB
    batch_size: int = 100
    epochs: int = 1000
    warmup: int = 100          # epochs of linear KL warm-up (beta from 1/warmup to 1)
    patience: int = 50         # early stopping: epochs after warm-up without a better valid ELBO
    j1: int = 1                # VAE epochs per round (Algorithm 1, lines 2-6)
    j2: int = 10               # density-ratio epochs per round (lines 7-12)
    keep: float = 0.5          # dropout keep probability of T
    components: int = 0        # VampPrior K; 0: the paper's (50 OneHot, 1000 OMNIGLOT, 500 else)
    pseudo_init: str = "uniform"
    noise_dim: int = 10        # AVB's eps dimension
    decoder_logvar_min: float = -9.0
    decoder_logvar_max: float = 0.0
    seed: int = 0
    data_dir: str = ""

    def resolved(self):
        """A copy with the paper's defaults filled in."""
        c = dataclasses.replace(self)
        if c.latent == 0:
            c.latent = 2 if c.dataset == "onehot" else 40
        if c.components == 0:
            c.components = {"onehot": 50, "omniglot": 1000}.get(c.dataset, 500)
        return c

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose from {sorted(METHODS)}")
        for name in ("hidden", "batch_size", "epochs", "j1"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup", "j2", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative (got {getattr(self, name)})")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1] (got {self.keep})")
        for name in ("lr", "lr_density_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)})")
        if self.decoder_logvar_min >= self.decoder_logvar_max:
            raise ValueError("decoder_logvar_min must be below decoder_logvar_max")
        return self


def build_model(config, dim, likelihood, rng):
    """The method named by ``config`` with freshly initialised weights."""
    c = config.resolved()
    common = dict(dim=dim, likelihood=likelihood, latent=c.latent, hidden=c.hidden, rng=rng,
                  decoder_logvar_bounds=(c.decoder_logvar_min, c.decoder_logvar_max))
    if c.method == "vamp":
        return VampPrior(**common, components=c.components, pseudo_init=c.pseudo_init)
    if c.method == "iop":
        return ImplicitOptimalPrior(**common, keep=c.keep)
    if c.method == "avb":
        return AVB(**common, noise_dim=c.noise_dim, keep=c.keep)
    return StandardVAE(**common)


def warmup_beta(epoch, warmup):
    """KL weight of the warm-up (Bowman et al. 2015): epoch / warmup, capped at 1."""
    return 1.0 if warmup <= 0 else min(1.0, epoch / warmup)


class TrainingDiverged(RuntimeError):
    """A loss or the validation ELBO became NaN or infinite."""


def run_epoch(step_loss, optimizer, n, batch_size, rng):
    """One pass over n training points in shuffled mini-batches; mean loss (a device scalar).

    ``step_loss(idx)`` builds the loss of the batch ``idx``; this is the single
    loop behind both halves of Algorithm 1 (lines 2-6 and 7-12).
    """
    order = rng.permutation(n)
    total, batches = 0.0, 0
    for start in range(0, n, batch_size):
        loss = step_loss(order[start:start + batch_size])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total = total + loss.data
        batches += 1
    return total / batches


class Trainer:
    """Algorithm 1 with the paper's setup (Sec. 5.2): Adam, mini-batches of 100,
    warm-up over the first epochs, early stopping on the validation ELBO.

    One epoch is one round of Algorithm 1: ``j1`` VAE epochs, then (IOP and AVB)
    ``j2`` epochs of the density ratio estimator.
    """

    def __init__(self, config, data, out_dir, log=print):
        self.config = config.resolved().validate()
        self.data, self.out_dir, self.log = data, out_dir, log
        self.rng = ag.default_rng(self.config.seed)
        self.model = build_model(self.config, data.dim, data.likelihood, self.rng)
        self.train_x, self.valid_x = ag.as_array(data.train), ag.as_array(data.valid)
        self.model.init_from_data(self.train_x, self.rng)
        self.vae_opt = Adam(self.model.vae_parameters(), lr=self.config.lr)
        self.disc_opt = (Adam(self.model.discriminator_parameters(), lr=self.config.lr_density_ratio)
                         if self.model.has_discriminator else None)
        self.epoch, self.history = 0, []
        self.best = {"epoch": 0, "valid_elbo": -math.inf, "state": None}
        self.bad_epochs = 0

    # --- one round of Algorithm 1 ---------------------------------------------------
    def training_batch(self, idx):
        x = self.train_x[idx]
        return binarize(x, self.rng) if self.data.dynamic_binarization else x

    def vae_epoch(self, beta):
        """Lines 2-6: update theta, phi (psi frozen, T without dropout) on Eq. (19)."""
        model = self.model
        step = lambda idx: model.loss(ag.Tensor(self.training_batch(idx)), self.rng, beta)
        model.train()
        with frozen(*model.discriminators()):
            return run_epoch(step, self.vae_opt, self.train_x.shape[0],
                             self.config.batch_size, self.rng)

    def discriminator_epochs(self):
        """Lines 7-12: update psi on Eq. (20) with theta, phi fixed, ``j2`` epochs."""
        model = self.model
        n = self.train_x.shape[0]
        step = lambda idx: model.discriminator_loss(ag.Tensor(self.training_batch(idx)), self.rng)
        with frozen(model.encoder, model.decoder):
            loss = 0.0
            for _ in range(self.config.j2):
                loss = run_epoch(step, self.disc_opt, n, self.config.batch_size, self.rng)
        return loss

    def run(self, epochs=None):
        """Train until ``epochs`` or early stopping; returns the history."""
        c = self.config
        last = epochs or c.epochs
        start_time, start_epoch = time.time(), self.epoch
        while self.epoch < last and (c.patience == 0 or self.bad_epochs < c.patience):
            epoch = self.epoch + 1
            t0 = time.time()
            beta = warmup_beta(epoch, c.warmup)
            vae_loss = 0.0
            for _ in range(c.j1):
                vae_loss = self.vae_epoch(beta)
            disc_loss = self.discriminator_epochs() if self.model.has_discriminator else None
            valid_elbo = elbo(self.model, self.valid_x, self.rng, c.batch_size)
            record = {"epoch": epoch, "beta": beta, "loss": float(vae_loss),
                      "disc_loss": None if disc_loss is None else float(disc_loss),
                      "valid_elbo": float(valid_elbo), "seconds": time.time() - t0}
            self._check_finite(record)
            self.epoch = epoch
            self.history.append(record)
            self._early_stopping(record)
            if self.out_dir:
                save_checkpoint(self, os.path.join(self.out_dir, "checkpoint.npz"))
            self.log(progress_line(record, last, start_epoch, start_time))
        if self.bad_epochs >= c.patience > 0:
            self.log(f"early stopping at epoch {self.epoch}: no better validation ELBO "
                     f"for {c.patience} epochs (best {self.best['valid_elbo']:.4f} "
                     f"at epoch {self.best['epoch']})")
        return self.history

    def _early_stopping(self, record):
        """Keep the best weights by validation ELBO and count epochs without progress,
        from the end of the warm-up on: a warm-up epoch optimises another objective
        (beta < 1), so it can be neither the best epoch nor a bad one."""
        if record["beta"] < 1.0:
            return
        if record["valid_elbo"] > self.best["valid_elbo"]:
            self.best = {"epoch": record["epoch"], "valid_elbo": record["valid_elbo"],
                         "state": self.model.state_dict()}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    def _check_finite(self, record):
        for key in ("loss", "disc_loss", "valid_elbo"):
            value = record[key]
            if value is not None and not math.isfinite(value):
                kept = (f"the last good checkpoint (epoch {self.epoch}) is kept in {self.out_dir}"
                        if self.out_dir and self.epoch else "no checkpoint was written")
                raise TrainingDiverged(f"training diverged at epoch {record['epoch']}: {key} is "
                                       f"{value}; {kept}")

    def best_model(self):
        """The model with the weights of the best validation epoch after warm-up (early
        stopping); the last weights if training ended before the warm-up did."""
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        return self.model


def progress_line(record, last, start_epoch, start_time):
    done = record["epoch"] - start_epoch
    elapsed = time.time() - start_time
    eta = elapsed / max(done, 1) * (last - record["epoch"])
    disc = "" if record["disc_loss"] is None else f" | T loss {record['disc_loss']:.4f}"
    return (f"epoch {record['epoch']:4d}/{last} | loss {record['loss']:.4f}{disc} | valid ELBO "
            f"{record['valid_elbo']:.4f} | beta {record['beta']:.2f} | "
            f"{record['seconds']:.1f}s | elapsed {_hms(elapsed)} | ETA {_hms(eta)}")


def _hms(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# --- checkpoints ----------------------------------------------------------------
def save_checkpoint(trainer, path):
    """Weights, optimizer moments, best weights, RNG state and history in one ``.npz``,
    written atomically, plus ``config.json`` beside it."""
    arrays = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    if trainer.best["state"] is not None:
        arrays.update({f"best/{k}": v for k, v in trainer.best["state"].items()})
    for prefix, opt in (("opt_vae", trainer.vae_opt), ("opt_disc", trainer.disc_opt)):
        if opt is not None:
            arrays.update({f"{prefix}/{k}": v for k, v in opt.state_dict().items()})
    meta = {"config": dataclasses.asdict(trainer.config), "epoch": trainer.epoch,
            "history": trainer.history, "bad_epochs": trainer.bad_epochs,
            "best_epoch": trainer.best["epoch"], "best_valid_elbo": trainer.best["valid_elbo"],
            "rng_state": rng_state(trainer.rng), "format": 1,
            "dim": trainer.data.dim, "likelihood": trainer.data.likelihood,
            "split_id": trainer.data.split_id,
            "image_shape": list(trainer.data.image_shape) if trainer.data.image_shape else None}
    arrays["meta"] = np.array(json.dumps(meta))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nn.save_npz(path, arrays)
    atomic_write(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json"),
                 lambda f: json.dump(meta["config"], f, indent=2), mode="w")


def rng_state(rng):
    """The generator's state as JSON-able data (NumPy backend; None elsewhere)."""
    bit_generator = getattr(rng, "bit_generator", None)
    state = getattr(bit_generator, "state", None)
    return state if isinstance(state, dict) else None


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or inconsistent."""


def read_checkpoint(path):
    """(meta, arrays) of a checkpoint, or CheckpointError with one clear line."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
        meta["config"] = Config(**meta["config"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable iopvae checkpoint (.npz "
                              f"with a 'meta' entry): {type(exc).__name__}: {exc}"[:300]) from None
    return meta, arrays


def _sub_state(arrays, prefix):
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def check_split(meta, data, path):
    """Refuse data whose split differs from the one the checkpoint trained on:
    evaluating on another split would score training points as test points."""
    trained_on = meta.get("split_id")
    if trained_on != data.split_id:
        raise CheckpointError(f"checkpoint {path} was trained on split {trained_on} but the data "
                              f"loaded now are split {data.split_id}; evaluate or resume it on "
                              "the data it was trained on")


def resume_trainer(path, data, out_dir, log=print):
    """A Trainer restored from a checkpoint so that training continues exactly."""
    meta, arrays = read_checkpoint(path)
    check_split(meta, data, path)
    trainer = Trainer(meta["config"], data, out_dir, log)
    try:
        trainer.model.load_state_dict(_sub_state(arrays, "model"))
        trainer.vae_opt.load_state_dict(_sub_state(arrays, "opt_vae"))
        if trainer.disc_opt is not None:
            trainer.disc_opt.load_state_dict(_sub_state(arrays, "opt_disc"))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its configuration ({exc})") \
            from None
    best = _sub_state(arrays, "best")
    trainer.best = {"epoch": meta["best_epoch"], "valid_elbo": meta["best_valid_elbo"],
                    "state": best or None}
    trainer.epoch, trainer.history = meta["epoch"], meta["history"]
    trainer.bad_epochs = meta["bad_epochs"]
    if meta["rng_state"] is not None and hasattr(trainer.rng, "bit_generator"):
        trainer.rng.bit_generator.state = meta["rng_state"]
    return trainer


def load_model(path, best=True):
    """(model, config) from a checkpoint: the best weights unless ``best=False``."""
    meta, arrays = read_checkpoint(path)
    config = meta["config"].resolved()
    state = _sub_state(arrays, "best" if best and meta["best_epoch"] else "model")
    model = build_model(config, meta["dim"], meta["likelihood"], ag.default_rng(0))
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its configuration ({exc})") \
            from None
    model.eval()
    model.image_shape = meta.get("image_shape")
    model.split_id = meta.get("split_id")
    return model, config


def load_run_data(path, config, data_dir=""):
    """The data set a checkpoint trained on, refused if its split is not the same."""
    meta, _ = read_checkpoint(path)
    data = _load_data(config.dataset, data_dir or config.data_dir)
    check_split(meta, data, path)
    return data


# =============================================================================
# 5. Evaluation.
# =============================================================================
def _batches(x, batch_size):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size]


def mean_elbo_terms(model, x, rng, batch_size=100):
    """Means over the rows of ``x`` of E_q[log p(x|z)] and of the KL estimate, one sample each."""
    reconstruction, kl = 0.0, 0.0
    with evaluation(model):
        for batch in _batches(x, batch_size):
            r, k = model.elbo_terms(ag.Tensor(batch), rng)
            reconstruction = reconstruction + r.data.sum()
            kl = kl + k.data.sum()
    return reconstruction / x.shape[0], kl / x.shape[0]


def elbo(model, x, rng, batch_size=100):
    """Mean ELBO (Eq. 2/3; estimated for AVB and IOP) of the rows of ``x``."""
    reconstruction, kl = mean_elbo_terms(model, x, rng, batch_size)
    return reconstruction - kl


def reconstruction(model, x, rng, batch_size=100):
    """Mean E_q[log p(x|z)] of the rows of ``x``."""
    return mean_elbo_terms(model, x, rng, batch_size)[0]


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
        for batch in _batches(x, batch_size):
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
            log_w = xp.concatenate(log_w, axis=0)
            out.append(ag.logsumexp(ag.Tensor(log_w), axis=0).data - math.log(samples))
    return xp.concatenate(out)


def test_log_likelihood(model, x, samples, rng, batch_size=100):
    """Importance-sampled log p(x) of each row under ``model`` (not for AVB).

    For IOP the prior density is log N(z) + T(z), so the result is an estimate.
    """
    if not model.explicit_posterior:
        raise ValueError(f"{model.name}: q(z|x) is implicit, so log p(x) cannot be "
                         "importance-sampled")
    with evaluation(model):
        return importance_sampled_log_likelihood(x, model.encoder, model.decoder.log_likelihood,
                                                 model.log_prior, samples, rng, batch_size)


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
    log_px = xp.concatenate(log_px, axis=0)
    return ag.logsumexp(ag.Tensor(log_px), axis=0).data - math.log(prior_samples)


class evaluation:
    """Context: the model in eval mode (no dropout) and no graph; the mode is restored."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [m.training for m in self.model.modules()]
        self.model.eval()
        self.no_grad = ag.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        for m, mode in zip(self.model.modules(), self.modes):
            m.training = mode


# =============================================================================
# 6. Command line.
# =============================================================================
def _add_config_options(parser):
    defaults = Config()
    for field in dataclasses.fields(Config):
        if field.name in ("dataset", "method", "data_dir"):
            continue
        default = getattr(defaults, field.name)
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default),
                            default=default)


def _load_data(name, data_dir):
    import datasets
    return datasets.load(name, data_dir=data_dir or None)


def command_train(args):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
              if hasattr(args, f.name)}
    config = Config(**values).resolved().validate()
    out = args.out or os.path.join("runs", f"{config.dataset}-{config.method}-seed{config.seed}")
    if args.resume:
        meta, _ = read_checkpoint(out)
        config = meta["config"]
        data = _load_data(config.dataset, args.data_dir or config.data_dir)
        trainer = resume_trainer(out, data, out)
        print(f"resuming {out} at epoch {trainer.epoch}")
    else:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ValueError(f"{out} already holds a checkpoint: continue it with --resume, "
                             "or choose another --out")
        data = _load_data(config.dataset, config.data_dir)
        trainer = Trainer(config, data, out)
    print(f"training {config.method} on {config.dataset} ({data.train.shape[0]} points, "
          f"latent {config.latent}); checkpoints in {out}")
    trainer.run(args.epochs if args.resume else None)
    report_evaluation(trainer.best_model(), data, args.samples, trainer.rng)


def report_evaluation(model, data, samples, rng, split="test"):
    x = ag.as_array(getattr(data, split))
    e = float(elbo(model, x, rng))
    estimated = " (estimated)" if model.has_discriminator else ""
    print(f"{split} ELBO{estimated}: {e:.4f}")
    if model.explicit_posterior:
        ll = float(test_log_likelihood(model, x, samples, rng).mean())
        note = (" (an estimate: log p(z) = log N(z) + T(z) uses the learned density ratio)"
                if isinstance(model, ImplicitOptimalPrior) else "")
        print(f"{split} log-likelihood, importance sampling with S={samples}: {ll:.4f}{note}")
        return {"elbo": e, "log_likelihood": ll}
    print(f"{split} log-likelihood: not available for {model.name} (implicit posterior)")
    return {"elbo": e}


def command_evaluate(args):
    model, config = load_model(args.checkpoint)
    data = load_run_data(args.checkpoint, config, args.data_dir)
    report_evaluation(model, data, args.samples, ag.default_rng(args.seed), args.split)


def command_sample(args):
    model, config = load_model(args.checkpoint)
    rng = ag.default_rng(args.seed)
    with ag.no_grad():
        if isinstance(model, ImplicitOptimalPrior) and args.sir:
            z = model.sir_prior_sample(args.n, rng)
        else:
            data = None
            if isinstance(model, ImplicitOptimalPrior):
                data = ag.as_array(load_run_data(args.checkpoint, config, args.data_dir).train)
            z = model.prior_sample(args.n, rng, data)
        images = ag.to_numpy(model.decoder.mean(z))
    run_dir = (args.checkpoint if os.path.isdir(args.checkpoint)
               else os.path.dirname(os.path.abspath(args.checkpoint)))
    out = args.out or os.path.join(run_dir, "samples.png")
    save_image_grid(images, model.image_shape, out)
    print(f"wrote {args.n} samples to {out}")


PAPER_TABLE2 = {  # Table 2 of the paper: test log-likelihood, mean +- std over 8 runs
    "mnist": {"vae": "-85.84 +- 0.07", "vamp": "-83.90 +- 0.08", "iop": "-83.21 +- 0.13"},
    "omniglot": {"vae": "-111.39 +- 0.11", "vamp": "-110.53 +- 0.09", "iop": "-108.48 +- 0.16"},
    "freyfaces": {"vae": "1382.53 +- 3.57", "vamp": "1392.62 +- 6.25", "iop": "1396.27 +- 2.75"},
    "histopathology": {"vae": "1081.53 +- 0.70", "vamp": "1083.11 +- 2.10",
                       "iop": "1087.42 +- 0.60"},
}


def command_table2(args):
    """Train and evaluate every (dataset, method, seed) of Table 2, then print the table.

    Runs that already finished (a checkpoint in their folder whose epoch count
    is reached or that stopped early) are evaluated, not retrained; runs that
    were interrupted resume from their checkpoint.
    """
    scores = {}
    for dataset in args.datasets:
        data = _load_data(dataset, args.data_dir)
        for method in args.methods:
            for seed in args.seeds:
                out = os.path.join(args.out, f"{dataset}-{method}-seed{seed}")
                config = Config(dataset=dataset, method=method, seed=seed, epochs=args.epochs,
                                lr=args.lr, patience=args.patience, warmup=args.warmup,
                                hidden=args.hidden, data_dir=args.data_dir)
                if os.path.exists(os.path.join(out, "checkpoint.npz")):
                    trainer = resume_trainer(out, data, out)
                else:
                    trainer = Trainer(config, data, out)
                print(f"== {dataset} / {method} / seed {seed} -> {out}", flush=True)
                trainer.run()
                result = report_evaluation(trainer.best_model(), data, args.samples, trainer.rng)
                scores.setdefault((dataset, method), []).append(result["log_likelihood"])
    print(f"\nTest log-likelihood, importance sampling with S={args.samples} "
          f"(IOP: an estimate, with log N(z) + T(z) as log prior)")
    print(f"{'data set':<16}{'method':<8}{'ours':>22}{'paper':>20}")
    for (dataset, method), values in scores.items():
        values = np.asarray(values)
        ours = f"{values.mean():.2f} +- {values.std():.2f} (n={len(values)})"
        paper = PAPER_TABLE2.get(dataset, {}).get(method, "")
        print(f"{dataset:<16}{method:<8}{ours:>22}{paper:>20}")


def save_image_grid(images, image_shape, path):
    """Decoder means as a grid of images (or, for OneHot, a table) in a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shape = tuple(image_shape) if image_shape else (1, images.shape[1])
    n = images.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (shape[0] + 1), cols * (shape[1] + 1)))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (shape[0] + 1):r * (shape[0] + 1) + shape[0],
             c * (shape[1] + 1):c * (shape[1] + 1) + shape[1]] = image.reshape(shape)
    fig, ax = plt.subplots(figsize=(cols * 0.6 * shape[1] / shape[0] + 1, rows * 0.6 + 1))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def build_parser():
    parser = argparse.ArgumentParser(prog="iopvae.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one method on one data set (Algorithm 1)")
    train.add_argument("--dataset", required=True,
                       choices=["onehot", "mnist", "omniglot", "freyfaces", "histopathology"])
    train.add_argument("--method", required=True, choices=sorted(METHODS))
    train.add_argument("--data-dir", default="", help="data folder (else $IOPVAE_DATA, else a cache)")
    train.add_argument("--out", default="", help="run folder for checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--samples", type=int, default=10,
                       help="importance samples for the final test log-likelihood")
    _add_config_options(train)
    train.set_defaults(run=command_train)

    evaluate = sub.add_parser("evaluate", help="test ELBO and importance-sampled log-likelihood")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--samples", type=int, default=10)
    evaluate.add_argument("--split", choices=["train", "valid", "test"], default="test")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--data-dir", default="")
    evaluate.set_defaults(run=command_evaluate)

    sample = sub.add_parser("sample", help="decode samples from the model's prior into a PNG")
    sample.add_argument("checkpoint")
    sample.add_argument("--n", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--sir", action="store_true",
                        help="IOP: sampling-importance-resampling from N(0, I) with exp(T(z))")
    sample.add_argument("--out", default="")
    sample.add_argument("--data-dir", default="")
    sample.set_defaults(run=command_sample)

    table = sub.add_parser("table2", help="the Table 2 experiments: train, evaluate, tabulate")
    table.add_argument("--datasets", nargs="+", default=["mnist", "freyfaces"],
                       choices=["mnist", "omniglot", "freyfaces", "histopathology"])
    table.add_argument("--methods", nargs="+", default=["vae", "vamp", "iop"],
                       choices=["vae", "vamp", "iop"])
    table.add_argument("--seeds", nargs="+", type=int, default=[0])
    table.add_argument("--epochs", type=int, default=1000)
    table.add_argument("--patience", type=int, default=50)
    table.add_argument("--warmup", type=int, default=100)
    table.add_argument("--hidden", type=int, default=500)
    table.add_argument("--lr", type=float, default=1e-3)
    table.add_argument("--samples", type=int, default=5000,
                       help="importance samples (the paper: 10; VampPrior's code: 5000)")
    table.add_argument("--out", default=os.path.join("runs", "table2"))
    table.add_argument("--data-dir", default="")
    table.set_defaults(run=command_table2)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, CheckpointError, TrainingDiverged, ag.BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # DataError and friends: still one line, no traceback
        if type(exc).__name__ == "DataError":
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
