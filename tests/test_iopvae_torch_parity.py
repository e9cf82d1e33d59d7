"""Each method's loss and gradients against the independent PyTorch mirror
(experiments/gradcheck/torch_mirror.py).

The mirror is written from the paper's equations, not from iopvae.py (see its
docstring).  Everything runs in float64 on the small models of experiments/gradcheck/check.py
(the same code as ``iopvae gradcheck``): the noise and the dropout
uniforms come from a ``ReplayRNG`` that records them for the mirror.  Loss
values and the gradient of every parameter must agree to 1e-10 relative.
"""
import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference implementation uses PyTorch")

import autograd_lite as ag
import iopvae
from experiments.gradcheck import check as cg
from experiments.gradcheck import torch_mirror as mirror

RTOL = cg.TORCH_TOLERANCE
LATENT = cg.LATENT


def assert_same_gradients(ours, theirs, names):
    """Each named parameter's gradient agrees with the reference (``check``'
    relative error: the worst deviation against the gradient's largest entry)."""
    assert names, "nothing to compare"
    for name in names:
        assert name in ours and name in theirs, f"no gradient for {name}"
        error = cg.relative_error(ours[name], theirs[name])
        assert error <= RTOL, f"{name}: relative error {error:.2e}"


def model_gradients(model, names):
    """name -> autograd_lite gradient (None where the parameter got none)."""
    params = dict(model.named_parameters())
    return {n: None if params[n].grad is None else ag.to_numpy(params[n].grad) for n in names}


# =============================================================================
# Tests
# =============================================================================
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("method", ["vae", "vamp", "iop", "avb"])
def test_vae_step_loss_and_gradients_match_torch(method, likelihood):
    """The VAE-step loss (with warm-up beta = 0.7) and the gradient of every
    encoder, decoder and pseudo-input parameter match PyTorch to 1e-10.  Any
    error in a layer, a clip, a KL term, the VampPrior mixture, T's role in the
    IOP/AVB objective or in a backward rule shows up here."""
    model = cg.float64_model(method, likelihood)
    case = cg.LossCase(model, "vae", cg.small_data(likelihood))
    loss, ours = case.autograd()
    with case.frozen():
        assert case().dtype == np.float64
    want, theirs = case.torch_gradients()
    np.testing.assert_allclose(loss, want, rtol=RTOL)
    if method == "vamp":
        assert "pseudo_inputs" in case.names
    assert len(case.names) == len(model.vae_parameters())
    assert_same_gradients(ours, theirs, case.names)
    # T is frozen during this step: no gradient reaches psi
    if model.has_density_ratio:
        assert all(p.grad is None for p in model.density_ratio_parameters())
    # the clipped log-variance unit passes no gradient to its bias
    if method != "avb":
        assert model.encoder.head.b.grad[LATENT] == 0.0
    if method == "vamp":
        assert np.all(model.pseudo_inputs.grad[0, :2] == 0.0)
        assert np.all(model.pseudo_inputs.grad[1:] != 0.0)


@pytest.mark.parametrize("method", ["iop", "avb"])
def test_density_ratio_loss_and_gradients_match_torch(method):
    """Eq. (20) for IOP (z1 ~ aggregated posterior by ancestral sampling from the
    batch's training points; z0 ~ N(0, I)) and AVB's T(x, z): loss and every T
    gradient equal PyTorch's with the same noise and the same dropout masks
    (keep 0.5), and the encoder/decoder get no gradient.  Catches swapped labels,
    a mis-indexed batch, or dropout applied differently."""
    model = cg.float64_model(method, "bernoulli", keep=0.5)
    train_x = cg.small_data("bernoulli", n=9, seed=3)
    case = cg.LossCase(model, "T", train_x[[7, 0, 4, 2, 8]], seed=4)
    loss, ours = case.autograd()
    assert len(case.rng.uniforms) == 2  # two dropout layers, one call of T on [z1; z0]
    assert len(case.rng.normals) == 2   # the noise behind z1, and z0
    want, theirs = case.torch_gradients()
    np.testing.assert_allclose(loss, want, rtol=RTOL)
    prefix = "density_ratio."
    assert case.names and all(n.startswith(prefix) for n in case.names)
    assert_same_gradients(ours, theirs, case.names)
    assert all(p.grad is None for p in model.vae_parameters())


def test_iop_encoder_gradient_includes_path_through_T(monkeypatch):
    """IOP's encoder gradient must contain d T(z)/dz * dz/dphi (z = mu + sigma eps is
    not detached before T; only T's own phi-dependence is dropped, Eq. 21).  The
    encoder gradient must match PyTorch's non-detached loss, differ clearly from the
    detached variant, and a model patched to detach z must fail the same check."""
    x = cg.small_data("bernoulli")
    grads, models = {}, {}
    for variant in ("as_is", "detached_pitfall"):
        model = cg.float64_model("iop", "bernoulli")
        if variant == "detached_pitfall":
            forward = model.density_ratio.forward
            monkeypatch.setattr(model.density_ratio, "forward",
                                lambda z, forward=forward: forward(z.detach()))
        case = cg.LossCase(model, "vae", x, beta=1.0)
        grads[variant] = case.autograd()[1]
        models[variant] = model
    model = models["as_is"]
    spec = cg.mirror_spec(model)
    reference = {}
    for detach in (False, True):
        P = mirror.parameters_from((n, p.data) for n, p in model.named_parameters())
        mirror.vae_loss(spec, P, x, case.rng.normals, beta=1.0, detach_z_in_T=detach).backward()
        reference[detach] = {n: P[n].grad.numpy() for n in case.names}
    encoder_names = [n for n in case.names if n.startswith("encoder.")]
    assert_same_gradients(grads["as_is"], reference[False], encoder_names)
    # the path through T matters: full and detached gradients differ clearly
    diff = np.sqrt(sum(((reference[False][n] - reference[True][n]) ** 2).sum()
                       for n in encoder_names))
    norm = np.sqrt(sum((reference[False][n] ** 2).sum() for n in encoder_names))
    assert diff > 1e-3 * norm
    # and the pitfall model fails the comparison (it equals the detached reference)
    with pytest.raises(AssertionError):
        assert_same_gradients(grads["detached_pitfall"], reference[False], encoder_names)
    assert_same_gradients(grads["detached_pitfall"], reference[True], encoder_names)
    # the decoder does not see T, so its gradient is the same either way
    decoder_names = [n for n in case.names if n.startswith("decoder.")]
    assert_same_gradients(grads["detached_pitfall"], reference[False], decoder_names)


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
    trainer = iopvae.Trainer(model, data, rng, j2=1, epochs=1)
    phase, calls, states = ["start"], [], {"start": model.state_dict()}
    forward, loss, density_ratio_loss, elbo = (model.density_ratio.forward, model.loss,
                                               model.density_ratio_loss, iopvae.elbo)

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
    model.density_ratio_loss = enter("T", density_ratio_loss)
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



def test_iop_loss_is_deterministic_given_noise_when_T_is_frozen():
    """With T frozen (as in the VAE step) two evaluations of the IOP loss with the
    same reparameterisation noise are bit-identical: T applies no dropout.  The
    control shows the check can fail: in training mode T's dropout changes it."""
    model = cg.float64_model("iop", "bernoulli", keep=0.5)
    model.train()
    x = ag.Tensor(cg.small_data("bernoulli"))
    rng = cg.ReplayRNG(seed=9)
    with iopvae.frozen(model.density_ratio):
        a = model.loss(x, rng).data
        rng.rewind()
        b = model.loss(x, rng).data
    assert a == b
    # control: dropout active (its masks come from the layers' own generator)
    values = []
    for _ in range(2):
        rng.rewind()
        values.append(model.loss(x, rng).data)
    assert values[0] != values[1]


def test_the_mirror_bounds_the_log_variances_as_iopvae_does():
    """The mirror cannot import iopvae (it stays independent), so its default bounds are
    written twice; this keeps the two equal."""
    spec = mirror.Spec(method="vae", likelihood="gaussian", dim=3, latent=2)
    assert tuple(spec.decoder_logvar_bounds) == iopvae.DECODER_LOGVAR_BOUNDS
    assert tuple(spec.encoder_logvar_bounds) == iopvae.ENCODER_LOGVAR_BOUNDS
