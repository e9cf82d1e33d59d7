"""Each method's loss and gradients against an independent PyTorch re-implementation.

The PyTorch side is written from the paper's equations, not from iopvae.py:
gated layers h = (x W1 + b1) * sigmoid(x W2 + b2) with W = [W1 | W2] stored
side by side, encoder log-variance clipped by hardtanh(-6, 2), Bernoulli decoder
by BCE-with-logits, Gaussian decoder N(sigmoid mean, hardtanh log-variance),
closed-form KL via torch.distributions, VampPrior as a logsumexp over the
encoder's Gaussians at the clipped pseudo-inputs, IOP as KL(q||N(0,I)) - T(z)
(T without dropout, z not detached), AVB as log p(x|z) - T(x, z) with
z = f(x, eps).  Everything runs in float64: the models' parameters are cast,
the noise is drawn here in float64 and fed to both sides (iopvae's
``standard_normal`` is monkeypatched), and dropout masks are recorded from the
uniforms that the Dropout layers draw.  Loss values and the gradient of every
parameter must agree to 1e-10 relative.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference implementation uses PyTorch")
import torch.nn.functional as F  # noqa: E402
from torch.distributions import Normal, kl_divergence  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograd_lite as ag  # noqa: E402
import iopvae  # noqa: E402
import runs  # noqa: E402
from autograd_lite import nn  # noqa: E402

RTOL = 1e-10
DIM, LATENT, HIDDEN, BATCH, K, NOISE = 6, 3, 8, 5, 4, 4
BETA = 0.7


# =============================================================================
# Plumbing: float64 models, recorded noise, recorded dropout masks
# =============================================================================
class RecordedNoise:
    """Stands in for iopvae.standard_normal: float64 N(0,1) draws from its own
    generator, kept in call order so the PyTorch side can replay them.  With
    ``replay`` it hands out the given arrays again instead."""

    def __init__(self, seed=0, replay=None):
        self.gen = np.random.default_rng(seed)
        self.draws = []
        self.replay = None if replay is None else list(replay)

    def __call__(self, rng, shape, dtype=np.float32):
        if self.replay is not None:
            a = self.replay.pop(0)
            assert a.shape == tuple(shape)
        else:
            a = self.gen.standard_normal(shape)
        self.draws.append(a)
        return ag.Tensor(a)


class RecordingUniform:
    """A generator for Dropout layers whose ``random`` draws are recorded."""

    def __init__(self, seed):
        self.gen = np.random.default_rng(seed)
        self.draws = []

    def random(self, shape, dtype=np.float64):
        a = self.gen.random(shape, dtype=dtype)
        self.draws.append(a)
        return a


def float64_model(method, likelihood, keep=0.5, seed=0):
    """A small model of ``method`` with all parameters cast to float64.

    The first encoder log-variance bias is pushed to +4 so that the hardtanh
    upper bound (2) is active for that unit: its gradient must be cut.  For the
    VampPrior two pseudo-input entries are moved outside [0, 1] for the same reason."""
    config = runs.Config(dataset="onehot", method=method, latent=LATENT, hidden=HIDDEN,
                           components=K, noise_dim=NOISE, keep=keep)
    model = runs.build_model(config, DIM, likelihood, ag.default_rng(seed))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    if method != "avb":
        model.encoder.head.b.data[LATENT] = 4.0
    if method == "vamp":  # two pseudo-input entries outside [0, 1]: the clip is active
        model.pseudo_inputs.data[0, :2] = [-0.3, 1.4]
    return model


def make_data(likelihood, n=BATCH, seed=1):
    g = np.random.default_rng(seed)
    if likelihood == "bernoulli":
        return (g.random((n, DIM)) < 0.4).astype(np.float64)
    return g.uniform(0.02, 0.98, size=(n, DIM))


def torch_params(model):
    """name -> float64 leaf tensor with the model's current values, in parameter order."""
    return {name: torch.tensor(np.array(p.data), dtype=torch.float64, requires_grad=True)
            for name, p in model.named_parameters()}


def layers(P, prefix):
    """(W, b) pairs of the parameters under ``prefix``, in the network's order."""
    names = [n for n in P if n.startswith(prefix) and n.endswith(".W")]
    return [(P[n], P[n[:-1] + "b"]) for n in names]


def assert_same_gradients(model, P, names=None):
    """Every (or each named) parameter's autograd_lite gradient equals PyTorch's."""
    checked = 0
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        want = P[name].grad
        assert want is not None, f"torch has no gradient for {name}"
        assert p.grad is not None, f"iopvae produced no gradient for {name}"
        want = want.numpy()
        scale = max(np.abs(want).max(), 1e-300)
        np.testing.assert_allclose(p.grad, want, rtol=RTOL, atol=RTOL * scale, err_msg=name)
        checked += 1
    assert checked > 0


# =============================================================================
# The reference implementation, from the equations
# =============================================================================
def t_gated(h, W, b):
    y = h @ W + b
    n = W.shape[1] // 2
    return y[:, :n] * torch.sigmoid(y[:, n:])


def t_encoder(P, x):
    """q(z|x): two gated layers and a linear head -> (mu, hardtanh(logvar, -6, 2))."""
    (W1, b1), (W2, b2), (W3, b3) = layers(P, "encoder.")
    out = t_gated(t_gated(x, W1, b1), W2, b2) @ W3 + b3
    return out[:, :LATENT], F.hardtanh(out[:, LATENT:], -6.0, 2.0)


def t_avb_encoder(P, x, eps):
    """AVB's implicit encoder z = f(concat(x, eps))."""
    (W1, b1), (W2, b2), (W3, b3) = layers(P, "encoder.")
    return t_gated(t_gated(torch.cat([x, eps], 1), W1, b1), W2, b2) @ W3 + b3


def t_log_px_given_z(P, x, z, likelihood, bounds=(-9.0, 0.0)):
    (W1, b1), (W2, b2), (W3, b3) = layers(P, "decoder.")
    out = t_gated(t_gated(z, W1, b1), W2, b2) @ W3 + b3
    if likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
    mean = torch.sigmoid(out[:, :DIM])
    logvar = F.hardtanh(out[:, DIM:], *bounds)
    return Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)


def t_ratio(P, prefix, z, masks=(None, None)):
    """T(z): two tanh layers (each optionally followed by a dropout mask) and a linear head."""
    (W1, b1), (W2, b2), (W3, b3) = layers(P, prefix)
    h = torch.tanh(z @ W1 + b1)
    if masks[0] is not None:
        h = h * masks[0]
    h = torch.tanh(h @ W2 + b2)
    if masks[1] is not None:
        h = h * masks[1]
    return (h @ W3 + b3)[:, 0]


def t_gaussian(mu, logvar):
    return Normal(mu, torch.exp(0.5 * logvar))


def t_kl_to_standard(mu, logvar):
    return kl_divergence(t_gaussian(mu, logvar), Normal(torch.zeros_like(mu),
                                                        torch.ones_like(mu))).sum(-1)


def torch_loss(method, P, x, noise, likelihood, beta=BETA, detach_z_in_T=False):
    """-(log p(x|z) - beta * KL-estimate), averaged over the batch (Eqs. 3, 9, 19; AVB)."""
    x = torch.tensor(x)
    eps = torch.tensor(noise[0])
    if method == "avb":
        z = t_avb_encoder(P, x, eps)
        kl = t_ratio(P, "density_ratio.", torch.cat([x, z], 1))
    else:
        mu, logvar = t_encoder(P, x)
        z = mu + torch.exp(0.5 * logvar) * eps
        if method == "vae":
            kl = t_kl_to_standard(mu, logvar)
        elif method == "vamp":
            mu_k, logvar_k = t_encoder(P, torch.clamp(P["pseudo_inputs"], 0.0, 1.0))
            log_prior = torch.logsumexp(
                t_gaussian(mu_k[None], logvar_k[None]).log_prob(z[:, None]).sum(-1), 1) \
                - math.log(mu_k.shape[0])
            kl = t_gaussian(mu, logvar).log_prob(z).sum(-1) - log_prior
        elif method == "iop":
            zt = z.detach() if detach_z_in_T else z
            kl = t_kl_to_standard(mu, logvar) - t_ratio(P, "density_ratio.", zt)
        else:
            raise AssertionError(method)
    return -(t_log_px_given_z(P, x, z, likelihood) - beta * kl).mean()


def eq20_loss(t1, t0):
    """-[mean ln sigma(T(z1)) + mean ln(1 - sigma(T(z0)))]."""
    return -(F.logsigmoid(t1).mean() + F.logsigmoid(-t0).mean())


def masks_from(uniforms, keep):
    """Inverted-dropout masks from the recorded uniforms."""
    return [torch.tensor((u < keep).astype(np.float64) / keep) for u in uniforms]


# =============================================================================
# Tests
# =============================================================================
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("method", ["vae", "vamp", "iop", "avb"])
def test_vae_step_loss_and_gradients_match_torch(method, likelihood, monkeypatch):
    """The VAE-step loss (with warm-up beta = 0.7) and the gradient of every
    encoder, decoder and pseudo-input parameter match PyTorch to 1e-10.  Any
    error in a layer, a clip, a KL term, the VampPrior mixture, T's role in the
    IOP/AVB objective or in a backward rule shows up here."""
    model = float64_model(method, likelihood)
    model.train()
    x = make_data(likelihood)
    noise = RecordedNoise(seed=2)
    monkeypatch.setattr(iopvae, "standard_normal", noise)
    with iopvae.frozen(model.density_ratio):  # the VAE step: psi fixed, T in eval mode
        loss = model.loss(ag.Tensor(x), ag.default_rng(0), beta=BETA)
        loss.backward()
    assert loss.dtype == np.float64
    P = torch_params(model)
    want = torch_loss(method, P, x, noise.draws, likelihood)
    want.backward()
    np.testing.assert_allclose(loss.data, want.item(), rtol=RTOL)
    vae_names = {n for n, p in model.named_parameters()
                 if any(p is q for q in model.vae_parameters())}
    if method == "vamp":
        assert "pseudo_inputs" in vae_names
    assert_same_gradients(model, P, vae_names)
    # the discriminator is frozen during this step: no gradient reaches psi
    if model.has_discriminator:
        assert all(p.grad is None for p in model.discriminator_parameters())
    # the clipped log-variance unit passes no gradient to its bias
    if method != "avb":
        assert model.encoder.head.b.grad[LATENT] == 0.0
    if method == "vamp":
        assert np.all(model.pseudo_inputs.grad[0, :2] == 0.0)
        assert np.all(model.pseudo_inputs.grad[1:] != 0.0)


@pytest.mark.parametrize("method", ["iop", "avb"])
def test_discriminator_loss_and_gradients_match_torch(method, monkeypatch):
    """Eq. (20) for IOP (z1 ~ aggregated posterior by ancestral sampling from the
    batch's training points; z0 ~ N(0, I)) and AVB's T(x, z): loss and every T
    gradient equal PyTorch's with the same noise and the same dropout masks
    (keep 0.5), and the encoder/decoder get no gradient.  Catches swapped labels,
    a mis-indexed batch, or dropout applied differently."""
    keep = 0.5
    model = float64_model(method, "bernoulli", keep=keep)
    train_x = make_data("bernoulli", n=9, seed=3)
    idx = np.array([7, 0, 4, 2, 8])
    dropouts = [m for m in model.density_ratio.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2
    uniforms = RecordingUniform(seed=5)
    for layer in dropouts:
        layer.rng = uniforms
    noise = RecordedNoise(seed=4)
    monkeypatch.setattr(iopvae, "standard_normal", noise)
    model.train()
    with iopvae.frozen(model.encoder, model.decoder):
        loss = model.discriminator_loss(ag.Tensor(train_x[idx]), ag.default_rng(0))
        loss.backward()
    assert len(uniforms.draws) == 4  # two layers, two calls of T
    P = torch_params(model)
    masks = masks_from(uniforms.draws, keep)
    x = torch.tensor(train_x[idx])
    with torch.no_grad():
        if method == "iop":
            mu, logvar = t_encoder(P, x)
            z1 = mu + torch.exp(0.5 * logvar) * torch.tensor(noise.draws[0])
            z1_in, z0_in = z1, torch.tensor(noise.draws[1])
        else:
            z1 = t_avb_encoder(P, x, torch.tensor(noise.draws[0]))
            z1_in, z0_in = torch.cat([x, z1], 1), torch.cat([x, torch.tensor(noise.draws[1])], 1)
    prefix = "density_ratio."
    want = eq20_loss(t_ratio(P, prefix, z1_in, masks[:2]), t_ratio(P, prefix, z0_in, masks[2:]))
    want.backward()
    np.testing.assert_allclose(loss.data, want.item(), rtol=RTOL)
    names = {n for n, _ in model.named_parameters() if n.startswith(prefix)}
    assert_same_gradients(model, P, names)
    assert all(p.grad is None for p in model.vae_parameters())


def test_iop_encoder_gradient_includes_path_through_T(monkeypatch):
    """IOP's encoder gradient must contain d T(z)/dz * dz/dphi (z = mu + sigma eps is
    not detached before T; only T's own phi-dependence is dropped, Eq. 21).  The
    encoder gradient must match PyTorch's non-detached loss, differ clearly from the
    detached variant, and a model patched to detach z must fail the same check."""
    x = make_data("bernoulli")
    results = {}
    for variant in ("as_is", "detached_pitfall"):
        model = float64_model("iop", "bernoulli")
        if variant == "detached_pitfall":
            forward = model.density_ratio.forward
            monkeypatch.setattr(model.density_ratio, "forward",
                                lambda z, forward=forward: forward(z.detach()))
        noise = RecordedNoise(seed=2)
        monkeypatch.setattr(iopvae, "standard_normal", noise)
        with iopvae.frozen(model.density_ratio):
            model.loss(ag.Tensor(x), ag.default_rng(0), beta=1.0).backward()
        results[variant] = model
    P_full, P_det = torch_params(results["as_is"]), torch_params(results["as_is"])
    torch_loss("iop", P_full, x, noise.draws, "bernoulli", beta=1.0).backward()
    torch_loss("iop", P_det, x, noise.draws, "bernoulli", beta=1.0,
               detach_z_in_T=True).backward()
    encoder_names = [n for n in P_full if n.startswith("encoder.")]
    assert_same_gradients(results["as_is"], P_full, set(encoder_names))
    # the path through T matters: full and detached gradients differ clearly
    diff = np.sqrt(sum(((P_full[n].grad - P_det[n].grad) ** 2).sum().item()
                       for n in encoder_names))
    norm = np.sqrt(sum((P_full[n].grad ** 2).sum().item() for n in encoder_names))
    assert diff > 1e-3 * norm
    # and the pitfall model fails the comparison (it equals the detached reference)
    with pytest.raises(AssertionError):
        assert_same_gradients(results["detached_pitfall"], P_full, set(encoder_names))
    assert_same_gradients(results["detached_pitfall"], P_det, set(encoder_names))
    # the decoder does not see T, so its gradient is the same either way
    decoder_names = {n for n in P_full if n.startswith("decoder.")}
    assert_same_gradients(results["detached_pitfall"], P_full, decoder_names)


def test_trainer_freezes_T_in_the_vae_step_and_the_vae_in_the_T_step(monkeypatch):
    """Algorithm 1: psi is fixed while theta, phi are updated (lines 2-6), and theta,
    phi while psi is (lines 7-12).  In one round of ``Trainer.train``: during the VAE
    step T runs in eval mode (no dropout) with parameters that take no gradient, and
    T's weights do not move while the encoder's do; during T's own step T is in
    training mode (dropout on) and only T's weights move."""
    import datasets
    data = datasets.load("onehot")
    rng = ag.default_rng(0)
    model = iopvae.ImplicitOptimalPrior(data.dim, "bernoulli", 2, 16, rng, keep=0.5)
    trainer = iopvae.Trainer(model, data, rng, j2=1, epochs=1, log=lambda line: None)
    phase, calls, states = ["start"], [], {"start": model.state_dict()}
    forward, loss, discriminator_loss, elbo = (model.density_ratio.forward, model.loss,
                                               model.discriminator_loss, iopvae.elbo)

    def spy(z):  # T's mode and whether its parameters take gradients, at each call
        calls.append((phase[0], [m.training for m in model.density_ratio.modules()],
                      [p.requires_grad for p in model.density_ratio.parameters()]))
        return forward(z)

    def enter(name, function):  # mark the phase and keep the weights on entering it
        def wrapped(*args, **kwargs):
            if phase[0] != name:
                phase[0] = name
                states[name] = model.state_dict()
            return function(*args, **kwargs)
        return wrapped
    model.density_ratio.forward = spy
    model.loss = enter("vae", loss)
    model.discriminator_loss = enter("T", discriminator_loss)
    monkeypatch.setattr(iopvae, "elbo", enter("valid", elbo))
    trainer.train()
    assert [p for p, _, _ in calls if p != "valid"][:1] == ["vae"], "the loss never used T"
    for p, modes, grads in calls:
        if p == "vae":
            assert not any(modes) and not any(grads)
        elif p == "T":
            assert all(modes) and all(grads)
    start, after_vae, after_t = states["start"], states["T"], states["valid"]
    for name in start:
        vae_moved = not np.array_equal(start[name], after_vae[name])
        t_moved = not np.array_equal(after_vae[name], after_t[name])
        if name.startswith("density_ratio."):
            assert not vae_moved and t_moved, name
        else:
            assert not t_moved, name
    assert any(not np.array_equal(start[n], after_vae[n]) for n in start
               if n.startswith("encoder."))


def test_iop_loss_is_deterministic_given_noise_when_T_is_frozen(monkeypatch):
    """With T frozen (as in the VAE step) two evaluations of the IOP loss with the
    same reparameterisation noise are bit-identical: T applies no dropout.  The
    control shows the check can fail: in training mode T's dropout changes it."""
    model = float64_model("iop", "bernoulli", keep=0.5)
    model.train()
    x = ag.Tensor(make_data("bernoulli"))
    first = RecordedNoise(seed=9)
    monkeypatch.setattr(iopvae, "standard_normal", first)
    with iopvae.frozen(model.density_ratio):
        a = model.loss(x, ag.default_rng(0)).data
    monkeypatch.setattr(iopvae, "standard_normal", RecordedNoise(replay=first.draws))
    with iopvae.frozen(model.density_ratio):
        b = model.loss(x, ag.default_rng(0)).data
    assert a == b
    # control: dropout active
    values = []
    for _ in range(2):
        monkeypatch.setattr(iopvae, "standard_normal", RecordedNoise(replay=first.draws))
        values.append(model.loss(x, ag.default_rng(0)).data)
    assert values[0] != values[1]
