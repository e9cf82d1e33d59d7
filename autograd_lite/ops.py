"""The differentiable ops.  Each is a ``Function`` with a forward and a backward.

Binary ops broadcast like NumPy; their backward sums each gradient back to its
input's shape (``sum_to``).  The nonlinearities use forms that stay finite for
large inputs: softplus(x) = max(x, 0) + log1p(exp(-|x|)), log_sigmoid(x) =
-softplus(-x), logsumexp shifted by the maximum, and BCE computed from logits.
"""
import itertools
import math

from . import backend
from .tensor import Function, Tensor, sum_to


def _xp():
    return backend.xp()


# --- arithmetic ----------------------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        sa, sb = self.shapes
        return sum_to(gy, sa), sum_to(gy, sb)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        sa, sb = self.shapes
        return sum_to(gy, sa), sum_to(-gy, sb)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        return sum_to(gy * self.b, self.a.shape), sum_to(gy * self.a, self.b.shape)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = gy / self.b
        return sum_to(ga, self.a.shape), sum_to(-ga * self.a / self.b, self.b.shape)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, gy):
        return -gy


class Pow(Function):
    """x ** p for a constant scalar exponent p."""

    def __init__(self, p):
        self.p = p

    def forward(self, a):
        self.a = a
        return a ** self.p

    def backward(self, gy):
        return gy * self.p * self.a ** (self.p - 1)


class MatMul(Function):
    """(..., n, k) @ (..., k, m); 1-D operands are not supported (reshape first)."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match "
                             "(need (..., n, k) @ (..., k, m))")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        xp = _xp()
        ga = gy @ xp.swapaxes(self.b, -1, -2)
        gb = xp.swapaxes(self.a, -1, -2) @ gy
        return sum_to(ga, self.a.shape), sum_to(gb, self.b.shape)


# --- elementwise nonlinearities -------------------------------------------------------
class Exp(Function):
    def forward(self, a):
        self.y = _xp().exp(a)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, a):
        self.a = a
        return _xp().log(a)

    def backward(self, gy):
        return gy / self.a


def _sigmoid(a):
    xp = _xp()
    # 0.5 * (1 + tanh(a / 2)) is exact and never overflows
    return 0.5 * (1 + xp.tanh(0.5 * a))


def _softplus(a):
    xp = _xp()
    return xp.maximum(a, 0) + xp.log1p(xp.exp(-xp.abs(a)))


class Sigmoid(Function):
    def forward(self, a):
        self.y = _sigmoid(a)
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


class Tanh(Function):
    def forward(self, a):
        self.y = _xp().tanh(a)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class Softplus(Function):
    """log(1 + exp(x)); its derivative is sigmoid(x)."""

    def forward(self, a):
        self.a = a
        return _softplus(a)

    def backward(self, gy):
        return gy * _sigmoid(self.a)


class LogSigmoid(Function):
    """log sigmoid(x) = -softplus(-x); its derivative is sigmoid(-x)."""

    def forward(self, a):
        self.a = a
        return -_softplus(-a)

    def backward(self, gy):
        return gy * _sigmoid(-self.a)


class ReLU(Function):
    def forward(self, a):
        self.mask = a > 0
        return a * self.mask

    def backward(self, gy):
        return gy * self.mask


class Clip(Function):
    """min(max(x, low), high); the gradient passes where low < x < high."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, a):
        self.mask = (a > self.low) & (a < self.high)
        return _xp().clip(a, self.low, self.high)

    def backward(self, gy):
        return gy * self.mask


class GatedLinear(Function):
    """Gated linear unit (Dauphin et al. 2016) with one matmul for both halves.

    With W = [W1 | W2] and b = [b1 | b2]:  h = (x W1 + b1) * sigmoid(x W2 + b2).
    """

    def forward(self, x, w, b):
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ValueError(f"gated_linear: input {x.shape} does not match weight {w.shape}")
        y = x @ w
        y += b
        half = w.shape[1] // 2
        self.linear, self.gate = y[:, :half], _sigmoid(y[:, half:])
        self.x, self.w = x, w
        return self.linear * self.gate

    def backward(self, gh):
        xp = _xp()
        half = self.w.shape[1] // 2
        gy = xp.empty((gh.shape[0], 2 * half), dtype=gh.dtype)
        xp.multiply(gh, self.gate, out=gy[:, :half])
        # d/dg of linear * sigmoid(g) = linear * s * (1 - s)
        xp.multiply(gy[:, :half], self.linear * (1 - self.gate), out=gy[:, half:])
        gx = gy @ self.w.T
        gw = self.x.T @ gy
        return gx, gw, gy.sum(axis=0)


class Linear(Function):
    """x W + b in one op (a matmul and a bias add)."""

    def forward(self, x, w, b):
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
            raise ValueError(f"linear: input {x.shape} does not match weight {w.shape}")
        self.x, self.w = x, w
        y = x @ w
        y += b
        return y

    def backward(self, gy):
        return gy @ self.w.T, self.x.T @ gy, gy.sum(axis=0)


# --- reductions -------------------------------------------------------------------
def _normalise_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axes)


def _expand_reduced(g, shape, axes):
    """Re-insert the reduced axes of ``g`` (as size 1) so it broadcasts to ``shape``."""
    kept = [1 if i in axes else n for i, n in enumerate(shape)]
    return g.reshape(kept)


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        self.axes = _normalise_axes(self.axis, a.ndim)
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        g = _expand_reduced(gy, self.shape, self.axes)
        return _xp().broadcast_to(g, self.shape)


class Mean(Sum):
    def forward(self, a):
        y = super().forward(a)
        self.count = math.prod(a.shape[i] for i in self.axes)
        return y / a.dtype.type(self.count)

    def backward(self, gy):
        return super().backward(gy / gy.dtype.type(self.count))


class LogSumExp(Function):
    """log sum exp over ``axis``, computed as m + log sum exp(x - m) with m the max."""

    def __init__(self, axis=-1, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        xp = _xp()
        self.axes = _normalise_axes(self.axis, a.ndim)
        m = a.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        y = xp.log(xp.exp(a - m).sum(axis=self.axes, keepdims=True)) + m
        self.a, self.y = a, y
        return y if self.keepdims else y.reshape([n for i, n in enumerate(y.shape)
                                                  if i not in self.axes])

    def backward(self, gy):
        g = _expand_reduced(gy, self.a.shape, self.axes)
        return g * _xp().exp(self.a - self.y)


# --- shape ----------------------------------------------------------------------------
class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, a):
        self.in_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, a):
        self.ndim = a.ndim
        return a.transpose(self.axes)

    def backward(self, gy):
        if self.axes is None:
            return gy.transpose()
        inverse = [0] * self.ndim
        for i, axis in enumerate(self.axes):
            inverse[axis % self.ndim] = i
        return gy.transpose(inverse)


class GetItem(Function):
    """x[index]: slices, integers or integer arrays (rows picked repeatedly add up)."""

    def __init__(self, index):
        self.index = index

    def forward(self, a):
        self.shape, self.dtype = a.shape, a.dtype
        return a[self.index]

    def backward(self, gy):
        xp = _xp()
        g = xp.zeros(self.shape, dtype=gy.dtype)
        if _is_basic_index(self.index):
            g[self.index] = gy
        else:
            xp.add.at(g, self.index, gy)
        return g


def _is_basic_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, slice)) or p is None or p is Ellipsis for p in parts)


class Concatenate(Function):
    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return _xp().concatenate(arrays, axis=self.axis)

    def backward(self, gy):
        cuts = list(itertools.accumulate(self.sizes[:-1]))
        return tuple(_xp().split(gy, cuts, axis=self.axis))


# --- training helpers ----------------------------------------------------------
class Dropout(Function):
    """Inverted dropout: keep each unit with probability ``keep`` and scale by 1/keep."""

    def __init__(self, keep, rng):
        self.keep, self.rng = keep, rng

    def forward(self, a):
        self.mask = (self.rng.random(a.shape, dtype=a.dtype) < self.keep) / a.dtype.type(self.keep)
        self.mask = self.mask.astype(a.dtype, copy=False)
        return a * self.mask

    def backward(self, gy):
        return gy * self.mask


class BCEWithLogits(Function):
    """Elementwise binary cross-entropy -[t log s(x) + (1-t) log(1-s(x))] from logits x.

    Written as softplus(x) - t x, which is exact and finite for any x.  The
    targets t are constants (no gradient flows into them).
    """

    def forward(self, logits, targets):
        self.logits, self.targets = logits, targets
        return _softplus(logits) - targets * logits

    def backward(self, gy):
        return gy * (_sigmoid(self.logits) - self.targets), None


# --- functional interface -------------------------------------------------------
def add(a, b): return Add()(a, b)
def sub(a, b): return Sub()(a, b)
def mul(a, b): return Mul()(a, b)
def div(a, b): return Div()(a, b)
def neg(a): return Neg()(a)
def pow(a, p): return Pow(p)(a)  # noqa: A001 - mirrors the Python operator
def matmul(a, b): return MatMul()(a, b)
def linear(x, w, b): return Linear()(x, w, b)
def gated_linear(x, w, b): return GatedLinear()(x, w, b)
def exp(a): return Exp()(a)
def log(a): return Log()(a)
def sigmoid(a): return Sigmoid()(a)
def tanh(a): return Tanh()(a)
def softplus(a): return Softplus()(a)
def log_sigmoid(a): return LogSigmoid()(a)
def relu(a): return ReLU()(a)
def clip(a, low, high): return Clip(low, high)(a)
def hardtanh(a, low=-1.0, high=1.0): return Clip(low, high)(a)


def clipped_relu(a):
    """min(max(x, 0), 1): VampPrior's map of pseudo-inputs into [0, 1]."""
    return Clip(0.0, 1.0)(a)


def sum(a, axis=None, keepdims=False): return Sum(axis, keepdims)(a)  # noqa: A001
def mean(a, axis=None, keepdims=False): return Mean(axis, keepdims)(a)
def logsumexp(a, axis=-1, keepdims=False): return LogSumExp(axis, keepdims)(a)
def reshape(a, shape): return Reshape(tuple(shape))(a)
def transpose(a, axes=None): return Transpose(axes)(a)
def getitem(a, index): return GetItem(index)(a)


def take(a, indices, axis=0):
    """Rows (or slices along ``axis``) picked by an integer array."""
    index = (slice(None),) * (axis % a.ndim) + (indices,)
    return GetItem(index)(a)


def concatenate(tensors, axis=0): return Concatenate(axis)(*tensors)


def dropout(a, keep, rng, training=True):
    """Inverted dropout in training; the identity in evaluation."""
    if not training or keep >= 1.0:
        return a
    return Dropout(keep, rng)(a)


def binary_cross_entropy_with_logits(logits, targets):
    """Elementwise BCE from logits; sum or average it yourself."""
    return BCEWithLogits()(logits, targets)


# --- Python operators on Tensor ------------------------------------------------
def _swap(op):
    return lambda self, other: op(other, self)


Tensor.__add__ = add
Tensor.__radd__ = _swap(add)
Tensor.__sub__ = sub
Tensor.__rsub__ = _swap(sub)
Tensor.__mul__ = mul
Tensor.__rmul__ = _swap(mul)
Tensor.__truediv__ = div
Tensor.__rtruediv__ = _swap(div)
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = _swap(matmul)
Tensor.__neg__ = neg
Tensor.__pow__ = pow
Tensor.__getitem__ = getitem
Tensor.sum = sum
Tensor.mean = mean
Tensor.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
Tensor.exp = exp
Tensor.log = log
