"""Finite-difference gradient checking (central differences in float64).

Example::

    from autograd_lite import Tensor, gradcheck, tanh
    x = Tensor(np.random.randn(3, 4), requires_grad=True)
    gradcheck(lambda x: tanh(x) * x, [x])   # raises AssertionError on a mismatch
"""
import numpy as np

from . import backend
from .tensor import Tensor, no_grad


def _scalar_objective(function, inputs, weights):
    """sum(f(inputs) * weights) as a Python float (f itself when it is a scalar)."""
    out = function(*inputs)
    if weights is not None:
        out = (out * weights).sum()
    return float(out.item())


def central_difference(objective, array, index, eps=1e-6):
    """(f(a + eps e_i) - f(a - eps e_i)) / (2 eps) for the entry ``index`` of ``array``.

    The entry is perturbed in place and restored (by index, so non-contiguous
    and CuPy arrays work as well); ``objective()`` returns a Python float.
    """
    original = array[index].item()
    array[index] = original + eps
    up = objective()
    array[index] = original - eps
    down = objective()
    array[index] = original
    return (up - down) / (2 * eps)


def numerical_grad(function, inputs, eps=1e-6, weights=None):
    """d sum(f(inputs) * weights) / d input by central differences, for each input.

    Every element of every input is perturbed (``central_difference``).  Returns
    NumPy float64 arrays shaped like the inputs.
    """
    def objective():
        return _scalar_objective(function, inputs, weights)

    grads = []
    with no_grad():
        for x in inputs:
            g = np.zeros(x.shape, dtype=np.float64)
            for index in np.ndindex(*x.shape):
                g[index] = central_difference(objective, x.data, index, eps)
            grads.append(g)
    return grads


def gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Compare autograd gradients of ``function(*inputs)`` with finite differences.

    ``inputs`` are float64 tensors; they are made to require gradients.  A
    non-scalar output is reduced with fixed random weights, so every output
    element is checked.  Returns True, or raises AssertionError naming the
    input and its worst element.
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
        out = (out * weights).sum()
    out.backward()
    numeric = numerical_grad(function, inputs, eps, weights)
    for i, (x, expected) in enumerate(zip(inputs, numeric)):
        actual = np.zeros(x.shape) if x.grad is None else backend.to_numpy(x.grad)
        if actual.shape != expected.shape:
            raise AssertionError(f"gradcheck: input {i} has shape {x.shape} but its "
                                 f"gradient has shape {actual.shape}")
        error = np.abs(actual - expected)
        bound = atol + rtol * np.abs(expected)
        if np.any(error > bound):
            worst = np.unravel_index(np.argmax(error - bound), error.shape)
            raise AssertionError(
                f"gradcheck: input {i} (shape {x.shape}) at {worst}: autograd "
                f"{actual[worst]:.10g} vs finite difference {expected[worst]:.10g}")
    return True
