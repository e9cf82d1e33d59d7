"""Tensor and Function: the reverse-mode core.

A ``Tensor`` wraps an array (``.data``) and, when it was produced by an op on
tensors that need gradients, remembers that op (its ``creator``).  Each op is a
``Function`` with a ``forward`` on arrays and a ``backward`` that maps the
output's gradient to one gradient per input.  ``Tensor.backward`` walks the
graph in reverse topological order with an explicit stack (no recursion), so
graphs far deeper than Python's recursion limit work.
"""
import contextlib

import numpy as np

from . import backend

_grad_enabled = [True]


@contextlib.contextmanager
def no_grad():
    """Inside this block, ops record no graph (evaluation, parameter updates)."""
    previous = _grad_enabled[0]
    _grad_enabled[0] = False
    try:
        yield
    finally:
        _grad_enabled[0] = previous


def grad_enabled():
    return _grad_enabled[0]


class Tensor:
    """An array with an optional gradient and the op that made it."""

    is_tensor = True
    __array_priority__ = 1000  # so that ndarray <op> Tensor defers to Tensor

    def __init__(self, data, requires_grad=False, name=None):
        if isinstance(data, Tensor):
            data = data.data
        if backend.array_backend(data) is None:
            data = backend.xp().asarray(data)
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.creator = None
        self.name = name

    # --- array-like attributes -------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def T(self):
        from .ops import transpose
        return transpose(self)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def item(self):
        return self.data.item()

    def numpy(self):
        return backend.to_numpy(self.data)

    def detach(self):
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # --- reverse mode ------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the upstream gradient; it may be omitted only for a scalar.
        Unless ``retain_graph`` is true, the graph is freed as it is consumed,
        so nothing from this step is kept alive into the next one.
        """
        xp = backend.xp()
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() on a non-scalar tensor of shape {self.shape} needs a gradient "
                    "argument of the same shape")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): gradient of shape {grad.shape} "
                                 f"for a tensor of shape {self.shape}")
        if self.creator is None:
            self._accumulate(grad)
            return

        grads = {id(self): grad}
        for tensor in _reverse_topological_order(self):
            g = grads.pop(id(tensor), None)
            function = tensor.creator
            if function is None:  # a leaf
                if g is not None and tensor.requires_grad:
                    tensor._accumulate(g)
                continue
            if g is None:
                continue
            input_grads = function.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for x, gx in zip(function.inputs, input_grads):
                if gx is None or not x.requires_grad:
                    continue
                key = id(x)
                grads[key] = gx if key not in grads else grads[key] + gx
            if not retain_graph:
                function.release()
                tensor.creator = None

    def _accumulate(self, g):
        if g.shape != self.data.shape:
            g = sum_to(g, self.data.shape)
        self.grad = g.copy() if self.grad is None else self.grad + g

    # --- Python operators (defined in ops, bound below) ----------------------------


def _reverse_topological_order(root):
    """Tensors reachable from ``root``, each one before the tensors it was made from.

    An iterative depth-first search: a tensor is appended after all of its
    inputs (post-order), and the list is then reversed.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor.creator is not None:
            stack.extend((x, False) for x in tensor.creator.inputs
                         if x.requires_grad and id(x) not in visited)
    order.reverse()
    return order


def sum_to(g, shape):
    """Sum a broadcast gradient back down to ``shape`` (the inverse of broadcasting)."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    g = g.sum(axis=axes, keepdims=True)
    if lead:
        g = g.reshape(g.shape[lead:])
    return g


def as_tensor(value, like=None):
    """Wrap numbers and arrays as constant tensors (matching ``like``'s dtype for numbers)."""
    if isinstance(value, Tensor):
        return value
    if backend.array_backend(value) is None:  # a Python number or a list
        dtype = like.dtype if like is not None and np.isscalar(value) else None
        return Tensor(backend.xp().asarray(value, dtype=dtype))
    return Tensor(value)


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` on the output gradient.

    Subclasses keep whatever ``forward`` needs for ``backward`` on ``self``;
    ``release`` drops it once the gradient has been propagated.
    """

    def __call__(self, *inputs):
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        like = tensors[0] if tensors else None
        inputs = [as_tensor(x, like) for x in inputs]
        _check_same_backend(self, inputs)
        output = Tensor(self.forward(*(x.data for x in inputs)))
        if _grad_enabled[0] and any(x.requires_grad for x in inputs):
            output.requires_grad = True
            output.creator = self
            self.inputs = inputs
        return output

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        self.__dict__.clear()
        self.inputs = ()

    @property
    def name(self):
        return type(self).__name__.lower()


def _check_same_backend(function, inputs):
    kinds = {backend.array_backend(x.data) for x in inputs}
    if len(kinds) > 1:
        raise backend.BackendError(
            f"{function.name}: inputs live on different backends {sorted(kinds)}; "
            "move them with autograd_lite.as_array first")
