"""The four methods' losses once more, in PyTorch: an independent mirror of iopvae.py.

Written from the paper's equations, not by calling iopvae.py, so that
``iopvae gradcheck`` and the tests can compare our autograd_lite
gradients with PyTorch's.  Read it side by side with iopvae.py:

* gated layers h = (x W1 + b1) * sigmoid(x W2 + b2), with W = [W1 | W2] side by side;
* encoder q(z|x) = N(mu, diag exp(logvar)), logvar clipped by hardtanh(-6, 2);
* Bernoulli decoder by BCE-with-logits, Gaussian decoder N(sigmoid mean, hardtanh logvar);
* standard VAE: closed-form KL(q(z|x) || N(0, I)) (Eq. 3);
* VampPrior: log (1/K) sum_k q(z | clip(u_k)) as a logsumexp (Eq. 9);
* IOP: KL(q(z|x) || N(0, I)) - T(z), z not detached (Eqs. 15, 19, 21);
* AVB: log p(x|z) - T(x, z) with the implicit encoder z = f(x, eps);
* T's loss, Eq. (20), for IOP's T(z) and AVB's T(x, z).

Nothing here is random: the caller hands in the parameters (as a dict of named
leaf tensors, ``parameters_from``), the reparameterisation noise and the
dropout masks, so both sides compute the same number.  PyTorch is an optional
extra (``pip install 'iopvae[torch]'``); it is imported on first use.
"""
import dataclasses
import math

import numpy as np

INSTALL_HINT = "pip install 'iopvae[torch]'"

# Bound by require_torch() on first use, so that importing this module never needs torch.
torch = F = Normal = kl_divergence = None


def require_torch():
    """Import PyTorch for this module; ImportError naming the extra to install if it is missing."""
    global torch, F, Normal, kl_divergence
    try:
        import torch as torch_module
        from torch.distributions import Normal as normal
        from torch.distributions import kl_divergence as kl
        from torch.nn import functional
    except ImportError as exc:
        raise ImportError(f"the PyTorch mirror needs PyTorch ({exc}); install it with: "
                          f"{INSTALL_HINT}") from None
    torch, F, Normal, kl_divergence = torch_module, functional, normal, kl
    return torch


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the mirror needs to know besides the parameters' values."""

    method: str                       # "vae", "vamp", "iop" or "avb"
    likelihood: str                   # "bernoulli" or "gaussian"
    dim: int                          # data dimension
    latent: int
    decoder_logvar_bounds: tuple = (-12.0, 0.0)  # iopvae.DECODER_LOGVAR_BOUNDS (a test checks)
    encoder_logvar_bounds: tuple = (-6.0, 2.0)   # iopvae.ENCODER_LOGVAR_BOUNDS (a test checks)
    keep: float = 0.5                 # T's dropout keep probability


def parameters_from(named_arrays):
    """name -> float64 leaf tensor that requires a gradient, from (name, array) pairs
    given in the network's order (the order ``layers`` relies on)."""
    require_torch()
    return {name: torch.tensor(np.array(value, dtype=np.float64), requires_grad=True)
            for name, value in named_arrays}


def layers(P, prefix):
    """(W, b) pairs of the parameters under ``prefix``, in the network's order."""
    return [(P[name], P[name[:-1] + "b"]) for name in P
            if name.startswith(prefix) and name.endswith(".W")]


# =============================================================================
# Networks
# =============================================================================
def gated(h, W, b):
    """(h W1 + b1) * sigmoid(h W2 + b2) with W = [W1 | W2], b = [b1 | b2]."""
    y = h @ W + b
    n = W.shape[1] // 2
    return y[:, :n] * torch.sigmoid(y[:, n:])


def gated_net(P, prefix, h):
    """Two gated layers and a linear head (encoder and decoder, Sec. 5.2)."""
    (W1, b1), (W2, b2), (W3, b3) = layers(P, prefix)
    return gated(gated(h, W1, b1), W2, b2) @ W3 + b3


def encoder(P, x, spec):
    """q(z|x): (mu, hardtanh(logvar, *spec.encoder_logvar_bounds))."""
    out = gated_net(P, "encoder.", x)
    return out[:, :spec.latent], F.hardtanh(out[:, spec.latent:], *spec.encoder_logvar_bounds)


def avb_encoder(P, x, eps):
    """AVB's implicit encoder z = f(concat(x, eps))."""
    return gated_net(P, "encoder.", torch.cat([x, eps], 1))


def log_likelihood(P, x, z, spec):
    """log p(x|z), summed over pixels."""
    out = gated_net(P, "decoder.", z)
    if spec.likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
    mean = torch.sigmoid(out[:, :spec.dim])
    logvar = F.hardtanh(out[:, spec.dim:], *spec.decoder_logvar_bounds)
    return Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)


def density_ratio(P, prefix, z, masks=(None, None)):
    """T(z): two tanh layers, each followed by its dropout mask (none: eval mode), and a
    linear head."""
    (W1, b1), (W2, b2), (W3, b3) = layers(P, prefix)
    h = torch.tanh(z @ W1 + b1)
    if masks[0] is not None:
        h = h * masks[0]
    h = torch.tanh(h @ W2 + b2)
    if masks[1] is not None:
        h = h * masks[1]
    return (h @ W3 + b3)[:, 0]


def dropout_masks(uniforms, keep):
    """Inverted-dropout masks (u < keep) / keep from the uniforms the dropout layers drew."""
    require_torch()
    return [torch.tensor((np.asarray(u) < keep).astype(np.float64) / keep) for u in uniforms]


# =============================================================================
# Distributions
# =============================================================================
def gaussian(mu, logvar):
    return Normal(mu, torch.exp(0.5 * logvar))


def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the latent axis (Eq. 3)."""
    standard = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return kl_divergence(gaussian(mu, logvar), standard).sum(-1)


def log_vamp_prior(P, z, spec):
    """log (1/K) sum_k q(z | clip(u_k, 0, 1)), Eq. (9)."""
    mu_k, logvar_k = encoder(P, torch.clamp(P["pseudo_inputs"], 0.0, 1.0), spec)
    pairwise = gaussian(mu_k[None], logvar_k[None]).log_prob(z[:, None]).sum(-1)  # (B, K)
    return torch.logsumexp(pairwise, 1) - math.log(mu_k.shape[0])


# =============================================================================
# The losses
# =============================================================================
def vae_loss(spec, P, x, noise, beta=1.0, detach_z_in_T=False):
    """-(log p(x|z) - beta * KL estimate), averaged over the batch, z from ``noise[0]``.

    The KL estimate is Eq. (3)'s for the VAE, log q(z|x) - log p(z) with the
    VampPrior (Eq. 9), KL(q||N(0, I)) - T(z) for IOP (Eqs. 15, 19; T without
    dropout: psi is fixed in this step), T(x, z) for AVB.  ``detach_z_in_T``
    builds the pitfall in which z is cut off from T's input: Eq. (21) drops
    only T's own dependence on phi, not the path through z.
    """
    require_torch()
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    eps = torch.as_tensor(np.asarray(noise[0], dtype=np.float64))
    if spec.method == "avb":
        z = avb_encoder(P, x, eps)
        kl = density_ratio(P, "density_ratio.", torch.cat([x, z], 1))
    else:
        mu, logvar = encoder(P, x, spec)
        z = mu + torch.exp(0.5 * logvar) * eps
        if spec.method == "vae":
            kl = kl_to_standard_normal(mu, logvar)
        elif spec.method == "vamp":
            kl = gaussian(mu, logvar).log_prob(z).sum(-1) - log_vamp_prior(P, z, spec)
        elif spec.method == "iop":
            z_in_T = z.detach() if detach_z_in_T else z
            kl = kl_to_standard_normal(mu, logvar) - density_ratio(P, "density_ratio.", z_in_T)
        else:
            raise ValueError(f"unknown method {spec.method!r}")
    return -(log_likelihood(P, x, z, spec) - beta * kl).mean()


def eq20_loss(t1, t0):
    """-[mean ln sigma(T(z1)) + mean ln(1 - sigma(T(z0)))], Eq. (20) negated."""
    return -(F.logsigmoid(t1).mean() + F.logsigmoid(-t0).mean())


def density_ratio_loss(spec, P, x, noise, masks):
    """T's loss, Eq. (20), on a batch x: label 1 for z1 ~ q, label 0 for z0 = ``noise[1]``.

    IOP: z1 = mu(x) + sigma(x) * noise[0], an ancestral sample of the aggregated
    posterior q(z) (Eq. 6), and T sees z.  AVB: z1 = f(x, noise[0]) and T sees
    [x, z].  The encoder is fixed (no gradient).  T runs once over the stacked batch
    [z1; z0], as ``iopvae.density_ratio_loss_on`` does, so ``masks`` are its two
    dropout masks, each with a row per row of the stacked batch.
    """
    require_torch()
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    eps, z0 = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in noise[:2])
    with torch.no_grad():
        if spec.method == "iop":
            mu, logvar = encoder(P, x, spec)
            z1 = mu + torch.exp(0.5 * logvar) * eps
        elif spec.method == "avb":
            z1 = avb_encoder(P, x, eps)
        else:
            raise ValueError(f"{spec.method} has no density ratio estimator")
    if spec.method == "iop":
        t_in1, t_in0 = z1, z0
    else:
        t_in1, t_in0 = torch.cat([x, z1], 1), torch.cat([x, z0], 1)
    t = density_ratio(P, "density_ratio.", torch.cat([t_in1, t_in0]), masks)
    return eq20_loss(t[:len(t_in1)], t[len(t_in1):])
