"""Layers, initialisation, checkpoints and optimizers, including a composite model and
100 optimizer steps compared with PyTorch in float64."""
import math

import numpy as np
import pytest

import autograd_lite as ag
from autograd_lite import Tensor, nn, optim

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


class TinyVAEHead(nn.Module):
    """Two gated layers and a linear head, as in the paper's encoder and decoder."""

    def __init__(self, sizes=(6, 5, 4, 3), dtype="float64", seed=0):
        rng = np.random.default_rng(seed)
        self.hidden = nn.mlp(sizes[:3], kind="gated", rng=rng, dtype=dtype)
        self.head = nn.Linear(sizes[2], sizes[3], rng=rng, dtype=dtype)
        for p in self.parameters():                 # non-zero biases exercise their gradients
            p.data[...] = p.data + 0.1 * ag.as_array(rng.standard_normal(p.shape))

    def forward(self, x):
        return self.head(self.hidden(x))


def composite_loss(model, x, targets):
    return ag.binary_cross_entropy_with_logits(model(x), targets).mean()


# --- Module ----------------------------------------------------------------------------
def test_parameters_are_found_in_attributes_lists_and_submodules():
    model = TinyVAEHead()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["hidden.layers.0.W", "hidden.layers.0.b", "hidden.layers.1.W",
                     "hidden.layers.1.b", "head.W", "head.b"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())


def test_a_shared_parameter_is_listed_once():
    layer = nn.Linear(3, 3, rng=np.random.default_rng(0))
    model = nn.Sequential(layer, layer)
    assert len(model.parameters()) == 2


def test_train_and_eval_reach_every_submodule():
    model = nn.mlp((4, 3, 2), kind="tanh", dropout_keep=0.5, rng=np.random.default_rng(0))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_dropout_module_acts_only_in_training(on_backend, make_tensor):
    layer = nn.Dropout(0.5, rng=np.random.default_rng(0))   # a NumPy Generator on any backend
    x = make_tensor(np.ones((50, 40)))
    assert (layer(x).numpy() == 0).any()
    layer.eval()
    assert layer(x) is x


def test_zero_grad_clears_every_parameter(on_backend, make_tensor):
    model = TinyVAEHead()
    composite_loss(model, make_tensor(np.ones((2, 6))), make_tensor(np.ones((2, 3)))).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# --- checkpoints ---------------------------------------------------------------------
def test_state_dict_round_trips_through_an_npz_file(tmp_path, on_backend):
    model, other = TinyVAEHead(seed=0), TinyVAEHead(seed=1)
    path = tmp_path / "model.npz"
    model.save(path)
    other.load(path)
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        assert ag.array_backend(b.data) == on_backend
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    with np.load(path) as archive:
        assert sorted(archive.files) == sorted(model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]   # no temporary left over


def test_state_dict_copies_and_load_keeps_the_parameter_dtype(on_backend):
    model = TinyVAEHead(dtype="float32")
    state = model.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())   # on the host
    state["head.b"][...] = 7.0                     # a copy: the model is untouched
    assert not np.any(model.head.b.numpy() == 7.0)
    model.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
    assert model.head.b.dtype == np.float32 and np.all(model.head.b.numpy() == 7.0)
    model.load_state_dict(state)
    state["head.b"][...] = 8.0                     # loading copied too: no aliasing
    assert np.all(model.head.b.numpy() == 7.0)


def test_state_dict_on_the_device_copies_there(on_backend):
    """state_dict(device=True): copies that stay arrays of the backend (a trainer's best
    weights), loadable as they are, equal to the host state_dict."""
    model = TinyVAEHead(dtype="float32")
    kept = model.state_dict(device=True)
    assert all(ag.array_backend(v) == on_backend for v in kept.values())
    host = model.state_dict()
    for name in host:
        np.testing.assert_array_equal(ag.to_numpy(kept[name]), host[name], err_msg=name)
    kept["head.b"][...] = 7.0                      # a copy: the model is untouched
    assert not np.any(model.head.b.numpy() == 7.0)
    model.load_state_dict(kept)
    kept["head.b"][...] = 8.0                      # loading copied too: no aliasing
    assert np.all(model.head.b.numpy() == 7.0)


def test_load_state_dict_rejects_wrong_names_and_shapes(on_backend):
    model = TinyVAEHead()
    state = model.state_dict()
    with pytest.raises(KeyError, match="missing.*head.b"):
        model.load_state_dict({k: v for k, v in state.items() if k != "head.b"})
    with pytest.raises(KeyError, match="unexpected.*extra"):
        model.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"head.W has shape \(3, 4\).*\(4, 3\)"):
        model.load_state_dict({**state, "head.W": np.zeros((3, 4))})


# --- layers and initialisation ---------------------------------------------------------
def test_linear_layer_computes_x_w_plus_b(on_backend, make_tensor):
    layer = nn.Linear(3, 2, rng=np.random.default_rng(0), dtype="float64")
    x = np.random.default_rng(1).standard_normal((4, 3))
    np.testing.assert_allclose(layer(make_tensor(x)).numpy(),
                               x @ layer.W.numpy() + layer.b.numpy())


def test_gated_dense_is_one_op_with_one_weight_matrix(on_backend, make_tensor):
    layer = nn.GatedDense(3, 4, rng=np.random.default_rng(0), dtype="float64")
    layer.b.data[...] = ag.as_array(np.linspace(-1, 1, 8))
    x = make_tensor(np.random.default_rng(1).standard_normal((5, 3)))
    h = layer(x)
    w, b = layer.W.numpy(), layer.b.numpy()
    w1, w2, b1, b2 = w[:, :4], w[:, 4:], b[:4], b[4:]
    expected = (x.numpy() @ w1 + b1) / (1 + np.exp(-(x.numpy() @ w2 + b2)))
    np.testing.assert_allclose(h.numpy(), expected, rtol=1e-12)
    assert layer.W.shape == (3, 8) and layer.b.shape == (8,)
    assert type(h.creator).__name__ == "GatedLinear"      # both halves in one op
    assert h.creator.inputs == [x, layer.W, layer.b]


def test_glorot_uniform_bound_and_variance(on_backend):
    fan_in, fan_out = 400, 600
    device_w = nn.glorot_uniform(fan_in, fan_out, ag.default_rng(0))   # of the rng's kind
    assert ag.array_backend(device_w) == on_backend
    w = ag.to_numpy(device_w)
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert w.dtype == np.float32 and w.shape == (fan_in, fan_out)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert abs(w.var() / (2 / (fan_in + fan_out)) - 1) < 0.02   # var of U(-a, a) is a^2/3
    assert abs(w.mean()) < 0.01 * limit
    assert nn.glorot_uniform(3, 4, np.random.default_rng(0), dtype=np.float64).dtype == np.float64


def test_gated_dense_initialises_each_half_on_its_own(on_backend):
    layer = nn.GatedDense(300, 200, rng=ag.default_rng(0))
    w = layer.W.numpy()
    limit = math.sqrt(6 / 500)
    assert np.abs(w).max() <= limit
    assert not np.array_equal(w[:, :200], w[:, 200:])
    assert np.all(layer.b.numpy() == 0)


def test_mlp_builds_the_requested_layers(on_backend, make_tensor):
    rng = np.random.default_rng(0)
    gated = nn.mlp((784, 500, 500), kind="gated", rng=rng)
    assert [type(layer).__name__ for layer in gated.layers] == ["GatedDense", "GatedDense"]
    assert gated(make_tensor(np.zeros((2, 784), np.float32))).shape == (2, 500)
    tanh = nn.mlp((3, 4, 5), kind="tanh", dropout_keep=0.9, rng=rng)
    assert [type(layer).__name__ for layer in tanh.layers] == [
        "Linear", "Activation", "Dropout", "Linear", "Activation", "Dropout"]
    with pytest.raises(ValueError, match="unknown kind"):
        nn.mlp((3, 4), kind="swish")


# --- comparison with PyTorch -------------------------------------------------------------
def torch_twin(model):
    """The model's parameters as torch leaves, by name."""
    return {name: torch.tensor(p.numpy(), requires_grad=True)
            for name, p in model.named_parameters()}


def torch_composite_loss(params, x, targets):
    h = torch.as_tensor(x)
    for i in range(2):
        w, b = params[f"hidden.layers.{i}.W"], params[f"hidden.layers.{i}.b"]
        y = torch.addmm(b, h, w)
        half = w.shape[1] // 2
        h = y[:, :half] * torch.sigmoid(y[:, half:])
    logits = torch.addmm(params["head.b"], h, params["head.W"])
    return F.binary_cross_entropy_with_logits(logits, torch.as_tensor(targets))


def composite_data(seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 6)), (rng.random((8, 3)) < 0.5).astype(np.float64)


@needs_torch
def test_composite_loss_and_gradients_match_torch(on_backend):
    model = TinyVAEHead()
    x, targets = composite_data()
    params = torch_twin(model)
    ref = torch_composite_loss(params, x, targets)
    ref.backward()
    loss = composite_loss(model, Tensor(ag.as_array(x)), Tensor(ag.as_array(targets)))
    loss.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-10)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(ag.to_numpy(p.grad), params[name].grad.numpy(),
                                   rtol=1e-10, atol=1e-13, err_msg=name)


def test_a_float32_vae_step_stays_float32(on_backend, make_tensor):
    """Python floats, means and the optimizer must not upcast a float32 model."""
    model = TinyVAEHead(dtype="float32")
    opt = optim.Adam(model.parameters(), weight_decay=1e-4)
    x, targets = (a.astype(np.float32) for a in composite_data())
    stats = model(make_tensor(x))
    mu, logvar = stats[:, :1], stats[:, 1:2]
    z = mu + ag.exp(0.5 * logvar) * make_tensor(np.ones((8, 1), np.float32))
    kl = -0.5 * (1 + logvar - mu * mu - ag.exp(logvar)).sum(axis=1)
    loss = (ag.binary_cross_entropy_with_logits(stats, make_tensor(targets)).sum(axis=1)
            + kl + z.sum(axis=1)).mean()
    assert loss.dtype == np.float32
    loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        assert p.grad.dtype == np.float32 and p.dtype == np.float32, name


def train_both(make_ours, make_theirs, steps=100):
    """Run the same optimizer in both frameworks from the same start; return the params."""
    model = TinyVAEHead()
    x, targets = composite_data()
    params = torch_twin(model)
    ours, theirs = make_ours(model.parameters()), make_theirs(list(params.values()))
    x_ours, targets_ours = Tensor(ag.as_array(x)), Tensor(ag.as_array(targets))
    for _ in range(steps):
        ours.zero_grad()
        composite_loss(model, x_ours, targets_ours).backward()
        ours.step()
        theirs.zero_grad()
        torch_composite_loss(params, x, targets).backward()
        theirs.step()
    return model, params


OPTIMIZERS = {
    "adam": (lambda p: optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adam_weight_decay": (
        lambda p: optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "sgd": (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum_weight_decay": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
}


@needs_torch
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_100_optimizer_steps_match_torch(kind, on_backend):
    make_ours, make_theirs = OPTIMIZERS[kind]
    model, params = train_both(make_ours, make_theirs)
    start = TinyVAEHead()
    for (name, p), (_, p0) in zip(model.named_parameters(), start.named_parameters()):
        assert not np.allclose(p.numpy(), p0.numpy()), f"{name} did not move"
        np.testing.assert_allclose(p.numpy(), params[name].detach().numpy(), rtol=1e-8,
                                   atol=1e-10, err_msg=name)


def parameter(values, dtype=None):
    """A Parameter on the active backend."""
    return nn.Parameter(ag.as_array(np.asarray(values, dtype=dtype)))


def test_adam_first_step_is_lr_times_the_gradient_sign(on_backend):
    """With bias correction, the first update is lr * g / (|g| + eps) for every element."""
    p = parameter([1.0, 2.0, 3.0])
    p.grad = ag.as_array(np.array([0.5, -2.0, 1e-3]))
    optim.Adam([p], lr=0.1, eps=0.0).step()
    np.testing.assert_allclose(p.numpy(), [0.9, 2.1, 2.9], rtol=1e-12)


def textbook_adam(params, grads, lr, betas, eps, weight_decay):
    """Adam as Kingma & Ba (2014) write it (plus L2 weight decay), one array op per line."""
    b1, b2 = betas
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    params = [p.copy() for p in params]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g + weight_decay * params[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g ** 2
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params, m, v


def textbook_sgd(params, grads, lr, momentum, weight_decay):
    """SGD with momentum as torch defines it: v = momentum v + g (v = g at first), p -= lr v."""
    velocity = [None] * len(params)
    params = [p.copy() for p in params]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            g = g + weight_decay * params[i]
            velocity[i] = g if velocity[i] is None or not momentum else momentum * velocity[i] + g
            params[i] = params[i] - lr * velocity[i]
    return params


def optimizer_problem(steps=8, seed=0):
    """Parameters of three shapes and a gradient for each at each step, in float64.  Some
    gradients are tiny (1e-7) so that eps matters in the Adam denominator."""
    rng = np.random.default_rng(seed)
    shapes = [(5, 4), (4,), (2, 3, 2)]
    start = [rng.standard_normal(s) for s in shapes]
    scales = [1.0, 1e-7, np.logspace(-8, 0, 12).reshape(2, 3, 2)]
    grads = [[scale * rng.standard_normal(s) for s, scale in zip(shapes, scales)]
             for _ in range(steps)]
    return start, grads


def run_optimizer(make, start, grads):
    params = [nn.Parameter(p.copy()) for p in start]
    opt = make(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
    return opt, [p.data for p in params]


@pytest.mark.parametrize("settings", [
    dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
], ids=["defaults", "weight_decay"])
def test_fused_adam_matches_the_textbook_loop(settings):
    """The in-place Adam (bias corrections folded into two scalars) against the plain formula."""
    start, grads = optimizer_problem()
    opt, ours = run_optimizer(lambda ps: optim.Adam(ps, **settings), start, grads)
    expected, m, v = textbook_adam(start, grads, **settings)
    for i, (p, p_ref) in enumerate(zip(ours, expected)):
        assert not np.allclose(p, start[i])
        np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-12, err_msg=f"param {i}")
        np.testing.assert_allclose(opt.m[i], m[i], rtol=1e-12, atol=0, err_msg=f"m {i}")
        np.testing.assert_allclose(opt.v[i], v[i], rtol=1e-12, atol=0, err_msg=f"v {i}")


@pytest.mark.parametrize("settings", [dict(lr=0.1, momentum=0.0, weight_decay=0.0),
                                      dict(lr=0.05, momentum=0.9, weight_decay=0.01)],
                         ids=["plain", "momentum_weight_decay"])
def test_in_place_sgd_matches_the_textbook_loop(settings):
    start, grads = optimizer_problem()
    _, ours = run_optimizer(lambda ps: optim.SGD(ps, **settings), start, grads)
    for i, (p, p_ref) in enumerate(zip(ours, textbook_sgd(start, grads, **settings))):
        np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-12, err_msg=f"param {i}")


def test_optimizers_keep_float32_parameters_float32(on_backend):
    for make in (lambda ps: optim.Adam(ps, weight_decay=0.1),
                 lambda ps: optim.SGD(ps, momentum=0.9, weight_decay=0.1)):
        p = parameter(np.ones(4), np.float32)
        opt = make([p])
        for _ in range(2):
            p.grad = ag.as_array(np.full(4, 0.5, np.float32))
            opt.step()
        assert p.data.dtype == np.float32


def test_optimizers_skip_parameters_without_gradient_and_zero_grad_clears(on_backend):
    a, b = parameter(np.ones(2)), parameter(np.ones(2))
    for opt in (optim.Adam([a, b]), optim.SGD([a, b])):
        a.grad = ag.as_array(np.ones(2))
        opt.step()
        np.testing.assert_array_equal(b.numpy(), [1.0, 1.0])
        opt.zero_grad()
        assert a.grad is None and b.grad is None
    with pytest.raises(ValueError, match="no parameters"):
        optim.Adam([])


@pytest.mark.parametrize("make", [lambda p: optim.Adam(p, lr=0.05),
                                  lambda p: optim.SGD(p, lr=0.05, momentum=0.9)])
def test_optimizer_state_round_trip_resumes_identically(make, tmp_path, on_backend):
    x, targets = (Tensor(ag.as_array(a)) for a in composite_data())

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            composite_loss(model, x, targets).backward()
            opt.step()

    straight = TinyVAEHead()
    train(straight, make(straight.parameters()), 6)
    first = TinyVAEHead()
    opt = make(first.parameters())
    train(first, opt, 3)
    nn.save_npz(tmp_path / "opt.npz", opt.state_dict())
    resumed = TinyVAEHead()
    resumed.load_state_dict(first.state_dict())
    opt2 = make(resumed.parameters())
    with np.load(tmp_path / "opt.npz") as archive:
        opt2.load_state_dict(dict(archive))
    assert opt2.t == 3
    train(resumed, opt2, 3)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_optimizer_load_state_dict_rejects_mismatches(on_backend):
    opt = optim.Adam([parameter(np.ones((2, 3)))])
    with pytest.raises(KeyError, match="unexpected"):
        opt.load_state_dict({"t": np.asarray(1.0), "m.5": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"m.0 has shape \(3, 2\)"):
        opt.load_state_dict({"t": np.asarray(1.0), "m.0": np.zeros((3, 2))})


# --- threads ---------------------------------------------------------------------------
@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.setitem(ag.threads._state, "threads", ag.threads._state["threads"])


@pytest.mark.parametrize("make", [lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
                                  lambda p: optim.SGD(p, lr=0.01, momentum=0.9)])
def test_threaded_updates_equal_single_threaded_ones(make, restore_threads):
    """Parameters big enough to be cut into pieces give bit-identical results."""
    rng = np.random.default_rng(0)
    shapes = [(700, 500), (300,), (3, 100_000)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    for n in (1, 3):
        ag.set_num_threads(n)
        params = [nn.Parameter(a.copy()) for a in start]
        opt = make(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        results.append([p.data for p in params])
    assert len(ag.threads._pieces((start[0],) * 5, 3)) == 3      # the big ones were cut
    for single, threaded in zip(*results):
        np.testing.assert_array_equal(single, threaded)


def test_non_contiguous_parameters_are_updated_whole(restore_threads):
    ag.set_num_threads(2)
    p = nn.Parameter(np.ones((400, 400), np.float32).T)           # an F-ordered view
    p.grad = np.ones((400, 400), np.float32)
    assert len(ag.threads._pieces((p.data, p.grad), 2)) == 1
    optim.SGD([p], lr=0.5).step()
    np.testing.assert_array_equal(p.data, np.full((400, 400), 0.5, np.float32))


def test_thread_count_comes_from_omp_num_threads_or_set_num_threads(restore_threads,
                                                                     monkeypatch):
    monkeypatch.setitem(ag.threads._state, "threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert ag.num_threads() == 3
    ag.set_num_threads(1)
    assert ag.num_threads() == 1
    with pytest.raises(ValueError, match="at least 1"):
        ag.set_num_threads(0)


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    """atomic_write: a finished write replaces the file; a write that raises half-way
    leaves the old content and no temporary file in the folder."""
    from autograd_lite.files import atomic_write
    path = tmp_path / "out.txt"
    atomic_write(path, lambda f: f.write("first"), mode="w")
    assert path.read_text() == "first"

    def half_then_fail(f):
        f.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
