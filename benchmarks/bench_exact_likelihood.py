"""Time IOP's exact log-likelihood: log q(z) of the true aggregated posterior.

    python benchmarks/bench_exact_likelihood.py            # MNIST sizes, extrapolated
    python benchmarks/bench_exact_likelihood.py --rows 100000   # the whole MNIST test set, S = 10

For MNIST the aggregated posterior has N = 50,000 components in d = 40
dimensions, and the test set with S importance samples gives 10,000 S points z.
``iopvae.log_aggregated_posterior`` evaluates all of them against all components as
row blocks of one (rows, 2d+1) x (2d+1, N) matrix product plus a logsumexp.
Printed: seconds for ``--rows`` points and the extrapolation to the whole test
set at S = 10 and S = 100 (the cost is linear in the number of points).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import autograd_lite as ag  # noqa: E402
import iopvae  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="points z timed")
    parser.add_argument("--components", type=int, default=50_000, help="N")
    parser.add_argument("--latent", type=int, default=40, help="d")
    parser.add_argument("--test-points", type=int, default=10_000)
    args = parser.parse_args(argv)
    g = np.random.default_rng(0)
    xp = ag.xp()
    mu = ag.as_array(g.normal(size=(args.components, args.latent)).astype(np.float32))
    logvar = ag.as_array(g.uniform(-6, 0, size=(args.components, args.latent)).astype(np.float32))
    z = ag.as_array(g.normal(size=(args.rows, args.latent)).astype(np.float32))
    t0 = time.perf_counter()
    out = iopvae.log_aggregated_posterior(z, (mu, logvar))
    float(out.sum())  # wait for the device, if any
    seconds = time.perf_counter() - t0
    per_point = seconds / args.rows
    print(f"backend {ag.backend_name()}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}, "
          f"N = {args.components}, d = {args.latent}, {xp.__name__}")
    print("| points z | seconds | whole test set, S = 10 | S = 100 |")
    print("|---|---|---|---|")
    print(f"| {args.rows} | {seconds:.2f} | {per_point * args.test_points * 10 / 60:.1f} min | "
          f"{per_point * args.test_points * 100 / 60:.1f} min |")


if __name__ == "__main__":
    main()
