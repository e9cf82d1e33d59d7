"""Time one training epoch of IOP, the standard VAE and VampPrior on MNIST-sized data.

    python benchmarks/bench_epoch.py                 # 50,000 x 784 synthetic binary data
    python benchmarks/bench_epoch.py --n 10000       # a quicker look (ratios barely change)
    IOPVAE_DATA=../shared/data python benchmarks/bench_epoch.py --mnist

One IOP epoch is one round of Algorithm 1: a VAE epoch on Eq. (19) plus its
``--j2`` epochs of the density ratio estimator on Eq. (20) (the paper: 10), and
the validation ELBO.
Printed: seconds per epoch of each method and the ratios the issue asks about
(IOP / VAE, target <= 1.5; VampPrior K=500 / IOP, the paper's claim 2.83).
The paper's networks throughout: 784-500-500 gated, latent 40, batch 100, float32.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import autograd_lite as ag  # noqa: E402
import datasets  # noqa: E402
import runs  # noqa: E402


def synthetic_mnist(n, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, 784), dtype=np.float32) ** 3  # mostly dark, like digits
    return datasets.Dataset(name="synthetic", train=probs, valid=probs[:1000], test=probs[:1000],
                            likelihood="bernoulli", dynamic_binarization=True,
                            image_shape=(28, 28))


def time_epoch(method, data, j2, components, repeats):
    """Median seconds of one round of Algorithm 1 (``Trainer.train`` for one more epoch),
    split into its VAE part and its psi part.  The VAE part is timed on a twin trainer
    with ``j2 = 0`` (no epochs of T); the psi part is the difference."""
    def seconds_per_round(j2):
        config = runs.Config(dataset="mnist", method=method, j2=j2, components=components,
                             warmup=0, patience=0)
        trainer = runs.Trainer(config, data, out_dir=None, log=lambda line: None)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            trainer.train(trainer.epoch + 1)  # the record's float() waits for the device
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    total = seconds_per_round(j2)
    vae = seconds_per_round(0) if method in ("iop", "avb") else total
    return {"vae": vae, "psi": total - vae}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50000, help="training points")
    parser.add_argument("--mnist", action="store_true", help="use the real MNIST training set")
    parser.add_argument("--j2", type=int, default=10, help="psi epochs per VAE epoch")
    parser.add_argument("--components", type=int, default=500, help="VampPrior K")
    parser.add_argument("--repeats", type=int, default=1, help="epochs timed (median)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    args = parser.parse_args(argv)
    ag.set_backend(args.backend)
    if args.mnist:
        data = datasets.load("mnist")
        data.train = data.train[:args.n]
    else:
        data = synthetic_mnist(args.n)
    print(f"backend {args.backend}, {data.train.shape[0]} x {data.dim} training points, "
          f"batch 100, j2 = {args.j2}, VampPrior K = {args.components}")
    results = {}
    for method in ("vae", "iop", "vamp"):
        results[method] = time_epoch(method, data, args.j2, args.components, args.repeats)
        r = results[method]
        print(f"  {method:<5} VAE part {r['vae']:8.2f}s   psi part {r['psi']:8.2f}s   "
              f"total {r['vae'] + r['psi']:8.2f}s", flush=True)
    total = {m: r["vae"] + r["psi"] for m, r in results.items()}
    print()
    print(f"{'ratio':<34}{'measured':>10}{'target':>10}")
    print(f"{'IOP epoch / VAE epoch':<34}{total['iop'] / total['vae']:>10.2f}{'<= 1.5':>10}")
    print(f"{'VampPrior epoch / IOP epoch':<34}{total['vamp'] / total['iop']:>10.2f}"
          f"{'>= 2.83':>10}")
    print(f"{'VampPrior epoch / VAE epoch':<34}{total['vamp'] / total['vae']:>10.2f}{'':>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
