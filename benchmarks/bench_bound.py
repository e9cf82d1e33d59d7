"""How close training runs to its bound: each step beside the same matrix products alone.

    python benchmarks/bench_bound.py                       # all four cases
    IOPVAE_DATA=/path/to/data python benchmarks/bench_bound.py --cases onehot freyfaces
    python benchmarks/bench_bound.py --repeats 2           # more repetitions of each
    python benchmarks/bench_bound.py --code /tmp/before    # time another source tree

For each case, the time of the real thing (autograd_lite: graph, backward, Adam,
dropout, the elementwise work) and of its matrix products alone, in plain NumPy with
the same shapes, layouts and dtypes, and their ratio: 1.0 would be a step that costs
nothing but its products.  The cases:

- ``tstep``: one step of T on OneHot (Algorithm 1, lines 8-11): 2 x 100 rows
  [z1; z0] through T's 2-500-500-1 tanh layers with dropout, backward and Adam;
- ``onehot``: one round of Algorithm 1 of IOP with the main job's settings
  (``reproduce_onehot.py``: hidden 500, 10 VAE steps, 100 steps of T, the validation
  ELBO), ``runs.Trainer.train`` for one more epoch;
- ``freyfaces``: the same round on FreyFaces (its paper settings; 16 VAE steps, 160 of T);
- ``mnist``: one VAE step of the paper's MNIST networks (784-500-500 gated, z = 40,
  batch 100, binarized afresh), as ``Trainer.train`` runs it.

The products are not listed by hand: the case runs once on the simulated device
(``cupy-sim``), which records every matrix product it computes (operand shapes,
memory layouts, dtype), and those products are then replayed on NumPy arrays.  The
two are timed in CPU seconds of this process (``time.process_time``: on a busy machine
it moves less than wall time), on one BLAS thread, real and bound alternating, and
each is the median of its repetitions.  Data: FreyFaces and MNIST from ``IOPVAE_DATA``
(``--data-dir``), else random data of their shape (``bench_epoch.load``).  ``--code DIR``
imports the project from DIR (an older checkout, ``git archive``) to time it the same way.
"""
import argparse
import itertools
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CASES = ("tstep", "onehot", "freyfaces", "mnist")
REPEATS = {"tstep": 200, "onehot": 7, "freyfaces": 5, "mnist": 60}  # at --repeats 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=float, default=1.0,
                        help="scale of the repetitions of each case (1: "
                             + ", ".join(f"{k} {v}" for k, v in REPEATS.items()) + ")")
    parser.add_argument("--data-dir", default="", help="data folder (else $IOPVAE_DATA)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the N functions of most own time in the real "
                             "repetitions (cProfile; they then run slower)")
    parser.add_argument("--code", default=os.path.dirname(HERE),
                        help="the source tree to import and time (default: this one)")
    args = parser.parse_args(argv)
    if args.repeats <= 0:
        parser.error(f"--repeats must be positive (got {args.repeats})")
    return args


# --- the cases: each builds its trainer and returns one repetition as a function ------------
def t_step_case(runs, iopvae, data):
    """One step of T as ``Trainer.train`` runs it (lines 8-11), on the round's cached q(z|x)."""
    trainer = runs.Trainer(runs.Config(dataset=data.name, method="iop"), data, out_dir=None,
                           log=lambda line: None)
    model, rng, opt = trainer.model, trainer.rng, trainer.density_ratio_opt
    model.train()
    cached = trainer.round_posteriors()
    batches = itertools.cycle(list(iopvae.minibatches(trainer.train_x.shape[0],
                                                      trainer.batch_size, rng)))

    def step():
        _, q = trainer.density_ratio_batch(next(batches), cached)
        z1 = model.aggregated_posterior_sample(None, rng, q)
        z0 = iopvae.standard_normal(rng, z1.shape)
        loss = model.density_ratio_loss(z1, z0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def round_case(runs, iopvae, data):
    """One round of Algorithm 1 of IOP (the main job's Config: the paper's settings)."""
    config = runs.Config(dataset=data.name, method="iop", epochs=10**6, warmup=100,
                         patience=0)
    trainer = runs.Trainer(config, data, out_dir=None, log=lambda line: None)
    return lambda: trainer.train(trainer.epoch + 1)


def vae_step_case(runs, iopvae, data):
    """One VAE step as ``Trainer.train`` runs it (lines 3-5): a fresh binarization, -ELBO,
    backward, Adam."""
    trainer = runs.Trainer(runs.Config(dataset=data.name, method="vae"), data, out_dir=None,
                           log=lambda line: None)
    model, rng, opt = trainer.model, trainer.rng, trainer.vae_opt
    model.train()
    batches = itertools.cycle(list(itertools.islice(
        iopvae.minibatches(trainer.train_x.shape[0], trainer.batch_size, rng), 10)))

    def step():
        loss = model.loss(trainer.batch(next(batches)), rng, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


BUILDERS = {"tstep": ("T step, OneHot", "onehot", t_step_case),
            "onehot": ("IOP round, OneHot", "onehot", round_case),
            "freyfaces": ("IOP round, FreyFaces", "freyfaces", round_case),
            "mnist": ("VAE step, MNIST", "mnist", vae_step_case)}


# --- the bound: the case's matrix products, recorded on the simulated device --------------
def _layout(a):
    """"F" for a transposed row-major array (``x.T``, which BLAS takes as it is), else "C":
    a view of other strides is replayed row-major, as BLAS would want it."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def record_products(ag, build):
    """The matrix products of one repetition of the case ``build()`` makes, as (shape,
    layout) pairs with their dtype, in order, by running it on ``cupy-sim`` (its second
    repetition: the first makes lazily created state); the backend is set back after."""
    import numpy as np

    from autograd_lite.testing import cupy_sim

    previous = ag.backend_name()
    ag.set_backend("cupy-sim")
    run, products = build(), []
    run()
    plain = cupy_sim._apply

    def recording(function, inputs, outputs=(), **kwargs):
        if function is np.matmul:
            a, b = (x._a for x in inputs)
            products.append(((a.shape, _layout(a)), (b.shape, _layout(b)), a.dtype))
        return plain(function, inputs, outputs, **kwargs)
    cupy_sim._apply = recording
    try:
        run()
    finally:
        cupy_sim._apply = plain
        ag.set_backend(previous)
    if not products:
        raise RuntimeError("no matrix product was recorded (does the engine still compute "
                           "them through cupy-sim's operators?)")
    return products


def operand(np, shape, layout, dtype, rng):
    """An array of ``shape`` in ``layout`` filled with numbers of a step's size (no zeros or
    denormals)."""
    if layout == "F":
        return rng.uniform(0.5, 1.0, shape[::-1]).astype(dtype).T
    return rng.uniform(0.5, 1.0, shape).astype(dtype)


def bound_function(np, products):
    """One repetition of the products alone: ``a @ b`` for each recorded pair."""
    rng = np.random.default_rng(0)
    pairs = [(operand(np, *a, dtype, rng), operand(np, *b, dtype, rng))
             for a, b, dtype in products]

    def run():
        for a, b in pairs:
            a @ b
    return run


# --- measurement ---------------------------------------------------------------------------
def cpu_seconds(function):
    start = time.process_time()
    function()
    return time.process_time() - start


def measure(np, real, bound, repeats):
    """Median CPU seconds of ``real`` and ``bound``, alternating, after one of each."""
    real(), bound()
    times = [(cpu_seconds(real), cpu_seconds(bound)) for _ in range(repeats)]
    return tuple(float(np.median([t[k] for t in times])) for k in (0, 1))


def cpu_model():
    """The CPU's name from /proc/cpuinfo (Linux), else "unknown CPU"."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


def print_profile(function, repeats, top):
    """cProfile's ``top`` functions by own CPU time over ``repeats`` calls of ``function``,
    in milliseconds per call."""
    import cProfile
    import pstats

    profile = cProfile.Profile(time.process_time)   # CPU time, as the table
    profile.runcall(lambda: [function() for _ in range(repeats)])
    stats = pstats.Stats(profile).stats
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    print(f"  {'own ms':>8}{'calls':>8}  function (per repetition, profiled)")
    for (path, line, name), (_, calls, own, _, _) in rows:
        where = f"{os.path.basename(path)}:{line}({name})" if line else name
        print(f"  {1e3 * own / repeats:8.3f}{calls / repeats:8.1f}  {where}")


def main(argv=None):
    args = parse_args(argv)
    for name in THREAD_VARIABLES:        # before NumPy loads its BLAS
        os.environ[name] = "1"
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.abspath(args.code))
    import numpy as np
    from bench_epoch import load

    import autograd_lite as ag
    import iopvae
    from experiments import runs

    ag.set_backend("numpy")
    print(f"code {os.path.abspath(args.code)}; {cpu_model()}; 1 BLAS thread; CPU ms of this "
          "process, medians of interleaved repetitions")
    print(f"{'case':<24}{'data':<22}{'real ms':>10}{'products ms':>13}{'ratio':>7}"
          f"{'products':>10}")
    started, loaded = time.time(), {}
    for k, name in enumerate(args.cases):
        label, dataset, builder = BUILDERS[name]
        if dataset not in loaded:
            loaded[dataset] = load(dataset, args.data_dir)
        data, kind = loaded[dataset]
        products = record_products(ag, lambda: builder(runs, iopvae, data))
        repeats = max(3, round(REPEATS[name] * args.repeats))
        real_ms, bound_ms = (1e3 * s for s in measure(
            np, builder(runs, iopvae, data), bound_function(np, products), repeats))
        print(f"{label:<24}{f'{kind} {data.train.shape[0]}x{data.dim}':<22}{real_ms:10.2f}"
              f"{bound_ms:13.2f}{real_ms / bound_ms:7.2f}{len(products):10d}", flush=True)
        if args.profile:
            print_profile(builder(runs, iopvae, data), repeats, args.profile)
        elapsed = time.time() - started
        eta = elapsed / (k + 1) * (len(args.cases) - k - 1)
        print(f"[{k + 1}/{len(args.cases)} cases, {elapsed:.0f}s, ETA {eta:.0f}s]",
              file=sys.stderr, flush=True)
    print("ratio: real over products (1.0: nothing but the matrix products); products: how "
          "many matrix products one repetition computes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
