"""Finite-difference gradient checking (central differences in float64).

Example::

    from autograd_lite import Tensor, gradcheck, tanh
    x = Tensor(np.random.randn(3, 4), requires_grad=True)
    gradcheck(lambda x: tanh(x) * x, [x])   # raises AssertionError on a mismatch
"""
import numpy as np

from . import backend
from .tensor import Tensor


def _scalar_objective(function, inputs, weights):
    out = function(*inputs)
    if weights is None:
        return out
    return (out * weights).sum()


def numerical_grad(function, inputs, eps=1e-6, weights=None):
    """d sum(f(inputs) * weights) / d input by central differences, for each input."""
    grads = []
    for x in inputs:
        g = np.zeros(x.shape, dtype=np.float64)
        flat = x.data.reshape(-1)  # a view: perturb in place, then restore
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            up = float(_scalar_objective(function, inputs, weights).item())
            flat[i] = original - eps
            down = float(_scalar_objective(function, inputs, weights).item())
            flat[i] = original
            g.reshape(-1)[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Compare autograd gradients of ``function(*inputs)`` with finite differences.

    ``inputs`` are float64 tensors that require gradients.  A non-scalar output
    is reduced with fixed random weights, so every output element is checked.
    Returns True, or raises AssertionError naming the input and the worst element.
    """
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor) or x.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} must be a float64 Tensor (got "
                            f"{getattr(x, 'dtype', type(x).__name__)})")
        x.requires_grad = True
        x.grad = None
    out = function(*inputs)
    weights = None
    if out.size != 1:
        rng = np.random.default_rng(seed)
        weights = Tensor(backend.as_array(rng.standard_normal(out.shape)))
    _scalar_objective(function, inputs, weights).backward()
    numeric = numerical_grad(function, inputs, eps, weights)
    for i, (x, expected) in enumerate(zip(inputs, numeric)):
        actual = np.zeros(x.shape) if x.grad is None else backend.to_numpy(x.grad)
        error = np.abs(actual - expected)
        bound = atol + rtol * np.abs(expected)
        if np.any(error > bound):
            worst = np.unravel_index(np.argmax(error - bound), error.shape)
            raise AssertionError(
                f"gradcheck: input {i} (shape {x.shape}) at {worst}: autograd "
                f"{actual[worst]:.10g} vs finite difference {expected[worst]:.10g}")
    return True
