"""The result files of the grid: one JSON per run, read and checked (complete, of
this run, of the data's split now, made with the settings asked), written whole or
not at all."""
import dataclasses
import json
import os

import runs
from autograd_lite.files import atomic_write

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


def invalid(result):
    """A result with an estimate above 0 on binary data (impossible: log p(x) <= 0);
    shown as INVALID and never ranked."""
    return any(runs.impossible(result[key], result.get("likelihood"))
               for key in ("test_elbo", "log_likelihood", "log_likelihood_tight",
                           "valid_log_likelihood")
               if result.get(key) is not None)


def write_json(path, obj):
    """``obj`` as JSON, written whole or not at all; NaN or infinite numbers refused."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path} not written: it would hold numbers that are not finite "
                         f"({obj})"[:400]) from None
    atomic_write(path, lambda f: f.write(text), mode="w")


def load_results(todo, results, data_dir=""):
    """The results that exist for the runs ``todo``, by run (none of another split)."""
    splits = current_split_ids(todo, data_dir)
    found = {run: read_result(run, results, splits[run.dataset]) for run in todo}
    return {run: r for run, r in found.items() if r is not None}


def read_results_folder(results, dataset):
    """Every result JSON of ``dataset`` in ``results`` that holds a history."""
    found = []
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        if name.startswith(dataset + "-") and name.endswith(".json"):
            r = read_json(os.path.join(results, name))
            if "history" in r:
                found.append(r)
    return found
