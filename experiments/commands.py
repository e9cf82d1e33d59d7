"""The experiment commands: ``table2``, ``select``, ``curves``, ``figure3``, ``readme``
and ``run``, added to cli.py's parser by ``add_commands``, with their option checks."""
import os
import shlex
import sys

import autograd_lite as ag
import datasets
import iopvae
from autograd_lite.files import atomic_write, check_folder, folder_lock, png_path
from experiments import runs
from experiments.figures import draw_curves, figure3, stopping_table
from experiments.grid import (
    GRID_FIXED,
    METHODS,
    Run,
    as_settings,
    diverged_path,
    grid,
    normalize_finished,
    paper_k,
    parse_settings,
    run_one,
)
from experiments.readme import fill_readme, readme_tables
from experiments.results import load_results, read_results_folder, write_json
from experiments.selection import (
    candidates,
    read_selection,
    refuse_other_selection,
    select,
    selected_settings,
    selection_path,
    selection_table,
)
from experiments.tables import table
from experiments.workers import (
    SINGLE_THREAD,
    diverged_runs,
    pending_runs,
    run_command,
    run_grid,
    stop_with_parent,
)


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
    for option in ("components", "methods", "datasets", "lrs", "pseudo_inits",
                   "density_ratio_dropouts"):
        values = getattr(args, option, None)
        if isinstance(values, list) and len(set(values)) < len(values):
            raise ValueError(f"--{option.replace('_', '-')} {' '.join(map(str, values))}: a "
                             "value given twice would train the same runs twice")
    ag.backend_name()  # a bad AUTOGRAD_LITE_BACKEND: one line here, not in every worker
    for option, folder in (("--out", args.out), ("--results", args.results)):
        check_folder(option, folder, writable=False)  # read-only: refused if runs are due


def _config_values(args):
    """The training options given on the command line (the rest keep Config's defaults),
    after ``check_options``."""
    check_options(args)
    args.data_dir = args.data_dir or ""
    values = {k: v for k, v in runs.config_options_given(args).items()
              if k not in GRID_FIXED + ("data_dir",)}
    config = runs.Config(**values).validate()
    runs.check_sizes(config, 784, [("--samples", args.samples),  # 784: the largest data
                                   ("--tight-samples", args.tight_samples)])
    return values


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
            print_bytes(f"{env} {shlex.join(run_command(run, args, values, ('iopvae',)))}")
        return False
    run_grid(todo, args, values)
    return True


def print_bytes(line):
    """``line`` on stdout as the bytes it was given as: a path that is not UTF-8 (held by
    Python as surrogates) comes out as its own bytes, so that a command run as printed
    writes where this one would (not into ``x-\\udcff``)."""
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        return print(line)
    sys.stdout.flush()
    out.write(os.fsencode(line) + b"\n")
    out.flush()


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
    normalize_finished(grid_runs, args.out, args.results)
    found = results_of(grid_runs, args, values, "table")
    text = table(found)
    print(f"\nTest log-likelihood (importance sampling; mean ± std over seeds; bold: best or "
          f"not different from it, Welch t-test at 5 %, on S = {args.samples})\n")
    print(text)
    try:
        write_json(os.path.join(args.results, "table2.json"),
                   {"markdown": text, "runs": [r.name for r in found]})
    except OSError as exc:  # finished runs in a read-only folder: the table is printed
        print(f"warning: {exc}; the table is printed above", file=sys.stderr)


def results_of(todo, args, values, where):
    """The results of the runs ``todo`` once the grid has run them, by run, but for the
    runs that diverged under these settings: those are said, and left out of the
    ``where`` (the table, the figure), whatever result an earlier, shorter training of
    theirs left in ``--results``."""
    diverged = diverged_runs(todo, args.results, values, args.data_dir)
    if diverged:
        print(f"not in the {where}, diverged: {', '.join(r.name for r in diverged)} (their "
              f"{', '.join(os.path.basename(diverged_path(r, args.results)) for r in diverged)}"
              " say where; delete one to train its run again)")
    return load_results([r for r in todo if r not in diverged], args.results, args.data_dir)


def command_figure3(args):
    ks = [0 if k == paper_k(args.dataset) else k for k in args.components]
    if len(set(ks)) < len(ks) and len(set(args.components)) == len(ks):
        raise ValueError(f"--components {' '.join(map(str, args.components))}: 0 stands for "
                         f"the paper's K = {paper_k(args.dataset)} on {args.dataset}, given "
                         "twice then")
    path = png_path("--figure", args.figure or os.path.join(
        os.path.dirname(os.path.normpath(args.results)), f"figure3_{args.dataset}.png"))
    check_folder("--figure", os.path.dirname(os.path.abspath(path)))
    values, settings = _config_values(args), None
    if args.selected:
        values, settings = selected_settings(args.results, args.dataset, values,
                                             ["vamp", "iop"])
    grid_runs = (grid([args.dataset], ["vamp"], args.seeds, ks, settings)
                 + grid([args.dataset], ["iop"], args.seeds, settings=settings))
    if not _run_or_print(grid_runs, args, values):
        return
    numbers = figure3(results_of(grid_runs, args, values, "figure"), args.dataset, path)
    print(f"wrote {path}: VampPrior K = {numbers['K']}")


CANDIDATE_DEFAULTS = {"pseudo_inits": ("vamp", ["uniform", "constant"]),  # select's options
                      "density_ratio_dropouts": ("iop", ["every"])}       # for one method


def command_select(args):
    for name, instead in (("lr", "--lrs"), ("pseudo_init", "--pseudo-inits"),
                          ("density_ratio_dropout", "--density-ratio-dropouts")):
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to select, which "
                             f"tries the candidates of {instead}")
    for option, (method, default) in CANDIDATE_DEFAULTS.items():
        if getattr(args, option) is not None and method not in args.methods:
            print(f"warning: --{option.replace('_', '-')} applies to {method} alone, which "
                  "--methods leaves out; ignored", file=sys.stderr)
        setattr(args, option, getattr(args, option) or default)
    cands = {m: candidates(m, args.lrs, args.pseudo_inits, args.density_ratio_dropouts)
             for m in args.methods}
    ks = (0 if args.components == paper_k(args.dataset) else args.components,)
    todo = grid([args.dataset], args.methods, args.seeds, ks, cands)
    values = _config_values(args)
    path = selection_path(args.results, args.dataset)
    earlier = read_selection(path) if os.path.exists(path) else None
    refuse_other_selection(earlier, args.dataset, values, args.seeds)  # before any training
    if not _run_or_print(todo, args, values):
        return
    found = load_results(todo, args.results, args.data_dir)
    diverged = diverged_runs(todo, args.results, values, args.data_dir)
    with folder_lock(args.results):  # a select of other methods ending now: both picks kept
        earlier = read_selection(path) if os.path.exists(path) else None
        doc = select(found, args.dataset, values, args.seeds,
                     args.components or paper_k(args.dataset), earlier, diverged)
        write_json(path, doc)
    print(selection_table(doc))
    print(f"\nwrote {path}; `table2 --selected` and `figure3 --selected` train with the picks")


def command_curves(args):
    runs.non_negative("--compare-patience", args.compare_patience)
    path = png_path("--figure", args.figure or os.path.join(
        os.path.dirname(os.path.normpath(args.results)), f"{args.dataset}_curves.png"))
    found = [r for r in read_results_folder(args.results, args.dataset)
             if (not args.match or any(m in r["run"] for m in args.match))
             and (not args.seeds or r["seed"] in args.seeds)]
    if not found:
        raise ValueError(f"no {args.dataset} results with a history in {args.results}")
    others = sorted({r["method"] for r in found} - set(METHODS))
    if others:  # a grid never makes them; a panel per method would have none to draw
        raise ValueError(f"{args.results}: results of {', '.join(others)}, which curves does "
                         f"not draw (it draws {', '.join(METHODS)}); move them away")
    draw_curves(found, path)
    print(stopping_table(found, args.compare_patience))
    print(f"\nwrote {path}")


def command_run(args):
    stop_with_parent()
    for option, folder in (("--out", args.out), ("--results", args.results)):
        check_folder(option, folder)
    run = Run(args.dataset, args.method, args.seed, args.components,
              as_settings(parse_settings(args.settings)))
    run_one(run, _config_values(args), args.out, args.results, args.samples,
            args.tight_samples, args.data_dir)


def command_readme(args):
    if not os.path.isfile(args.readme):
        raise ValueError(f"--readme {args.readme}: not a file")
    if not os.path.isdir(args.results):
        raise ValueError(f"--results {args.results}: not a folder")
    with open(args.readme, encoding="utf-8") as f:
        text = f.read()
    try:
        filled = fill_readme(text, readme_tables(args.results), args.allow_fewer_rows)
    except ValueError as exc:
        raise ValueError(f"{args.readme} not updated: {exc}") from None
    atomic_write(args.readme, lambda f: f.write(filled), mode="w")
    print(f"{args.readme}: {'updated' if filled != text else 'already up to date'}")


def add_commands(sub):
    """The ``table2``, ``select``, ``curves``, ``figure3``, ``readme`` and ``run``
    sub-commands, added to cli.py's parser."""
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
    c.add_argument("--pseudo-inits", nargs="+", default=None,
                   choices=iopvae.VampPrior.PSEUDO_INITS,
                   help="candidate starts of VampPrior's pseudo-inputs (default: uniform "
                        "constant)")
    c.add_argument("--density-ratio-dropouts", nargs="+", default=None,
                   choices=runs.CHOICES["density_ratio_dropout"],
                   help="candidate places of IOP's dropout in T (default: every)")
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
    m.add_argument("--allow-fewer-rows", action="store_true",
                   help="let a table lose rows, or a cell runs (else refused: results are "
                        "missing)")
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
