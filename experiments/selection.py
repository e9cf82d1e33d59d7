"""The settings chosen on validation, never on test: the candidates of each method,
the pick (the best mean validation log-likelihood) and the selection file."""
import os

import numpy as np

from experiments import runs
from experiments.results import check_number, invalid, read_json

SCORE = ("mean over the seeds of the validation log-likelihood (importance sampling, "
         "S = 10 as in the test column) of each run's kept weights; for IOP the estimate "
         "with log N(z) + T(z) as the log prior")


def candidates(method, lrs, pseudo_inits, dropouts=("every",)):
    """The candidate settings of ``method``: each step size and, for VampPrior, each
    start of the pseudo-inputs; for IOP, each place of T's dropout (the default,
    ``every``, left out of the settings, so its runs keep their names)."""
    if method == "iop":
        return [{"lr": lr, **({} if d == "every" else {"density_ratio_dropout": d})}
                for lr in lrs for d in dropouts]
    inits = pseudo_inits if method == "vamp" else [None]
    return [{"lr": lr, **({"pseudo_init": init} if init else {})}
            for lr in lrs for init in inits]


def selection_path(results, dataset):
    return os.path.join(results, f"{dataset}-selection.json")


PER_RUN = ("dataset", "method", "seed", "components", "data_dir")  # grid.GRID_FIXED, data_dir
SETTING_FIELDS = tuple(f for f in runs.Config.__dataclass_fields__ if f not in PER_RUN)
METHODS = runs.CHOICES["method"]


def _checked_values(values, where):
    """``values`` (Config values of a selection), refused naming ``where`` and the field
    unless each is a Config field a selection may hold, of its type and in range."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} is {values!r:.60}, not an object of settings")
    unknown = [k for k in values if k not in SETTING_FIELDS]
    if unknown:
        raise ValueError(f"{where} holds {', '.join(map(repr, unknown))}, which a selection "
                         f"cannot set (it may set: {', '.join(SETTING_FIELDS)})")
    try:
        runs.Config(**values).checked_types().validate()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return values


def check_selection(doc):
    """ValueError naming the first field of a selection file that is missing or wrong."""
    _checked_values(doc.get("config"), "config")
    seeds = doc.get("seeds")
    if not (isinstance(seeds, list) and seeds
            and all(type(s) is int and s >= 0 for s in seeds)):
        raise ValueError(f"seeds is {seeds!r:.60}, not a list of seeds")
    methods = doc.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"methods is {methods!r:.60}, not an object of picks per method")
    for method, entry in methods.items():
        if method not in METHODS:
            raise ValueError(f"methods holds {method!r:.40}, not one of {', '.join(METHODS)}")
        if not isinstance(entry, dict):
            raise ValueError(f"methods.{method} is {entry!r:.60}, not an object")
        _checked_values(entry.get("pick"), f"methods.{method}.pick")
        _checked_values({**doc["config"], **entry["pick"]}, f"methods.{method}.pick")
        cands = entry.get("candidates")
        if not isinstance(cands, list):
            raise ValueError(f"methods.{method}.candidates is {cands!r:.60}, not a list")
        for i, row in enumerate(cands):
            where = f"methods.{method}.candidates[{i}]"
            if not isinstance(row, dict):
                raise ValueError(f"{where} is {row!r:.60}, not an object")
            _checked_values(row.get("settings"), where + ".settings")
            for key in ("mean", "std"):
                check_number(where, key, row.get(key))
            if not isinstance(row.get("runs"), list):
                raise ValueError(f"{where}.runs is {row.get('runs')!r:.60}, not a list")
        for i, row in enumerate(entry.get("diverged", [])):
            where = f"methods.{method}.diverged[{i}]"
            if not isinstance(row, dict) or not isinstance(row.get("runs"), list):
                raise ValueError(f"{where} is {row!r:.60}, not an object with its runs")
            _checked_values(row.get("settings"), where + ".settings")
    return doc


def read_selection(path):
    """The selection file ``path``, checked (``check_selection``): one line naming the
    file and the field when it is damaged or hand-edited wrongly."""
    doc = read_json(path, what="selection file")
    try:
        return check_selection(doc)
    except ValueError as exc:
        raise ValueError(f"selection file {path} is not usable ({exc}); fix it or move it "
                         "away and run `select` again") from None


def select(found, dataset, config_values, seeds, components, earlier=None, diverged=None):
    """Per method, every candidate's validation scores and the pick: the candidate with
    the best mean (``SCORE``).  The test set plays no part.  ``earlier``: a selection
    made before with the same options, whose other methods are kept, and whose other
    candidates of the same methods (VampPrior's at the same K) stay in the running, so
    that a screen may go in stages (step sizes first, then other settings at the picked
    step size).  ``diverged``: the records of runs that diverged, by run; a candidate
    with one is listed apart and never picked."""
    refuse_other_selection(earlier, dataset, config_values, seeds)
    by_candidate, failed = {}, {}
    for run, record in (diverged or {}).items():
        failed.setdefault(run.method, {}).setdefault(run.settings, []).append(record["run"])
    for run, r in found.items():
        check_scores(run, r)
        if run.settings not in failed.get(run.method, {}):
            by_candidate.setdefault(run.method, {}).setdefault(run.settings, []).append(r)
    methods = {}
    for method in [*by_candidate, *(m for m in failed if m not in by_candidate)]:
        cands, rows = by_candidate.get(method, {}), []
        for settings, rs in cands.items():
            scores = [r["valid_log_likelihood"] for r in rs]
            rows.append({"settings": dict(settings), "runs": [r["run"] for r in rs],
                         "valid_log_likelihood": scores, "mean": float(np.mean(scores)),
                         "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                         "invalid": any(map(invalid, rs))})
            if method == "vamp":  # VampPrior's pseudo-inputs stuck outside [0, 1] at the end
                rows[-1]["pseudo_inputs_outside"] = [r["pseudo_inputs_outside"] for r in rs]
        gone = _earlier_entry(earlier, method, components)
        tried = [row["settings"] for row in rows] + [dict(s) for s in failed.get(method, {})]
        rows += [row for row in gone.get("candidates", []) if row["settings"] not in tried]
        valid = [row for row in rows if not row["invalid"]]
        if not valid:
            raise ValueError(f"every {method} candidate has an impossible result (above 0 "
                             "on binary data) or diverged: none can be picked")
        best = max(valid, key=lambda row: row["mean"])
        methods[method] = {"pick": best["settings"], "candidates": rows,
                           "diverged": [{"settings": dict(settings), "runs": names}
                                        for settings, names in failed.get(method, {}).items()]
                           + [row for row in gone.get("diverged", [])
                              if row["settings"] not in tried]}
        if method == "vamp":
            methods[method]["components"] = components
    kept = {m: e for m, e in (earlier or {}).get("methods", {}).items() if m not in methods}
    return {"dataset": dataset, "score": SCORE, "seeds": list(seeds),
            "config": config_values, "methods": {**kept, **methods}}


def check_scores(run, result):
    """Refuse, naming the run, a result without the numbers a selection reads (one made
    by older code, before they were measured)."""
    needed = ("valid_log_likelihood",) + (("pseudo_inputs_outside",) if run.method == "vamp"
                                          else ())
    for key in needed:
        if key not in result:
            raise ValueError(f"the result {run.name}.json has no {key} (it was made by older "
                             "code): delete it to evaluate the run again")
        check_number(f"the result {run.name}.json", key, result[key])


def _earlier_entry(earlier, method, components):
    """The entry of ``method`` in the ``earlier`` selection whose candidates stay in the
    running: none for VampPrior at another K (its candidates would not compare)."""
    entry = (earlier or {}).get("methods", {}).get(method, {})
    if method == "vamp" and entry.get("components") != components:
        return {}
    return entry


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
        for row in entry.get("diverged", []):
            tags = ", ".join(f"{k} = {v}" for k, v in row["settings"].items())
            rows.append(f"| {method} | {tags} | diverged: {', '.join(row['runs'])} | | | |")
    return "\n".join(rows)


def selected_settings(results, dataset, given, methods):
    """(config values, settings per method) for ``--selected``: the options the
    selection ran with, with ``given`` on top (a given option that differs is refused:
    the picks hold for the options they were made with), and each method's pick.
    A method in ``methods`` without a pick is refused, never trained with defaults."""
    path = selection_path(results, dataset)
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: run `select --dataset {dataset}` first")
    doc = read_selection(path)
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
