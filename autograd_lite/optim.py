"""Optimizers: Adam (Kingma & Ba 2014) with bias correction, and SGD with momentum.

Both follow ``torch.optim`` (weight decay is L2 added to the gradient) and skip
parameters whose ``grad`` is None.  A step updates ``p.data`` in place with
in-place ufuncs and a per-parameter scratch array, so it allocates nothing,
and large parameters are updated by several threads at once (``threads``).
Per-parameter state is created at the first step and saved by ``state_dict``
as NumPy arrays.
"""
import functools

import numpy as np

from . import backend, threads


class Optimizer:
    """Base class: the parameter list, ``zero_grad`` and state (de)serialisation."""

    buffer_names = ()  # per-parameter state lists, one entry (or None) per parameter

    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimise")
        self.t = 0
        for name in self.buffer_names:
            setattr(self, name, [None] * len(self.params))
        self._scratch = [None] * len(self.params)

    def zero_grad(self):
        """Drop every parameter's gradient (the next backward starts from nothing)."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient, once."""
        self.t += 1
        update = self._update_function()
        jobs = [self._arrays(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        threads.for_each(update, jobs)

    def _update_function(self):
        """The elementwise update for this step, on (p, g, *buffers, scratch) arrays."""
        raise NotImplementedError

    def _arrays(self, i, p):
        """(p.data, gradient, state buffers..., scratch) for parameter ``i``."""
        g = p.grad
        if self.weight_decay:
            g = backend.xp().multiply(p.data, self.weight_decay)
            g += p.grad
        buffers = [self._buffer(name, i) for name in self.buffer_names]
        if self._scratch[i] is None or self._scratch[i].shape != p.shape:
            self._scratch[i] = backend.xp().empty_like(p.data)
        return (p.data, g, *buffers, self._scratch[i])

    def _buffer(self, name, i):
        """Per-parameter state ``name`` of parameter ``i``, zeros at first use."""
        buffers = getattr(self, name)
        if buffers[i] is None:
            buffers[i] = backend.xp().zeros_like(self.params[i].data)
        return buffers[i]

    def state_dict(self, device=False):
        """The step count ``t`` and per-parameter buffers (``m.0``, ...) as NumPy arrays
        (one device-to-host transfer for all, ``backend.to_numpy_all``), or with
        ``device=True`` the buffers as copies on the device (``t`` stays a host number)."""
        buffers = {f"{name}.{i}": value for name in self.buffer_names
                   for i, value in enumerate(getattr(self, name)) if value is not None}
        buffers = ({key: value.copy() for key, value in buffers.items()} if device
                   else backend.to_numpy_all(buffers))
        return {"t": np.asarray(float(self.t)), **buffers}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` gave; keys and shapes must fit these parameters."""
        expected = {f"{name}.{i}" for name in self.buffer_names for i in range(len(self.params))}
        unexpected = sorted(set(state) - expected - {"t"})
        if unexpected or "t" not in state:
            raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected keys "
                           f"{unexpected}" + ("" if "t" in state else ", no step count 't'"))
        for name in self.buffer_names:
            buffers = getattr(self, name)
            for i, p in enumerate(self.params):
                value = state.get(f"{name}.{i}")
                if value is not None and tuple(value.shape) != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {name}.{i} has "
                                     f"shape {value.shape}, parameter {i} has shape {p.shape}")
                buffers[i] = (None if value is None
                              else backend.as_array(value, dtype=p.dtype).copy())
        self.t = int(backend.to_numpy(state["t"]))


class SGD(Optimizer):
    """v <- momentum * v + g (v = g at the first step), p <- p - lr * v.

    With momentum 0 this is plain SGD, p <- p - lr * g.
    """

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        self.buffer_names = ("velocity",) if momentum else ()
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)

    def _update_function(self):
        if not self.momentum:
            return functools.partial(_sgd_update, lr=self.lr)
        # v starts at zeros, so the first step gives v = g as in torch
        return functools.partial(_sgd_momentum_update, lr=self.lr, momentum=self.momentum)


def _sgd_update(p, g, tmp, lr):
    """p <- p - lr g, in place."""
    xp = backend.xp()
    p -= xp.multiply(g, lr, out=tmp)


def _sgd_momentum_update(p, g, v, tmp, lr, momentum):
    """v <- momentum v + g, p <- p - lr v, in place."""
    xp = backend.xp()
    v *= momentum
    v += g
    p -= xp.multiply(v, lr, out=tmp)


class Adam(Optimizer):
    """Adam with bias-corrected moments; weight decay is added to the gradient (L2).

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    buffer_names = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.betas = tuple(float(b) for b in betas)

    def _update_function(self):
        # Textbook form: m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t),
        #                p <- p - lr * m_hat / (sqrt(v_hat) + eps).
        # With rb2 = sqrt(1 - b2^t) the same update is
        #   lr/(1-b1^t) * m / (sqrt(v)/rb2 + eps) = (lr/(1-b1^t) * rb2) * m / (sqrt(v) + eps*rb2)
        # so the bias corrections become two scalars (``step`` and ``eps``) computed once a
        # step, and no m_hat or v_hat array is made.  tests/test_autograd_nn.py checks this
        # against the textbook loop.
        b1, b2 = self.betas
        root_bias2 = (1 - b2 ** self.t) ** 0.5
        return functools.partial(_adam_update, b1=b1, b2=b2, eps=self.eps * root_bias2,
                                 step=self.lr / (1 - b1 ** self.t) * root_bias2)


def _adam_update(p, g, m, v, tmp, b1, b2, eps, step):
    """One Adam update in place, in twelve passes over the arrays and no allocation.

    ``eps`` and ``step`` carry the bias corrections (see ``Adam._update_function``):
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  p <- p - step * m / (sqrt(v) + eps).
    """
    xp = backend.xp()
    m *= b1                                      # m = b1 m
    m += xp.multiply(g, 1 - b1, out=tmp)         #   + (1 - b1) g
    v *= b2                                      # v = b2 v
    square = xp.multiply(g, g, out=tmp)
    square *= 1 - b2
    v += square                                  #   + (1 - b2) g^2
    denom = xp.sqrt(v, out=tmp)
    denom += eps                                 # sqrt(v) + eps
    update = xp.divide(m, denom, out=tmp)
    update *= step                               # step * m / (sqrt(v) + eps)
    p -= update                                  # p = p - step * m / (sqrt(v) + eps)
