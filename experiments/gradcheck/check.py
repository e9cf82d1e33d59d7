"""``iopvae gradcheck``: every parameter's gradient of every loss, checked twice.

For each method (VAE, VampPrior, AVB, IOP) a small float64 model at a random
start is given a batch of random data.  Its VAE-step loss (minus the ELBO of
Eq. 2: Eq. 3, or with the VampPrior of Eq. 9 as the prior, or AVB's; minus Eq. 19
for IOP; T frozen as in Algorithm 1, lines 2-6) and, for IOP and AVB, T's
loss (Eq. 20, lines 7-12) are differentiated by autograd_lite, and every
parameter's gradient is compared with

* central finite differences on a sample of its coordinates, and
* the gradient of an independent PyTorch implementation of the same loss
  (``torch_mirror``, beside this file), on all coordinates, when PyTorch is installed.

Finite differences need the loss to be a deterministic function of the
parameters: the random generator handed to the loss (``ReplayRNG``) records
its draws on the first evaluation and replays them on every later one, and it
is also the generator of T's dropout layers, so the masks repeat as well.  The
same noise and masks are given to the PyTorch mirror.
"""
import dataclasses
import time

import numpy as np

import autograd_lite as ag
import iopvae
from autograd_lite import nn
from autograd_lite.gradcheck import central_difference
from experiments import runs

METHODS = ("vae", "vamp", "avb", "iop")
DIM, LATENT, HIDDEN, BATCH, COMPONENTS, NOISE_DIM = 6, 3, 8, 5, 4, 4
BETA = 0.7              # a warm-up weight below 1: a KL term that misses beta shows
FD_STEP = 1e-6
FD_TOLERANCE = 1e-5
TORCH_TOLERANCE = 1e-10


# =============================================================================
# A small float64 model, its data, and repeatable randomness
# =============================================================================
class ReplayRNG:
    """A random generator that draws float64 numbers the first time and, after
    ``rewind()``, hands out the same arrays again in the same order.

    It stands in for the generator passed to ``loss`` and ``density_ratio_loss``
    (``standard_normal``: the reparameterisation noise) and for the one T's
    dropout layers use (``random``: the uniforms behind the masks).
    """

    def __init__(self, seed):
        self.generator = np.random.default_rng(seed)
        self.normals, self.uniforms = [], []
        self.replaying = False
        self.position = {"normal": 0, "uniform": 0}

    def rewind(self):
        self.replaying = True
        self.position = {"normal": 0, "uniform": 0}

    def _next(self, kind, draws, shape, draw):
        if not self.replaying:
            draws.append(draw(shape))
            return ag.as_array(draws[-1])
        i = self.position[kind]
        if i >= len(draws) or draws[i].shape != tuple(shape):
            raise RuntimeError(f"ReplayRNG: the loss asked for a different {kind} draw "
                               f"(shape {tuple(shape)}) than it did the first time")
        self.position[kind] = i + 1
        return ag.as_array(draws[i])

    def standard_normal(self, shape, dtype=None):
        """N(0, 1) draws, float64 whatever ``dtype`` asks: the check runs in float64."""
        return self._next("normal", self.normals, shape, self.generator.standard_normal)

    def random(self, shape, dtype=None):
        """U[0, 1) draws, float64 (dropout masks)."""
        return self._next("uniform", self.uniforms, shape, self.generator.random)


def float64_model(method, likelihood="bernoulli", seed=0, keep=0.5):
    """A small model of ``method`` at a random start, all parameters cast to float64.

    Two clips are made active so that their zero gradients are checked too: the
    first encoder log-variance bias is set to +4 (above hardtanh's bound 2) and,
    for the VampPrior, two pseudo-input entries are moved outside [0, 1].
    """
    config = runs.Config(dataset="onehot", method=method, latent=LATENT, hidden=HIDDEN,
                           components=COMPONENTS, noise_dim=NOISE_DIM, keep=keep)
    model = runs.build_model(config, DIM, likelihood, ag.default_rng(seed))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    if method != "avb":
        model.encoder.head.b.data[LATENT] = 4.0
    if method == "vamp":
        model.pseudo_inputs.data[0, :2] = ag.as_array(np.array([-0.3, 1.4]))
    return model


def small_data(likelihood="bernoulli", n=BATCH, seed=1):
    """n random float64 points: binary for a Bernoulli decoder, in (0, 1) for a Gaussian one."""
    g = np.random.default_rng(seed)
    if likelihood == "bernoulli":
        return (g.random((n, DIM)) < 0.4).astype(np.float64)
    return g.uniform(0.02, 0.98, size=(n, DIM))


def mirror_spec(model):
    """The model's sizes and settings, as the PyTorch mirror wants them."""
    from experiments.gradcheck import torch_mirror
    keep = [m.keep for m in model.modules() if isinstance(m, nn.Dropout)]
    return torch_mirror.Spec(method=model.name, likelihood=model.decoder.likelihood,
                             dim=model.decoder.dim, latent=model.latent,
                             decoder_logvar_bounds=tuple(model.decoder.logvar_bounds),
                             encoder_logvar_bounds=tuple(getattr(model.encoder, "logvar_bounds",
                                                                 iopvae.ENCODER_LOGVAR_BOUNDS)),
                             keep=keep[0] if keep else 1.0)


# =============================================================================
# One loss as a deterministic function of the parameters
# =============================================================================
class LossCase:
    """One of a model's two losses on a fixed batch, with its noise and masks fixed.

    ``step="vae"``: Eq. (19) (or the method's ELBO) with T frozen (no gradient,
    no dropout), differentiated w.r.t. theta and phi.  ``step="T"``: Eq. (20)
    with the encoder and decoder frozen and T's dropout on, w.r.t. psi.
    """

    def __init__(self, model, step, x, seed=2, beta=BETA):
        self.model, self.step, self.x, self.beta = model, step, x, beta
        self.rng = ReplayRNG(seed)
        if step == "vae":
            self.parameters = model.vae_parameters()
            self.frozen_modules = [model.density_ratio]
        elif step == "T":
            self.parameters = model.density_ratio_parameters()
            self.frozen_modules = [model.encoder, model.decoder]
            for layer in model.modules():
                if isinstance(layer, nn.Dropout):
                    layer.rng = self.rng
        else:
            raise ValueError(f"unknown step {step!r}: vae or T")
        ids = {id(p) for p in self.parameters}
        self.names = [name for name, p in model.named_parameters() if id(p) in ids]

    def frozen(self):
        """Context: the model in training mode but for the frozen part (Algorithm 1)."""
        self.model.train()
        return iopvae.frozen(*self.frozen_modules)

    def __call__(self):
        """The loss (a scalar Tensor), with the same noise and masks at every call; call it
        inside ``frozen()``."""
        x = ag.Tensor(ag.as_array(self.x))
        if self.step == "vae":
            loss = self.model.loss(x, self.rng, beta=self.beta)
        else:
            z1 = self.model.aggregated_posterior_sample(x, self.rng)
            loss = self.model.density_ratio_loss(z1, iopvae.standard_normal(self.rng, z1.shape), x)
        self.rng.rewind()
        return loss

    def autograd(self):
        """(loss value, name -> gradient) by autograd_lite; the first call fixes the noise."""
        self.model.zero_grad()
        with self.frozen():
            loss = self()
            loss.backward()
        grads = {name: np.zeros(p.shape) if p.grad is None else ag.to_numpy(p.grad)
                 for name, p in zip(self.names, self.parameters)}
        return float(loss.item()), grads

    def finite_differences(self, coordinates, rng, step=FD_STEP):
        """name -> (flat indices, central differences (L(w + h) - L(w - h)) / 2h there)
        on up to ``coordinates`` sampled entries of each parameter."""
        out = {}
        with ag.no_grad(), self.frozen():
            for name, p in zip(self.names, self.parameters):
                chosen = rng.choice(p.size, min(coordinates, p.size), replace=False)
                diffs = [central_difference(lambda: self().item(), p.data,
                                            np.unravel_index(flat, p.shape), step)
                         for flat in chosen]
                out[name] = (chosen, np.array(diffs))
        return out

    def torch_gradients(self):
        """(loss value, name -> gradient) of the PyTorch mirror, same noise and masks."""
        from experiments.gradcheck import torch_mirror as mirror
        spec = mirror_spec(self.model)
        P = mirror.parameters_from((n, ag.to_numpy(p.data))
                                   for n, p in self.model.named_parameters())
        if self.step == "vae":
            loss = mirror.vae_loss(spec, P, self.x, self.rng.normals, beta=self.beta)
        else:
            masks = mirror.dropout_masks(self.rng.uniforms, spec.keep)
            loss = mirror.density_ratio_loss(spec, P, self.x, self.rng.normals, masks)
        loss.backward()
        return loss.item(), {name: P[name].grad.numpy() for name in self.names}


def relative_error(gradient, reference):
    """max |g - g_ref| / max |g_ref|: the worst deviation against the size of the
    parameter's gradient, so that a tiny entry is not divided by itself."""
    gradient, reference = np.asarray(gradient), np.asarray(reference)
    if gradient.size == 0:
        return 0.0
    scale = max(np.abs(reference).max(), np.abs(gradient).max(), 1e-300)
    return float(np.abs(gradient - reference).max() / scale)


# =============================================================================
# The check
# =============================================================================
@dataclasses.dataclass
class Row:
    method: str
    loss: str
    parameter: str
    shape: tuple
    fd_error: float
    torch_error: float = None      # None: PyTorch not installed

    def failed(self, fd_tolerance=FD_TOLERANCE, torch_tolerance=TORCH_TOLERANCE):
        """True when an error passes its tolerance (or is NaN)."""
        return not self.fd_error <= fd_tolerance or (self.torch_error is not None
                                                     and not self.torch_error <= torch_tolerance)


def loss_cases(method, likelihood="bernoulli", seed=0):
    """(loss label, LossCase) for each loss of ``method``, on fresh float64 models.

    The label is "vae" for the VAE step and "T" for Eq. (20).
    """
    x = small_data(likelihood, seed=seed + 1)
    cases = [("vae", LossCase(float64_model(method, likelihood, seed), "vae", x, seed + 2))]
    if method in ("iop", "avb"):
        cases.append(("T", LossCase(float64_model(method, likelihood, seed), "T", x, seed + 2)))
    return cases


def torch_available():
    """Whether the PyTorch mirror can run (torch imports)."""
    from experiments.gradcheck import torch_mirror
    try:
        torch_mirror.require_torch()
        return True
    except ImportError:
        return False


def check(method, likelihood="bernoulli", seed=0, coordinates=20, use_torch=True):
    """Rows for every parameter of every loss of ``method`` (see the module docstring).

    ``seed`` fixes the model's start; the data, the noise and the sampled
    coordinates use seed + 1, + 2 and + 3.
    """
    rows = []
    for label, case in loss_cases(method, likelihood, seed):
        _, grads = case.autograd()
        numeric = case.finite_differences(coordinates, np.random.default_rng(seed + 3))
        reference = case.torch_gradients()[1] if use_torch else None
        for name, p in zip(case.names, case.parameters):
            indices, fd = numeric[name]
            rows.append(Row(method, label, name, tuple(p.shape),
                            relative_error(grads[name].reshape(-1)[indices], fd),
                            None if reference is None
                            else relative_error(grads[name], reference[name])))
    return rows


def _number(value):
    return "-" if value is None else f"{value:.1e}"


def format_rows(rows):
    """The table: one line per (method, loss, parameter)."""
    width = max([len("parameter")] + [len(r.parameter) for r in rows])
    header = (f"{'method':<7}{'loss':<5}{'parameter':<{width + 2}}{'shape':<10}"
              f"{'vs FD':>9}{'vs torch':>10}")
    lines = [header]
    for r in rows:
        shape = "x".join(str(n) for n in r.shape)
        lines.append(f"{r.method:<7}{r.loss:<5}{r.parameter:<{width + 2}}{shape:<10}"
                     f"{_number(r.fd_error):>9}{_number(r.torch_error):>10}")
    return "\n".join(lines)


def format_summary(rows):
    """One line per method: its losses, how many parameters were checked, and the worst
    error in each column."""
    lines = [f"{'method':<7}{'losses':<8}{'parameters':>10}{'worst vs FD':>13}"
             f"{'worst vs torch':>16}"]
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        losses = "+".join(dict.fromkeys(r.loss for r in mine))
        worst_torch = max((r.torch_error for r in mine if r.torch_error is not None),
                          default=None)
        lines.append(f"{method:<7}{losses:<8}{len(mine):>10}"
                     f"{_number(max(r.fd_error for r in mine)):>13}{_number(worst_torch):>16}")
    return "\n".join(lines)


def command(args):
    """Print one summary line per method of ``args.method`` (every row with
    ``args.verbose``); 1 (naming the offending rows) if any error passes its
    tolerance, else 0."""
    runs.positive("--coordinates", args.coordinates)
    runs.non_negative("--seed", args.seed)
    start = time.time()
    methods = METHODS if args.method == "all" else (args.method,)
    use_torch = torch_available()
    print(f"gradient check in float64: batch {BATCH}, dim {DIM}, latent {LATENT}, hidden "
          f"{HIDDEN}, {args.likelihood} decoder, seed {args.seed}")
    print(f"losses, with beta = {BETA} the warm-up weight of the KL estimate:\n"
          f"  vae = the VAE step's loss, T frozen: -(log p(x|z) - beta KL) for vae, vamp and "
          f"avb (the ELBO of Eq. 2: Eq. 3, the VampPrior of Eq. 9 as prior, AVB's), minus "
          f"Eq. (19) for iop (beta on -KL + T)\n"
          f"  T   = the density ratio estimator's loss, minus Eq. (20)")
    print(f"error = max |g - g_ref| / max |g_ref| per parameter; tolerances: finite "
          f"differences {FD_TOLERANCE:.0e} (central, h = {FD_STEP:.0e}, up to "
          f"{args.coordinates} coordinates), PyTorch {TORCH_TOLERANCE:.0e} (all coordinates)")
    if not use_torch:
        from experiments.gradcheck import torch_mirror
        print(f"PyTorch is not installed: the 'vs torch' column is skipped "
              f"(install it with: {torch_mirror.INSTALL_HINT})")
    rows = []
    for method in methods:
        rows += check(method, args.likelihood, args.seed, args.coordinates, use_torch)
    if args.verbose:
        print("parameter names are attribute paths: body.layers.i is layer i of a network "
              "(T's layers: Linear, tanh, Dropout, Linear, tanh, Dropout, so its weights are "
              "layers.0 and layers.3); a gated layer stores [W1 | W2] side by side, so its W "
              f"is (inputs) x (2 hidden) = (inputs) x {2 * HIDDEN}")
        print(format_rows(rows))
    else:
        print(format_summary(rows))
    failed = [r for r in rows if r.failed()]
    elapsed = f"{time.time() - start:.1f}s"
    if failed:
        print(f"FAILED: {len(failed)} of {len(rows)} gradients exceed their tolerance "
              f"({elapsed}):")
        print(format_rows(failed))
        return 1
    worst_fd = max(r.fd_error for r in rows)
    worst_torch = max((r.torch_error for r in rows if r.torch_error is not None), default=None)
    print(f"OK: all {len(rows)} gradients within tolerance (worst: vs FD {worst_fd:.1e}, "
          f"vs torch {_number(worst_torch)}; {elapsed})")
    return 0


def add_options(parser):
    """The options of the ``gradcheck`` command (experiments/cli.py)."""
    parser.add_argument("--method", choices=["vae", "vamp", "avb", "iop", "all"],
                        default="all", help="which method's losses (default: all)")
    parser.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli",
                        help="decoder of the small test model (default: bernoulli)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's start")
    parser.add_argument("--coordinates", type=int, default=20,
                        help="finite-difference coordinates sampled per parameter")
    parser.add_argument("--verbose", action="store_true",
                        help="one row per parameter (default: one summary line per method)")
    parser.set_defaults(run=command)
