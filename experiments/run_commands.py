"""The commands train, evaluate and sample (experiments/cli.py adds them to its parser)."""
import math
import os
import sys

import numpy as np

import autograd_lite as ag
import estimators
import iopvae
from autograd_lite.files import png_path, save_png
from experiments import checkpoints, runs


def command_train(args):
    given = runs.config_options_given(args)
    config = runs.Config(**given).resolved().validate()
    runs.positive("--samples", args.samples)
    runs.check_sizes(config, DATA_DIMS.get(config.dataset, 784), [("--samples", args.samples)])
    out = args.out or os.path.join("runs", f"{config.dataset}-{config.method}-seed{config.seed}")
    checkpoints.lock_run_folder(out)
    if args.resume:
        meta, _ = checkpoints.read_checkpoint(out)
        config = meta["config"]
        ignored = runs.ignored_on_resume(given, config)
        if ignored:
            print("--resume continues with the checkpoint's configuration; ignored: " + ", ".join(
                f"--{name.replace('_', '-')} {value} (checkpoint: {kept})"
                for name, value, kept in ignored))
        if args.epochs is not None and args.epochs < meta["epoch"]:
            raise ValueError(f"--epochs {args.epochs}: {out} has trained {meta['epoch']} epochs "
                             "already; give a later end to continue it")
        data = checkpoints._load_data(config.dataset, args.data_dir or config.data_dir)
        trainer = checkpoints.resume_trainer(out, data, out)
        print(f"resuming {out} at epoch {trainer.epoch}")
    else:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ValueError(f"{out} already holds a checkpoint: continue it with --resume, "
                             "or choose another --out")
        for name in runs.not_applying(given, config.method):
            print(f"warning: --{name.replace('_', '-')} does not apply to --method "
                  f"{config.method}; ignored")
        data = checkpoints._load_data(config.dataset, config.data_dir)
        trainer = runs.Trainer(config, data, out)
    print(f"training {config.method} on {config.dataset} ({data.train.shape[0]} points, "
          f"latent {config.latent}); checkpoints in {out}")
    trainer.train(args.epochs if args.resume else None)
    report_evaluation(trainer.best_model(), data, args.samples, trainer.rng, source=out)


DATA_DIMS = {"onehot": 4, "freyfaces": 560}  # the rest: 784 (28 x 28 images)


def impossible(value, likelihood):
    """True for a log-likelihood (or ELBO) estimate above 0 on binary data, where
    log p(x) <= 0: a probability is at most 1.  (IOP's prior N(z) exp T(z) is not
    normalised, so its estimates can go there; see ``density_ratio_log_normalizer``.)"""
    return likelihood == "bernoulli" and value > 0


IMPOSSIBLE = "  <- IMPOSSIBLE on binary data (log p(x) <= 0): not a valid result"


def report_evaluation(model, data, samples, rng, split="test", source="the model"):
    """Print the ELBO and log-likelihood of ``split``; refuse non-finite numbers (naming
    ``source``), flag impossible ones, and for IOP print log Z beside its estimate."""
    # the training split as the model saw it (binarised, for MNIST), never gray pixels
    x = ag.as_array(checkpoints.training_images(data) if split == "train" else getattr(data, split))
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite numbers: refused below
        numbers = {"elbo": float(iopvae.elbo(model, x, rng))}
        if model.explicit_posterior:
            progress = runs.Progress(f"{split} log-likelihood, S = {samples}, {len(x):,} points",
                                     len(x) * samples)
            numbers["log_likelihood"] = float(iopvae.test_log_likelihood(
                model, x, samples, rng, progress=progress).mean())
    bad = [f"{split} {key} is {value}" for key, value in numbers.items()
           if not math.isfinite(value)]
    if bad:
        raise ValueError(f"{source}: {', '.join(bad)}: its weights give no finite numbers")
    flagged = [key for key, value in numbers.items() if impossible(value, data.likelihood)]

    def mark(key):
        return IMPOSSIBLE if key in flagged else ""

    estimated = " (estimated)" if model.has_density_ratio else ""
    print(f"{split} ELBO{estimated}: {numbers['elbo']:.4f}{mark('elbo')}")
    if "log_likelihood" in numbers:
        iop = isinstance(model, iopvae.ImplicitOptimalPrior)
        note = (" (an estimate: log p(z) = log N(z) + T(z) uses the learned density ratio)"
                if iop else "")
        print(f"{split} log-likelihood, importance sampling with S={samples}: "
              f"{numbers['log_likelihood']:.4f}{note}{mark('log_likelihood')}")
        if iop:
            numbers["log_normalizer"] = float(estimators.density_ratio_log_normalizer(
                model, rng, components=checkpoints.aggregated_posterior_components(model, data)))
            print(f"log Z of the learned prior N(z) exp T(z): {numbers['log_normalizer']:.4f} "
                  "(0 for a normalised prior; the estimate above is off by up to this)")
    else:
        print(f"{split} log-likelihood: not available for {model.name} (implicit posterior)")
    if flagged:
        print(f"warning: {source}: {' and '.join(flagged)} above 0 on binary data, which is "
              "impossible: the model (for IOP and AVB, its density ratio T) is not valid",
              file=sys.stderr)
    return numbers


def command_evaluate(args):
    runs.positive("--samples", args.samples)
    runs.non_negative("--seed", args.seed)
    model, config = checkpoints.load_model(args.checkpoint)
    runs.check_sizes(config, model.decoder.dim, [("--samples", args.samples)])
    data = checkpoints.load_run_data(args.checkpoint, model, config, args.data_dir)
    report_evaluation(model, data, args.samples, ag.default_rng(args.seed), args.split,
                      source=f"checkpoint {args.checkpoint}")


def command_sample(args):
    runs.positive("--n", args.n)
    runs.non_negative("--seed", args.seed)
    run_dir = (args.checkpoint if os.path.isdir(args.checkpoint)
               else os.path.dirname(os.path.abspath(args.checkpoint)))
    default = "samples_sir.png" if args.sir else "samples.png"  # each its own file
    out = png_path("--out", args.out or os.path.join(run_dir, default))
    model, config = checkpoints.load_model(args.checkpoint)
    dim = model.decoder.dim
    pixels = 1.3 * (0.6 * 120) ** 2 * max(1, dim / 784)  # a 0.6-inch tile at 120 dpi
    runs.fits(f"--n {args.n}", args.n * (8 * 4 * (dim + 2 * config.hidden + 21 * config.latent)
                                     + 4 * 8 * pixels), "the samples and their image")
    iop = isinstance(model, iopvae.ImplicitOptimalPrior)
    if args.sir and not iop:
        print(f"warning: --sir applies to IOP only; {model.name} samples its own prior")
    rng = ag.default_rng(args.seed)
    with ag.no_grad(), np.errstate(over="ignore", invalid="ignore"):  # refused below
        if iop and args.sir:
            z = estimators.sir_prior_sample(model, args.n, rng)
        else:
            data = None
            if iop:
                data = ag.as_array(
                    checkpoints.load_run_data(args.checkpoint, model, config, args.data_dir).train)
            z = model.prior_sample(args.n, rng, data)
        decoded = model.decoder(z)  # logits, or (mean, log-variance): must be finite
        if not all(np.isfinite(ag.to_numpy(t.data)).all()
                   for t in (decoded if isinstance(decoded, tuple) else (decoded,))):
            raise ValueError(f"checkpoint {args.checkpoint}: its decoder gives numbers that "
                             "are not finite: its weights are not usable")
        images = ag.to_numpy(model.decoder.mean(z))
    save_image_grid(images, model.image_shape, out)
    print(f"wrote {args.n} samples to {out}")


def save_image_grid(images, image_shape, path):
    """Decoder means as a grid of images (or, for OneHot, a table) in a PNG, written
    whole or not at all (``atomic_write``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shape = tuple(image_shape) if image_shape else (1, images.shape[1])
    n = images.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (shape[0] + 1), cols * (shape[1] + 1)))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (shape[0] + 1):r * (shape[0] + 1) + shape[0],
             c * (shape[1] + 1):c * (shape[1] + 1) + shape[1]] = image.reshape(shape)
    fig, ax = plt.subplots(figsize=(cols * 0.6 * shape[1] / shape[0] + 1, rows * 0.6 + 1))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    try:
        save_png(fig, path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
