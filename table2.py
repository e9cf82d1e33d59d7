"""Table 2 and Figure 3 of the paper: a grid of runs, trained, evaluated and tabulated.

    python iopvae.py table2 --datasets freyfaces --seeds 0 1 2 --jobs 2
    python iopvae.py table2 --datasets freyfaces --seeds 0 1 2 --print-commands
    python iopvae.py figure3 --dataset freyfaces --components 50 100 250 500 --seeds 0 1 2
    python table2.py run --dataset freyfaces --method iop --seed 0 --out runs/table2

Each (data set, method, seed[, K]) is one *run*: a folder under ``--out`` with its
checkpoint.  ``run`` trains it (or resumes it, or does nothing if it has finished),
then evaluates its best weights and writes ``result.json`` there and a copy under
``--results``.  ``table2`` runs the grid's unfinished runs in ``--jobs`` worker
processes (one BLAS thread each) or prints one ``run`` command per run for a
cluster scheduler, then tabulates every result beside the paper's numbers.

The test log-likelihood is importance-sampled with S = 10 samples (the paper's
setting, the headline column) and with a tighter S (``--tight-samples``).  For
IOP three numbers are given: the paper's estimate (log N(z) + T(z) as the log
prior), the exact value with the true aggregated posterior of the training set
as the prior, and log Z = log integral N(z) exp T(z) dz, the estimated prior's
normaliser (by importance sampling from (N(0, I) + q(z)) / 2; the plain N(0, I)
average is kept in the JSON as ``log_normalizer_plain``).  IOP's exact value at
the tighter S is skipped (shown as "-") when it would take more than
``EXACT_BUDGET`` z-component pairs (MNIST at S = 100).
"""
import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np

import autograd_lite as ag
import datasets
import iopvae
import runs
from autograd_lite.files import atomic_write

PAPER_TABLE2 = {  # Table 2 of the paper: test log-likelihood, mean and std over 8 runs
    "mnist": {"vae": (-85.84, 0.07), "vamp": (-83.90, 0.08), "iop": (-83.21, 0.13)},
    "omniglot": {"vae": (-111.39, 0.11), "vamp": (-110.53, 0.09), "iop": (-108.48, 0.16)},
    "freyfaces": {"vae": (1382.53, 3.57), "vamp": (1392.62, 6.25), "iop": (1396.27, 2.75)},
    "histopathology": {"vae": (1081.53, 0.70), "vamp": (1083.11, 2.10),
                       "iop": (1087.42, 0.60)},
}
METHODS = ("vae", "vamp", "iop")
EXACT_BUDGET = 10 ** 10  # z-component pairs of IOP's exact likelihood at the tighter S
GRID_FIXED = ("dataset", "method", "seed", "components")  # set per run


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell entry of the grid; ``components`` 0 means the paper's K."""

    dataset: str
    method: str
    seed: int
    components: int = 0

    @property
    def name(self):
        k = f"-K{self.components}" if self.components else ""
        return f"{self.dataset}-{self.method}{k}-seed{self.seed}"


def paper_k(dataset):
    """VampPrior's K in the paper for ``dataset`` (what ``components`` 0 stands for)."""
    return runs.Config(dataset=dataset).resolved().components


def grid(data_sets, methods, seeds, components=(0,)):
    """Every run of the grid; K varies only for VampPrior."""
    return [Run(d, m, s, k if m == "vamp" else 0)
            for d in data_sets for m in methods
            for k in (components if m == "vamp" else (0,)) for s in seeds]


# --- one run: train (or resume), then evaluate ---------------------------------------
def evaluate_run(path, samples=10, tight_samples=1000, data_dir="", normalizer_samples=100_000):
    """Test ELBO and importance-sampled log-likelihoods of a run's best weights."""
    started = time.time()
    meta, _ = runs.read_checkpoint(path)
    model, config = runs.load_model(path)
    data = runs.load_run_data(path, model, config, data_dir)
    test = ag.as_array(data.test)
    rng = ag.default_rng(10_000 + config.seed)

    def ll(s):
        return float(iopvae.test_log_likelihood(model, test, s, rng).mean())

    history = meta["history"]
    result = {
        "run": os.path.basename(os.path.normpath(path)), "dataset": config.dataset,
        "method": config.method, "seed": config.seed,
        "components": config.components if config.method == "vamp" else None,
        "config": dataclasses.asdict(config), "split_id": meta.get("split_id"),
        "epochs_trained": meta["epoch"], "best_epoch": meta["best_epoch"],
        "finished": run_finished(meta),
        "seconds_per_epoch": float(np.median([r["seconds"] for r in history])),
        "train_seconds": float(sum(r["seconds"] for r in history)),
        "test_elbo": float(iopvae.elbo(model, test, rng)),
        "elbo_is_estimate": bool(model.has_discriminator),
        "samples": samples, "tight_samples": tight_samples,
        "log_likelihood": ll(samples), "log_likelihood_tight": ll(tight_samples),
    }
    result["likelihood"] = data.likelihood  # "bernoulli": log p(x) <= 0, else invalid
    if config.method == "iop":
        components = runs.aggregated_posterior_components(model, data)

        def exact(s):
            return float(iopvae.exact_aggregated_log_likelihood(model, test, components, s,
                                                                rng).mean())

        result["log_likelihood_exact"] = exact(samples)
        pairs = len(data.test) * tight_samples * len(data.train)
        result["log_likelihood_exact_tight"] = (exact(tight_samples) if pairs <= EXACT_BUDGET
                                                else None)
        result["log_normalizer"] = float(iopvae.density_ratio_log_normalizer(
            model, rng, normalizer_samples, components=components))
        result["log_normalizer_plain"] = float(iopvae.density_ratio_log_normalizer(
            model, rng, normalizer_samples))
    result["evaluation_seconds"] = time.time() - started
    return result


def run_finished(meta):
    """True when a checkpoint reached its epoch budget or stopped early."""
    c = meta["config"]
    return meta["epoch"] >= c.epochs or (c.patience > 0 and meta["bad_epochs"] >= c.patience)


def asked_config(run, config_values, data_dir=""):
    """The Config that the command line asks of ``run``."""
    return runs.Config(**config_values, dataset=run.dataset, method=run.method, seed=run.seed,
                       components=run.components, data_dir=data_dir).resolved().validate()


def differences(stored, asked):
    """The settings (but ``epochs`` and ``data_dir``) in which a run's stored
    configuration differs from the asked one, as "--name asked (stored: x)"."""
    stored = runs.Config(**stored) if isinstance(stored, dict) else stored
    return [f"--{f.name.replace('_', '-')} {getattr(asked, f.name)} "
            f"(stored: {getattr(stored.resolved(), f.name)})"
            for f in dataclasses.fields(runs.Config) if f.name not in ("epochs", "data_dir")
            and getattr(stored.resolved(), f.name) != getattr(asked, f.name)]


def refuse_other_settings(name, where, stored, asked):
    """Refuse a run made with other settings than asked: reusing it would put its
    numbers in the table under these settings.  ``--epochs`` may differ: it sets
    the run's new end, as with ``train --resume``."""
    differ = differences(stored, asked)
    if differ:
        raise ValueError(f"run {name} in {where} was made with other settings than asked: "
                         f"{', '.join(differ)}; use another --out and --results, or ask "
                         "for its settings")


def run_one(run, config_values, out, results, samples, tight_samples, data_dir="", log=print):
    """Train ``run`` to the end (resuming its checkpoint if any), evaluate it and write
    ``result.json`` in its folder and ``<name>.json`` in ``results``; returns the result."""
    path = os.path.join(out, run.name)
    asked = asked_config(run, config_values, data_dir)
    runs.lock_run_folder(path)
    data = runs._load_data(run.dataset, data_dir)
    if os.path.exists(os.path.join(path, "checkpoint.npz")):
        meta, _ = runs.read_checkpoint(path)
        refuse_other_settings(run.name, path, meta["config"], asked)
        if meta["epoch"] > asked.epochs:
            raise ValueError(f"run {run.name} in {path} has trained {meta['epoch']} epochs, "
                             f"more than --epochs {asked.epochs}")
        trainer = runs.resume_trainer(path, data, path, log)
        trainer.config = dataclasses.replace(trainer.config, epochs=asked.epochs)
        trainer.epochs = asked.epochs  # a new end, as with train --resume --epochs
    else:
        trainer = runs.Trainer(asked, data, path, log)
    trainer.resume_hint = "run the same command again to continue"
    log(f"== {run.name}: epoch {trainer.epoch} of {trainer.config.epochs}")
    trainer.train()
    result = evaluate_run(path, samples, tight_samples, data_dir)
    for target in (os.path.join(path, "result.json"), os.path.join(results, run.name + ".json")):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_json(target, result)
    log(f"== {run.name}: test log-likelihood (S={samples}) {result['log_likelihood']:.2f}"
        + (" INVALID: above 0 on binary data" if invalid(result) else ""))
    return result


RESULT_KEYS = ("run", "dataset", "method", "seed", "components", "config", "epochs_trained",
               "best_epoch", "finished", "samples", "tight_samples", "test_elbo",
               "log_likelihood", "log_likelihood_tight")
IOP_KEYS = ("log_likelihood_exact", "log_likelihood_exact_tight", "log_normalizer")


def _no_constant(name):
    raise ValueError(f"{name} (a number that is not finite)")


def read_result(run, results):
    """The result JSON of ``run`` in the folder ``results``, or None; a file that is not
    a complete result of this run (truncated, a key missing, NaN, another run's
    content) is refused with one line naming it."""
    path = os.path.join(results, run.name + ".json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            r = json.load(f, parse_constant=_no_constant)
        if not isinstance(r, dict):
            raise ValueError("not a JSON object")
        try:
            runs.Config(**r.get("config", {})).checked_types()
        except TypeError as exc:
            raise ValueError(f"its config: {exc}") from None
        missing = [k for k in RESULT_KEYS + (IOP_KEYS if r.get("method") == "iop" else ())
                   if k not in r]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        if (r["run"], r["dataset"], r["method"], r["seed"]) != (
                run.name, run.dataset, run.method, run.seed):
            raise ValueError(f"it holds the result of run {r['run']}, not of {run.name}")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"result file {path} is not usable ({exc}); delete it to evaluate "
                         "the run again") from None
    return r


def has_result(run, results, samples, tight_samples, asked=None):
    """A result for ``run`` evaluated with these S (and made with the ``asked`` Config,
    if given) exists: then the run is done.  A result made with other settings is
    refused, unless only ``epochs`` differs (then the run goes on to the new end)."""
    r = read_result(run, results)
    if r and asked is not None:
        refuse_other_settings(run.name, results, r["config"], asked)
        if r["config"]["epochs"] != asked.epochs:
            return False
    return bool(r and r.get("finished")
                and (r["samples"], r["tight_samples"]) == (samples, tight_samples))


def write_json(path, obj):
    """``obj`` as JSON, written whole or not at all; NaN or infinite numbers refused."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path} not written: it would hold numbers that are not finite "
                         f"({obj})"[:400]) from None
    atomic_write(path, lambda f: f.write(text), mode="w")


# --- the grid: in worker processes, or as commands -------------------------------------
def run_command(run, args, config_values, python=sys.executable):
    """The shell command that does ``run_one`` for ``run`` in a fresh process."""
    words = [python, os.path.abspath(__file__), "run",
             "--dataset", run.dataset, "--method", run.method, "--seed", str(run.seed),
             "--out", args.out, "--results", args.results, "--samples", str(args.samples),
             "--tight-samples", str(args.tight_samples)]
    if run.components:
        words += ["--components", str(run.components)]
    if args.data_dir:
        words += ["--data-dir", args.data_dir]
    for name, value in config_values.items():
        words += ["--" + name.replace("_", "-"), str(value)]
    return words


class RunFailed(ValueError):
    """A worker process of the grid exited with an error (its train.log says why)."""


SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pending_runs(todo, args, config_values):
    """The runs of ``todo`` without a result for these settings."""
    return [r for r in todo if not has_result(r, args.results, args.samples, args.tight_samples,
                                              asked_config(r, config_values, args.data_dir))]


def run_grid(todo, args, config_values):
    """Run the unfinished ``runs``: in this process (``--jobs 1``) or in worker
    processes with one BLAS thread each, logging to ``<run>/train.log``.  A SIGTERM
    to this process is passed on to the workers (each run's lock keeps a second grid
    from training a run a worker still trains)."""
    pending = pending_runs(todo, args, config_values)
    print(f"{len(todo) - len(pending)} of {len(todo)} runs already evaluated; "
          f"{len(pending)} to run with {args.jobs} worker(s)", flush=True)
    if args.jobs <= 1:
        for run in pending:
            run_one(run, config_values, args.out, args.results, args.samples,
                    args.tight_samples, args.data_dir)
        return
    workers, starting, stopped = [], threading.Lock(), []

    def work(run):
        os.makedirs(os.path.join(args.out, run.name), exist_ok=True)
        with open(os.path.join(args.out, run.name, "train.log"), "a") as log:
            with starting:  # no new worker once stop_workers has begun
                if stopped:
                    return 128 + stopped[0]
                worker = subprocess.Popen(run_command(run, args, config_values), stdout=log,
                                          stderr=subprocess.STDOUT,
                                          env={**os.environ, **SINGLE_THREAD})
                workers.append(worker)
            code = worker.wait()
        print(f"{run.name}: {'done' if code == 0 else 'FAILED'}"
              f" (log: {os.path.join(args.out, run.name, 'train.log')})", flush=True)
        return code

    def stop_workers(signum, frame):
        with starting:
            stopped.append(signum)
            for worker in workers:
                worker.terminate()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop_workers)
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(work, pending))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(codes):
        raise RunFailed(f"{sum(c != 0 for c in codes)} run(s) failed; see their train.log")


def load_results(todo, results):
    """The results that exist for the runs ``todo``, by run."""
    found = {run: read_result(run, results) for run in todo}
    return {run: r for run, r in found.items() if r is not None}


# --- statistics -----------------------------------------------------------------------
def _incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b), by its continued fraction
    (modified Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) for
    convergence."""
    if x <= 0.0 or x >= 1.0:
        return min(max(x, 0.0), 1.0)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def welch_t_test(a, b):
    """Two-sided p-value of Welch's two-sample t-test (unequal variances)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return _incomplete_beta(df / 2, 0.5, df / (df + t * t))


def not_worse_than_best(scores, level=0.05):
    """The methods whose scores are the best mean or not significantly different from
    it (Welch's t-test at ``level``), as the paper marks in bold."""
    best = max(scores, key=lambda m: np.mean(scores[m]))
    return {m for m, s in scores.items()
            if m == best or (len(s) > 1 and len(scores[best]) > 1
                             and welch_t_test(s, scores[best]) >= level)}


# --- the table --------------------------------------------------------------------------
def invalid(result):
    """A result with an estimate above 0 on binary data (impossible: log p(x) <= 0);
    shown as INVALID and never ranked."""
    return any(runs.impossible(result[key], result.get("likelihood"))
               for key in ("test_elbo", "log_likelihood", "log_likelihood_tight")
               if result.get(key) is not None)


def _mean_std(values):
    if any(v is None for v in values):
        return "-"  # not computed (IOP's exact value at the tighter S beyond EXACT_BUDGET)
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def table(results):
    """Markdown table of the results (mean ± sample std over seeds) beside the paper's."""
    rows, cells = [], {}
    for r in results.values():
        if r["method"] == "vamp" and r["components"] != paper_k(r["dataset"]):
            continue  # Figure 3's other K
        cells.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r)
    any_r = next(iter(results.values()), None)
    if any_r is None:
        return "no results yet"
    S, tight = any_r["samples"], any_r["tight_samples"]
    rows.append(f"| data set | method | runs | epochs (best) | test LL, S = {S} | "
                f"test LL, S = {tight} | IOP exact, S = {S} | IOP exact, S = {tight} | "
                f"IOP log Z | paper (S = 10) |")
    rows.append("|" + "---|" * 10)
    for dataset, methods in cells.items():
        ranked = {m: [r["log_likelihood"] for r in rs] for m, rs in methods.items()
                  if not any(map(invalid, rs))}
        bold = not_worse_than_best(ranked) if ranked else set()
        for method in METHODS:
            rs = methods.get(method)
            if not rs:
                continue

            def pick(key, rs=rs):
                return [r[key] for r in rs]

            ours = _mean_std(pick("log_likelihood"))
            ours = f"**{ours}**" if method in bold and len(ranked) > 1 else ours
            bad = sum(map(invalid, rs))
            ours += f" INVALID ({bad} of {len(rs)} above 0 on binary data)" if bad else ""
            approx = "≈ " if method == "iop" else ""
            exact = ((_mean_std(pick("log_likelihood_exact")),
                      _mean_std(pick("log_likelihood_exact_tight")),
                      _mean_std(pick("log_normalizer"))) if method == "iop" else ("", "", ""))
            paper = PAPER_TABLE2.get(dataset, {}).get(method)
            paper = f"{approx}{paper[0]:.2f} ± {paper[1]:.2f}" if paper else ""
            epochs = "/".join(f"{r['epochs_trained']}({r['best_epoch']})" for r in rs)
            rows.append(f"| {dataset} | {method} | {len(rs)} | {epochs} | {approx}{ours} | "
                        f"{approx}{_mean_std(pick('log_likelihood_tight'))} | "
                        f"{' | '.join(exact)} | {paper} |")
    return "\n".join(rows)


# --- Figure 3 ---------------------------------------------------------------------------
def figure3(results, dataset, path):
    """VampPrior's test log-likelihood against K (mean ± std over seeds) with IOP's as a
    dashed line (its estimate) and a dotted line (exact); writes ``path`` (PNG) and
    the numbers beside it (JSON)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    default_k = paper_k(dataset)
    vamp, iop = {}, []
    for r in results.values():
        if r["dataset"] == dataset and r["method"] == "vamp":
            vamp.setdefault(r["components"] or default_k, []).append(r["log_likelihood"])
        elif r["dataset"] == dataset and r["method"] == "iop":
            iop.append(r)
    ks = sorted(vamp)
    mean = np.array([np.mean(vamp[k]) for k in ks])
    std = np.array([np.std(vamp[k], ddof=1) if len(vamp[k]) > 1 else 0.0 for k in ks])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label="VampPrior")
    ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
    numbers = {"dataset": dataset, "K": ks, "vampprior": {str(k): vamp[k] for k in ks}}
    for k, m, n in zip(ks, mean, (len(vamp[k]) for k in ks)):
        ax.annotate(f"n={n}", (k, m), textcoords="offset points", xytext=(4, -12), fontsize=7)
    low, high = ax.get_ylim()
    for key, style, colour, label in (
            ("log_likelihood", "--", "C3", "Proposed (estimate, log N(z) + T(z) as prior)"),
            ("log_likelihood_exact", ":", "C2", "Proposed (exact aggregated posterior)")):
        values = [r[key] for r in iop]
        if not values:
            continue
        m, s = np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0
        numbers[key] = values
        if m < low - 0.5 * (high - low):  # far below: say it instead of squashing the axis
            ax.text(0.02, 0.02, f"{label}: {m:.1f} ± {s:.1f}, below this axis",
                    transform=ax.transAxes, fontsize=8, color=colour)
            continue
        ax.axhline(m, ls=style, color=colour, label=label)
        ax.axhspan(m - s, m + s, alpha=0.12, color=colour)
    S = next(iter(results.values()))["samples"]
    ax.set_xlabel("Number of pseudo inputs K")
    ax.set_ylabel(f"Test log-likelihood (S = {S})")
    ax.set_title(f"{dataset}: VampPrior against K (mean ± std over seeds)")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    write_json(os.path.splitext(path)[0] + ".json", numbers)
    return numbers


# --- command line -----------------------------------------------------------------------
def _common_options(parser):
    parser.add_argument("--out", default=os.path.join("runs", "table2"),
                        help="folder of the run folders (checkpoints)")
    parser.add_argument("--results", default=os.path.join("results", "table2"),
                        help="folder of the per-run result JSON files (small; commit these)")
    parser.add_argument("--samples", type=int, default=10,
                        help="importance samples of the headline test log-likelihood "
                             "(the paper: 10)")
    parser.add_argument("--tight-samples", type=int, default=1000,
                        help="importance samples of the tighter second column")
    runs.add_config_options(parser, skip=GRID_FIXED)


def check_options(args):
    """Refuse bad values of the grid's own options before anything is trained."""
    runs.positive("--samples", args.samples)
    runs.positive("--tight-samples", args.tight_samples)
    runs.positive("--jobs", getattr(args, "jobs", 1))
    seeds = getattr(args, "seeds", [args.seed] if hasattr(args, "seed") else [])
    for seed in seeds:
        runs.non_negative("--seed", seed)
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: a seed given twice would train "
                         "one run twice at once")
    components = getattr(args, "components", None)
    for k in components if isinstance(components, list) else [components or 0]:
        runs.non_negative("--components", k)
    for option, folder in (("--out", args.out), ("--results", args.results)):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"{option} {folder} is a file, not a folder")


def _config_values(args):
    """The training options given on the command line (the rest keep Config's defaults),
    after ``check_options``."""
    check_options(args)
    args.data_dir = args.data_dir or ""
    return {k: v for k, v in runs.config_options_given(args).items()
            if k not in GRID_FIXED + ("data_dir",)}


def _grid_options(parser):
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="one run per seed (default: 0 1 2; the paper: 8 runs)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes, one BLAS thread each")
    parser.add_argument("--print-commands", action="store_true",
                        help="print one shell command per unfinished run instead of running "
                             "them (for a cluster scheduler)")


def _run_or_print(todo, args):
    values = _config_values(args)
    if args.print_commands:
        for run in pending_runs(todo, args, values):
            env = " ".join(f"{k}={v}" for k, v in SINGLE_THREAD.items())
            print(env, shlex.join(run_command(run, args, values, python="python")))
        return False
    run_grid(todo, args, values)
    return True


def command_table2(args):
    grid_runs = grid(args.datasets, args.methods, args.seeds)
    if not _run_or_print(grid_runs, args):
        return
    text = table(load_results(grid_runs, args.results))
    print(f"\nTest log-likelihood (importance sampling; mean ± std over seeds; bold: best or "
          f"not different from it, Welch t-test at 5 %, on S = {args.samples})\n")
    print(text)
    write_json(os.path.join(args.results, "table2.json"),
               {"markdown": text, "runs": [r.name for r in grid_runs]})


def command_figure3(args):
    ks = [0 if k == paper_k(args.dataset) else k for k in args.components]
    grid_runs = (grid([args.dataset], ["vamp"], args.seeds, ks)
                 + grid([args.dataset], ["iop"], args.seeds))
    if not _run_or_print(grid_runs, args):
        return
    path = args.figure or os.path.join(os.path.dirname(os.path.normpath(args.results)),
                                       f"figure3_{args.dataset}.png")
    numbers = figure3(load_results(grid_runs, args.results), args.dataset, path)
    print(f"wrote {path}: VampPrior K = {numbers['K']}")


def command_run(args):
    run = Run(args.dataset, args.method, args.seed, args.components)
    run_one(run, _config_values(args), args.out, args.results, args.samples,
            args.tight_samples, args.data_dir)


def add_commands(sub):
    """The ``table2``, ``figure3`` and ``run`` sub-commands (also used by iopvae.py)."""
    t = sub.add_parser("table2", help="Table 2: train, evaluate and tabulate the grid")
    t.add_argument("--datasets", nargs="+", default=["freyfaces"], choices=datasets.DATASETS,
                   help="data sets (default: freyfaces)")
    t.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods (default: vae vamp iop)")
    _grid_options(t)
    _common_options(t)
    t.set_defaults(run=command_table2)

    f = sub.add_parser("figure3", help="Figure 3: VampPrior's log-likelihood against K")
    f.add_argument("--dataset", default="histopathology", choices=datasets.DATASETS,
                   help="data set (default: histopathology, as in the paper)")
    f.add_argument("--components", nargs="+", type=int, default=[50, 100, 250, 500],
                   help="VampPrior's K values (default: 50 100 250 500)")
    f.add_argument("--figure", default="", help="PNG path (default: beside --results)")
    _grid_options(f)
    _common_options(f)
    f.set_defaults(run=command_figure3)

    r = sub.add_parser("run", help="one run of the grid: train or resume, then evaluate")
    r.add_argument("--dataset", required=True, choices=datasets.DATASETS, help="data set")
    r.add_argument("--method", required=True, choices=METHODS, help="method")
    r.add_argument("--seed", type=int, default=0, help="random seed of the run (default: 0)")
    r.add_argument("--components", type=int, default=0, help="VampPrior K (0: the paper's)")
    _common_options(r)
    r.set_defaults(run=command_run)


def build_parser():
    """``python table2.py ...``: the table2, figure3 and run commands alone."""
    parser = argparse.ArgumentParser(prog="table2.py", description=__doc__.split("\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


if __name__ == "__main__":  # cli.py imports this module: the entry point alone looks up
    from cli import run_command_line
    sys.exit(run_command_line(build_parser()))
