"""The differentiable ops.  Each is a ``Function`` with a forward and a backward,
followed directly by its functional wrapper (``add``, ``tanh``, ...).

Every ``backward`` opens with its derivative in one comment; ``g`` there is the
gradient of the loss with respect to the op's output (the ``gy`` argument).
Where a backward works in place to save memory and time, the plain formula is
written beside it, and ``tests/test_autograd_ops.py`` checks the fast form
against a composition of simpler ops.

Binary ops broadcast like NumPy; their backward sums each gradient back to its
input's shape (``sum_to``).  The nonlinearities use forms that stay finite for
large inputs: sigmoid(x) = 1 / (1 + exp(-x)) (exp overflowing to inf gives the
right limit 0), softplus(x) = max(x, 0) + log1p(exp(-|x|)), log_sigmoid(x) =
-softplus(-x), logsumexp shifted by the maximum, and BCE computed from logits.
Scalars are kept as Python floats (or cast to the input's dtype) so that float32
inputs give float32 outputs and gradients.
"""
import contextlib
import itertools
import math

import numpy as np

from . import backend
from .tensor import Function, Tensor, sum_to


def _xp():
    return backend.xp()


def _quiet(**kinds):
    """Silence NumPy's floating-point warnings ``kinds`` where inf is the intended result."""
    if backend.backend_name() == "numpy":
        return np.errstate(**kinds)
    return contextlib.nullcontext()


# --- arithmetic ----------------------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        # d(a+b)/da = 1, d(a+b)/db = 1: g for both, summed back to each input's shape
        sa, sb = self.shapes
        return sum_to(gy, sa), sum_to(gy, sb)


def add(a, b):
    return Add()(a, b)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        # d(a-b)/da = 1, d(a-b)/db = -1: g and -g, summed back to each input's shape
        sa, sb = self.shapes
        return sum_to(gy, sa), -sum_to(gy, sb)


def sub(a, b):
    return Sub()(a, b)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        # d(ab)/da = b, d(ab)/db = a
        need_a, need_b = self.needs_input_grad
        ga = sum_to(gy * self.b, self.a.shape) if need_a else None
        gb = sum_to(gy * self.a, self.b.shape) if need_b else None
        return ga, gb


def mul(a, b):
    return Mul()(a, b)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        need_a, need_b = self.needs_input_grad
        g = gy / self.b
        ga = sum_to(g, self.a.shape) if need_a else None
        gb = -sum_to(g * self.a / self.b, self.b.shape) if need_b else None
        return ga, gb


def div(a, b):
    return Div()(a, b)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, gy):
        # d(-a)/da = -1
        return -gy


def neg(a):
    return Neg()(a)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Pow(Function):
    """x ** p for a constant real exponent p."""

    def __init__(self, p):
        if not _is_number(p):
            raise TypeError(f"pow: the exponent must be a real number, not {type(p).__name__}")
        self.p = float(p)

    def forward(self, a):
        self.a = a
        return a ** self.p

    def backward(self, gy):
        # d(a^p)/da = p a^(p-1)
        return gy * (self.p * self.a ** (self.p - 1))


def pow(a, p):  # noqa: A001 - mirrors the Python operator
    """a ** p for a number p."""
    return Pow(p)(a)


def _matmul_shapes_error(name, a, b):
    return ValueError(f"{name}: shapes {a.shape} and {b.shape} do not match "
                      "(need (..., n, k) @ (..., k, m) with broadcastable leading axes)")


class MatMul(Function):
    """(..., n, k) @ (..., k, m) with broadcast leading axes; both operands at least 2-D."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise _matmul_shapes_error(self.name, a, b)
        try:
            y = a @ b
        except ValueError:
            raise _matmul_shapes_error(self.name, a, b) from None
        self.a, self.b = a, b
        return y

    def backward(self, gy):
        # d(a@b)/da = g @ b^T, d(a@b)/db = a^T @ g (summed over broadcast leading axes)
        need_a, need_b = self.needs_input_grad
        ga = sum_to(gy @ self.b.swapaxes(-1, -2), self.a.shape) if need_a else None
        gb = sum_to(self.a.swapaxes(-1, -2) @ gy, self.b.shape) if need_b else None
        return ga, gb


def matmul(a, b):
    return MatMul()(a, b)


def _check_linear_shapes(name, x, w, b):
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0] or b.shape != w.shape[1:]:
        raise ValueError(f"{name}: input {x.shape}, weight {w.shape} and bias {b.shape} do not "
                         "match (need (batch, in), (in, out) and (out,))")


def _linear_backward(function, gy):
    """Gradients of x W + b given the gradient ``gy`` of its output."""
    need_x, need_w, need_b = function.needs_input_grad
    gx = gy @ function.w.T if need_x else None
    gw = function.x.T @ gy if need_w else None
    gb = gy.sum(axis=0) if need_b else None
    return gx, gw, gb


class Linear(Function):
    """x W + b in one op, for x of shape (batch, in), W (in, out) and b (out,).

    Fused form of ``matmul(x, W) + b``: one node instead of two, and the bias
    added in place into the product (``y += b`` rather than a new array).
    """

    def forward(self, x, w, b):
        _check_linear_shapes(self.name, x, w, b)
        self.x, self.w = x, w
        y = x @ w
        y += b                        # x @ w + b without a second (batch, out) array
        return y

    def backward(self, gy):
        # d(xW+b)/dx = g W^T, d(xW+b)/dW = x^T g, d(xW+b)/db = sum of g over the batch rows
        return _linear_backward(self, gy)


def linear(x, w, b):
    """x @ w + b as one op (x: (batch, in), w: (in, out), b: (out,))."""
    return Linear()(x, w, b)


class GatedLinear(Function):
    """Gated linear unit (Dauphin et al. 2016) with one matmul for both halves.

    With W = [W1 | W2] and b = [b1 | b2]:  h = (x W1 + b1) * sigmoid(x W2 + b2).
    Fused form of ``linear`` then ``getitem`` of two halves, ``sigmoid`` and ``mul``:
    one node, and a backward that writes both halves' gradients into one array.
    """

    def forward(self, x, w, b):
        _check_linear_shapes(self.name, x, w, b)
        if w.shape[1] % 2:
            raise ValueError(f"{self.name}: weight {w.shape} needs an even number of columns")
        y = x @ w
        y += b
        half = w.shape[1] // 2
        self.linear, self.gate = y[:, :half], _sigmoid(y[:, half:])
        self.x, self.w = x, w
        return self.linear * self.gate

    def backward(self, gh):
        # with u = x W1 + b1, v = x W2 + b2, s = sigmoid(v), h = u s:
        # dh/du = s, dh/dv = u s (1 - s); then linear's rule on gy = [g s | g u s (1 - s)]
        half = self.gate.shape[1]
        gy = _xp().empty((gh.shape[0], 2 * half), dtype=gh.dtype)
        g_linear, g_gate = gy[:, :half], gy[:, half:]
        _xp().multiply(gh, self.gate, out=g_linear)     # g_linear = g * s
        _xp().subtract(1, self.gate, out=g_gate)         # g_gate = 1 - s
        g_gate *= self.linear                            #        * u
        g_gate *= g_linear                               #        * g * s  = g u s (1 - s)
        return _linear_backward(self, gy)


def gated_linear(x, w, b):
    """(x W1 + b1) * sigmoid(x W2 + b2) with w = [W1 | W2], b = [b1 | b2]."""
    return GatedLinear()(x, w, b)


# --- elementwise nonlinearities -------------------------------------------------------
class Exp(Function):
    def forward(self, a):
        self.y = _xp().exp(a)
        return self.y

    def backward(self, gy):
        # d exp(a)/da = exp(a) = y
        return gy * self.y


def exp(a):
    return Exp()(a)


class Log(Function):
    def forward(self, a):
        self.a = a
        return _xp().log(a)

    def backward(self, gy):
        # d log(a)/da = 1/a
        return gy / self.a


def log(a):
    return Log()(a)


def _sigmoid(a):
    """1 / (1 + exp(-a)) in a new array, computed in place after the first pass."""
    xp = _xp()
    s = xp.negative(a)
    with _quiet(over="ignore"):
        xp.exp(s, out=s)
    s += 1
    return xp.reciprocal(s, out=s)


def _softplus(a):
    """log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|)), finite for any a."""
    xp = _xp()
    s = xp.abs(a)
    xp.negative(s, out=s)
    xp.exp(s, out=s)
    _log1p_inplace(s)
    s += xp.maximum(a, 0)
    return s


def _log1p_inplace(e):
    """log(1 + e) into ``e``, accurate also where 1 + e rounds to 1.

    With u = 1 + e rounded, log(u) - ((u - 1) - e) / u corrects the rounding
    of u to first order, which is exact to a few ulps; it is several times
    faster than NumPy's scalar ``log1p`` loop because every step is vectorised.
    """
    xp = _xp()
    u = e + 1
    correction = u - 1
    correction -= e
    correction /= u
    xp.log(u, out=e)
    e -= correction
    return e


class Sigmoid(Function):
    def forward(self, a):
        self.y = _sigmoid(a)
        return self.y

    def backward(self, gy):
        # d sigmoid(x)/dx = y (1 - y)
        gx = gy * self.y
        gx *= 1 - self.y              # g y (1 - y), one new array fewer
        return gx


def sigmoid(a):
    return Sigmoid()(a)


class Tanh(Function):
    def forward(self, a):
        self.y = _xp().tanh(a)
        return self.y

    def backward(self, gy):
        # d tanh(x)/dx = 1 - y^2
        gx = self.y * self.y
        _xp().subtract(1, gx, out=gx)  # 1 - y^2
        gx *= gy                       # g (1 - y^2), in one new array instead of three
        return gx


def tanh(a):
    return Tanh()(a)


class Softplus(Function):
    """log(1 + exp(x)); its derivative is sigmoid(x)."""

    def forward(self, a):
        self.a = a
        return _softplus(a)

    def backward(self, gy):
        # d softplus(x)/dx = sigmoid(x)
        s = _sigmoid(self.a)
        s *= gy                       # g * sigmoid(x), in sigmoid's own array
        return s


def softplus(a):
    return Softplus()(a)


class LogSigmoid(Function):
    """log sigmoid(x) = -softplus(-x); its derivative is sigmoid(-x)."""

    def forward(self, a):
        self.a = a
        y = _softplus(-a)
        return _xp().negative(y, out=y)

    def backward(self, gy):
        # d log sigmoid(x)/dx = 1 - sigmoid(x) = sigmoid(-x)
        s = _sigmoid(-self.a)
        s *= gy                       # g * sigmoid(-x), in sigmoid's own array
        return s


def log_sigmoid(a):
    return LogSigmoid()(a)


class ReLU(Function):
    def forward(self, a):
        self.mask = a > 0
        return _xp().maximum(a, 0)

    def backward(self, gy):
        # d relu(x)/dx = 1 where x > 0, else 0
        return gy * self.mask


def relu(a):
    return ReLU()(a)


class Clip(Function):
    """min(max(x, low), high); the gradient passes where low < x < high."""

    def __init__(self, low, high):
        if not low < high:
            raise ValueError(f"clip: need low < high, got {low} and {high}")
        self.low, self.high = float(low), float(high)

    def forward(self, a):
        self.mask = (a > self.low) & (a < self.high)
        return _xp().clip(a, self.low, self.high)

    def backward(self, gy):
        # d clip(x)/dx = 1 where low < x < high, else 0
        return gy * self.mask


def clip(a, low, high):
    """min(max(a, low), high), with gradient 1 strictly inside (low, high)."""
    return Clip(low, high)(a)


def hardtanh(a, low=-1.0, high=1.0):
    return clip(a, low, high)


def clipped_relu(a):
    """min(max(x, 0), 1): VampPrior's map of pseudo-inputs into [0, 1]."""
    return clip(a, 0.0, 1.0)


# --- reductions -------------------------------------------------------------------
def _normalise_axes(axis, ndim):
    """``axis`` (None, an int or a sequence) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimensions")
    return tuple(sorted(int(a) % ndim for a in axes))


def _expand_reduced(g, shape, axes):
    """Re-insert the reduced axes of ``g`` (as size 1) so it broadcasts to ``shape``."""
    return g.reshape([1 if i in axes else n for i, n in enumerate(shape)])


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        self.axes = _normalise_axes(self.axis, a.ndim)
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        # d sum(a)/da = 1 for every element: g repeated along the summed axes
        # a read-only broadcast view: no (batch, features) array is materialised
        return _xp().broadcast_to(_expand_reduced(gy, self.shape, self.axes), self.shape)


def sum(a, axis=None, keepdims=False):  # noqa: A001
    return Sum(axis, keepdims)(a)


class Mean(Sum):
    def forward(self, a):
        y = super().forward(a)
        self.count = math.prod(a.shape[i] for i in self.axes)
        return y / self.count

    def backward(self, gy):
        # d mean(a)/da = 1/count for every element: sum's rule applied to g / count
        return super().backward(gy / self.count)


def mean(a, axis=None, keepdims=False):
    return Mean(axis, keepdims)(a)


class LogSumExp(Function):
    """log sum exp over ``axis``, computed as m + log sum exp(x - m) with m the max.

    The gradient is the softmax exp(x - m) / sum exp(x - m), formed from the
    forward's exp(x - m) (accurate even where the result is large).  A slice
    whose entries are all -inf gives -inf, with gradient 0.
    """

    def __init__(self, axis=-1, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        xp = _xp()
        self.axes = _normalise_axes(self.axis, a.ndim)
        m = a.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        self.e = xp.exp(a - m)
        total = self.e.sum(axis=self.axes, keepdims=True)
        with _quiet(divide="ignore"):  # log(0) = -inf for a slice of -inf only
            y = xp.log(total)
        y += m
        self.total = xp.where(total == 0, 1, total)  # 0 / 1 = 0 there instead of nan
        return y if self.keepdims else y.reshape(
            [n for i, n in enumerate(y.shape) if i not in self.axes])

    def backward(self, gy):
        # d logsumexp(x)/dx = softmax(x) = exp(x - m) / sum exp(x - m)
        g = self.e / self.total
        g *= _expand_reduced(gy, self.e.shape, self.axes)  # softmax * g, in softmax's array
        return g


def logsumexp(a, axis=-1, keepdims=False):
    return LogSumExp(axis, keepdims)(a)


# --- shape ----------------------------------------------------------------------------
class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, a):
        self.in_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, gy):
        # reshape moves no value: g reshaped back to the input's shape
        return gy.reshape(self.in_shape)


def reshape(a, shape):
    return Reshape(tuple(shape))(a)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, a):
        axes = self.axes if self.axes is not None else tuple(reversed(range(a.ndim)))
        self.inverse = tuple(int(i) for i in np.argsort([axis % a.ndim for axis in axes]))
        return a.transpose(axes)

    def backward(self, gy):
        # transpose permutes axes: g goes back through the inverse permutation
        return gy.transpose(self.inverse)


def transpose(a, axes=None):
    return Transpose(axes)(a)


def _is_basic_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis
               for p in parts)


def _plain_index(index):
    """An index with any Tensors in it replaced by their arrays."""
    if isinstance(index, tuple):
        return tuple(_plain_index(part) for part in index)
    return index.data if isinstance(index, Tensor) else index


class GetItem(Function):
    """x[index]: slices, integers or integer arrays (rows picked repeatedly add up)."""

    def __init__(self, index):
        self.index = index

    def forward(self, a):
        self.shape = a.shape
        return a[self.index]

    def backward(self, gy):
        # d x[index]/dx: g at the picked places (added where picked twice), 0 elsewhere
        xp = _xp()
        g = xp.zeros(self.shape, dtype=gy.dtype)
        if _is_basic_index(self.index):
            g[self.index] = gy
        else:
            xp.add.at(g, self.index, gy)
        return g


def getitem(a, index):
    return GetItem(_plain_index(index))(a)


def take(a, indices, axis=0):
    """Rows (or slices along ``axis``) picked by an integer array."""
    index = (slice(None),) * (axis % a.ndim) + (_plain_index(indices),)
    return GetItem(index)(a)


class Concatenate(Function):
    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return _xp().concatenate(arrays, axis=self.axis)

    def backward(self, gy):
        # d concatenate(a_1, ..., a_n)/d a_k = 1 on a_k's block: g cut into the blocks
        cuts = list(itertools.accumulate(self.sizes[:-1]))
        return tuple(_xp().split(gy, cuts, axis=self.axis))


def concatenate(tensors, axis=0):
    return Concatenate(axis)(*tensors)


# --- training helpers ----------------------------------------------------------
class Dropout(Function):
    """Inverted dropout: keep each unit with probability ``keep`` and scale by 1/keep."""

    def __init__(self, keep, rng):
        self.keep, self.rng = keep, rng

    def forward(self, a):
        # mask = (u < keep) / keep for u ~ U[0, 1), in two passes (compare, scale)
        u = self.rng.random(a.shape, dtype=a.dtype)
        self.mask = _xp().multiply(u < self.keep, 1.0 / self.keep, dtype=a.dtype)
        return a * self.mask

    def backward(self, gy):
        # d(a * mask)/da = mask (0 or 1/keep)
        return gy * self.mask


def dropout(a, keep, rng, training=True):
    """Inverted dropout in training; the identity in evaluation."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"dropout: keep probability must be in (0, 1], got {keep}")
    if not training or keep == 1.0:
        return a
    return Dropout(keep, rng)(a)


class BCEWithLogits(Function):
    """Elementwise binary cross-entropy -[t log s(x) + (1-t) log(1-s(x))] from logits x.

    Written as softplus(x) - t x, which is exact and finite for any x.  The
    targets t are constants (no gradient flows into them).
    """

    def forward(self, logits, targets):
        if logits.shape != targets.shape:
            raise ValueError(f"{self.name}: logits {logits.shape} and targets {targets.shape} "
                             "must have the same shape")
        self.logits, self.targets = logits, targets
        loss = _softplus(logits)
        loss -= targets * logits
        return loss

    def backward(self, gy):
        # d(softplus(x) - t x)/dx = sigmoid(x) - t; none for the targets t
        g = _sigmoid(self.logits)
        g -= self.targets             # (sigmoid(x) - t) * g, in sigmoid's own array
        g *= gy
        return g, None


def binary_cross_entropy_with_logits(logits, targets):
    """Elementwise BCE from logits; sum or average it yourself."""
    return BCEWithLogits()(logits, targets)


# --- Python operators and methods on Tensor ------------------------------------------
def _reflected(op):
    return lambda self, other: op(other, self)


def _reshape_method(self, *shape):
    """``t.reshape(2, 3)`` or ``t.reshape((2, 3))``."""
    return reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)


Tensor.__add__, Tensor.__radd__ = add, _reflected(add)
Tensor.__sub__, Tensor.__rsub__ = sub, _reflected(sub)
Tensor.__mul__, Tensor.__rmul__ = mul, _reflected(mul)
Tensor.__truediv__, Tensor.__rtruediv__ = div, _reflected(div)
Tensor.__matmul__, Tensor.__rmatmul__ = matmul, _reflected(matmul)
Tensor.__neg__ = neg
Tensor.__pow__ = pow
Tensor.__getitem__ = getitem
Tensor.T = property(transpose)
Tensor.sum = sum
Tensor.mean = mean
Tensor.reshape = _reshape_method
Tensor.transpose = transpose
Tensor.exp = exp
Tensor.log = log
