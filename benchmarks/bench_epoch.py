"""Time one training epoch of IOP against the standard VAE, beside their FLOP-count ratio.

    python benchmarks/bench_epoch.py                       # FreyFaces and OneHot
    IOPVAE_DATA=/path/to/data python benchmarks/bench_epoch.py --datasets freyfaces mnist
    python benchmarks/bench_epoch.py --methods vae iop vamp --datasets mnist   # + VampPrior
    python benchmarks/bench_epoch.py --code /tmp/older-checkout   # time another source tree

One IOP epoch is one round of Algorithm 1: a VAE epoch on Eq. (19), its ``--j2``
epochs of the density ratio estimator T on Eq. (20) (the paper: 10), and the
validation ELBO; a VAE epoch is the first and the last of these.  The data sets
are read from ``IOPVAE_DATA`` (or ``--data-dir``); a data set that is not there is
replaced by random data of its shape (FreyFaces 1,565 x 560 grey, MNIST 50,000 x
784 binarized afresh; OneHot is always generated).  The paper's networks: gated
encoder and decoder of 500 units, T of two tanh layers of 500, batch 100, float32.

Printed per data set: CPU seconds per epoch (and wall seconds) of each method,
IOP's T part, and the ratio IOP / VAE measured and counted in FLOPs.  The FLOP
count takes the matrix products only (a training step: 3 forward passes' worth)
and knows whether the code under test encodes the training set once per round of
T where the data are not binarized (``round_posteriors``) or every minibatch again.
CPU seconds, one BLAS thread by default (``--threads``): on a shared machine they
move less than wall time.  ``--code DIR`` imports the project from DIR, e.g. an
older checkout (``git worktree add /tmp/before <commit>``), to time it the same way.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["freyfaces", "onehot"],
                        choices=["freyfaces", "onehot", "mnist"])
    parser.add_argument("--methods", nargs="+", default=["vae", "iop"],
                        choices=["vae", "iop", "vamp", "avb"],
                        help="methods timed (the ratios need vae and iop)")
    parser.add_argument("--j2", type=int, default=10, help="T epochs per round (paper: 10)")
    parser.add_argument("--components", type=int, default=500, help="VampPrior K")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed (median)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--data-dir", default="", help="data folder (else $IOPVAE_DATA)")
    parser.add_argument("--code", default=os.path.dirname(HERE),
                        help="the source tree to import and time (default: this one)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "cupy-sim"])
    return parser.parse_args(argv)


def load(name, data_dir):
    """The data set ``name``, or random data of its shape if its files are not there."""
    import numpy as np

    import datasets
    try:
        return datasets.load(name, data_dir or None), "real"
    except datasets.DataError:
        pass
    g = np.random.default_rng(0)
    n, dim, valid = {"freyfaces": (1565, 560, 200), "mnist": (50000, 784, 10000)}[name]
    x = g.random((n + valid, dim), dtype=np.float32)
    if name == "freyfaces":
        return datasets.Dataset(name, x[:n], x[n:], x[n:], "gaussian", False, None), "random"
    x **= 3                                       # mostly dark, like digits
    binary = (x[n:] > 0.5).astype(np.float32)
    return datasets.Dataset(name, x[:n], binary, binary, "bernoulli", True, None), "random"


def forward_flops(module):
    """Multiply-adds of one forward pass of one row: the sum of in x out over the
    module's weight matrices (a gated layer's fused weight counts both halves)."""
    return sum(p.shape[0] * p.shape[1] for p in module.parameters() if p.data.ndim == 2)


def flop_ratio(model, data, j2, encodes_once):
    """FLOPs of an IOP round over a VAE epoch, matrix products only.  A training step
    is 3 forward passes' worth (forward, gradients of inputs and weights); the VAE
    step of IOP adds T(z) and its gradient to z; the validation ELBO is one forward
    pass (plus T for IOP); T's step is two batches (z1 and z0) of 3 passes each, plus
    the encoder's pass on z1's minibatch, or one pass over X per round when cached."""
    enc, dec, t = (forward_flops(m) for m in (model.encoder, model.decoder,
                                              model.density_ratio))
    n, n_valid = data.train.shape[0], data.valid.shape[0]
    vae = 3 * n * (enc + dec) + n_valid * (enc + dec)
    iop = vae + 2 * n * t + n_valid * t
    encoded = n if encodes_once and not data.dynamic_binarization else j2 * n
    iop += j2 * n * 6 * t + encoded * enc
    return iop / vae


def time_round(runs, method, data, args, j2):
    """Median CPU and wall seconds of one round of Algorithm 1 (``Trainer.train`` for
    one more epoch; the float() of its record waits for the device)."""
    import numpy as np
    config = runs.Config(dataset=data.name, method=method, j2=j2, components=args.components,
                         warmup=0, patience=0)
    trainer = runs.Trainer(config, data, out_dir=None, log=lambda line: None)
    trainer.train(1)                              # first-call costs out of the way
    cpu, wall = [], []
    for _ in range(args.repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        trainer.train(trainer.epoch + 1)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return float(np.median(cpu)), float(np.median(wall)), trainer


def main(argv=None):
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.abspath(args.code))
    import autograd_lite as ag
    from experiments import runs
    ag.set_backend(args.backend)
    encodes_once = hasattr(runs.Trainer, "round_posteriors")
    rounds = ("encode X once per round where not binarized" if encodes_once
              else "encode every minibatch")
    print(f"code {os.path.abspath(args.code)} (T rounds {rounds}), backend {args.backend}, "
          f"{args.threads} BLAS thread(s), j2 = {args.j2}, median of {args.repeats} epochs")
    print(f"{'data':<26}{'method':<7}{'CPU s/epoch':>12}{'wall':>8}{'T part':>9}"
          f"{'IOP/VAE':>9}{'FLOPs':>8}{'/FLOPs':>8}")
    for name in args.datasets:
        data, kind = load(name, args.data_dir)
        label = f"{name} {kind} {data.train.shape[0]}x{data.dim}"
        seconds = {}
        for method in args.methods:
            cpu, wall, trainer = time_round(runs, method, data, args, args.j2)
            t_part = ""
            if method in ("iop", "avb"):
                t_part = f"{cpu - time_round(runs, method, data, args, 0)[0]:9.3f}"
            seconds[method] = cpu
            ratio = ""
            if method == "iop" and "vae" in seconds:
                measured = cpu / seconds["vae"]
                counted = flop_ratio(trainer.model, data, args.j2, encodes_once)
                ratio = f"{measured:9.2f}{counted:8.2f}{measured / counted:8.2f}"
            print(f"{label:<26}{method:<7}{cpu:12.3f}{wall:8.3f}{t_part:>9}{ratio}", flush=True)
    print("IOP/VAE: CPU seconds of an IOP epoch over a VAE epoch; FLOPs: the same ratio in "
          "matrix-product FLOPs; /FLOPs: measured over counted (goal <= 1.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
