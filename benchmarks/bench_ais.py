"""Time annealed importance sampling of log Z, the normaliser of IOP's prior N(z) exp T(z).

    python benchmarks/bench_ais.py                        # the tests' 40-D heavy-tailed T
    python benchmarks/bench_ais.py --run RUN_FOLDER       # a trained IOP model's T
    python benchmarks/bench_ais.py --chains 100 300 --temperatures 100 300 --plain

For each number of chains and of temperatures, one run of ``estimators.annealed_log_normalizer``
(Neal 2001; without its half- and quarter-temperature runs: the table is the convergence
check) prints log Z^, its delta-method standard error, the effective sample size of the
weights, the HMC acceptance, the evaluations of T (each with its gradient) and the seconds.
Without ``--run`` T is the 40-D heavy-tailed case of tests/test_ais.py (a Gaussian mixture
over N(0, I), log Z = 0 exactly), so it runs anywhere.  ``--plain`` adds plain Monte Carlo
from N(0, I) (``density_ratio_log_normalizer``) at the same number of evaluations of T.
Progress goes to stderr.  The backend is AUTOGRAD_LITE_BACKEND's (numpy, cupy, cupy-sim).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))

import autograd_lite as ag  # noqa: E402
import estimators  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="an IOP run folder (or its checkpoint.npz); default: "
                                      "the synthetic 40-D heavy-tailed T, log Z = 0")
    parser.add_argument("--chains", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--temperatures", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--leapfrog", type=int, default=2, help="leapfrog steps per HMC move")
    parser.add_argument("--plain", action="store_true",
                        help="also plain Monte Carlo at the same evaluations of T")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def target(run):
    """(a model with ``density_ratio`` and ``latent``, its description, the true log Z or
    None)."""
    if run is None:
        from test_ais import FixedPrior, coordinate_mixture
        log_ratio, log_z = coordinate_mixture(40)
        return FixedPrior(log_ratio, 40), "the 40-D heavy-tailed T of tests/test_ais.py", log_z
    from experiments import checkpoints
    try:
        model, config = checkpoints.load_model(run)
    except checkpoints.CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    if model.name != "iop":
        raise SystemExit(f"error: {run} is a {model.name} run; AIS needs IOP's T")
    return model, f"{run}: {config.dataset}, latent {config.latent}, hidden {config.hidden}", None


def main(argv=None):
    args = parse_args(argv)
    model, description, log_z = target(args.run)
    print(f"log Z of N(z) exp T(z) by AIS, {description}; backend {ag.backend_name()}, "
          f"leapfrog {args.leapfrog}, target acceptance 0.65"
          + ("" if log_z is None else f"; true log Z = {log_z:g}"))
    plain = "  plain MC" if args.plain else ""
    print(f"{'chains':>7}{'temps':>7}{'evaluations':>13}{'log Z^':>10}{'stderr':>9}{'ESS':>8}"
          f"{'accept':>8}{'seconds':>9}{plain}")
    for chains in args.chains:
        for temperatures in args.temperatures:
            print(f"chains {chains}, temperatures {temperatures} ...", file=sys.stderr,
                  flush=True)
            start = time.perf_counter()
            r = estimators.density_ratio_log_normalizer_ais(
                model, ag.default_rng(args.seed), chains=chains, temperatures=temperatures,
                leapfrog=args.leapfrog, convergence=False)
            seconds = time.perf_counter() - start
            line = (f"{chains:>7}{temperatures:>7}{r['evaluations']:>13}{r['log_z']:>10.3f}"
                    f"{r['stderr']:>9.3f}{r['ess']:>8.1f}{r['acceptance']:>8.2f}"
                    f"{seconds:>9.1f}")
            if args.plain:
                mc = estimators.density_ratio_log_normalizer(
                    model, ag.default_rng(args.seed + 1), samples=r["evaluations"])
                line += f"{ag.read_numbers(mc)[0]:>10.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
