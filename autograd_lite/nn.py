"""Layers: Module, Linear, GatedDense, Dropout, Sequential and an MLP builder."""
import math

import numpy as np

from . import backend, ops
from .files import atomic_write
from .tensor import Tensor


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates."""

    def __init__(self, data, name=None):
        super().__init__(data, requires_grad=True, name=name)


class Module:
    """A container of parameters and sub-modules, found through its attributes."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for each parameter, found through attributes, lists,
        tuples and dicts of sub-modules; a parameter reached twice is listed once."""
        for name, value in _walk(self):
            if isinstance(value, Parameter):
                yield prefix + name, value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and every sub-module, each once."""
        return [value for _, value in _walk(self) if isinstance(value, Module)]

    def train(self, mode=True):
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self, device=False):
        """Parameter name -> a copy of its array: NumPy arrays on the host (what files
        need; one device-to-host transfer for all of them, ``backend.to_numpy_all``),
        or with ``device=True`` copies on the backend's device (no transfer: what a
        trainer keeps as its best weights)."""
        if device:
            return {name: p.data.copy() for name, p in self.named_parameters()}
        return backend.to_numpy_all({name: p.data for name, p in self.named_parameters()})

    def load_state_dict(self, state):
        """Copy arrays (NumPy or of the backend) into the parameters, keeping each
        parameter's dtype and moving it to the active backend (arrays already there
        are copied on the device); names and shapes must match exactly."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            value = _on_backend(state[name])
            if value.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, "
                                 f"the model expects {p.shape}")
            p.data = backend.as_array(value, dtype=p.dtype).copy()  # never alias ``state``

    def save(self, path):
        """Write the parameters to an ``.npz`` file atomically."""
        save_npz(path, self.state_dict())

    def load(self, path):
        with np.load(path) as archive:
            self.load_state_dict(dict(archive))


def _on_backend(value):
    """``value`` as it is if it is an array of the active backend, else a NumPy array
    (host data, or another device's array through the host)."""
    if backend.array_backend(value) == backend.backend_name():
        return value
    return backend.to_numpy(value)


def _walk(root):
    """(dotted name, object) for ``root`` and each module, parameter and container under
    it, depth first and each object once, without recursion.  Modules are opened
    through their attributes, lists and tuples by position, dicts by key."""
    stack, seen = [("", root)], set()
    while stack:
        name, value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        yield name, value
        if isinstance(value, Module):
            children = vars(value).items()
        elif isinstance(value, (list, tuple)):
            children = enumerate(value)
        elif isinstance(value, dict):
            children = value.items()
        else:
            continue
        prefix = f"{name}." if name else ""
        stack.extend(reversed([(f"{prefix}{key}", child) for key, child in children
                               if isinstance(child, (Module, Parameter, list, tuple, dict))]))


def save_npz(path, arrays):
    """``np.savez`` of the named arrays (NumPy or device arrays, copied to the host in
    one transfer per dtype, ``backend.to_numpy_all``), written atomically (see
    ``atomic_write``)."""
    arrays = backend.to_numpy_all(arrays)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def glorot_uniform(fan_in, fan_out, rng, shape=None, dtype="float32"):
    """Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).

    ``rng`` is a NumPy or CuPy Generator; the array is of its kind.
    """
    dtype = np.dtype(dtype)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    u = rng.random(shape or (fan_in, fan_out), dtype=np.float64 if dtype == np.float64
                   else np.float32)
    u *= 2 * limit
    u -= limit
    return u.astype(dtype, copy=False)


def _rng(rng):
    return rng if rng is not None else backend.default_rng()


def _device_rng(rng):
    """``rng``, or under a GPU backend a generator of that backend in place of a NumPy one.

    The new generator is seeded from a child of ``rng``'s seed sequence, which
    leaves ``rng``'s own stream as it was (it may still initialise other layers,
    the same on every backend).
    """
    if backend.backend_name() == "numpy" or not isinstance(rng, np.random.Generator):
        return rng
    return backend.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])


class Linear(Module):
    """y = x W + b, with W of shape (in, out), Glorot-uniform initialised.

    ``rng`` may be a NumPy Generator also under CuPy (the same start on both).
    """

    def __init__(self, in_features, out_features, rng=None, dtype="float32"):
        w = glorot_uniform(in_features, out_features, _rng(rng), dtype=dtype)
        self.W = Parameter(backend.as_array(w))
        self.b = Parameter(backend.xp().zeros(out_features, dtype=dtype))

    def forward(self, x):
        return ops.linear(x, self.W, self.b)


class GatedDense(Module):
    """h = (x W1 + b1) * sigmoid(x W2 + b2) (Dauphin et al. 2016), as in the paper.

    W1 and W2 are stored side by side in one (in, 2 out) matrix so that both
    halves come from one matmul; each half is Glorot-initialised on its own.
    """

    def __init__(self, in_features, out_features, rng=None, dtype="float32"):
        rng = _rng(rng)
        halves = [backend.as_array(glorot_uniform(in_features, out_features, rng, dtype=dtype))
                  for _ in range(2)]
        self.W = Parameter(backend.xp().concatenate(halves, axis=1))
        self.b = Parameter(backend.xp().zeros(2 * out_features, dtype=dtype))

    def forward(self, x):
        return ops.gated_linear(x, self.W, self.b)


class Activation(Module):
    """A parameter-free elementwise function as a layer (tanh, relu, ...)."""

    def __init__(self, function):
        self.function = function

    def forward(self, x):
        return self.function(x)


class Dropout(Module):
    """Inverted dropout with keep probability ``keep``; the identity in eval mode.

    The masks are drawn where the data is: a NumPy Generator given under a GPU
    backend is replaced by that backend's generator (see ``_device_rng``).
    """

    def __init__(self, keep, rng=None):
        self.keep, self.rng = keep, _device_rng(_rng(rng))

    def forward(self, x):
        return ops.dropout(x, self.keep, self.rng, training=self.training)


class Sequential(Module):
    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def mlp(sizes, kind="gated", dropout_keep=None, rng=None, dtype="float32"):
    """Hidden layers from ``sizes`` = (in, h1, h2, ...), without an output head.

    ``kind="gated"``: GatedDense layers (the paper's encoder and decoder);
    ``kind="tanh"`` / ``"relu"``: Linear + activation (the density ratio
    estimator uses tanh), each optionally followed by dropout.
    """
    rng = _rng(rng)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        if kind == "gated":
            layers.append(GatedDense(n_in, n_out, rng, dtype))
        elif kind in ("tanh", "relu"):
            layers += [Linear(n_in, n_out, rng, dtype), Activation(getattr(ops, kind))]
        else:
            raise ValueError(f"mlp: unknown kind {kind!r} (gated, tanh or relu)")
        if dropout_keep is not None and dropout_keep < 1.0:
            layers.append(Dropout(dropout_keep, rng))
    return Sequential(*layers)
