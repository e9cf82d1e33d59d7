"""The figures: Figure 3 (VampPrior against K, IOP beside it), and the validation
curves with where early stopping would have stopped each run."""
import math
import os

import numpy as np

from autograd_lite.files import save_png
from experiments.grid import METHODS, paper_k
from experiments.results import write_json


def _save(fig, path, dpi):
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_png(fig, path, dpi=dpi)


def figure3(results, dataset, path):
    """VampPrior's test log-likelihood against K (mean ± std over seeds) with IOP's as a
    dashed line (its estimate) and a dotted line (exact); writes ``path`` (PNG) and
    the numbers beside it (JSON)."""
    from matplotlib.figure import Figure  # no pyplot: nothing global to close

    default_k = paper_k(dataset)
    vamp, iop = {}, []
    for r in results.values():
        if r["dataset"] == dataset and r["method"] == "vamp":
            vamp.setdefault(r["components"] or default_k, []).append(r["log_likelihood"])
        elif r["dataset"] == dataset and r["method"] == "iop":
            iop.append(r)
    if not vamp:  # nothing to draw: the figure and its numbers on file stay as they are
        raise ValueError(f"no VampPrior result of {dataset} to draw; {path} and its JSON are "
                         "left as they were")
    ks = sorted(vamp)
    mean = np.array([np.mean(vamp[k]) for k in ks])
    std = np.array([np.std(vamp[k], ddof=1) if len(vamp[k]) > 1 else 0.0 for k in ks])
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    ax.margins(x=0.08)  # room for the last K's "n=" label
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8)  # below: off the bars
    _save(fig, path, dpi=120)
    write_json(os.path.splitext(path)[0] + ".json", numbers)
    return numbers


def settings_label(result):
    """The step size (and VampPrior's start and K, IOP's place of T's dropout when not
    the default) of a run, as a legend label."""
    c = result["config"]
    label = f"lr = {c['lr']:g}"
    if result["method"] == "vamp":
        label += f", {c['pseudo_init']}, K = {c['components']}"
    if result["method"] == "iop" and c.get("density_ratio_dropout", "every") != "every":
        label += f", T's dropout {c['density_ratio_dropout']}"
    return label


def stopping_point(history, patience):
    """Where early stopping with ``patience`` would have stopped a run that trained
    on: (stop epoch, best epoch by then, its validation ELBO), from the recorded
    curve; the stop epoch is None if the patience never ran out.  A patience of 0
    never stops, as with ``train --patience 0``."""
    if patience < 0:
        raise ValueError(f"a patience must be non-negative (got {patience})")
    patience = patience or math.inf
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
    said = f"{patience} (never stops)" if patience == 0 else patience
    rows = [f"| run | epochs | best epoch | best valid ELBO | patience {said} stops at | "
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
    """One panel per method, one line per run: the validation ELBO of every epoch after
    the warm-up.  Colour: the step size, the same in every panel; line style: the
    method's other settings; one legend entry per candidate, with its seeds."""
    from matplotlib.figure import Figure  # no pyplot: nothing global to close

    methods = [m for m in METHODS if any(r["method"] == m for r in found)]
    colours = {lr: f"C{i}" for i, lr in enumerate(sorted({r["config"]["lr"] for r in found}))}
    fig = Figure(figsize=(5.5 * len(methods), 4))
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, method in zip(axes[0], methods):
        runs_here = sorted(((settings_label(r), r) for r in found if r["method"] == method),
                           key=lambda lr: (lr[1]["config"]["lr"], lr[0], lr[1]["seed"]))
        seeds, styles, values, named_already = {}, {}, [], set()
        for label, r in runs_here:
            seeds.setdefault(label, []).append(str(r["seed"]))
        for label, r in runs_here:
            h = r["history"]
            keep = [i for i, beta in enumerate(h["beta"]) if beta >= 1.0]
            epochs = [h["epoch"][i] for i in keep]
            valid = [h["valid_elbo"][i] for i in keep]
            values += valid
            rest = label.partition(",")[2]  # the settings other than the step size
            style = styles.setdefault(rest, ("-", "--", ":", "-.")[len(styles) % 4])
            named = f"{label} (seeds {', '.join(seeds[label])})"  # one entry per candidate
            ax.plot(epochs, valid, lw=0.6, alpha=0.75, color=colours[r["config"]["lr"]], ls=style,
                    label=None if named in named_already else named)
            named_already.add(named)
        if values:
            low, high = np.percentile(values, [5, 100])
            ax.set_ylim(low - 0.1 * (high - low), high + 0.05 * (high - low))
        ax.set_title(f"{found[0]['dataset']}: {method}")
        ax.set_xlabel("epoch (after the warm-up)")
        ax.set_ylabel("validation ELBO (1 sample per point)")
        ax.legend(fontsize=6, loc="lower right")
    _save(fig, path, dpi=110)
