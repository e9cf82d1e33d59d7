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
average is kept in the JSON as ``log_normalizer_plain``).  The JSON also keeps
``log_likelihood_normal_prior``: IOP's weights with N(0, I) as the prior, T dropped,
so what T adds to the estimate can be read off; and ``elbo_terms``, the ELBO's two
terms on the training and the test images.  IOP's exact value at
the tighter S is skipped (shown as "-") when it would take more than
``EXACT_BUDGET`` z-component pairs (MNIST at S = 100).
"""
import argparse
import concurrent.futures
import dataclasses
import glob
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np

import autograd_lite as ag
import datasets
import estimators
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
    """One cell entry of the grid; ``components`` 0 means the paper's K.  ``settings``:
    Config values of this run that differ from the grid's common ones (a candidate
    step size, a pseudo-input start), as sorted (name, value) pairs; they are part of
    the run's name, so candidates never share a folder."""

    dataset: str
    method: str
    seed: int
    components: int = 0
    settings: tuple = ()

    @property
    def name(self):
        k = f"-K{self.components}" if self.components else ""
        tags = "".join(f"-{key}={value}" for key, value in self.settings)
        return f"{self.dataset}-{self.method}{k}{tags}-seed{self.seed}"


def as_settings(values):
    """A dict of Config values as the sorted pairs of ``Run.settings``."""
    return tuple(sorted((values or {}).items()))


def parse_settings(words):
    """``["lr=0.0001", "pseudo_init=constant"]`` -> ``{"lr": 0.0001, ...}``, each value
    converted to its Config field's type."""
    types = {f.name: f.type for f in dataclasses.fields(runs.Config)}
    values = {}
    for word in words or ():
        key, sep, text = word.partition("=")
        if not sep or key not in types:
            raise ValueError(f"setting {word!r}: expected NAME=VALUE with NAME a Config field")
        kind = {"int": int, "float": float, "str": str}[getattr(types[key], "__name__",
                                                                types[key])]
        values[key] = kind(text)
    return values


def paper_k(dataset):
    """VampPrior's K in the paper for ``dataset`` (what ``components`` 0 stands for)."""
    return runs.Config(dataset=dataset).resolved().components


def grid(data_sets, methods, seeds, components=(0,), settings=None):
    """Every run of the grid; K varies only for VampPrior.  ``settings``: per method,
    a list of candidate settings (dicts), one run per candidate and seed."""
    settings = settings or {}
    return [Run(d, m, s, k if m == "vamp" else 0, as_settings(c))
            for d in data_sets for m in methods
            for k in (components if m == "vamp" else (0,))
            for c in settings.get(m, [{}]) for s in seeds]


# --- one run: train (or resume), then evaluate ---------------------------------------
def evaluate_run(path, samples=10, tight_samples=1000, data_dir="", normalizer_samples=100_000):
    """Test ELBO and importance-sampled log-likelihoods of a run's best weights."""
    started = time.time()
    meta, _ = runs.read_checkpoint(path)
    model, config = runs.load_model(path)
    data = runs.load_run_data(path, model, config, data_dir)
    test = ag.as_array(data.test)
    rng = ag.default_rng(10_000 + config.seed)

    def ll(s, x=test):
        return float(iopvae.test_log_likelihood(model, x, s, rng).mean())

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
        # the score settings are chosen by (``select``): never the test set
        "valid_log_likelihood": ll(samples, ag.as_array(data.valid)),
        "step_sizes": {"lr": config.lr, "lr_density_ratio": config.lr_density_ratio},
        "history": history_columns(history),
    }
    result["likelihood"] = data.likelihood  # "bernoulli": log p(x) <= 0, else invalid
    if config.method == "vamp":
        result["pseudo_inputs_outside"] = pseudo_inputs_outside(model)
    if data.likelihood == "gaussian":
        result["decoder_logvar_at_bound"] = decoder_logvar_at_bound(model, test)
    if model.explicit_posterior:
        result["encoder_logvar_at_bounds"] = encoder_logvar_at_bounds(model, test)
    if config.method == "iop":
        components = runs.aggregated_posterior_components(model, data)

        def exact(s):
            return float(estimators.exact_aggregated_log_likelihood(model, test, components, s,
                                                                rng).mean())

        result["log_likelihood_exact"] = exact(samples)
        pairs = len(data.test) * tight_samples * len(data.train)
        result["log_likelihood_exact_tight"] = (exact(tight_samples) if pairs <= EXACT_BUDGET
                                                else None)
        result["log_normalizer"] = float(estimators.density_ratio_log_normalizer(
            model, rng, normalizer_samples, components=components))
        result["log_normalizer_plain"] = float(estimators.density_ratio_log_normalizer(
            model, rng, normalizer_samples))
        # the same weights with N(0, I) as the prior: what T adds to IOP's score
        result["log_likelihood_normal_prior"] = float(iopvae.test_log_likelihood(
            model, test, samples, rng, log_prior=iopvae.log_standard_normal).mean())
    result["elbo_terms"] = elbo_terms_by_split(model, data, rng)
    result["evaluation_seconds"] = time.time() - started
    return result


def elbo_terms_by_split(model, data, rng, samples=10):
    """The ELBO's two terms (Eq. 2), E_q[log p(x|z)] and the KL term (estimated for
    VampPrior and IOP), each a mean over the training images (binarised once, if
    binarised in training) and over the test images, ``samples`` draws per image: which
    term the ELBO's gap between the two lies in (an over-fitting prior shows in the KL)."""
    terms = {}
    for split, x in (("train", runs.training_images(data)), ("test", data.test)):
        reconstruction, kl = iopvae.mean_elbo_terms(model, ag.as_array(x), rng, samples=samples)
        terms[split] = {"reconstruction": float(reconstruction), "kl": float(kl)}
    return terms


def history_columns(history):
    """The per-epoch records as columns (``{"epoch": [...], "valid_elbo": [...], ...}``),
    floats to 6 significant digits: a 1,000-epoch curve in a small JSON."""
    def short(v):
        return float(f"{v:.6g}") if isinstance(v, float) else v
    keys = list(history[0]) if history else []
    return {k: [short(r[k]) for r in history] for k in keys}


def pseudo_inputs_outside(model):
    """The fraction of VampPrior's pseudo-input coordinates outside [0, 1], where the
    clip min(max(u, 0), 1) passes no gradient: those coordinates no longer learn."""
    u = ag.to_numpy(model.pseudo_inputs.data)
    return float(np.mean((u < 0) | (u > 1)))


def decoder_logvar_at_bound(model, x):
    """The fraction of a Gaussian decoder's log-variances, at one z ~ q(z|x) for each
    row of ``x``, held at their lower bound by the hardtanh. A bound that holds caps
    ln p(x|z) (such a pixel gives at most -0.5 ln(2 pi e^bound)) and passes no
    gradient, so the bound, not the data, decides those pixels' likelihood."""
    with ag.no_grad():
        _, logvar = model.decoder(model.posterior_sample(ag.Tensor(x), ag.default_rng(0)))
    low = model.decoder.logvar_bounds[0]
    return float(ag.to_numpy((logvar.data <= low).mean()))


def encoder_logvar_at_bounds(model, x):
    """The fractions of the encoder's log-variances over the rows of ``x`` held at its
    lower and at its upper bound by the hardtanh, as [lower, upper]."""
    with ag.no_grad():
        _, logvar = model.encoder(ag.Tensor(x))
    low, high = model.encoder.logvar_bounds
    held = ag.to_numpy_all([(logvar.data <= low).mean(), (logvar.data >= high).mean()])
    return [float(v) for v in held]   # one transfer for both


def run_finished(meta):
    """True when a checkpoint reached its epoch budget or stopped early."""
    c = meta["config"]
    return meta["epoch"] >= c.epochs or (c.patience > 0 and meta["bad_epochs"] >= c.patience)


def asked_config(run, config_values, data_dir=""):
    """The Config that the command line asks of ``run`` (the grid's values and the
    run's own settings)."""
    values = {**config_values, **dict(run.settings)}
    return runs.Config(**values, dataset=run.dataset, method=run.method, seed=run.seed,
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


def read_json(path, hint=""):
    """The JSON object in the result file ``path``; one line naming the file (and
    ``hint``) when it is not one (truncated, NaN, not an object)."""
    try:
        with open(path) as f:
            obj = json.load(f, parse_constant=_no_constant)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"result file {path} is not usable ({exc}){hint}") from None
    return obj


def read_result(run, results, split_id=None):
    """The result JSON of ``run`` in the folder ``results``, or None; a file that is not
    a complete result of this run (truncated, a key missing, NaN, another run's
    content) is refused with one line naming it.  With ``split_id`` (the data set's
    split now), a result made on another split is refused: its test set is other
    images, and mixing it in would average two experiments."""
    path = os.path.join(results, run.name + ".json")
    if not os.path.exists(path):
        return None
    result = read_json(path, "; delete it to evaluate the run again")
    if split_id is not None and result.get("split_id") != split_id:
        raise ValueError(f"{path} was evaluated on split {result.get('split_id')}, but "
                         f"{run.dataset} is split {split_id} now; remove it (and its run "
                         "folder) to run it again on this split")
    try:
        check_result(result, run)
    except ValueError as exc:
        raise ValueError(f"result file {path} is not usable ({exc}); delete it to evaluate "
                         "the run again") from None
    return result


def check_result(result, run):
    """ValueError unless ``result`` is a complete result of ``run``."""
    try:
        runs.Config(**result.get("config", {})).checked_types()
    except TypeError as exc:
        raise ValueError(f"its config: {exc}") from None
    missing = [k for k in RESULT_KEYS + (IOP_KEYS if result.get("method") == "iop" else ())
               if k not in result]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    if (result["run"], result["dataset"], result["method"], result["seed"]) != (
            run.name, run.dataset, run.method, run.seed):
        raise ValueError(f"it holds the result of run {result['run']}, not of {run.name}")


def current_split_ids(todo, data_dir=""):
    """The split id of each data set of the runs ``todo``, as the data load now."""
    return {d: runs._load_data(d, data_dir).split_id for d in sorted({r.dataset for r in todo})}


def has_result(run, results, samples, tight_samples, split_id=None, asked=None):
    """A result for ``run`` evaluated with these S (on ``split_id`` and made with the
    ``asked`` Config, if given) exists: then the run is done.  A result made with
    other settings is refused, unless only ``epochs`` differs (then the run goes on
    to the new end)."""
    r = read_result(run, results, split_id)
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
    if run.settings:
        words += ["--settings"] + [f"{key}={value}" for key, value in run.settings]
    if args.data_dir:
        words += ["--data-dir", args.data_dir]
    for name, value in config_values.items():
        words += ["--" + name.replace("_", "-"), str(value)]
    return words


class RunFailed(ValueError):
    """A worker process of the grid exited with an error (its train.log says why)."""


SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pending_runs(todo, args, config_values):
    """The runs of ``todo`` without a result for these settings on the data's split now."""
    splits = current_split_ids(todo, args.data_dir)
    return [r for r in todo if not has_result(r, args.results, args.samples, args.tight_samples,
                                              splits[r.dataset],
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


def load_results(todo, results, data_dir=""):
    """The results that exist for the runs ``todo``, by run (none of another split)."""
    splits = current_split_ids(todo, data_dir)
    found = {run: read_result(run, results, splits[run.dataset]) for run in todo}
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


PAPER_RUNS = 8


def _variance_of_mean(values):
    """s^2 / n, the squared standard error of the mean of ``values`` (0 for one value)."""
    values = np.asarray(values, dtype=float)
    return values.var(ddof=1) / len(values) if len(values) > 1 else 0.0


def against_paper(values, paper):
    """ours - paper and twice its standard error, sqrt(s^2/n + s_paper^2/8) (the paper's
    8 runs), as a table cell: the goal is |ours - paper| <= 2 SE ("within" or "outside")."""
    difference = np.mean(values) - paper[0]
    two_se = 2 * math.sqrt(_variance_of_mean(values) + paper[1] ** 2 / PAPER_RUNS)
    verdict = "within" if abs(difference) <= two_se else "outside"
    return f"{difference:+.2f} (2 SE {two_se:.2f}): {verdict}"


# --- the table --------------------------------------------------------------------------
def invalid(result):
    """A result with an estimate above 0 on binary data (impossible: log p(x) <= 0);
    shown as INVALID and never ranked."""
    return any(runs.impossible(result[key], result.get("likelihood"))
               for key in ("test_elbo", "log_likelihood", "log_likelihood_tight",
                           "valid_log_likelihood")
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
                f"IOP log Z | paper (S = 10) | ours − paper, S = {S} |")
    rows.append("|" + "---|" * 11)
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
            gap = against_paper(pick("log_likelihood"), paper) if paper and not bad else ""
            paper = f"{approx}{paper[0]:.2f} ± {paper[1]:.2f}" if paper else ""
            epochs = "/".join(f"{r['epochs_trained']}({r['best_epoch']})" for r in rs)
            rows.append(f"| {dataset} | {method} | {len(rs)} | {epochs} | {approx}{ours} | "
                        f"{approx}{_mean_std(pick('log_likelihood_tight'))} | "
                        f"{' | '.join(exact)} | {paper} | {gap} |")
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


# --- settings chosen on validation, never on test ------------------------------------
SCORE = ("mean over the seeds of the validation log-likelihood (importance sampling, "
         "S = 10 as in the test column) of each run's kept weights; for IOP the estimate "
         "with log N(z) + T(z) as the log prior")


def candidates(method, lrs, pseudo_inits):
    """The candidate settings of ``method``: each step size and, for VampPrior, each
    start of the pseudo-inputs."""
    inits = pseudo_inits if method == "vamp" else [None]
    return [{"lr": lr, **({"pseudo_init": init} if init else {})}
            for lr in lrs for init in inits]


def selection_path(results, dataset):
    return os.path.join(results, f"{dataset}-selection.json")


def select(found, dataset, config_values, seeds, components, earlier=None):
    """Per method, every candidate's validation scores and the pick: the candidate with
    the best mean (``SCORE``).  The test set plays no part.  ``earlier``: a selection
    made before with the same options, whose other methods are kept."""
    refuse_other_selection(earlier, dataset, config_values, seeds)
    by_candidate = {}
    for run, r in found.items():
        by_candidate.setdefault(run.method, {}).setdefault(run.settings, []).append(r)
    methods = {}
    for method, cands in by_candidate.items():
        rows = []
        for settings, rs in cands.items():
            scores = [r["valid_log_likelihood"] for r in rs]
            rows.append({"settings": dict(settings), "runs": [r["run"] for r in rs],
                         "valid_log_likelihood": scores, "mean": float(np.mean(scores)),
                         "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                         "invalid": any(map(invalid, rs))})
            if method == "vamp":  # VampPrior's pseudo-inputs stuck outside [0, 1] at the end
                rows[-1]["pseudo_inputs_outside"] = [r["pseudo_inputs_outside"] for r in rs]
        valid = [row for row in rows if not row["invalid"]]
        if not valid:
            raise ValueError(f"every {method} candidate has an impossible result (above 0 "
                             "on binary data): none can be picked")
        best = max(valid, key=lambda row: row["mean"])
        methods[method] = {"pick": best["settings"], "candidates": rows}
        if method == "vamp":
            methods[method]["components"] = components
    kept = {m: e for m, e in (earlier or {}).get("methods", {}).items() if m not in methods}
    return {"dataset": dataset, "score": SCORE, "seeds": list(seeds),
            "config": config_values, "methods": {**kept, **methods}}


def refuse_other_selection(earlier, dataset, config_values, seeds):
    if earlier and (earlier["config"], earlier["seeds"]) != (config_values, list(seeds)):
        raise ValueError(f"the {dataset} selection on file was made with options "
                         f"{earlier['config']} and seeds {earlier['seeds']}; select with the "
                         "same ones, or move that file away to start a new selection")


def selection_table(doc):
    """The candidates of a selection, best first per method, the pick marked."""
    rows = [f"{doc['dataset']}: {doc['score']}", "",
            "| method | settings | validation LL (mean ± std) | seeds | pick | "
            "pseudo-inputs outside [0, 1] |",
            "|---|---|---|---|---|---|"]
    for method, entry in doc["methods"].items():
        for row in sorted(entry["candidates"], key=lambda row: -row["mean"]):
            tags = ", ".join(f"{k} = {v}" for k, v in row["settings"].items())
            pick = ("INVALID (above 0 on binary data)" if row.get("invalid") else
                    "**pick**" if row["settings"] == entry["pick"] else "")
            outside = row.get("pseudo_inputs_outside")
            outside = f"{100 * np.mean(outside):.1f}%" if outside else ""
            rows.append(f"| {method} | {tags} | {row['mean']:.2f} ± {row['std']:.2f} | "
                        f"{len(row['runs'])} | {pick} | {outside} |")
    return "\n".join(rows)


def selected_settings(results, dataset, given, methods):
    """(config values, settings per method) for ``--selected``: the options the
    selection ran with, with ``given`` on top (a given option that differs is refused:
    the picks hold for the options they were made with), and each method's pick.
    A method in ``methods`` without a pick is refused, never trained with defaults."""
    path = selection_path(results, dataset)
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: run `select --dataset {dataset}` first")
    with open(path) as f:
        doc = json.load(f)
    differ = {k: (v, doc["config"][k]) for k, v in given.items()
              if k in doc["config"] and doc["config"][k] != v}
    if differ:
        said = ", ".join(f"--{k.replace('_', '-')} {v} (selected with {w})"
                         for k, (v, w) in differ.items())
        raise ValueError(f"{path} was made with other options: {said}")
    unpicked = [m for m in methods if m not in doc["methods"]]
    if unpicked:
        raise ValueError(f"{path} has no pick for {', '.join(unpicked)}: run `select "
                         f"--dataset {dataset} --methods {' '.join(unpicked)}` first")
    return ({**doc["config"], **given},
            {method: [entry["pick"]] for method, entry in doc["methods"].items()})


def read_results_folder(results, dataset):
    """Every result JSON of ``dataset`` in ``results`` that holds a history."""
    found = []
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        if name.startswith(dataset + "-") and name.endswith(".json"):
            r = read_json(os.path.join(results, name))
            if "history" in r:
                found.append(r)
    return found


def settings_label(result):
    """The step size (and VampPrior's start and K) of a run, as a legend label."""
    c = result["config"]
    label = f"lr = {c['lr']:g}"
    if result["method"] == "vamp":
        label += f", {c['pseudo_init']}, K = {c['components']}"
    return label


def stopping_point(history, patience):
    """Where early stopping with ``patience`` would have stopped a run that trained
    on: (stop epoch, best epoch by then, its validation ELBO), from the recorded
    curve; the stop epoch is None if the patience never ran out."""
    best_epoch, best, bad = 0, -math.inf, 0
    for epoch, beta, value in zip(history["epoch"], history["beta"], history["valid_elbo"]):
        if beta < 1.0:
            continue
        if value > best:
            best_epoch, best, bad = epoch, value, 0
        else:
            bad += 1
            if bad >= patience:
                return epoch, best_epoch, best
    return None, best_epoch, best


def stopping_table(found, patience):
    """Per run: its best validation ELBO over the whole curve, and where a patience of
    ``patience`` epochs would have stopped it, with the best it had by then."""
    rows = [f"| run | epochs | best epoch | best valid ELBO | patience {patience} stops at | "
            "its best (epoch) | lost |", "|---|---|---|---|---|---|---|"]
    for r in found:
        h = r["history"]
        end, best_epoch, best = stopping_point(h, math.inf)
        stop, early_epoch, early = stopping_point(h, patience)
        stop_text = "-" if stop is None else str(stop)
        rows.append(f"| {r['run']} | {len(h['epoch'])} | {best_epoch} | {best:.2f} | "
                    f"{stop_text} | {early:.2f} ({early_epoch}) | {best - early:.2f} |")
    return "\n".join(rows)


def draw_curves(found, path):
    """One panel per method, one line per run (colour: its settings): the validation
    ELBO of every epoch after the warm-up."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in found)]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        runs_here = [r for r in found if r["method"] == method]
        labels = sorted({settings_label(r) for r in runs_here})
        colours = {label: f"C{i}" for i, label in enumerate(labels)}
        values = []
        for r in runs_here:
            h = r["history"]
            keep = [i for i, beta in enumerate(h["beta"]) if beta >= 1.0]
            epochs = [h["epoch"][i] for i in keep]
            valid = [h["valid_elbo"][i] for i in keep]
            values += valid
            label = settings_label(r)
            ax.plot(epochs, valid, lw=0.6, alpha=0.75, color=colours[label],
                    label=f"{label} (seed {r['seed']})")
        if values:
            low, high = np.percentile(values, [5, 100])
            ax.set_ylim(low - 0.1 * (high - low), high + 0.05 * (high - low))
        ax.set_title(f"{found[0]['dataset']}: {method}")
        ax.set_xlabel("epoch (after the warm-up)")
        ax.set_ylabel("validation ELBO (1 sample per point)")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    parser.add_argument("--selected", action="store_true",
                        help="train each method with the settings `select` picked "
                             "(RESULTS/DATASET-selection.json) and the options it ran with")


def _run_or_print(todo, args, values=None):
    values = _config_values(args) if values is None else values
    if args.print_commands:
        for run in pending_runs(todo, args, values):
            env = " ".join(f"{k}={v}" for k, v in SINGLE_THREAD.items())
            print(env, shlex.join(run_command(run, args, values, python="python")))
        return False
    run_grid(todo, args, values)
    return True


def command_table2(args):
    values, grid_runs = _config_values(args), []
    for dataset in args.datasets:
        settings = None
        if args.selected:
            values, settings = selected_settings(args.results, dataset, values,
                                                 args.methods)
        grid_runs += grid([dataset], args.methods, args.seeds, settings=settings)
    if not _run_or_print(grid_runs, args, values):
        return
    text = table(load_results(grid_runs, args.results, args.data_dir))
    print(f"\nTest log-likelihood (importance sampling; mean ± std over seeds; bold: best or "
          f"not different from it, Welch t-test at 5 %, on S = {args.samples})\n")
    print(text)
    write_json(os.path.join(args.results, "table2.json"),
               {"markdown": text, "runs": [r.name for r in grid_runs]})


def command_figure3(args):
    ks = [0 if k == paper_k(args.dataset) else k for k in args.components]
    values, settings = _config_values(args), None
    if args.selected:
        values, settings = selected_settings(args.results, args.dataset, values,
                                             ["vamp", "iop"])
    grid_runs = (grid([args.dataset], ["vamp"], args.seeds, ks, settings)
                 + grid([args.dataset], ["iop"], args.seeds, settings=settings))
    if not _run_or_print(grid_runs, args, values):
        return
    path = args.figure or os.path.join(os.path.dirname(os.path.normpath(args.results)),
                                       f"figure3_{args.dataset}.png")
    numbers = figure3(load_results(grid_runs, args.results, args.data_dir), args.dataset, path)
    print(f"wrote {path}: VampPrior K = {numbers['K']}")


def command_select(args):
    cands = {m: candidates(m, args.lrs, args.pseudo_inits) for m in args.methods}
    ks = (0 if args.components == paper_k(args.dataset) else args.components,)
    todo = grid([args.dataset], args.methods, args.seeds, ks, cands)
    values = _config_values(args)
    path = selection_path(args.results, args.dataset)
    earlier = None
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
    refuse_other_selection(earlier, args.dataset, values, args.seeds)  # before any training
    if not _run_or_print(todo, args, values):
        return
    doc = select(load_results(todo, args.results, args.data_dir), args.dataset, values,
                 args.seeds, args.components or paper_k(args.dataset), earlier)
    write_json(path, doc)
    print(selection_table(doc))
    print(f"\nwrote {path}; `table2 --selected` and `figure3 --selected` train with the picks")


def command_curves(args):
    found = [r for r in read_results_folder(args.results, args.dataset)
             if (not args.match or any(m in r["run"] for m in args.match))
             and (not args.seeds or r["seed"] in args.seeds)]
    if not found:
        raise ValueError(f"no {args.dataset} results with a history in {args.results}")
    path = args.figure or os.path.join(os.path.dirname(os.path.normpath(args.results)),
                                       f"{args.dataset}_curves.png")
    draw_curves(found, path)
    print(stopping_table(found, args.compare_patience))
    print(f"\nwrote {path}")


def command_run(args):
    run = Run(args.dataset, args.method, args.seed, args.components,
              as_settings(parse_settings(args.settings)))
    run_one(run, _config_values(args), args.out, args.results, args.samples,
            args.tight_samples, args.data_dir)


# --- the README's tables, generated from the committed results ------------------------
README_COLUMNS = ("method", "runs", "test LL, S = 10", "test LL, S = 1000", "IOP log Z",
                  "paper (S = 10)", "ours − paper, S = 10")
_FIXED = "lr 10⁻³, patience 50, ln σ² ≥ −9"  # the first protocol, before the causes
_SPLIT = "1: the authors' split (before: another permutation)"
_STEP = "2: step size 10⁻⁴ (before: 10⁻³)"
_START = "3: pseudo-inputs start at 0.5 + noise (before: U[0, 1])"
_BOUND = "5: decoder's ln σ² ≥ −12 (before: ≥ −9)"
_ENCODER = "6: encoder's ln σ² ≥ −12 (before: ≥ −6)"
_SCREEN9 = "freyfaces-causes/decoder-logvar-min-9-screen/"  # the screen at the −9 bound
CAUSES = (  # (cause, method, what is held fixed, before, after): globs under results/
    (_SPLIT, "vae", _FIXED,
     "freyfaces-causes/old-split/*-vae-*", "freyfaces-causes/*-vae-*"),
    (_SPLIT, "iop", _FIXED,
     "freyfaces-causes/old-split/*-iop-*", "freyfaces-causes/*-iop-*"),
    (_STEP, "vae", "authors' split, 1,000 epochs, ln σ² ≥ −9",
     _SCREEN9 + "*-vae-lr=0.001-*",
     _SCREEN9 + "*-vae-lr=0.0001-*"),
    (_STEP, "vae", "authors' split, 1,000 epochs, ln σ² ≥ −12",
     "table2/*-vae-lr=0.001-seed[012]", "table2/*-vae-lr=0.0001-seed[012]"),
    (_STEP, "iop", "authors' split, 1,000 epochs, ln σ² ≥ −12",
     "table2/*-iop-lr=0.001-seed[012]", "table2/*-iop-lr=0.0001-seed[012]"),
    (_STEP, "vamp", "K = 100, authors' split, 0.5 start, 1,000 epochs, ln σ² ≥ −12",
     "table2/*-K100-lr=0.001-pseudo_init=constant-seed[012]",
     "table2/*-K100-lr=0.0001-pseudo_init=constant-seed[012]"),
    (_STEP, "vamp", "K = 500, authors' split, U[0, 1] start, 1,000 epochs, ln σ² ≥ −12",
     "table2/*-vamp-lr=0.001-pseudo_init=uniform-seed[012]",
     "freyfaces-causes/vamp-K500-lr-1e-4/*-vamp-*"),
    (_START, "vamp", "K = 100, authors' split, lr 10⁻³, 1,000 epochs, ln σ² ≥ −9",
     _SCREEN9 + "*-lr=0.001-pseudo_init=uniform-*",
     _SCREEN9 + "*-lr=0.001-pseudo_init=constant-*"),
    (_START, "vamp", "K = 100, authors' split, lr 10⁻³, 1,000 epochs, ln σ² ≥ −12",
     "table2/*-K100-lr=0.001-pseudo_init=uniform-seed[012]",
     "table2/*-K100-lr=0.001-pseudo_init=constant-seed[012]"),
    ("4: train 1,000 epochs, keep the best (before: patience 50)", "vae",
     "authors' split, lr 10⁻³, ln σ² ≥ −9",
     "freyfaces-causes/*-vae-*", _SCREEN9 + "*-vae-lr=0.001-*"),
    (_BOUND, "vae", "authors' split, lr 10⁻³, patience 50",
     "freyfaces-causes/*-vae-*", "freyfaces-causes/decoder-logvar-min-12/*-vae-*"),
    (_BOUND, "vae", "authors' split, lr 10⁻³, 1,000 epochs",
     _SCREEN9 + "*-vae-lr=0.001-*",
     "table2/*-vae-lr=0.001-seed[012]"),
    (_BOUND, "vamp",
     "K = 100, authors' split, lr 10⁻⁴, 0.5 start, 1,000 epochs",
     _SCREEN9 + "*-lr=0.0001-pseudo_init=constant-*",
     "table2/*-K100-lr=0.0001-pseudo_init=constant-seed[012]"),
    (_BOUND, "iop", "authors' split, lr 10⁻³, patience 50",
     "freyfaces-causes/*-iop-*", "freyfaces-causes/decoder-logvar-min-12/*-iop-*"),
    (_ENCODER, "vae", "authors' split, lr 10⁻³, patience 50, decoder's ln σ² ≥ −12",
     "freyfaces-causes/decoder-logvar-min-12/*-vae-*",
     "freyfaces-causes/encoder-logvar-min-12/*-vae-*"),
    (_ENCODER, "iop", "authors' split, lr 10⁻³, patience 50, decoder's ln σ² ≥ −12",
     "freyfaces-causes/decoder-logvar-min-12/*-iop-*",
     "freyfaces-causes/encoder-logvar-min-12/*-iop-*"),
) + tuple(("all: the protocol, eight runs (before: the first row)", method, "",
           f"freyfaces-causes/old-split/*-{method}-*", "table2/table2.json") for method in METHODS)


def columns(markdown, names):
    """The columns of a markdown table whose header is in ``names``, in the table's order."""
    rows = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in markdown.splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name in names]
    return "\n".join("|" + "---|" * len(keep) if j == 1 else
                     "| " + " | ".join(row[i] for i in keep) + " |"
                     for j, row in enumerate(rows))


def _test_values(results, pattern, method):
    """The S = 10 test log-likelihoods of ``method`` in the result files ``pattern``."""
    if pattern.endswith("table2.json"):  # the runs of that table
        listed = os.path.join(results, pattern)
        if not os.path.exists(listed):
            return []
        paths = [os.path.join(os.path.dirname(listed), name + ".json")
                 for name in read_json(listed)["runs"]]
    else:
        paths = sorted(glob.glob(os.path.join(results, pattern + ".json")))
    found = (read_json(path) for path in paths)
    return [r["log_likelihood"] for r in found
            if r.get("method") == method and "log_likelihood" in r]


def measured_causes(results):
    """(cause, method, held fixed, before, after) for each row of ``CAUSES`` measured on at
    least two runs each side; before and after are S = 10 test log-likelihoods."""
    for cause, method, fixed, before, after in CAUSES:
        b, a = (_test_values(results, p, method) for p in (before, after))
        if len(b) >= 2 and len(a) >= 2:
            yield cause, method, fixed, b, a


def _change(before, after):
    """The change of the means and twice its standard error, as ``+4.00 (2.83)``."""
    two_se = 2 * math.sqrt(_variance_of_mean(after) + _variance_of_mean(before))
    return f"{np.mean(after) - np.mean(before):+.2f} ({two_se:.2f})"


def causes_table(results):
    """What moved the FreyFaces numbers: each cause of ``CAUSES`` measured with the rest
    held fixed, test log-likelihood (S = 10), mean ± std (runs); the change and twice
    its standard error."""
    rows = ["| cause | method | held fixed | before | after | change (2 SE) |",
            "|---|---|---|---|---|---|"]
    for cause, method, fixed, b, a in measured_causes(results):
        rows.append(f"| {cause} | {method} | {fixed} | {_mean_std(b)} ({len(b)}) | "
                    f"{_mean_std(a)} ({len(a)}) | {_change(b, a)} |")
    return "\n".join(rows)


def causes_summary(results, methods=("vae", "vamp", "iop")):
    """``causes_table`` folded to one row per cause and one column per method: each cell
    the change (2 SE) of every measurement of that cause, in ``CAUSES`` order."""
    cells = {}
    for cause, method, _, b, a in measured_causes(results):
        cells.setdefault(cause, {}).setdefault(method, []).append(_change(b, a))
    rows = ["| cause | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    rows += [f"| {cause} | " + " | ".join("; ".join(found.get(m, [])) for m in methods) + " |"
             for cause, found in cells.items()]
    return "\n".join(rows)


PAPER_ORDER = ("iop", "vamp", "vae")  # the paper's ranking on every data set, best first


def goal_summary(values, paper, order=PAPER_ORDER):
    """Whether each method is within the paper's spread and whether the paper's order
    of the means holds, from ``values`` (method -> test log-likelihoods): markdown
    lines, with Welch's p-value for every pair that the paper's order ranks."""
    present = [m for m in order if m in values]
    means = {m: float(np.mean(values[m])) for m in present}
    pairs = list(itertools.combinations(present, 2))
    lines = [f"- {m}: ours − paper {against_paper(values[m], paper[m])}" for m in present]
    broken = [(a, b) for a, b in pairs if means[a] < means[b]]
    tests = ", ".join(f"{a} − {b} = {means[a] - means[b]:+.2f} "
                      f"(Welch p = {welch_t_test(values[a], values[b]):.3f})" for a, b in pairs)
    verdict = ("holds" if not broken else "fails at " +
               ", ".join(f"{a} < {b}" for a, b in broken))
    lines.append(f"- the paper's order {' ≥ '.join(order)} of the means {verdict}: {tests}")
    return "\n".join(lines)


def picked_values(results):
    """method -> the S = 10 test log-likelihoods of the runs listed in
    ``results/table2/table2.json`` (the eight runs per method at the picks)."""
    values = {m: _test_values(results, "table2/table2.json", m) for m in PAPER_ORDER}
    return {m: v for m, v in values.items() if v}


def readme_tables(results):
    """The README's generated tables by name: FreyFaces's Table 2 row at the selected
    settings and whether the goal holds (from ``table2/table2.json``), and the causes,
    one row each."""
    tables = {"freyfaces-causes": causes_summary(results)}
    path = os.path.join(results, "table2", "table2.json")
    if os.path.exists(path):
        tables["freyfaces-table2"] = columns(read_json(path)["markdown"], README_COLUMNS)
        tables["freyfaces-goal"] = goal_summary(picked_values(results),
                                                PAPER_TABLE2["freyfaces"])
    return tables


README_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end -->)", re.S)


def fill_readme(text, tables):
    """``text`` with every ``<!-- generated: NAME -->`` block holding ``tables[NAME]``."""
    def fill(m):
        if m.group(2) not in tables:
            raise ValueError(f"the README asks for table {m.group(2)!r}, which has no results")
        return m.group(1) + tables[m.group(2)] + "\n" + m.group(4)
    return README_BLOCK.sub(fill, text)


def command_readme(args):
    with open(args.readme) as f:
        text = f.read()
    filled = fill_readme(text, readme_tables(args.results))
    atomic_write(args.readme, lambda f: f.write(filled), mode="w")
    print(f"{args.readme}: {'updated' if filled != text else 'already up to date'}")


def add_commands(sub):
    """The ``table2``, ``select``, ``curves``, ``figure3``, ``readme`` and ``run``
    sub-commands (also used by iopvae.py)."""
    t = sub.add_parser("table2", help="Table 2: train, evaluate and tabulate the grid")
    t.add_argument("--datasets", nargs="+", default=["freyfaces"], choices=datasets.DATASETS,
                   help="data sets (default: freyfaces)")
    t.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods (default: vae vamp iop)")
    _grid_options(t)
    _common_options(t)
    t.set_defaults(run=command_table2)

    c = sub.add_parser("select", help="train candidate settings on a few seeds and pick, "
                                      "per method, the best mean validation log-likelihood")
    c.add_argument("--dataset", default="freyfaces", choices=datasets.DATASETS,
                   help="data set (default: freyfaces)")
    c.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods (default: vae vamp iop)")
    c.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 1e-3],
                   help="candidate step sizes of the VAE (default: 1e-4 1e-3, the paper's "
                        "range)")
    c.add_argument("--pseudo-inits", nargs="+", default=["uniform", "constant"],
                   choices=iopvae.VampPrior.PSEUDO_INITS,
                   help="candidate starts of VampPrior's pseudo-inputs (default: uniform "
                        "constant)")
    c.add_argument("--components", type=int, default=0,
                   help="VampPrior's K in the screen (0: the paper's)")
    _grid_options(c)
    _common_options(c)
    c.set_defaults(run=command_select)

    v = sub.add_parser("curves", help="draw the validation curves of a data set's runs and "
                                      "say where early stopping would have stopped them")
    v.add_argument("--dataset", default="freyfaces", choices=datasets.DATASETS,
                   help="data set (default: freyfaces)")
    v.add_argument("--results", default=os.path.join("results", "table2"),
                   help="folder of the per-run result JSON files")
    v.add_argument("--match", nargs="+", default=[],
                   help="only runs whose name contains one of these strings")
    v.add_argument("--seeds", nargs="+", type=int, default=[],
                   help="only runs of these seeds (default: all)")
    v.add_argument("--compare-patience", type=int, default=50,
                   help="the patience whose stopping point is compared with the run's best "
                        "(default: 50)")
    v.add_argument("--figure", default="", help="PNG path (default: beside --results)")
    v.set_defaults(run=command_curves)

    f = sub.add_parser("figure3", help="Figure 3: VampPrior's log-likelihood against K")
    f.add_argument("--dataset", default="histopathology", choices=datasets.DATASETS,
                   help="data set (default: histopathology, as in the paper)")
    f.add_argument("--components", nargs="+", type=int, default=[50, 100, 250, 500],
                   help="VampPrior's K values (default: 50 100 250 500)")
    f.add_argument("--figure", default="", help="PNG path (default: beside --results)")
    _grid_options(f)
    _common_options(f)
    f.set_defaults(run=command_figure3)

    m = sub.add_parser("readme", help="rewrite the README's generated tables from the "
                                      "committed results")
    m.add_argument("--readme", default="README.md", help="the file (default: README.md)")
    m.add_argument("--results", default="results", help="the results folder (default: results)")
    m.set_defaults(run=command_readme)

    r = sub.add_parser("run", help="one run of the grid: train or resume, then evaluate")
    r.add_argument("--dataset", required=True, choices=datasets.DATASETS, help="data set")
    r.add_argument("--method", required=True, choices=METHODS, help="method")
    r.add_argument("--seed", type=int, default=0, help="random seed of the run (default: 0)")
    r.add_argument("--components", type=int, default=0, help="VampPrior K (0: the paper's)")
    r.add_argument("--settings", nargs="*", default=[],
                   help="NAME=VALUE Config values of this run, part of its name "
                        "(e.g. lr=0.0001)")
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
