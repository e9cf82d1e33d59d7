"""One training step of the paper's VAE in autograd_lite and in PyTorch, side by side.

The networks are those of Takahashi et al. (2019) for MNIST: an encoder
784-500-500 of gated dense layers with a linear head to the mean and log-variance
of a 40-dim Gaussian, a reparameterised sample z, and a decoder 40-500-500 (gated)
with a linear head to 784 Bernoulli logits.  The loss is the batch mean of the
BCE-with-logits summed over pixels plus the closed-form KL to N(0, I).  A step is
forward, backward and one Adam update, in float32 with a batch of 100.

Both frameworks start from the same weights and run on the same number of threads;
their steps alternate so that both see the same machine state.  Usage::

    python benchmarks/bench_step.py [--threads N] [--steps 50] [--backend numpy|cupy]

The thread count must be fixed before NumPy loads its BLAS, so this module sets the
BLAS environment variables first and imports NumPy only afterwards.

Two thread pools in one process (OpenBLAS's for NumPy, OpenMP's for torch) slow
each other down: after its work, each pool's idle threads spin, waiting for
more, on the cores the other framework needs next.  OpenBLAS spins for 2^28
cycles (about 0.1 s) by default and libgomp for 300000 rounds (a few ms), so
alternating steps would charge each framework for the other's spinning.  Unless
they are set already, both spins are capped at well under a millisecond
(``OPENBLAS_THREAD_TIMEOUT=20``, ``GOMP_SPINCOUNT=30000``); a step of either
framework alone is no slower for it.  Each framework is also timed alone in a
fresh process, as a check on the interleaved numbers.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SPIN_LIMITS = {"OPENBLAS_THREAD_TIMEOUT": "20", "GOMP_SPINCOUNT": "30000"}
SIZES = {"x": 784, "hidden": 500, "z": 40}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for BLAS and PyTorch (default: all cores)")
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                        help="numpy vs torch on the CPU, or cupy vs torch on CUDA")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each first")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--alone", choices=("autograd_lite", "torch"),
                        help=argparse.SUPPRESS)  # internal: one framework in a child process
    return parser.parse_args(argv)


ARGS = parse_args()
for _name in THREAD_VARIABLES:
    os.environ[_name] = str(ARGS.threads)
for _name, _value in SPIN_LIMITS.items():
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402  (after the thread variables, on purpose)

sys.path.insert(0, ROOT)
import autograd_lite as ag  # noqa: E402
from autograd_lite import nn, optim  # noqa: E402


# --- shared initial weights and data ---------------------------------------------
def initial_weights(seed=0):
    """Glorot-uniform weights, as (name, W, b) with W of shape (in, out), in float32."""
    rng = np.random.default_rng(seed)
    x, h, z = SIZES["x"], SIZES["hidden"], SIZES["z"]
    layers = [("enc1", x, h, 2), ("enc2", h, h, 2), ("enc_head", h, 2 * z, 1),
              ("dec1", z, h, 2), ("dec2", h, h, 2), ("dec_head", h, x, 1)]
    weights = []
    for name, n_in, n_out, halves in layers:
        w = np.concatenate([nn.glorot_uniform(n_in, n_out, rng) for _ in range(halves)], axis=1)
        weights.append((name, w, np.zeros(w.shape[1], dtype=np.float32)))
    return weights


def binary_batches(batch, count=4, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.random((batch, SIZES["x"])) < 0.3).astype(np.float32) for _ in range(count)]


# --- autograd_lite ----------------------------------------------------------------
class AgVAE(nn.Module):
    def __init__(self, weights):
        x, h, z = SIZES["x"], SIZES["hidden"], SIZES["z"]
        self.enc1, self.enc2 = nn.GatedDense(x, h), nn.GatedDense(h, h)
        self.enc_head = nn.Linear(h, 2 * z)
        self.dec1, self.dec2 = nn.GatedDense(z, h), nn.GatedDense(h, h)
        self.dec_head = nn.Linear(h, x)
        self.load_state_dict({f"{name}.{key}": value for name, w, b in weights
                              for key, value in (("W", w), ("b", b))})

    def loss(self, x, eps):
        z_dim = SIZES["z"]
        stats = self.enc_head(self.enc2(self.enc1(x)))
        mu, logvar = stats[:, :z_dim], stats[:, z_dim:]
        z = mu + ag.exp(0.5 * logvar) * eps
        logits = self.dec_head(self.dec2(self.dec1(z)))
        reconstruction = ag.binary_cross_entropy_with_logits(logits, x).sum(axis=1)
        kl = -0.5 * (1 + logvar - mu * mu - ag.exp(logvar)).sum(axis=1)
        return (reconstruction + kl).mean()


def autograd_lite_stepper(weights, batches):
    model = AgVAE(weights)
    data = [ag.as_array(b) for b in batches]
    rng = ag.default_rng(2)
    state = {"optimizer": None, "i": 0}

    def step():
        if state["optimizer"] is None:  # created at the first step, like torch's lazy state
            state["optimizer"] = optim.Adam(model.parameters(), lr=1e-3)
        x = data[state["i"] % len(data)]
        state["i"] += 1
        eps = rng.standard_normal((x.shape[0], SIZES["z"]), dtype=np.float32)
        loss = model.loss(ag.Tensor(x), ag.Tensor(eps))
        state["optimizer"].zero_grad()
        loss.backward()
        state["optimizer"].step()
        return float(loss.item())
    return step


# --- PyTorch ------------------------------------------------------------------------
def torch_stepper(weights, batches, device):
    import torch

    params = {}
    for name, w, b in weights:
        params[name] = (torch.tensor(w, device=device, requires_grad=True),
                        torch.tensor(b, device=device, requires_grad=True))
    data = [torch.tensor(b, device=device) for b in batches]
    generator = torch.Generator(device=device).manual_seed(2)
    state = {"optimizer": None, "i": 0}
    f = torch.nn.functional

    def gated(x, name):
        w, b = params[name]
        y = torch.addmm(b, x, w)
        linear, gate = y.chunk(2, dim=1)
        return linear * torch.sigmoid(gate)

    def linear(x, name):
        w, b = params[name]
        return torch.addmm(b, x, w)

    def loss_of(x, eps):
        z_dim = SIZES["z"]
        stats = linear(gated(gated(x, "enc1"), "enc2"), "enc_head")
        mu, logvar = stats[:, :z_dim], stats[:, z_dim:]
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = linear(gated(gated(z, "dec1"), "dec2"), "dec_head")
        reconstruction = f.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = -0.5 * (1 + logvar - mu * mu - torch.exp(logvar)).sum(1)
        return (reconstruction + kl).mean()

    def step():
        if state["optimizer"] is None:
            state["optimizer"] = torch.optim.Adam([p for pair in params.values() for p in pair],
                                                  lr=1e-3)
        x = data[state["i"] % len(data)]
        state["i"] += 1
        eps = torch.randn((x.shape[0], SIZES["z"]), generator=generator, device=device)
        loss = loss_of(x, eps)
        state["optimizer"].zero_grad()
        loss.backward()
        state["optimizer"].step()
        return float(loss.item())
    return step


# --- measurement ----------------------------------------------------------------------
FRAMEWORKS = ("autograd_lite", "torch")


def build(args, names=FRAMEWORKS):
    """{name: (step, synchronise)} on the chosen backend, from the same weights."""
    import torch

    torch.set_num_threads(args.threads)
    ag.set_backend(args.backend)
    device, ag_sync, torch_sync = "cpu", (lambda: None), (lambda: None)
    if args.backend == "cupy":
        import cupy  # the benchmark's own clock needs it; autograd_lite never imports it

        device, ag_sync, torch_sync = "cuda", cupy.cuda.Device().synchronize, torch.cuda.synchronize
    weights, batches = initial_weights(), binary_batches(args.batch)
    makers = {"autograd_lite": (lambda: autograd_lite_stepper(weights, batches), ag_sync),
              "torch": (lambda: torch_stepper(weights, batches, device), torch_sync)}
    return {name: (makers[name][0](), makers[name][1]) for name in names}


def timed_step(step, sync):
    """(milliseconds, loss) of one step, the device synchronised on both sides."""
    sync()
    start = time.perf_counter()
    loss = step()
    sync()
    return 1e3 * (time.perf_counter() - start), loss


def time_interleaved(args):
    """Median milliseconds per step of each framework, alternating their steps."""
    runs = build(args)
    times, losses = {name: [] for name in runs}, {}
    for i in range(args.warmup + args.steps):
        for name, (step, sync) in runs.items():
            ms, losses[name] = timed_step(step, sync)
            if i >= args.warmup:
                times[name].append(ms)
    return {name: float(np.median(t)) for name, t in times.items()}, losses


def _status_mb(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB (Linux only)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss():
    """Start the peak-RSS mark afresh at the current size (Linux ``clear_refs``).

    ``getrusage``'s maxrss would not do: it keeps the parent's peak across fork and exec.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then counts from the process start, which only overstates growth


def measure_alone(args):
    """In a child process: one framework's step time and memory, printed as JSON."""
    name = args.alone
    ((step, sync),) = build(args, [name]).values()
    if args.backend == "cupy":
        import torch

        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    before = _status_mb("VmRSS")
    times = [timed_step(step, sync)[0] for _ in range(args.warmup + args.steps)]
    result = {"ms": float(np.median(times[args.warmup:])),
              "rss_mb": _status_mb("VmHWM") - before}
    if args.backend == "cupy" and name == "torch":
        result["device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif args.backend == "cupy":
        import cupy

        result["device_mb"] = cupy.get_default_memory_pool().total_bytes() / 2**20
    if name == "autograd_lite":
        import tracemalloc

        tracemalloc.start()
        step()
        result["tracemalloc_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(json.dumps(result))


def alone_in_child(args, name):
    command = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
               "--backend", args.backend, "--batch", str(args.batch), "--steps",
               str(args.steps), "--warmup", str(args.warmup), "--alone", name]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def row(label, ours, theirs, digits=2, ratio=True):
    cells = f"{label:34}{ours:>15.{digits}f}{theirs:>12.{digits}f}"
    return cells + (f"{ours / theirs:>8.2f}" if ratio else "")


def main(args):
    medians, losses = time_interleaved(args)
    alone = {name: alone_in_child(args, name) for name in FRAMEWORKS}
    ours, theirs = alone["autograd_lite"], alone["torch"]
    device = "CuPy vs torch CUDA" if args.backend == "cupy" else "NumPy vs torch CPU"
    spin = ", ".join(f"{name}={os.environ[name]}" for name in SPIN_LIMITS)
    print(f"VAE training step (784-500-500 gated, z=40, Adam), batch {args.batch}, float32, "
          f"{device}, {args.threads} thread(s); {args.steps} timed steps after "
          f"{args.warmup} warm-up; {spin}")
    print(f"{'':34}{'autograd_lite':>15}{'torch':>12}{'ratio':>8}")
    print(row("median ms / step, interleaved", medians["autograd_lite"], medians["torch"]))
    print(row("median ms / step, alone", ours["ms"], theirs["ms"]))
    if args.backend == "cupy":
        print(row("peak device memory (MB)", ours["device_mb"], theirs["device_mb"], 1))
    print(row("peak RSS growth (MB)", ours["rss_mb"], theirs["rss_mb"], 1))
    print(f"{'tracemalloc peak, 1 step (MB)':34}{ours['tracemalloc_mb']:>15.1f}{'-':>12}")
    print(f"final loss: autograd_lite {losses['autograd_lite']:.3f}, torch "
          f"{losses['torch']:.3f} (same start and data, different noise)")
    print("'alone': each framework in a fresh process by itself.  'peak RSS growth': that "
          "process's peak resident size minus its size after building the model (activations, "
          "gradients, optimizer state, allocator slack).  'tracemalloc': the most NumPy memory "
          "allocated and alive at once during one more autograd_lite step, beyond the "
          "parameters and Adam state made before it (torch's allocator is not traced)."
          + ("  Device memory: CuPy's pool size vs torch.cuda.max_memory_allocated."
             if args.backend == "cupy" else ""))


if __name__ == "__main__":
    if ARGS.alone:
        measure_alone(ARGS)
    else:
        main(ARGS)
