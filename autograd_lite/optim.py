"""Optimizers: Adam (Kingma & Ba 2014) with bias correction, and SGD."""
import math

from . import backend


class Optimizer:
    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimise")

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _grad(self, p, weight_decay):
        g = p.grad
        if weight_decay:
            g = g + weight_decay * p.data
        return g


class SGD(Optimizer):
    """p <- p - lr * v, v <- momentum * v + g (plain SGD when momentum = 0)."""

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = self._grad(p, self.weight_decay)
            if self.momentum:
                v = self.velocity[i]
                self.velocity[i] = g.copy() if v is None else v * self.momentum + g
                g = self.velocity[i]
            p.data -= self.lr * g


class Adam(Optimizer):
    """Adam with bias-corrected moments; weight decay is added to the gradient (L2).

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        xp = backend.xp()
        self.m = [xp.zeros_like(p.data) for p in self.params]
        self.v = [xp.zeros_like(p.data) for p in self.params]
        self.t = 0

    def step(self):
        xp = backend.xp()
        b1, b2 = self.betas
        self.t += 1
        step_size = self.lr / (1 - b1 ** self.t)
        root_bias2 = math.sqrt(1 - b2 ** self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = self._grad(p, self.weight_decay)
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = xp.sqrt(v)
            denom /= root_bias2
            denom += self.eps
            p.data -= step_size * (m / denom)

    def state_dict(self):
        """Moments and step count as NumPy arrays (for checkpoints)."""
        state = {"t": backend.to_numpy(self.t * 1.0).reshape(())}
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            state[f"m.{i}"] = backend.to_numpy(m)
            state[f"v.{i}"] = backend.to_numpy(v)
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for i, p in enumerate(self.params):
            for name, buffers in (("m", self.m), ("v", self.v)):
                value = state[f"{name}.{i}"]
                if value.shape != p.shape:
                    raise ValueError(f"Adam.load_state_dict: {name}.{i} has shape {value.shape}, "
                                     f"parameter {i} has shape {p.shape}")
                buffers[i] = backend.as_array(value, dtype=p.dtype)
