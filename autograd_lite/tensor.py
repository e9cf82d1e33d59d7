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
    """Whether ops record the graph right now (False inside ``no_grad``)."""
    return _grad_enabled[0]


class Tensor:
    """An array with an optional gradient and the op that made it."""

    is_tensor = True
    # NumPy must hand ``ndarray <op> Tensor`` to the Tensor's reflected operator
    # (so the result has a graph) instead of treating the Tensor as an object array.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, name=None):
        if type(data) is not backend.array_type():  # else an array already: the usual case
            if isinstance(data, Tensor):
                data = data.data
            elif backend.array_backend(data) is None or isinstance(data, np.generic):
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
    def is_leaf(self):
        """True for tensors made by the user rather than by an op."""
        return self.creator is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def item(self):
        return self.data.item()

    def numpy(self):
        """The data as a NumPy array (copied to the host under CuPy)."""
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
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad (no input of "
                               "the ops that made it requires grad, or it was made in no_grad)")
        grads = {id(self): self._initial_grad(grad)}
        shared = {id(grads[id(self)])}  # arrays owned by the caller or by a leaf already
        for tensor in _reverse_topological_order(self):
            g = grads.pop(id(tensor), None)
            function = tensor.creator
            if function is None:
                if g is not None:
                    tensor._accumulate(g, shared)
                continue
            if g is not None:
                _propagate(function, g, grads)
            if not retain_graph:
                function.release()

    def _initial_grad(self, grad):
        xp = backend.xp()
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"backward() on a non-scalar tensor of shape {self.shape} needs a gradient "
                    "argument of the same shape")
            return xp.ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): gradient of shape {grad.shape} "
                             f"for a tensor of shape {self.shape}")
        return grad

    def _accumulate(self, g, shared):
        """Add ``g`` into ``self.grad``, copying only arrays that something else may hold."""
        if g.shape != self.data.shape:
            g = sum_to(g, self.data.shape)
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
        if self.grad is not None:
            self.grad = self.grad + g
        elif id(g) in shared or not _owns_memory(g):
            self.grad = g.copy()
        else:
            self.grad = g
        shared.add(id(self.grad))


def _owns_memory(a):
    """True for an array that is not a view of another (so no one else can write it)."""
    return a.base is None and a.flags.owndata


def _propagate(function, g, grads):
    """Run one op's backward and add its input gradients into ``grads`` (by tensor id)."""
    if function.released:
        raise RuntimeError(f"backward() through {function.name} a second time: its graph was "
                           "freed by the first backward(); pass retain_graph=True to keep it")
    input_grads = function.backward(g)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    if len(input_grads) != len(function.inputs):
        raise RuntimeError(f"{function.name}.backward returned {len(input_grads)} gradients "
                           f"for {len(function.inputs)} inputs")
    for x, gx in zip(function.inputs, input_grads):
        if gx is None or not x.requires_grad:
            continue
        if gx.shape != x.data.shape:
            raise RuntimeError(f"{function.name}.backward returned a gradient of shape "
                               f"{gx.shape} for an input of shape {x.shape}")
        previous = grads.get(id(x))
        grads[id(x)] = gx if previous is None else previous + gx


def _reverse_topological_order(root):
    """Tensors reachable from ``root`` that require grad, each before its inputs.

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
    shape = tuple(shape)
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
    """Wrap numbers and arrays as constant tensors.

    A Python or NumPy scalar next to a floating tensor ``like`` takes that
    tensor's dtype, so ``0.5 * x`` stays float32 for a float32 ``x``.  It is
    made on the device by ``full`` (on a GPU a fill kernel; CuPy's ``asarray``
    of a scalar does the same), so constants in the model's formulas copy
    nothing from the host.
    """
    if isinstance(value, Tensor):
        return value
    if like is not None and like.dtype.kind == "f" and _is_real_scalar(value):
        return Tensor(backend.xp().full((), value, dtype=like.dtype))
    return Tensor(value)


def _is_real_scalar(value):
    return isinstance(value, (int, float, np.integer, np.floating))


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` on the output gradient.

    Subclasses keep whatever ``forward`` needs for ``backward`` on ``self``;
    ``release`` drops it once the gradient has been propagated.  ``backward``
    returns one array (or None) per input, shaped like that input; it may
    skip inputs whose ``needs_input_grad`` entry is False by returning None.
    It must not return arrays that it keeps elsewhere (a saved input, say):
    gradients it makes are handed to leaves without a copy.
    """

    released = False

    def __call__(self, *inputs):
        if not all(isinstance(x, Tensor) for x in inputs):
            like = next((x for x in inputs if isinstance(x, Tensor)), None)
            inputs = [as_tensor(x, like) for x in inputs]
        _check_backend(self, inputs)
        needs = tuple(x.requires_grad for x in inputs)
        record = _grad_enabled[0] and any(needs)
        self.needs_input_grad = needs if record else (False,) * len(needs)
        output = Tensor(self.forward(*[x.data for x in inputs]))
        if record:
            output.requires_grad = True
            output.creator = self
            self.inputs = list(inputs)
        return output

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        """Drop the inputs and saved arrays: this op's part of the graph is done."""
        self.__dict__.clear()
        self.inputs = ()
        self.released = True

    @property
    def name(self):
        return type(self).__name__.lower()


def _check_backend(function, inputs):
    array_type = backend.array_type()
    if all(type(x.data) is array_type for x in inputs):  # the usual case, in one test each
        return
    active = backend.backend_name()
    kinds = [backend.array_backend(x.data) for x in inputs]
    if any(kind != active for kind in kinds):
        raise backend.BackendError(
            f"{function.name}: inputs are {'/'.join(map(str, kinds))} arrays but the active "
            f"backend is {active}; move arrays with autograd_lite.as_array first")
