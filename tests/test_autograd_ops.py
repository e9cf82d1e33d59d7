"""Every op of autograd_lite: finite-difference gradients (on each backend), agreement
with PyTorch in float64 (values and gradients to 1e-10), float32 staying float32,
the stable forms at +-1e4, and the ops' error messages.

One table, ``CASES``, lists each op with its inputs and the PyTorch expression it
must match, so that every op goes through every check.
"""
import numpy as np
import pytest

import autograd_lite as ag
from autograd_lite import Function, Tensor

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the torch comparisons skip; everything else runs
    torch = F = None

RTOL, ATOL = 1e-10, 1e-13
IDX = np.array([0, 2, 0, 1])          # rows picked with a repeat: their gradients add up
COLS = np.array([3, 0, 3])
TARGETS = np.random.default_rng(7).uniform(0, 1, (3, 4))  # soft targets in [0, 1]


def targets_like(a):
    return TARGETS.astype(np.float32 if str(a.dtype).endswith("float32") else np.float64)


def _gated_torch(x, w, b):
    y = torch.addmm(b, x, w)
    half = w.shape[1] // 2
    return y[:, :half] * torch.sigmoid(y[:, half:])


def _torch_index(index):
    return torch.as_tensor(index)


# (id, autograd_lite function, torch function or "same", inputs as (shape, domain))
# Domains: "real" standard normal, "pos" in [0.5, 2], "kink" away from -1, -0.5, 0, 0.5, 1.
SAME = "same"
CASES = [
    ("add", lambda a, b: a + b, SAME, [((3, 4), "real"), ((3, 4), "real")]),
    ("add_broadcast_3x1_1x4", lambda a, b: a + b, SAME, [((3, 1), "real"), ((1, 4), "real")]),
    ("add_broadcast_rank", lambda a, b: a + b, SAME, [((2, 3, 4), "real"), ((4,), "real")]),
    ("add_scalar", lambda a: a + 2.5, SAME, [((3, 4), "real")]),
    ("radd_scalar", lambda a: 2.5 + a, SAME, [((3, 4), "real")]),
    ("add_function", ag.add, torch.add if torch else None, [((2, 3), "real"), ((2, 3), "real")]),
    ("sub_broadcast", lambda a, b: a - b, SAME, [((3, 1), "real"), ((1, 4), "real")]),
    ("rsub_scalar", lambda a: 1.5 - a, SAME, [((3, 4), "real")]),
    ("sub_function", ag.sub, torch.sub if torch else None, [((2, 3), "real"), ((3,), "real")]),
    ("mul", lambda a, b: a * b, SAME, [((3, 4), "real"), ((3, 4), "real")]),
    ("mul_broadcast", lambda a, b: a * b, SAME, [((2, 3, 4), "real"), ((3, 1), "real")]),
    ("rmul_scalar", lambda a: 3.0 * a, SAME, [((3, 4), "real")]),
    ("mul_function", ag.mul, torch.mul if torch else None, [((3, 1), "real"), ((1, 4), "real")]),
    ("div_broadcast", lambda a, b: a / b, SAME, [((3, 4), "real"), ((1, 4), "pos")]),
    ("rdiv_scalar", lambda a: 2.0 / a, SAME, [((3, 4), "pos")]),
    ("div_function", ag.div, torch.div if torch else None, [((3, 1), "real"), ((4,), "pos")]),
    ("neg", lambda a: -a, SAME, [((3, 4), "real")]),
    ("neg_function", ag.neg, torch.neg if torch else None, [((3, 4), "real")]),
    ("pow_3", lambda a: a ** 3, SAME, [((3, 4), "real")]),
    ("pow_half", lambda a: a ** 0.5, SAME, [((3, 4), "pos")]),
    ("pow_negative", lambda a: a ** -1.5, SAME, [((3, 4), "pos")]),
    ("pow_function", lambda a: ag.pow(a, 2), lambda a: torch.pow(a, 2), [((3, 4), "real")]),
    ("matmul_5x3_3x2", lambda a, b: a @ b, SAME, [((5, 3), "real"), ((3, 2), "real")]),
    ("matmul_batched_broadcast", lambda a, b: a @ b, SAME,
     [((2, 1, 3, 4), "real"), ((5, 4, 2), "real")]),
    ("matmul_2d_by_batch", lambda a, b: a @ b, SAME, [((4, 3), "real"), ((2, 3, 5), "real")]),
    ("matmul_function", ag.matmul, torch.matmul if torch else None,
     [((2, 3, 4), "real"), ((4, 2), "real")]),
    ("exp", ag.exp, torch.exp if torch else None, [((3, 4), "real")]),
    ("exp_method", lambda a: a.exp(), SAME, [((3, 4), "real")]),
    ("log", ag.log, torch.log if torch else None, [((3, 4), "pos")]),
    ("log_method", lambda a: a.log(), SAME, [((3, 4), "pos")]),
    ("sigmoid", ag.sigmoid, torch.sigmoid if torch else None, [((3, 4), "real")]),
    ("tanh", ag.tanh, torch.tanh if torch else None, [((3, 4), "real")]),
    ("softplus", ag.softplus, lambda a: torch.logaddexp(a, torch.zeros_like(a)),
     [((3, 4), "real")]),
    ("log_sigmoid", ag.log_sigmoid, F.logsigmoid if F else None, [((3, 4), "real")]),
    ("relu", ag.relu, torch.relu if torch else None, [((3, 4), "kink")]),
    ("clip", lambda a: ag.clip(a, -0.5, 1.0), lambda a: torch.clamp(a, -0.5, 1.0),
     [((4, 5), "kink")]),
    ("hardtanh", ag.hardtanh, F.hardtanh if F else None, [((4, 5), "kink")]),
    ("clipped_relu", ag.clipped_relu, lambda a: torch.clamp(a, 0.0, 1.0), [((4, 5), "kink")]),
    ("logsumexp_last", lambda a: ag.logsumexp(a, axis=-1),
     lambda a: torch.logsumexp(a, dim=-1), [((3, 4), "real")]),
    ("logsumexp_axis0_keepdims", lambda a: ag.logsumexp(a, axis=0, keepdims=True),
     lambda a: torch.logsumexp(a, dim=0, keepdim=True), [((3, 4), "real")]),
    ("logsumexp_two_axes", lambda a: ag.logsumexp(a, axis=(0, 2)),
     lambda a: torch.logsumexp(a, dim=(0, 2)), [((2, 3, 4), "real")]),
    ("reshape", lambda a: ag.reshape(a, (3, 4)), lambda a: a.reshape(3, 4), [((2, 6), "real")]),
    ("reshape_method", lambda a: a.reshape(4, -1), SAME, [((2, 3, 2), "real")]),
    ("transpose_T", lambda a: a.T, SAME, [((3, 4), "real")]),
    ("transpose_axes", lambda a: ag.transpose(a, (1, 2, 0)), lambda a: a.permute(1, 2, 0),
     [((2, 3, 4), "real")]),
    ("getitem_slices", lambda a: a[1:, ::2], SAME, [((3, 5), "real")]),
    ("getitem_integer", lambda a: a[1], SAME, [((3, 5), "real")]),
    ("getitem_rows", lambda a: a[ag.as_array(IDX)], lambda a: a[_torch_index(IDX)],
     [((3, 4), "real")]),
    ("take_rows", lambda a: ag.take(a, ag.as_array(IDX)),
     lambda a: torch.index_select(a, 0, _torch_index(IDX)), [((3, 4), "real")]),
    ("take_columns", lambda a: ag.take(a, ag.as_array(COLS), axis=1),
     lambda a: torch.index_select(a, 1, _torch_index(COLS)), [((3, 4), "real")]),
    ("concatenate_axis0", lambda a, b, c: ag.concatenate([a, b, c], axis=0),
     lambda a, b, c: torch.cat([a, b, c], dim=0),
     [((2, 3), "real"), ((1, 3), "real"), ((3, 3), "real")]),
    ("concatenate_axis1", lambda a, b: ag.concatenate([a, b], axis=1),
     lambda a, b: torch.cat([a, b], dim=1), [((2, 3), "real"), ((2, 2), "real")]),
    ("bce_with_logits", lambda a: ag.binary_cross_entropy_with_logits(
        a, ag.as_array(targets_like(a))),
     lambda a: F.binary_cross_entropy_with_logits(
         a, torch.as_tensor(targets_like(a)), reduction="none"), [((3, 4), "real")]),
    ("linear", ag.linear, lambda x, w, b: torch.addmm(b, x, w),
     [((4, 3), "real"), ((3, 5), "real"), ((5,), "real")]),
    ("gated_linear", ag.gated_linear, _gated_torch,
     [((4, 3), "real"), ((3, 6), "real"), ((6,), "real")]),
    ("dropout_fixed_mask", lambda a: ag.dropout(a, 0.6, ag.default_rng(0)), None,
     [((4, 5), "real")]),
]

# sum and mean over every axis choice, with and without keepdims
for _op in ("sum", "mean"):
    for _axis in (None, 0, 1, 2, -1, (0, 2), (0, 1, 2)):
        for _keep in (False, True):
            def _ag(a, op=_op, axis=_axis, keep=_keep):
                return getattr(ag, op)(a, axis=axis, keepdims=keep)

            def _torch(a, op=_op, axis=_axis, keep=_keep):
                dim = tuple(range(a.ndim)) if axis is None else axis
                return getattr(torch, op)(a, dim=dim, keepdim=keep)
            CASES.append((f"{_op}_axis{_axis}_keepdims{_keep}".replace(" ", ""), _ag, _torch,
                          [((2, 3, 4), "real")]))
CASES.append(("sum_method", lambda a: a.sum(axis=1), lambda a: a.sum(dim=1), [((3, 4), "real")]))
CASES.append(("mean_method", lambda a: a.mean(), SAME, [((3, 4), "real")]))

CASE_PARAMS = [pytest.param(case, id=case[0]) for case in CASES]
TORCH_CASE_PARAMS = [pytest.param(case, id=case[0]) for case in CASES if case[2] is not None]


def sample(shape, domain, rng):
    """Inputs away from the points where an op is not differentiable."""
    if domain == "pos":
        return rng.uniform(0.5, 2.0, shape)
    x = rng.standard_normal(shape)
    if domain == "kink":
        kinks = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
        x = rng.uniform(-2, 2, shape)
        while True:
            near = np.abs(x[..., None] - kinks).min(axis=-1) < 0.05
            if not near.any():
                break
            x[near] = rng.uniform(-2, 2, near.sum())
    return x


def case_inputs(case, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [sample(shape, domain, rng).astype(dtype) for shape, domain in case[3]]


# --- finite differences ---------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_gradient_matches_finite_differences(case, on_backend, make_tensor):
    inputs = [make_tensor(x) for x in case_inputs(case)]
    assert ag.gradcheck(case[1], inputs)


class WrongSquare(Function):
    """x**2 with a deliberately wrong derivative (x instead of 2x)."""

    def forward(self, a):
        self.a = a
        return a * a

    def backward(self, gy):
        return gy * self.a


def test_gradcheck_catches_a_wrong_backward(on_backend, make_tensor):
    x = make_tensor(np.linspace(0.5, 2.0, 6).reshape(2, 3))
    with pytest.raises(AssertionError, match="input 0"):
        ag.gradcheck(lambda a: WrongSquare()(a), [x])
    assert ag.gradcheck(lambda a: a * a, [x])


def test_gradcheck_catches_a_gradient_for_the_wrong_input(on_backend, make_tensor):
    class SwappedMul(Function):
        def forward(self, a, b):
            self.a, self.b = a, b
            return a * b

        def backward(self, gy):
            return gy * self.a, gy * self.b   # swapped

    a, b = make_tensor([[1.0, 2.0]]), make_tensor([[3.0, -1.0]])
    with pytest.raises(AssertionError, match="gradcheck: input"):
        ag.gradcheck(lambda a, b: SwappedMul()(a, b), [a, b])


def test_gradcheck_requires_float64_tensors(on_backend, make_tensor):
    with pytest.raises(TypeError, match="float64"):
        ag.gradcheck(lambda a: a * a, [make_tensor(np.ones(3, np.float32))])


def test_numerical_grad_perturbs_non_contiguous_inputs(on_backend):
    base = np.arange(12.0).reshape(3, 4) / 7
    x = Tensor(ag.as_array(base).T)                    # a transposed, non-contiguous view
    assert not x.data.flags.c_contiguous
    (g,) = ag.numerical_grad(lambda a: (a * a * a).sum(), [x])
    np.testing.assert_allclose(g, 3 * base.T ** 2, rtol=1e-7)
    np.testing.assert_array_equal(ag.to_numpy(x.data), base.T)   # restored exactly
    assert ag.gradcheck(lambda a: ag.tanh(a) * a, [x])


def test_numerical_grad_with_weights_matches_the_weighted_sum(on_backend, make_tensor):
    x = make_tensor([1.0, 2.0, 3.0])
    w = make_tensor([0.5, -1.0, 2.0])
    (g,) = ag.numerical_grad(lambda a: a * a, [x], weights=w)
    np.testing.assert_allclose(g, [1.0, -4.0, 12.0], rtol=1e-8)


# --- PyTorch, float64 ------------------------------------------------------------------
def _torch_function(case):
    return case[1] if case[2] == SAME else case[2]


def run_both(case, seed=0):
    """Forward and backward (with random output weights) in both frameworks."""
    arrays = case_inputs(case, seed)
    ours = [Tensor(ag.as_array(x), requires_grad=True) for x in arrays]
    theirs = [torch.tensor(x, requires_grad=True) for x in arrays]
    out, ref = case[1](*ours), _torch_function(case)(*theirs)
    weights = np.random.default_rng(seed + 1).standard_normal(ref.shape)
    out.backward(ag.as_array(weights))
    ref.backward(torch.as_tensor(weights))
    return out, ref, ours, theirs


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("case", TORCH_CASE_PARAMS)
def test_values_and_gradients_match_torch(case, on_backend):
    out, ref, ours, theirs = run_both(case)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=RTOL, atol=ATOL)
    for x, t in zip(ours, theirs):
        np.testing.assert_allclose(ag.to_numpy(x.grad), t.grad.numpy(), rtol=RTOL, atol=ATOL)


# --- float32 stays float32 ----------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_float32_inputs_give_float32_outputs_and_gradients(case, on_backend, make_tensor):
    inputs = [make_tensor(x, requires_grad=True) for x in case_inputs(case, dtype=np.float32)]
    out = case[1](*inputs)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, np.float32))
    for x in inputs:
        assert x.grad.dtype == np.float32


# --- stable forms at extreme inputs ----------------------------------------------------------
EXTREMES = np.array([-1e4, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4])


def _value_and_grad(function, values, dtype=np.float32):
    x = Tensor(ag.as_array(np.asarray(values, dtype=dtype)), requires_grad=True)
    y = function(x)
    y.backward(ag.as_array(np.ones(y.shape, dtype)))
    return y.numpy(), ag.to_numpy(x.grad)


def _reference_sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_softplus_log_sigmoid_are_finite_and_right_at_extremes(dtype, on_backend):
    x = EXTREMES.astype(np.float64)
    cases = [(ag.sigmoid, _reference_sigmoid(x), _reference_sigmoid(x) * _reference_sigmoid(-x)),
             (ag.softplus, np.logaddexp(0.0, x), _reference_sigmoid(x)),
             (ag.log_sigmoid, -np.logaddexp(0.0, -x), _reference_sigmoid(-x))]
    tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
    for function, value, grad in cases:
        y, g = _value_and_grad(function, x, dtype)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(g)), function.__name__
        assert y.dtype == dtype and g.dtype == dtype
        rtol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, value, rtol=rtol, atol=tiny, err_msg=function.__name__)
        # derivatives are at most 1: sigmoid's y (1 - y) may lose what is below eps
        np.testing.assert_allclose(g, grad, rtol=rtol, atol=eps, err_msg=function.__name__)


def test_extreme_inputs_raise_no_warnings(recwarn, on_backend, make_tensor):
    x = make_tensor(EXTREMES.astype(np.float32), requires_grad=True)
    loss = (ag.sigmoid(x) + ag.softplus(x) + ag.log_sigmoid(x)
            + ag.binary_cross_entropy_with_logits(x, make_tensor(np.ones(9, np.float32)))).sum()
    loss.backward()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_bce_with_logits_at_plus_minus_1e4(on_backend, make_tensor):
    logits = np.array([1e4, 1e4, -1e4, -1e4, 0.0], np.float32)
    targets = make_tensor(np.array([1.0, 0.0, 1.0, 0.0, 0.5], np.float32))
    y, g = _value_and_grad(lambda x: ag.binary_cross_entropy_with_logits(x, targets), logits)
    np.testing.assert_allclose(y, [0.0, 1e4, 1e4, 0.0, np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(g, [0.0, 1.0, -1.0, 0.0, 0.0], atol=1e-7)


def test_logsumexp_at_extremes_and_with_minus_infinity(on_backend):
    rows = np.array([[1e4, 1e4 - 1.0, -1e4],
                     [-1e4, -1e4, -1e4],
                     [0.0, -np.inf, -np.inf],
                     [-np.inf, -np.inf, -np.inf]], np.float32)
    y, g = _value_and_grad(lambda x: ag.logsumexp(x, axis=1), rows)
    expected = [1e4 + np.log1p(np.exp(-1.0)), -1e4 + np.log(3.0), 0.0, -np.inf]
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    softmax_first = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(g, [[softmax_first, 1 - softmax_first, 0.0],
                                   [1 / 3, 1 / 3, 1 / 3],
                                   [1.0, 0.0, 0.0],
                                   [0.0, 0.0, 0.0]], rtol=1e-6, atol=1e-7)


# --- dropout ----------------------------------------------------------------------------
def test_dropout_in_training_zeroes_and_rescales(on_backend, make_tensor):
    x = make_tensor(np.ones((200, 100), np.float32), requires_grad=True)
    y = ag.dropout(x, 0.8, ag.default_rng(1), training=True)
    values = y.numpy()
    assert y.dtype == np.float32
    assert set(np.unique(values)) <= {0.0, np.float32(1 / 0.8)}
    assert abs((values > 0).mean() - 0.8) < 0.01
    y.sum().backward()
    np.testing.assert_array_equal(ag.to_numpy(x.grad), values)   # the gradient is the mask


def test_dropout_in_evaluation_and_with_keep_1_is_the_identity(on_backend, make_tensor):
    x = make_tensor(np.ones((3, 4)), requires_grad=True)
    assert ag.dropout(x, 0.5, ag.default_rng(0), training=False) is x
    assert ag.dropout(x, 1.0, ag.default_rng(0)) is x
    with pytest.raises(ValueError, match="keep"):
        ag.dropout(x, 0.0, ag.default_rng(0))


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("shapes", [((3, 4), (5, 6)), ((2, 3, 4), (5, 4, 2)), ((4,), (4, 2))])
def test_matmul_of_mismatched_shapes_names_the_op_and_both_shapes(shapes, on_backend,
                                                                    make_tensor):
    a, b = (make_tensor(np.ones(s)) for s in shapes)
    for attempt in (lambda: a @ b, lambda: ag.matmul(a, b)):
        with pytest.raises(ValueError) as error:
            attempt()
        message = str(error.value)
        assert "matmul" in message and str(shapes[0]) in message and str(shapes[1]) in message


def test_linear_and_gated_linear_reject_mismatched_shapes(on_backend, make_tensor):
    x, w, b = make_tensor(np.ones((2, 3))), make_tensor(np.ones((4, 6))), make_tensor(np.ones(6))
    for function, name in ((ag.linear, "linear"), (ag.gated_linear, "gatedlinear")):
        with pytest.raises(ValueError, match=name):
            function(x, w, b)
    with pytest.raises(ValueError, match="even"):
        ag.gated_linear(make_tensor(np.ones((2, 3))), make_tensor(np.ones((3, 5))),
                        make_tensor(np.ones(5)))


def test_bad_arguments_raise_clear_errors(on_backend, make_tensor):
    x = make_tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match="exponent"):
        x ** x
    with pytest.raises(ValueError, match="low < high"):
        ag.clip(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="out of range"):
        ag.sum(x, axis=2)
    with pytest.raises(ValueError, match="same shape"):
        ag.binary_cross_entropy_with_logits(x, make_tensor(np.ones(3)))


# --- fast in-place forms against plain compositions ------------------------------------------
def _plain_sigmoid(v):
    return 1 / (1 + ag.exp(-v))


def _plain_gated_linear(x, w, b):
    """h = (x W1 + b1) * sigmoid(x W2 + b2) from matmul, add, getitem, exp, div and mul."""
    half = w.shape[1] // 2
    y = x @ w + b
    return y[:, :half] * _plain_sigmoid(y[:, half:])


def _plain_bce(x, t):
    """-[t log s + (1 - t) log(1 - s)] with s = sigmoid(x), as in a textbook."""
    s = _plain_sigmoid(x)
    return -(t * ag.log(s) + (1 - t) * ag.log(1 - s))


# (id, fused op, the same function built from simple ops, input shapes)
FUSED = [
    ("linear", ag.linear, lambda x, w, b: x @ w + b, [(4, 3), (3, 5), (5,)]),
    ("gated_linear", ag.gated_linear, _plain_gated_linear, [(4, 3), (3, 6), (6,)]),
    ("sigmoid", ag.sigmoid, _plain_sigmoid, [(3, 4)]),
    ("tanh", ag.tanh, lambda a: (ag.exp(2 * a) - 1) / (ag.exp(2 * a) + 1), [(3, 4)]),
    ("softplus", ag.softplus, lambda a: ag.log(1 + ag.exp(a)), [(3, 4)]),
    ("log_sigmoid", ag.log_sigmoid, lambda a: ag.log(_plain_sigmoid(a)), [(3, 4)]),
    ("logsumexp", lambda a: ag.logsumexp(a, axis=1),
     lambda a: ag.log(ag.exp(a).sum(axis=1)), [(3, 4)]),
    ("bce_with_logits", lambda a: ag.binary_cross_entropy_with_logits(a, ag.as_array(TARGETS)),
     lambda a: _plain_bce(a, Tensor(ag.as_array(TARGETS))), [(3, 4)]),
]


def _value_and_grads(function, arrays, weights):
    inputs = [Tensor(ag.as_array(a), requires_grad=True) for a in arrays]
    out = function(*inputs)
    out.backward(ag.as_array(weights))
    return out.numpy(), [ag.to_numpy(x.grad) for x in inputs]


@pytest.mark.parametrize("fused, plain, shapes", [pytest.param(*case[1:], id=case[0])
                                                  for case in FUSED])
def test_fused_ops_match_their_plain_compositions(fused, plain, shapes, on_backend):
    """Each in-place / fused backward gives the gradients of the textbook composition."""
    rng = np.random.default_rng(11)
    arrays = [rng.standard_normal(shape) for shape in shapes]
    out_shape = fused(*[Tensor(ag.as_array(a)) for a in arrays]).shape
    weights = rng.standard_normal(out_shape)
    value, grads = _value_and_grads(fused, arrays, weights)
    plain_value, plain_grads = _value_and_grads(plain, arrays, weights)
    np.testing.assert_allclose(value, plain_value, rtol=1e-12, atol=1e-14)
    for i, (g, plain_g) in enumerate(zip(grads, plain_grads)):
        np.testing.assert_allclose(g, plain_g, rtol=1e-12, atol=1e-14, err_msg=f"input {i}")


def test_in_place_forms_round_as_their_formulas(on_backend):
    """The backwards of tanh and sigmoid and dropout's mask, written in place, give the
    float32 numbers of their one-line formulas bit for bit (training's numbers stay)."""
    xp = ag.xp()
    rng = np.random.default_rng(5)
    a, gy = (ag.as_array(rng.standard_normal((50, 40)).astype(np.float32)) for _ in range(2))
    for op, formula in ((ag.tanh, lambda y: gy * (1 - y * y)),
                        (ag.sigmoid, lambda y: gy * y * (1 - y))):
        x = Tensor(a, requires_grad=True)
        y = op(x)
        y.backward(gy)
        np.testing.assert_array_equal(ag.to_numpy(x.grad), ag.to_numpy(formula(y.data)))
    for keep in (0.5, 0.3):
        x = Tensor(a, requires_grad=True)
        y = ag.dropout(x, keep, ag.default_rng(2))
        u = ag.default_rng(2).random(a.shape, dtype=xp.float32)
        mask = (u < keep).astype(xp.float32)
        mask *= 1.0 / keep
        np.testing.assert_array_equal(ag.to_numpy(y.data), ag.to_numpy(a * mask))
        y.backward(gy)
        np.testing.assert_array_equal(ag.to_numpy(x.grad), ag.to_numpy(gy * mask))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_log1p_matches_numpy_log1p(dtype):
    """``_log1p_inplace`` (softplus's inner step) against np.log1p, on [0, 1] where it is used."""
    from autograd_lite.ops import _log1p_inplace

    tiny_exponent = np.log10(np.finfo(dtype).tiny)
    e = np.concatenate([np.logspace(tiny_exponent, 0, 3000), np.linspace(0, 1, 3001)])
    e = e.astype(dtype)
    result = _log1p_inplace(e.copy())
    assert result.dtype == dtype
    np.testing.assert_allclose(result, np.log1p(e.astype(np.float64)),
                               rtol=4 * np.finfo(dtype).eps, atol=0)
