"""The grid of runs behind Table 2 and Figure 3: the runs, and one run trained and
evaluated (the worker processes that run the grid's unfinished runs are in workers.py).

Each (data set, method, seed[, K]) is one *run*: a folder under ``--out`` with its
checkpoint.  ``run`` trains it (or resumes it, or does nothing if it has finished),
then evaluates its best weights and writes ``result.json`` there and a copy under
``--results``.  ``table2`` runs the grid's unfinished runs in ``--jobs`` worker
processes (one BLAS thread each, each ``python -m experiments run ...``) or prints one
``run`` command per run for a cluster scheduler.

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
import dataclasses
import os
import time

import numpy as np

import autograd_lite as ag
import estimators
import iopvae
from experiments import checkpoints, runs
from experiments.results import (
    invalid,
    read_result,
    refuse_other_settings,
    write_json,
)

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
            raise ValueError(f"--settings {word!r}: expected NAME=VALUE with NAME a Config field")
        if key in values:
            raise ValueError(f"--settings {word!r}: {key} is given twice")
        if key in GRID_FIXED + ("data_dir",):
            raise ValueError(f"--settings {word!r}: {key} is set by the option --"
                             f"{key.replace('_', '-')}, not as a setting")
        kind = {"int": int, "float": float, "str": str}[getattr(types[key], "__name__",
                                                                types[key])]
        try:
            values[key] = kind(text)
        except ValueError:
            raise ValueError(f"--settings {word!r}: {key} must be a {kind.__name__}") from None
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
    meta, _ = checkpoints.read_checkpoint(path)
    model, config = checkpoints.load_model(path)
    data = checkpoints.load_run_data(path, model, config, data_dir)
    test = ag.as_array(data.test)
    rng = ag.default_rng(10_000 + config.seed)

    def ll(s, x=test, split="test"):
        progress = runs.Progress(f"{config.method} {split} log-likelihood, S = {s}, "
                                 f"{len(x):,} points", len(x) * s)
        return float(iopvae.test_log_likelihood(model, x, s, rng, progress=progress).mean())

    history = meta["history"]
    timed = [r["seconds"] for r in history if "seconds" in r]  # older code timed no epoch
    result = {
        "run": os.path.basename(os.path.normpath(path)), "dataset": config.dataset,
        "method": config.method, "seed": config.seed,
        "components": config.components if config.method == "vamp" else None,
        "config": dataclasses.asdict(config), "split_id": meta.get("split_id"),
        "epochs_trained": meta["epoch"], "best_epoch": meta["best_epoch"],
        "finished": run_finished(meta),
        "seconds_per_epoch": float(np.median(timed)) if timed else None,
        "train_seconds": float(sum(timed)) if len(timed) == len(history) else None,
        "test_elbo": float(iopvae.elbo(model, test, rng)),
        "elbo_is_estimate": bool(model.has_density_ratio),
        "samples": samples, "tight_samples": tight_samples,
        "log_likelihood": ll(samples), "log_likelihood_tight": ll(tight_samples),
        # the score settings are chosen by (``select``): never the test set
        "valid_log_likelihood": ll(samples, ag.as_array(data.valid), "validation"),
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
        components = checkpoints.aggregated_posterior_components(model, data)

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
        # T against the exact log-ratio, at the kept epoch (its own random stream) and,
        # where measured, along training
        result["density_ratio_truth"] = {"epoch": meta["best_epoch"], **(
            estimators.density_ratio_against_truth(model, components,
                                                   ag.default_rng(20_000 + config.seed)))}
        result["density_ratio_truth_along_training"] = [
            {"epoch": r["epoch"], **r["density_ratio_truth"]} for r in history
            if "density_ratio_truth" in r]
        result.update(normalized_scores(model, result, config.seed))
    result["elbo_terms"] = elbo_terms_by_split(model, data, rng)
    result["evaluation_seconds"] = time.time() - started
    return result


# AIS's settings for IOP's log Z (benchmarks/bench_ais.py: chains x temperatures)
AIS_SETTINGS = {"chains": 500, "temperatures": 1000, "leapfrog": 10}


def normalized_scores(model, result, seed, settings=None, log=print):
    """IOP's estimates as log-likelihoods: log Z^ of its prior N(z) exp T(z) by annealed
    importance sampling (``estimators.density_ratio_log_normalizer_ais``, its own random
    stream), and the test log-likelihoods at S and the tighter S with the normalised
    prior ln N(z) + T(z) - log Z^, which are the estimates minus log Z^.  log Z^ is a
    stochastic lower bound on log Z, so the normalised values lean high."""
    started, settings = time.time(), settings or AIS_SETTINGS
    log(f"{result['run']}: log Z of N(z) exp T(z) by AIS, {settings['chains']} chains x "
        f"{settings['temperatures']} temperatures (and 1/2, 1/4 of them) ...")
    temperatures = settings["temperatures"]
    progress = runs.Progress(f"{result['run']}: AIS",
                             temperatures + temperatures // 2 + temperatures // 4)
    ais = estimators.density_ratio_log_normalizer_ais(model, ag.default_rng(40_000 + seed),
                                                      progress=progress, **settings)
    ais = {**ais, **settings, "seconds": time.time() - started}
    log(f"{result['run']}: log Z^ = {ais['log_z']:.3f} ± {ais['stderr']:.3f} (half the "
        f"temperatures: {ais['log_z_half']:.3f}; ESS {ais['ess']:.0f}; {ais['seconds']:.0f} s)")
    return {"log_normalizer_ais": ais,
            "log_likelihood_normalized": result["log_likelihood"] - ais["log_z"],
            "log_likelihood_tight_normalized": result["log_likelihood_tight"] - ais["log_z"]}


def complete_normalized(path, result, log=print):
    """``result`` of the IOP run in folder ``path`` with what older evaluations lacked
    (``normalized_scores``; T against the leave-one-out mixture), from the run's best
    weights: the rest of the result, made from the same weights, stays as it is."""
    model, config = checkpoints.load_model(path)
    data = checkpoints.load_run_data(path, model, config, result["config"].get("data_dir", ""))
    components = checkpoints.aggregated_posterior_components(model, data)
    truth = estimators.density_ratio_against_truth(model, components,
                                                   ag.default_rng(20_000 + config.seed))
    completed = {**result, **normalized_scores(model, result, config.seed, log=log)}
    completed["density_ratio_truth"] = {**result["density_ratio_truth"], **truth}
    return completed


def elbo_terms_by_split(model, data, rng, samples=10):
    """The ELBO's two terms (Eq. 2), E_q[log p(x|z)] and the KL term (estimated for
    VampPrior and IOP), each a mean over the training images (binarised once, if
    binarised in training) and over the test images, ``samples`` draws per image: which
    term the ELBO's gap between the two lies in (an over-fitting prior shows in the KL)."""
    terms = {}
    for split, x in (("train", checkpoints.training_images(data)), ("test", data.test)):
        reconstruction, kl = iopvae.mean_elbo_terms(model, ag.as_array(x), rng, samples=samples)
        terms[split] = {"reconstruction": float(reconstruction), "kl": float(kl)}
    return terms


def history_columns(history):
    """The per-epoch records as columns (``{"epoch": [...], "valid_elbo": [...], ...}``),
    floats to 6 significant digits: a 1,000-epoch curve in a small JSON.  A column for
    every number any record holds (None where a record has none: ``seconds`` in records
    of older code); the measures kept as objects (``density_ratio_truth``, at a few
    epochs) are not columns (``evaluate_run`` keeps them apart)."""
    def short(v):
        return float(f"{v:.6g}") if isinstance(v, float) else v
    keys = dict.fromkeys(k for r in history for k, v in r.items() if not isinstance(v, dict))
    return {k: [short(r.get(k)) for r in history] for k in keys}


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


def run_one(run, config_values, out, results, samples, tight_samples, data_dir="", log=print):
    """Train ``run`` to the end (resuming its checkpoint if any), evaluate it and write
    ``result.json`` in its folder and ``<name>.json`` in ``results``; returns the result."""
    path = os.path.join(out, run.name)
    asked = asked_config(run, config_values, data_dir)
    checkpoints.lock_run_folder(path)
    data = checkpoints._load_data(run.dataset, data_dir)
    if os.path.exists(os.path.join(path, "checkpoint.npz")):
        meta, _ = checkpoints.read_checkpoint(path)
        refuse_other_settings(run.name, path, meta["config"], asked)
        if meta["epoch"] > asked.epochs:
            raise ValueError(f"run {run.name} in {path} has trained {meta['epoch']} epochs, "
                             f"more than --epochs {asked.epochs}")
        trainer = checkpoints.resume_trainer(path, data, path, log)
        trainer.config = dataclasses.replace(trainer.config, epochs=asked.epochs)
        trainer.epochs = asked.epochs  # a new end, as with train --resume --epochs
    else:
        trainer = runs.Trainer(asked, data, path, log)
    trainer.resume_hint = "run the same command again to continue"
    if run.method == "iop":
        trainer.measures = (density_ratio_along_training,)
    log(f"== {run.name}: epoch {trainer.epoch} of {trainer.config.epochs}")
    try:
        trainer.train()
    except runs.TrainingDiverged as exc:  # recorded: a rerun of the grid does not retry it
        os.makedirs(results, exist_ok=True)
        write_json(diverged_path(run, results), {
            "run": run.name, "dataset": run.dataset, "method": run.method, "seed": run.seed,
            "config": dataclasses.asdict(asked), "split_id": data.split_id,
            "diverged": str(exc)})
        raise
    result = evaluate_run(path, samples, tight_samples, data_dir)
    for target in (os.path.join(path, "result.json"), os.path.join(results, run.name + ".json")):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_json(target, result)
    log(f"== {run.name}: test log-likelihood (S={samples}) {result['log_likelihood']:.2f}"
        + (" INVALID: above 0 on binary data" if invalid(result) else ""))
    return result


def normalize_finished(todo, out, results, log=print):
    """Give every finished IOP result of ``todo`` that has no log Z^ yet (evaluated before
    AIS was) its normalised scores (``complete_normalized``), from the checkpoint in its run
    folder under ``out``, and write both copies of it; a run whose folder no longer holds
    that checkpoint is named and left as it is (its normalised cells stay empty)."""
    waiting = []
    for run in todo:
        result = read_result(run, results) if run.method == "iop" else None
        if result and result.get("finished") and "log_normalizer_ais" not in result:
            waiting.append((run, result))
    for i, (run, result) in enumerate(waiting, 1):
        path = os.path.join(out, run.name)
        meta = (checkpoints.read_checkpoint(path)[0]
                if os.path.exists(os.path.join(path, "checkpoint.npz")) else None)
        if meta is None or (meta["epoch"], meta["best_epoch"]) != (result["epochs_trained"],
                                                                   result["best_epoch"]):
            log(f"{run.name}: no log Z^, since {path} does not hold the checkpoint its result "
                "was evaluated from (the normalised cells stay empty; retrain it to fill them)")
            continue
        log(f"normalising IOP's prior, run {i} of {len(waiting)}")
        checkpoints.lock_run_folder(path)
        completed = complete_normalized(path, result, log)
        for target in (os.path.join(path, "result.json"),
                       os.path.join(results, run.name + ".json")):
            write_json(target, completed)


def diverged_path(run, results):
    """Where a run that diverged is recorded, beside the results."""
    return os.path.join(results, run.name + ".diverged.json")


TRUTH_POINTS = (0.25, 0.5, 0.75)  # fractions of the epochs where T meets the truth


def density_ratio_along_training(trainer, record):
    """A ``runs.Trainer`` measure: at a quarter, half and three quarters of the epochs,
    IOP's T against the exact log-ratio it estimates (kept in the round's record, so in
    the checkpoint), with a random stream of its own: training is the same with it."""
    if record["epoch"] in {round(f * trainer.epochs) for f in TRUTH_POINTS}:
        components = checkpoints.aggregated_posterior_components(trainer.model, trainer.data)
        rng = ag.default_rng(30_000 + trainer.config.seed + record["epoch"])
        record["density_ratio_truth"] = estimators.density_ratio_against_truth(
            trainer.model, components, rng)
