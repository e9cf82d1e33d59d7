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
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
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
    parser.add_argument("--memory-of", choices=("autograd_lite", "torch"),
                        help=argparse.SUPPRESS)  # internal: one framework in a child process
    return parser.parse_args(argv)


ARGS = parse_args()
for _name in THREAD_VARIABLES:
    os.environ[_name] = str(ARGS.threads)

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
def make_steppers(args):
    import torch

    torch.set_num_threads(args.threads)
    if args.backend == "cupy":
        ag.set_backend("cupy")
        import cupy  # only the benchmark touches cupy directly, to synchronise the clock

        return cupy.cuda.Device().synchronize, torch.cuda.synchronize, "cuda"
    ag.set_backend("numpy")
    return (lambda: None), (lambda: None), "cpu"


def time_interleaved(args):
    """Median milliseconds per step of each framework, alternating their steps."""
    ag_sync, torch_sync, device = make_steppers(args)
    weights, batches = initial_weights(), binary_batches(args.batch)
    runs = {"autograd_lite": (autograd_lite_stepper(weights, batches), ag_sync),
            "torch": (torch_stepper(weights, batches, device), torch_sync)}
    times = {name: [] for name in runs}
    losses = {name: [] for name in runs}
    for i in range(args.warmup + args.steps):
        for name, (step, sync) in runs.items():
            sync()
            start = time.perf_counter()
            losses[name].append(step())
            sync()
            if i >= args.warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: float(np.median(t)) for name, t in times.items()}, losses


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure_memory(args):
    """In this (child) process, the memory one framework's steps need, as JSON."""
    ag_sync, torch_sync, device = make_steppers(args)
    weights, batches = initial_weights(), binary_batches(args.batch)
    if args.memory_of == "torch":
        step = torch_stepper(weights, batches, device)
    else:
        step = autograd_lite_stepper(weights, batches)
    result = {}
    if args.backend == "cupy" and args.memory_of == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step()
        result["device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif args.backend == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        for _ in range(3):
            step()
        result["device_mb"] = pool.total_bytes() / 2**20
    else:
        before = current_rss_mb()
        for _ in range(3):
            step()
        result["rss_mb"] = peak_rss_mb() - before
        if args.memory_of == "autograd_lite":
            import tracemalloc

            tracemalloc.start()
            step()
            result["tracemalloc_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    print(json.dumps(result))


def memory_in_child(args, framework):
    command = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
               "--backend", args.backend, "--batch", str(args.batch), "--memory-of", framework]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(args):
    medians, losses = time_interleaved(args)
    memory = {name: memory_in_child(args, name) for name in medians}
    ratio = medians["autograd_lite"] / medians["torch"]
    device = "CuPy vs torch CUDA" if args.backend == "cupy" else "NumPy vs torch CPU"
    print(f"VAE training step (784-500-500 gated, z=40), batch {args.batch}, float32, "
          f"{device}, {args.threads} thread(s), {args.steps} interleaved steps after "
          f"{args.warmup} warm-up")
    print(f"{'':32}{'autograd_lite':>15}{'torch':>12}{'ratio':>8}")
    print(f"{'median ms / step':32}{medians['autograd_lite']:>15.2f}"
          f"{medians['torch']:>12.2f}{ratio:>8.2f}")
    key = "device_mb" if args.backend == "cupy" else "rss_mb"
    label = "peak device memory (MB)" if args.backend == "cupy" else "peak RSS growth (MB)"
    print(f"{label:32}{memory['autograd_lite'][key]:>15.1f}{memory['torch'][key]:>12.1f}")
    if "tracemalloc_mb" in memory["autograd_lite"]:
        print(f"{'tracemalloc peak, 1 step (MB)':32}"
              f"{memory['autograd_lite']['tracemalloc_mb']:>15.1f}{'-':>12}")
    print(f"final loss: autograd_lite {losses['autograd_lite'][-1]:.3f}, "
          f"torch {losses['torch'][-1]:.3f} (same start, different noise)")
    if args.backend == "cupy":
        print("memory: autograd_lite = CuPy memory pool size, torch = "
              "torch.cuda.max_memory_allocated, each after 3 steps in a fresh process")
    else:
        print("memory: each framework runs 3 steps alone in a fresh process; 'peak RSS "
              "growth' is its peak resident size minus the size after building the model "
              "(activations, gradients, Adam moments, allocator slack).  'tracemalloc' "
              "counts only the NumPy arrays alive at once during one later step.")


if __name__ == "__main__":
    if ARGS.memory_of:
        measure_memory(ARGS)
    else:
        main(ARGS)
