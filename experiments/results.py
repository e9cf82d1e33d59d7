"""The result files of the grid: one JSON per run, read and checked (complete, of
this run, of the data's split now, made with the settings asked), written whole or
not at all."""
import dataclasses
import json
import math
import os

from autograd_lite.files import atomic_write, read_json_file
from experiments import checkpoints, run_commands, runs

RESULT_KEYS = ("run", "dataset", "method", "seed", "components", "config", "epochs_trained",
               "best_epoch", "finished", "samples", "tight_samples", "test_elbo",
               "log_likelihood", "log_likelihood_tight")
IOP_KEYS = ("log_likelihood_exact", "log_likelihood_exact_tight", "log_normalizer")


def read_json(path, hint="", what="result file"):
    """The JSON object in the result file ``path``; one line naming the file (and
    ``hint``) when it is not one (truncated, NaN or 1e400, not an object, a FIFO)."""
    try:
        obj = read_json_file(path, what)
        if not isinstance(obj, dict):
            raise ValueError(f"{what} {path} is not usable (not a JSON object)")
    except ValueError as exc:
        raise ValueError(f"{exc}{hint}") from None
    return obj


def number(value):
    """True for a finite int or float (not a bool, not a string)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_number(where, key, value, none=False):
    """``value``, refused in one line naming ``where`` and ``key`` unless a finite
    number (or None, with ``none``)."""
    if not (number(value) or (none and value is None)):
        raise ValueError(f"{where}: {key} is {value!r:.60}, not a finite number")
    return value


NUMBER_KEYS = ("test_elbo", "log_likelihood", "log_likelihood_tight", "log_normalizer",
               "log_likelihood_exact", "valid_log_likelihood")
INT_KEYS = ("seed", "epochs_trained", "best_epoch", "samples", "tight_samples")


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
    check_split(result, run, split_id, path)
    try:
        check_result(result, run)
    except ValueError as exc:
        raise ValueError(f"result file {path} is not usable ({exc}); delete it to evaluate "
                         "the run again") from None
    return result


def check_config(config):
    """ValueError unless ``config`` (of a result or a divergence record) holds Config
    fields alone, each of its type."""
    if not isinstance(config, dict):
        raise ValueError(f"config is {config!r:.60}, not an object")
    try:
        runs.Config(**config).checked_types()
    except TypeError as exc:
        raise ValueError(f"its config: {exc}") from None


def check_of_run(record, run):
    """ValueError unless the result or divergence ``record`` names ``run``."""
    if tuple(record.get(k) for k in ("run", "dataset", "method", "seed")) != (
            run.name, run.dataset, run.method, run.seed):
        raise ValueError(f"it is of run {record.get('run')!r:.60}, not of {run.name}")


def check_result(result, run):
    """ValueError unless ``result`` is a complete result of ``run``."""
    check_config(result.get("config", {}))
    missing = [k for k in RESULT_KEYS + (IOP_KEYS if result.get("method") == "iop" else ())
               if k not in result]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    check_result_types(result)
    check_of_run(result, run)


def check_split(record, run, split_id, path):
    """Refuse a result or divergence record made on another split than ``split_id``, the
    data set's now: its test set is other images (None: not checked)."""
    if split_id is not None and record.get("split_id") != split_id:
        raise ValueError(f"{path} was made on split {str(record.get('split_id'))[:40]}, but "
                         f"{run.dataset} is split {split_id} now; remove it (and its run "
                         "folder) to run it again on this split")


def check_result_types(result):
    """ValueError naming the first field of ``result`` of the wrong type: numbers that
    are not finite numbers, counts that are not integers, ``finished`` not true or false."""
    for key in NUMBER_KEYS:
        if key in result:
            check_number("its numbers", key, result[key])
    if "log_likelihood_exact_tight" in result:
        check_number("its numbers", "log_likelihood_exact_tight",
                     result["log_likelihood_exact_tight"], none=True)
    for key in INT_KEYS:
        if key in result and (type(result[key]) is not int or result[key] < 0):
            raise ValueError(f"{key} is {result[key]!r:.60}, not a count")
    if "finished" in result and not isinstance(result["finished"], bool):
        raise ValueError(f"finished is {result['finished']!r:.60}, not true or false")


def current_split_ids(todo, data_dir=""):
    """The split id of each data set of the runs ``todo``, as the data load now."""
    return {d: checkpoints._load_data(d, data_dir).split_id
            for d in sorted({r.dataset for r in todo})}


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
    return any(run_commands.impossible(result[key], result.get("likelihood"))
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
    """Every result JSON of ``dataset`` in ``results`` that holds a history, each
    checked (``check_curve``)."""
    found = []
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        if name.startswith(dataset + "-") and name.endswith(".json"):
            path = os.path.join(results, name)
            r = read_json(path)
            if "history" in r:
                try:
                    check_curve(r)
                except ValueError as exc:
                    raise ValueError(f"result file {path} is not usable ({exc})") from None
                found.append(r)
    return found


CURVE_COLUMNS = ("epoch", "beta", "valid_elbo")


def check_curve(r):
    """ValueError naming the first field of a result that ``curves`` cannot draw: its
    name, method, seed, step size (VampPrior's start and K) and a history of equal,
    non-empty columns of finite numbers."""
    for key, kind in (("run", str), ("dataset", str), ("method", str), ("seed", int),
                      ("config", dict), ("history", dict)):
        if type(r.get(key)) is not kind:
            raise ValueError(f"{key} is {r.get(key)!r:.60}, not a {kind.__name__}")
    if r["method"] not in runs.CHOICES["method"]:
        raise ValueError(f"method is {r['method']!r:.60}")
    check_number("its config", "lr", r["config"].get("lr"))
    if r["method"] == "vamp":
        check_number("its config", "components", r["config"].get("components"))
        if not isinstance(r["config"].get("pseudo_init"), str):
            raise ValueError(f"config: pseudo_init is {r['config'].get('pseudo_init')!r:.60}")
    h = r["history"]
    lengths = set()
    for key in CURVE_COLUMNS:
        column = h.get(key)
        if not isinstance(column, list) or not column:
            raise ValueError(f"history: {key} is {column!r:.60}, not a list of numbers")
        for value in column:
            check_number("history", key, value)
        lengths.add(len(column))
    if len(lengths) > 1:
        raise ValueError(f"history: the columns {', '.join(CURVE_COLUMNS)} differ in length")
