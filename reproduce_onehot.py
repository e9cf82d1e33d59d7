"""Reproduce Figures 1 and 2 of the paper on OneHot, from one command.

    python reproduce_onehot.py                 # the four methods, default length
    python reproduce_onehot.py --epochs 1000   # the paper's full 1,000 epochs
    python reproduce_onehot.py --quick         # a smoke run (under a minute)

Trains the standard VAE, AVB, VampPrior (K = 50, pseudo-inputs started
uniformly in [0, 1]) and the implicit optimal prior on OneHot with the paper's
setup (Sec. 5.2), then writes into ``--out``:

- ``figure1_posteriors.png``: samples of q(z|x) for the test data, coloured by
  which one-hot vector x is (Figure 1);
- ``figure2_elbo.png``: the validation ELBO every ``FIGURE2_EVERY`` epochs after the
  warm-up (each point a mean over ``VALID_SAMPLES`` posterior samples of every
  validation point, so the curve shows the trend, not one sample's noise), with the
  optimum -ln 4 dashed (Figure 2).  AVB's and IOP's ELBOs are estimates; for
  IOP the exact ELBO under its true prior, the aggregated posterior of the
  training set, is drawn beside the estimate (OneHot makes it cheap);
- ``figure_density_ratio.png`` and ``density_ratio.json`` (beyond the paper): IOP's
  learned T(z) beside the true log q(z)/N(z) of the training set's aggregated
  posterior, and their difference, on a grid of the 2-D latent space;
- ``summary.json`` and a printed table: per method, the final (estimated)
  validation ELBO, E_q[log p(x|z)], log p(x) by Monte Carlo over 20,000
  samples of the model's own prior (for IOP the aggregated posterior, sampled
  ancestrally), and the importance-sampled log p(x) with S = 1000 (for IOP
  both the paper's estimate, log N(z) + T(z) as the log prior, and the exact
  value with the aggregated posterior as the prior, plus log Z =
  log E_N(0,I)[exp T(z)], also by annealed importance sampling).  The prior Monte
  Carlo and exact numbers show which methods really separated the posteriors,
  whatever their estimated ELBO says.

The methods train in parallel worker processes (``--jobs``), one BLAS thread each.
A last table gives each method's CPU and wall seconds: training (Algorithm 1),
Figure 2's evaluation of every round, and the final evaluation; then plotting.
"""
import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import threading
import time

from autograd_lite.files import atomic_write, save_png

OPTIMUM = -math.log(4)
ALL_METHODS = ("vae", "avb", "vamp", "iop")
TITLES = {"vae": "(a) Standard VAE", "avb": "(b) AVB", "vamp": "(c) VAE with VampPrior",
          "iop": "(d) Proposed (implicit optimal prior)"}
DEFAULT_EPOCHS = 500
QUICK = {"epochs": 4, "warmup": 2, "prior_samples": 2000, "is_samples": 20}
VALID_SAMPLES = 50       # posterior samples per validation point behind each Figure 2 point
FIGURE2_EVERY = 5        # epochs between Figure 2's points (81 per curve over 400 epochs)
TEST_IS_SAMPLES = 1000   # importance samples of the summary's log p(x) (default)
# IOP's log Z by annealed importance sampling: plenty in 2-D, about 3 s at 500 hidden units
AIS_SETTINGS = {"chains": 200, "temperatures": 200, "leapfrog": 1}


def figure2_trainer(base, train_x, valid_x, warmup, seed, timer):
    """A subclass of ``base`` (a Trainer class) that records Figure 2's point every
    ``FIGURE2_EVERY`` rounds from the end of the warm-up on (the figure starts there;
    a point per epoch would draw the same curves at five times the cost): the validation ELBO
    averaged over ``VALID_SAMPLES`` posterior draws per point and, for IOP, the exact
    ELBO under the aggregated posterior of ``train_x``.  Its own random stream, so
    training is the same with or without it; ``timer`` adds up the time it takes."""
    import autograd_lite as ag

    class Figure2Trainer(base):
        def measure(self, record):
            report(self.config.method, 0, record["epoch"] / self.epochs)
            if record["epoch"] < warmup or (record["epoch"] - warmup) % FIGURE2_EVERY:
                return
            with timer:
                record.update(figure2_point(self.model, train_x, valid_x, measure_rng))

    measure_rng = ag.default_rng(seed + 10_000)
    return Figure2Trainer


def figure2_point(model, train_x, valid_x, rng):
    """The validation ELBO (estimated for AVB and IOP) of ``VALID_SAMPLES`` draws per
    validation point, all in one batch; for IOP also the exact ELBO under the aggregated
    posterior of ``train_x`` (Eqs. 2, 6, 8), so both curves of panel (d) come from one
    read of the device."""
    import autograd_lite as ag
    import estimators
    import iopvae

    rows = ag.xp().concatenate([valid_x] * VALID_SAMPLES)
    estimated = iopvae.elbo(model, rows, rng, batch_size=rows.shape[0])
    if model.name != "iop":
        return {"figure2_elbo": ag.read_numbers(estimated)[0]}
    components = iopvae.aggregated_posterior_components(model, train_x)
    exact = estimators.exact_aggregated_elbo(model, valid_x, components, VALID_SAMPLES, rng,
                                         batch_size=1000)
    estimated, exact = ag.read_numbers(estimated, exact)
    return {"figure2_elbo": estimated, "figure2_elbo_exact": exact}


class Stopwatch:
    """CPU and wall seconds spent inside ``with`` blocks, added up."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def __enter__(self):
        self.started = (time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        self.cpu += time.process_time() - self.started[0]
        self.wall += time.perf_counter() - self.started[1]

    def seconds(self):
        return {"cpu": self.cpu, "wall": self.wall}


# CPU seconds of each method's training (Figure 2's points in it) at 500 epochs and of its
# final evaluation (results/onehot/summary.json): the weights of the whole job's progress
SECONDS = {"vae": (73, 14), "avb": (386, 1), "vamp": (93, 14), "iop": (346, 45)}
DONE = None  # per method, the fractions of its training and final evaluation done


def _share(done):
    global DONE
    DONE = done


def report(method, part, fraction):
    """Tell the whole job's progress how far ``method``'s training (``part`` 0) or final
    evaluation (1) is."""
    if DONE is not None:
        DONE[2 * ALL_METHODS.index(method) + part] = fraction


class FinalParts:
    """The parts of a method's final evaluation, each said as it starts (its last one
    can take minutes), and reported to the whole job's progress as it ends."""

    def __init__(self, method, parts):
        self.method, self.parts, self.started = method, parts, 0

    def __call__(self, what):
        report(self.method, 1, self.started / self.parts)
        self.started += 1
        self.log(f"final evaluation {self.started}/{self.parts}: {what}")

    def log(self, line):
        print(f"[{self.method}] {line}", flush=True)

    def progress(self, what, total):
        from experiments import runs
        return runs.Progress(what, total, log=self.log)


def train_one(method, epochs, warmup, seed, prior_samples, is_samples=TEST_IS_SAMPLES,
              posterior_samples=1):
    """Train one method on OneHot; return its history, posterior samples, scores and
    the CPU and wall seconds of its parts (training, Figure 2's evaluation, the final
    evaluation)."""
    import numpy as np

    import autograd_lite as ag
    import datasets
    from experiments import runs

    data = datasets.load("onehot")
    config = runs.Config(dataset="onehot", method=method, epochs=epochs, warmup=warmup,
                         patience=0, seed=seed)
    prefix = f"[{method}] "
    train, test, valid = (ag.as_array(x) for x in (data.train, data.test, data.valid))
    training, figure2, final = Stopwatch(), Stopwatch(), Stopwatch()
    trainer_class = figure2_trainer(runs.Trainer, train, valid, warmup, seed, figure2)
    trainer = trainer_class(config, data, out_dir=None,
                            log=lambda line: print(prefix + line, flush=True))
    with training:
        history = trainer.train()
    with final:
        scores = final_scores(trainer.model, data, trainer.rng, prior_samples, is_samples,
                              posterior_samples)
    report(method, 1, 1.0)
    timing = {"training": {k: v - figure2.seconds()[k] for k, v in training.seconds().items()},
              "figure2": figure2.seconds(), "final": final.seconds()}
    return {"method": method, "history": history,
            "labels": np.tile(data.test.argmax(axis=1), posterior_samples).tolist(),
            "elbo_is_estimate": bool(trainer.model.has_density_ratio),
            "seconds": training.wall + final.wall, "timing": timing, **scores}


def final_scores(model, data, rng, prior_samples, is_samples, posterior_samples):
    """Figure 1's posterior samples of the test data and the summary's scores."""
    import autograd_lite as ag
    import estimators
    import iopvae

    train, test, valid = (ag.as_array(x) for x in (data.train, data.test, data.valid))
    part = FinalParts(model.name, 2 + model.explicit_posterior + 2 * (model.name == "iop"))
    with iopvae.evaluation(model):
        x = ag.Tensor(ag.xp().concatenate([test] * posterior_samples))
        z = model.posterior_sample(x, rng)
    part(f"validation ELBO, {VALID_SAMPLES} samples per point")
    valid_reconstruction, valid_kl = iopvae.mean_elbo_terms(model, valid, rng,
                                                            samples=VALID_SAMPLES)
    part(f"log p(x) by Monte Carlo over {prior_samples:,} prior samples")
    log_px = estimators.prior_log_likelihood(model, test, prior_samples, rng, data=train)
    scores = {}
    pairs = len(test) * is_samples
    if model.explicit_posterior:
        part(f"log p(x) by importance sampling, S = {is_samples}")
        scores["test_log_px_is"] = float(iopvae.test_log_likelihood(
            model, test, is_samples, rng, progress=part.progress("importance sampling",
                                                                 pairs)).mean())
    if model.name == "iop":
        part(f"exact log p(x) by importance sampling, S = {is_samples}")
        components = iopvae.aggregated_posterior_components(model, train)
        scores["test_log_px_is_exact"] = float(exact_log_likelihoods(
            model, test, components, is_samples, rng,
            part.progress("exact importance sampling", pairs)).mean())
        part("log Z and the density ratio on a grid")
        scores["log_normalizer"] = float(estimators.density_ratio_log_normalizer(
            model, rng, components=components))
        scores["density_ratio"] = density_ratio_grid(model, components, rng)
        scores.update(annealed_log_normalizer(model, rng, scores["log_normalizer"]))
    return {"z": ag.to_numpy(z.data).tolist(),
            "valid_elbo": float(valid_reconstruction - valid_kl),
            "valid_reconstruction": float(valid_reconstruction),
            "test_log_px": float(log_px.mean()), **scores}


def annealed_log_normalizer(model, rng, plain):
    """IOP's log Z by annealed importance sampling (``AIS_SETTINGS``), its standard error and
    its value with half the temperatures, printed beside ``plain``, the Monte Carlo value of
    ``density_ratio_log_normalizer`` (importance sampling from (N(0, I) + q(z)) / 2)."""
    import estimators

    ais = estimators.density_ratio_log_normalizer_ais(model, rng, **AIS_SETTINGS)
    print(f"[{model.name}] log Z of N(z) exp T(z) by AIS: {ais['log_z']:.4f} ± "
          f"{ais['stderr']:.4f} (half the temperatures: {ais['log_z_half']:.4f}); Monte Carlo "
          f"from (N(0, I) + q(z)) / 2: {plain:.4f}", flush=True)
    return {"log_normalizer_ais": ais["log_z"], "log_normalizer_ais_stderr": ais["stderr"],
            "log_normalizer_ais_half": ais["log_z_half"]}


def density_ratio_grid(model, components, rng, extent=4.0, points=121, samples=20_000):
    """The density ratio trick seen at work, for the trained IOP model: on a square grid
    of OneHot's 2-D latent space, the learned T_psi(z) and the true log q(z)/N(z), with
    q(z) the exact aggregated posterior of the training set (Eq. 8, a mixture of the
    ``components``), and log q(z) itself to show where the data mass is.  At the
    optimum the two ratios agree (Eq. 14).  Also the means of both under z ~ q(z):
    E_q[T] is what IOP's ELBO uses (Eq. 15), E_q[log q/N] = KL(q(z) || N(0, I))."""
    import numpy as np

    import autograd_lite as ag
    import iopvae

    axis = np.linspace(-extent, extent, points)
    grid = np.stack([g.ravel() for g in np.meshgrid(axis, axis)], axis=1)  # row: (z1, z2)
    mu_n, logvar_n = components
    idx = rng.integers(0, mu_n.shape[0], samples)
    z_q = iopvae.reparameterize(ag.Tensor(mu_n[idx]), ag.Tensor(logvar_n[idx]),
                                iopvae.standard_normal(rng, (samples, 2)))
    values = {}
    for name, z in (("grid", ag.Tensor(ag.as_array(grid.astype(np.float32)))), ("q", z_q)):
        with iopvae.evaluation(model):
            t = model.density_ratio(z).data.astype(np.float64)
            log_n = iopvae.log_standard_normal(z).data.astype(np.float64)
        log_q = iopvae.log_aggregated_posterior(z.data, components)
        values[name] = ag.to_numpy_all({"T": t, "log_ratio": log_q - log_n, "log_q": log_q})
    shape, on_q = (points, points), values["q"]
    return {"axis": axis.tolist(),
            **{key: v.reshape(shape).tolist() for key, v in values["grid"].items()},
            "mean_T_under_q": float(on_q["T"].mean()),
            "kl_q_n": float(on_q["log_ratio"].mean()),
            "mean_abs_error_under_q": float(abs(on_q["T"] - on_q["log_ratio"]).mean())}


def exact_log_likelihoods(model, test, components, samples, rng, progress):
    """``estimators.exact_aggregated_log_likelihood`` of the rows of ``test``, a batch of
    100 rows at a time (its own batches: the same numbers as one call), each batch told
    to ``progress``."""
    import autograd_lite as ag
    import estimators
    import iopvae

    found = []
    for rows in iopvae.row_batches(test, 100):
        found.append(estimators.exact_aggregated_log_likelihood(model, rows, components,
                                                                samples, rng))
        progress(len(rows) * samples)
    return ag.xp().concatenate(found)


def _train_star(args):
    return train_one(*args)


def plot_figures(results, out, warmup):
    """Figure 1 (posterior samples) and Figure 2 (validation ELBO) as PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        z, labels = np.asarray(r["z"]), np.asarray(r["labels"])
        for k in range(4):
            pts = z[labels == k]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, color=colours[k],
                       label=f"x = e{k + 1}")
        ax.set_title(TITLES[r["method"]], fontsize=10)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0][0].legend(markerscale=4, fontsize=8, loc="upper left")
    fig.suptitle("Figure 1: samples of q(z|x) for the OneHot test data")
    fig.tight_layout()
    try:
        save_png(fig, os.path.join(out, "figure1_posteriors.png"), dpi=110)
    finally:
        plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results):
        points = [h for h in r["history"] if "figure2_elbo" in h]   # from the warm-up's end
        epochs = [h["epoch"] for h in points]
        ax.plot(epochs, [h["figure2_elbo"] for h in points], lw=1, label="validation ELBO" +
                (" (estimated)" if r["elbo_is_estimate"] else ""))
        if any("figure2_elbo_exact" in h for h in points):
            ax.plot(epochs, [h["figure2_elbo_exact"] for h in points], lw=1, color="tab:green",
                    label="exact ELBO, aggregated posterior prior")
        ax.axhline(OPTIMUM, ls="--", color="k", lw=1, label="optimum -ln 4")
        ax.set_title(TITLES[r["method"]], fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("ELBO")
    axes[0][0].set_ylim(-2.5, -1.0)
    fig.suptitle(f"Figure 2: validation ELBO on OneHot from epoch {warmup}, every "
                 f"{FIGURE2_EVERY} epochs ({VALID_SAMPLES} posterior samples per validation "
                 "point)")
    fig.tight_layout()
    try:
        save_png(fig, os.path.join(out, "figure2_elbo.png"), dpi=110)
    finally:
        plt.close(fig)


def plot_density_ratio(result, out, settings):
    """The density ratio figure, from IOP's ``density_ratio_grid``: the learned T(z), the
    true log q(z)/N(z) and their difference, with the regions holding 50% and 95% of
    q(z)'s mass outlined; and ``density_ratio.json``, the numbers under z ~ q(z)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = result["density_ratio"]
    axis = np.asarray(grid["axis"])
    t, log_ratio, log_q = (np.asarray(grid[k]) for k in ("T", "log_ratio", "log_q"))
    # the density levels whose upper sets hold 50% and 95% of the mass on the grid
    q = np.sort(np.exp(log_q).ravel())[::-1]
    mass = np.cumsum(q) * (axis[1] - axis[0]) ** 2
    levels = sorted(np.log(q[np.searchsorted(mass, p)]) for p in (0.5, 0.95))
    top = max(t.max(), log_ratio.max())
    panels = [(t, "learned T(z)", dict(cmap="viridis", vmin=top - 8, vmax=top)),
              (log_ratio, "true log q(z) / N(z)", dict(cmap="viridis", vmin=top - 8, vmax=top)),
              (t - log_ratio, "T(z) - log q(z) / N(z)", dict(cmap="RdBu_r", vmin=-3, vmax=3))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (values, title, style) in zip(axes, panels):
        image = ax.pcolormesh(axis, axis, values, shading="auto", **style)
        ax.contour(axis, axis, log_q, levels=levels, colors="k", linewidths=0.8,
                   linestyles=["--", "-"])
        radius = math.sqrt(-2 * math.log(0.05))          # T's other class, z0 ~ N(0, I): 95%
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, color="m", lw=1.2, ls=":"))
        fig.colorbar(image, ax=ax, extend="both")
        ax.set(title=title, xlabel="z1", ylabel="z2", aspect="equal")
    fig.suptitle(f"The density ratio trick on OneHot (IOP, {settings['epochs']} epochs)\n"
                 "black lines enclose 95% (dashed) and 50% of q(z), where T's z1 lie; "
                 "the dotted circle 95% of N(0, I), where its z0 lie")
    fig.tight_layout()
    try:
        save_png(fig, os.path.join(out, "figure_density_ratio.png"), dpi=110)
    finally:
        plt.close(fig)
    numbers = {"epochs": settings["epochs"], "seed": settings["seed"],
               **{k: v for k, v in grid.items() if not isinstance(v, list)}}
    atomic_write(os.path.join(out, "density_ratio.json"),
                 lambda f: json.dump(numbers, f, indent=2), mode="w")


def summarise(results, out, settings):
    """``summary.json`` and a printed table of the scores of every method."""
    keys = ("test_log_px_is", "test_log_px_is_exact", "log_normalizer", "log_normalizer_ais",
            "log_normalizer_ais_stderr", "log_normalizer_ais_half")
    rows = [{"method": r["method"], "valid_elbo": r["valid_elbo"],
             "elbo_is_estimate": r["elbo_is_estimate"],
             "valid_reconstruction": r["valid_reconstruction"],
             "test_log_px_prior_mc": r["test_log_px"], "seconds": r["seconds"],
             "timing": r["timing"],
             **{k: r[k] for k in keys if k in r}}
            for r in results]
    summary = {"settings": settings, "optimum": OPTIMUM, "valid_samples": VALID_SAMPLES,
               "test_is_samples": settings["is_samples"], "methods": rows}
    atomic_write(os.path.join(out, "summary.json"),
                 lambda f: json.dump(summary, f, indent=2), mode="w")

    def cell(row, key):
        return f"{row[key]:.4f}" if key in row else "-"
    print()
    print(f"{'method':<8}{'valid ELBO':>12}{'E_q[log p(x|z)]':>17}{'log p(x) prior MC':>19}"
          f"{'IS, S=' + str(settings['is_samples']):>13}{'IS exact':>10}{'log Z':>9}{'time':>7}")
    for row in rows:
        mark = "*" if row["elbo_is_estimate"] else " "
        print(f"{row['method']:<8}{row['valid_elbo']:>11.4f}{mark}"
              f"{row['valid_reconstruction']:>17.4f}{row['test_log_px_prior_mc']:>19.4f}"
              f"{cell(row, 'test_log_px_is'):>13}{cell(row, 'test_log_px_is_exact'):>10}"
              f"{cell(row, 'log_normalizer'):>9}{row['seconds']:>6.0f}s")
    print(f"optimum log p(x) = -ln 4 = {OPTIMUM:.4f};  * estimated ELBO (AVB, IOP); IOP's IS "
          "column uses log N(z) + T(z) as its prior (the paper's estimate), 'IS exact' the "
          "aggregated posterior of the training set; AVB has no density q(z|x) to sample")
    return summary


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"epochs per method (default {DEFAULT_EPOCHS}; the paper: 1000)")
    parser.add_argument("--warmup", type=int, default=100, help="KL warm-up epochs (paper: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    parser.add_argument("--out", default=os.path.join("out", "onehot"))
    parser.add_argument("--prior-samples", type=int, default=20000,
                        help="prior samples of the Monte Carlo log p(x) (default 20000)")
    parser.add_argument("--is-samples", type=int, default=TEST_IS_SAMPLES,
                        help=f"importance samples of the summary's log p(x) "
                             f"(default {TEST_IS_SAMPLES})")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="methods trained at once, one process each")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK['epochs']} epochs, small Monte Carlo")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.warmup, args.prior_samples, args.is_samples = (
            QUICK["epochs"], QUICK["warmup"], QUICK["prior_samples"], QUICK["is_samples"])
    if min(args.epochs, args.jobs, args.prior_samples, args.is_samples) < 1 or min(
            args.warmup, args.seed) < 0:
        parser.error("--epochs, --jobs, --prior-samples and --is-samples must be positive, "
                     "--warmup and --seed >= 0")
    given = [word.split("=")[0] for word in (sys.argv[1:] if argv is None else argv)]
    overridden = [o for o in ("--epochs", "--warmup", "--prior-samples", "--is-samples")
                  if o in given]
    from experiments import runs  # here: a --help needs no model code
    try:  # the Monte Carlo's log p(x|z) of every prior sample for each of 1,000 test points
        runs.fits(f"--prior-samples {args.prior_samples}", args.prior_samples * 1000 * 16,
                  "the Monte Carlo's log p(x|z) table")
        runs.fits(f"--is-samples {args.is_samples}", args.is_samples * 100 * 16,
                  "a batch's importance weights")
    except ValueError as exc:
        parser.error(str(exc))
    if len(set(args.methods)) < len(args.methods):
        parser.error(f"--methods {' '.join(args.methods)}: a method given twice")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file, not a folder")
    if args.quick and overridden:
        print(f"warning: --quick overrides {', '.join(overridden)}", file=sys.stderr)
    args.warmup = min(args.warmup, args.epochs)
    return args


def run_all(args):
    # the slowest first (CPU seconds of a full run: AVB 386, IOP 392, VampPrior 107, the
    # VAE 88), so that two workers end about together: each takes one of the slow two,
    # then one of the cheap two when it is free
    slowest_first = sorted(args.methods, key=("avb", "iop", "vamp", "vae").index)
    jobs = [(m, args.epochs, args.warmup, args.seed, args.prior_samples, args.is_samples)
            for m in slowest_first]
    context = multiprocessing.get_context("spawn")
    done = context.Array("d", 2 * len(ALL_METHODS), lock=False)  # report()'s fractions
    with whole_job_progress(done, args):
        if args.jobs > 1 and len(jobs) > 1:
            # Each worker uses one BLAS thread so that the workers don't fight over cores.
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = "1"
            with context.Pool(min(args.jobs, len(jobs)), _share, (done,)) as pool:
                results = pool.map(_train_star, jobs, chunksize=1)
        else:
            _share(done)
            results = [train_one(*job) for job in jobs]
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    return sorted(results, key=lambda r: order[r["method"]])


@contextlib.contextmanager
def whole_job_progress(done, args, every=30.0):
    """A line every ``every`` seconds on the whole job: its methods' parts done (``report``),
    weighted by what each costs (``SECONDS``, training scaled to ``--epochs``), with the
    elapsed time and an ETA."""
    from experiments import runs
    weights = [w for m in ALL_METHODS for w in (
        (SECONDS[m][0] * args.epochs / DEFAULT_EPOCHS, SECONDS[m][1] * args.is_samples
         / TEST_IS_SAMPLES) if m in args.methods else (0, 0))]
    progress = runs.Progress("whole job", every=every,
                             log=lambda line: print(f"[{line}]", flush=True))
    stop = threading.Event()

    def fraction():
        return sum(w * f for w, f in zip(weights, done)) / sum(weights)

    def watch():
        while not stop.wait(1.0):
            progress.at(fraction())
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
    progress.at(fraction())


def check_backend():
    """One error line, before any work, for a bad ``AUTOGRAD_LITE_BACKEND``."""
    import autograd_lite as ag
    try:
        ag.backend_name()
    except ag.BackendError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv=None):
    args = parse_args(argv)
    check_backend()
    os.makedirs(args.out, exist_ok=True)
    print(f"OneHot: {', '.join(args.methods)} for {args.epochs} epochs "
          f"(warm-up {args.warmup}), {args.jobs} worker(s); output in {args.out}", flush=True)
    started = time.time()
    results = run_all(args)
    settings = {"epochs": args.epochs, "warmup": args.warmup, "seed": args.seed,
                "prior_samples": args.prior_samples, "is_samples": args.is_samples,
                "quick": args.quick}
    plotting = Stopwatch()
    with plotting:
        plot_figures(results, args.out, args.warmup)
        for result in (r for r in results if "density_ratio" in r):  # IOP's T against the truth
            plot_density_ratio(result, args.out, settings)
    summarise(results, args.out, settings)
    print_timing(results, plotting, time.time() - started)
    written = ["figure1_posteriors.png", "figure2_elbo.png"]
    if any("density_ratio" in r for r in results):
        written += ["figure_density_ratio.png", "density_ratio.json"]
    print(f"wrote {', '.join(written + ['summary.json'])} to {args.out}")
    return 0


def print_timing(results, plotting, total_wall):
    """Seconds per method and part: CPU (what the method costs, whatever else runs on
    the machine) and wall."""
    parts = ("training", "figure2", "final")
    print()
    print(f"{'seconds, CPU / wall':<20}{'training':>16}{'Figure 2 eval':>16}"
          f"{'final eval':>16}{'total':>16}")
    for r in results:
        t = r["timing"]
        cells = [(t[p]["cpu"], t[p]["wall"]) for p in parts]
        cells.append(tuple(sum(c[i] for c in cells) for i in (0, 1)))
        print(f"{r['method']:<20}" + "".join(f"{c:>9.0f} /{w:>5.0f}" for c, w in cells))
    print(f"{'plotting':<20}{plotting.cpu:>9.0f} /{plotting.wall:>5.0f}")
    print(f"whole run: {total_wall:.0f}s wall ({total_wall / 60:.1f} minutes)")


if __name__ == "__main__":
    sys.exit(main())
