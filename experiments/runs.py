"""Runs of iopvae.py's methods: what a run is and how it trains.

The paper itself, with Algorithm 1, is in iopvae.py; this file adds what a run needs
around it: ``Config`` (every setting of a run, with its help text, and the options of
the command line that set them), and ``Trainer``, iopvae's Trainer with the loop's hooks
filled in: divergence, timing, a checkpoint and a progress line after every round.
Reading checkpoints back (resume, load a model) is in checkpoints.py; the commands
train, evaluate and sample in run_commands.py.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

import autograd_lite as ag
import datasets
import iopvae
from autograd_lite import nn
from autograd_lite.files import atomic_write

CHOICES = {"dataset": datasets.DATASETS, "method": tuple(sorted(iopvae.METHODS)),
           "pseudo_init": iopvae.VampPrior.PSEUDO_INITS,
           "density_ratio_dropout": ("every", "last")}


def option(default, text):
    """A Config field with its command-line help ``text``."""
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class Config:
    """Everything that defines a run; stored as JSON beside each checkpoint."""

    dataset: str = option("onehot", "data set")
    method: str = option("iop", "vae: N(0, I) prior; vamp: VampPrior; iop: implicit optimal "
                                "prior; avb: adversarial variational Bayes")
    latent: int = option(0, "latent dimension; 0: the paper's (2 for OneHot, 40 for images)")
    hidden: int = option(500, "units in each hidden layer of every network")
    lr: float = option(1e-3, "Adam step size of the VAE (theta, phi; VampPrior's "
                             "pseudo-inputs)")
    lr_density_ratio: float = option(1e-3, "Adam step size of T (psi), IOP and AVB")
    batch_size: int = option(100, "mini-batch size K")
    epochs: int = option(1000, "rounds of Algorithm 1 at most")
    warmup: int = option(100, "epochs of linear KL warm-up (beta from 1/warmup to 1)")
    patience: int = option(50, "early stopping: epochs after warm-up without a better "
                               "validation ELBO (0: never stop early)")
    j1: int = option(1, "VAE epochs per round (Algorithm 1, lines 2-6)")
    j2: int = option(10, "density-ratio epochs per round (Algorithm 1, lines 7-12)")
    keep: float = option(0.5, "dropout keep probability of T")
    density_ratio_dropout: str = option("every", "where IOP's T drops out: after every hidden "
                                                 "layer, or before its output layer alone "
                                                 "(last, as the authors' code)")
    valid_samples: int = option(1, "posterior samples per validation point for the "
                                   "validation ELBO of each epoch")
    components: int = option(0, "VampPrior's K; 0: the paper's (50 OneHot, 1000 OMNIGLOT, "
                                "500 else)")
    pseudo_init: str = option("uniform", "start of VampPrior's pseudo-inputs: U[0, 1], "
                                         "training points (noisy_data: plus N(0, 0.01^2)), "
                                         "or 0.5 + noise (the failure case)")
    noise_dim: int = option(10, "AVB's eps dimension")
    decoder_logvar_min: float = option(iopvae.DECODER_LOGVAR_BOUNDS[0],
                                       "lower bound of the Gaussian decoder's log-variance")
    decoder_logvar_max: float = option(iopvae.DECODER_LOGVAR_BOUNDS[1],
                                       "upper bound of the Gaussian decoder's log-variance")
    encoder_logvar_min: float = option(iopvae.ENCODER_LOGVAR_BOUNDS[0],
                                       "lower bound of the encoder's log-variance")
    encoder_logvar_max: float = option(iopvae.ENCODER_LOGVAR_BOUNDS[1],
                                       "upper bound of the encoder's log-variance")
    seed: int = option(0, "random seed of the weights, mini-batches and noise")
    data_dir: str = option("", "data folder (else $IOPVAE_DATA, else ~/.cache/iopvae)")

    def resolved(self):
        """A copy with the paper's defaults filled in."""
        c = dataclasses.replace(self)
        if c.latent == 0:
            c.latent = 2 if c.dataset == "onehot" else 40
        if c.components == 0:
            c.components = {"onehot": 50, "omniglot": 1000}.get(c.dataset, 500)
        return c

    def validate(self):
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: choose from "
                                 f"{list(choices)}")
        for name in ("hidden", "batch_size", "epochs", "j1", "valid_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup", "j2", "patience", "seed", "latent", "components", "noise_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative (got {getattr(self, name)})")
        if self.method == "avb" and self.noise_dim < 1:
            raise ValueError(f"noise_dim must be at least 1 for avb (got {self.noise_dim})")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1] (got {self.keep})")
        for name in ("lr", "lr_density_ratio"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive and finite (got "
                                 f"{getattr(self, name)})")
            with np.errstate(over="ignore"):
                single = np.float32(getattr(self, name))  # the weights' and Adam's type
            if not 0 < single < np.inf:
                raise ValueError(f"{name} {getattr(self, name)} is {single} in float32, the "
                                 "type of the weights: no step, or no finite one")
        for part in ("decoder", "encoder"):
            low, high = getattr(self, part + "_logvar_min"), getattr(self, part + "_logvar_max")
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"{part}_logvar_min must be below {part}_logvar_max, both "
                                 f"finite (got {low} and {high})")
        return self

    def checked_types(self):
        """Refuse fields of the wrong type (a damaged config.json or checkpoint)."""
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), type(field.default)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  if kind is float else type(value) is kind)
            if not ok:
                raise ValueError(f"{field.name} is {value!r}, not a {kind.__name__}")
        return self


APPLIES_TO = {"components": ("vamp",), "pseudo_init": ("vamp",), "noise_dim": ("avb",),
              "lr_density_ratio": ("iop", "avb"), "j2": ("iop", "avb"), "keep": ("iop", "avb"),
              "density_ratio_dropout": ("iop",),
              "encoder_logvar_min": ("vae", "vamp", "iop"),
              "encoder_logvar_max": ("vae", "vamp", "iop")}  # AVB's encoder has no variance


def not_applying(given, method):
    """The options in ``given`` that ``method`` does not use."""
    return [name for name in given if method not in APPLIES_TO.get(name, (method,))]


def build_model(config, dim, likelihood, rng):
    """The method named by ``config`` with freshly initialised weights."""
    c = config.resolved()
    common = dict(dim=dim, likelihood=likelihood, latent=c.latent, hidden=c.hidden, rng=rng,
                  decoder_logvar_bounds=(c.decoder_logvar_min, c.decoder_logvar_max))
    if c.method == "avb":
        return iopvae.AVB(**common, noise_dim=c.noise_dim, keep=c.keep)
    common["encoder_logvar_bounds"] = (c.encoder_logvar_min, c.encoder_logvar_max)
    if c.method == "vamp":
        return iopvae.VampPrior(**common, components=c.components, pseudo_init=c.pseudo_init)
    if c.method == "iop":
        return iopvae.ImplicitOptimalPrior(**common, keep=c.keep,
                                           dropout=c.density_ratio_dropout)
    return iopvae.StandardVAE(**common)


class TrainingDiverged(RuntimeError):
    """A loss or the validation ELBO became NaN or infinite, or beyond ``Trainer.check``'s
    bounds."""


# The divergence rule (Trainer.check): numbers no working run reaches.
DIVERGED_NATS_PER_DIMENSION = 1e4   # |VAE loss| or |validation ELBO| per point and data dimension
DIVERGED_DENSITY_RATIO_LOSS = 10 * 2 * math.log(2)  # T's loss: ten times a coin flip's (1.39)


def _hms(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


PROGRESS_EVERY = 10.0  # seconds between the progress lines in a log


class Progress:
    """What a long computation is doing, how far it is and its ETA: one line updated in
    place on a terminal (each second), else a line every ``every`` seconds, so that logs
    stay readable; on ``stream`` (stderr), or through ``log`` (lines alone).  Call it with
    the units done since the last call, or ``at`` with the fraction done; a computation
    that ends before the first line says nothing."""

    def __init__(self, what, total=1, stream=None, every=None, log=None):
        self.what, self.total, self.done = what, total, 0
        self.stream, self.log = stream or sys.stderr, log
        self.tty = log is None and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 1.0 if self.tty else every or PROGRESS_EVERY
        self.started = self.shown = time.time()
        self.said = False

    def __call__(self, units=1):
        self.done += units
        self.at(self.done / self.total)

    def at(self, fraction):
        now, finished = time.time(), fraction >= 1
        if (now - self.shown < self.every and not finished) or (finished and not self.said):
            return
        self.shown, self.said = now, True
        elapsed = now - self.started
        eta = _hms(elapsed / fraction * (1 - fraction)) if fraction > 0 else "-"
        line = f"{self.what}: {100 * fraction:.0f}% | elapsed {_hms(elapsed)} | ETA {eta}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
            self.stream.flush()
        elif self.log:
            self.log(line)
        else:
            print(line, file=self.stream, flush=True)


class Trainer(iopvae.Trainer):
    """iopvae's Algorithm 1 for the run ``config``, with what a run needs around it,
    through the loop's hooks: the model built from a Config, a divergence check and a
    timing in each round's record, a checkpoint in ``out_dir`` (none if it is empty)
    and a progress line after every round, resuming.  ``rng`` (default: seeded with the
    configuration's seed) draws the weights and every random number of the run."""

    def __init__(self, config, data, out_dir, log=print, rng=None):
        self.config = c = config.resolved().validate()
        self.out_dir, self.log = out_dir, log
        rng = ag.default_rng(c.seed) if rng is None else rng
        model = build_model(c, data.dim, data.likelihood, rng)
        super().__init__(model, data, rng, lr=c.lr, lr_density_ratio=c.lr_density_ratio,
                         batch_size=c.batch_size, epochs=c.epochs, warmup=c.warmup,
                         patience=c.patience, j1=c.j1, j2=c.j2,
                         valid_samples=c.valid_samples)

    resume_hint = "continue with --resume"
    saved_epoch = 0  # the epoch of the last checkpoint written (or resumed from)

    @ag.denormals_flushed()  # numbers below about 1e-38 are 0: autograd_lite/denormals.py
    def train(self, epochs=None):
        self.clock = (time.time(), self.epoch, epochs or self.epochs)
        self.round_start = time.time()
        try:
            history = super().train(epochs)
        except TrainingDiverged as exc:
            kept = (f"the last good checkpoint (epoch {self.epoch}) is kept in {self.out_dir}"
                    if self.out_dir and self.epoch else "no checkpoint was written")
            raise TrainingDiverged(f"{exc}; {kept}") from None
        except KeyboardInterrupt:  # the checkpoint of the last saved epoch is kept
            raise Interrupted(f"interrupted at epoch {self.saved_epoch}; {self.resume_hint}") \
                from None
        if self.converged():
            self.log(f"early stopping at epoch {self.epoch}: no better validation ELBO "
                     f"for {self.patience} epochs (best {self.best['valid_elbo']:.4f} "
                     f"at epoch {self.best['epoch']})")
        return history

    def check(self, record):
        """The round's time into its record, then the divergence rule: stop a round whose
        numbers show divergence, even finite ones (a huge step size gives finite garbage:
        losses of 1e9 to 1e23 on OneHot).  A loss or the validation ELBO is NaN or
        infinite; or the VAE loss or validation ELBO (per point) exceeds
        ``DIVERGED_NATS_PER_DIMENSION`` = 1e4 nats times the data dimension in size (a
        working run stays below about 10 per dimension, Gaussian decoders at their
        tightest variance below about 4e3); or T's loss (Eq. 20) exceeds
        ``DIVERGED_DENSITY_RATIO_LOSS`` = 10 x 2 log 2, ten times that of T = 0, a
        classifier that guesses (a working T stays below 2 log 2)."""
        record["seconds"] = time.time() - self.round_start  # after_round restarts the clock
        bound = DIVERGED_NATS_PER_DIMENSION * self.train_x.shape[1]
        for key, name, limit in (("loss", "the VAE loss", bound),
                                 ("disc_loss", "T's loss", DIVERGED_DENSITY_RATIO_LOSS),
                                 ("valid_elbo", "the validation ELBO", bound)):
            value = record[key]
            if value is None:
                continue
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged at epoch {record['epoch']}: {name} "
                                       f"is {value}")
            if abs(value) > limit:
                raise TrainingDiverged(f"training diverged at epoch {record['epoch']}: {name} "
                                       f"is {value:.4g}, beyond {limit:.4g} (the divergence "
                                       "rule); try a smaller step size")

    def after_round(self, record):
        """More measurements (``measure``), then the checkpoint, then the progress line."""
        self.measure(record)
        if self.out_dir:
            save_checkpoint(self, os.path.join(self.out_dir, "checkpoint.npz"))
            self.saved_epoch = self.epoch
        self.log(self.progress(record))
        self.round_start = time.time()

    measures = ()  # functions (trainer, record) -> None, called by ``measure``

    def measure(self, record):
        """Called after every accepted round with its record, before the checkpoint: each
        of ``measures`` may add numbers to it (reproduce_onehot.py overrides it)."""
        for function in self.measures:
            function(self, record)

    def progress(self, record):
        """One line per round: losses, validation ELBO, beta, time and ETA."""
        start_time, start_epoch, last = self.clock
        elapsed = time.time() - start_time
        eta = elapsed / max(record["epoch"] - start_epoch, 1) * (last - record["epoch"])
        disc = "" if record["disc_loss"] is None else f" | T loss {record['disc_loss']:.4f}"
        return (f"epoch {record['epoch']:4d}/{last} | loss {record['loss']:.4f}{disc} | valid "
                f"ELBO {record['valid_elbo']:.4f} | beta {record['beta']:.2f} | "
                f"{record['seconds']:.1f}s | elapsed {_hms(elapsed)} | ETA {_hms(eta)}")


class Interrupted(Exception):
    """Ctrl-C during training; the checkpoint of the last finished epoch is kept (it is
    written whole or not at all)."""


CHECKPOINT_FORMAT = 1  # the layout of a checkpoint's arrays and meta; read back as it is


def save_checkpoint(trainer, path):
    """Weights, optimizer moments, best weights, RNG state and history in one ``.npz``,
    written atomically, plus ``config.json`` beside it.

    The arrays are gathered on the device and copied to the host together
    (``nn.save_npz``): one device-to-host transfer per checkpoint, not one per array.
    """
    arrays = {f"model/{k}": v for k, v in trainer.model.state_dict(device=True).items()}
    if trainer.best["state"] is not None:
        arrays.update({f"best/{k}": v for k, v in trainer.best["state"].items()})
    for prefix, opt in (("opt_vae", trainer.vae_opt), ("opt_disc", trainer.density_ratio_opt)):
        if opt is not None:
            arrays.update({f"{prefix}/{k}": v for k, v in opt.state_dict(device=True).items()})
    meta = {"config": dataclasses.asdict(trainer.config), "epoch": trainer.epoch,
            "history": trainer.history, "bad_epochs": trainer.bad_epochs,
            "best_epoch": trainer.best["epoch"],  # none yet during the warm-up: null, not -inf
            "best_valid_elbo": (trainer.best["valid_elbo"] if trainer.best["state"] is not None
                                else None),
            "rng_state": rng_state(trainer.rng), "format": CHECKPOINT_FORMAT,
            "dim": trainer.data.dim, "likelihood": trainer.data.likelihood,
            "split_id": trainer.data.split_id,
            "image_shape": list(trainer.data.image_shape) if trainer.data.image_shape else None}
    arrays["meta"] = np.array(json.dumps(meta))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nn.save_npz(path, arrays)
    atomic_write(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json"),
                 lambda f: json.dump(meta["config"], f, indent=2), mode="w")


def rng_state(rng):
    """The generator's state as JSON-able data (NumPy backend; None elsewhere).

    CuPy's Generator does not expose its state (its bit generator offers only
    ``random_raw``; cupy-sim mirrors that), so a checkpoint written under CuPy
    holds none and ``resume_trainer`` cannot continue its random streams exactly.
    """
    bit_generator = getattr(rng, "bit_generator", None)
    state = getattr(bit_generator, "state", None)
    return state if isinstance(state, dict) else None


def machine_memory():
    """This machine's memory in bytes (``os.sysconf``, else /proc/meminfo; None if
    neither says)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fits(said, needed, what):
    """Refuse, in a line naming ``said`` (the options and their values), ``needed``
    bytes (for ``what``) beyond this machine's memory: before any work, not as a
    MemoryError (or the kernel's kill) later."""
    memory = machine_memory()
    if memory and needed > memory:
        raise ValueError(f"not enough memory: {said} needs about {needed / 2 ** 30:,.3g} GiB "
                         f"for {what}, more than this machine's {memory / 2 ** 30:.3g} GiB")


MAX_EPOCHS_PER_ROUND = 10_000  # --j1, --j2: the paper's are 1 and 10


def check_sizes(config, dim, samples=(), points=100):
    """Refuse, before any work, sizes this machine cannot run: ``--j1`` or ``--j2`` beyond
    ``MAX_EPOCHS_PER_ROUND`` (one round would take days), and ``--valid-samples``,
    ``--batch-size``, ``--hidden`` or the importance samples ``samples`` (option, S)
    whose arrays exceed its memory (``dim``: the data's dimension)."""
    c = config.resolved()
    for name in ("j1", "j2"):
        if getattr(c, name) > MAX_EPOCHS_PER_ROUND:
            raise ValueError(f"--{name} {getattr(c, name)}: more than {MAX_EPOCHS_PER_ROUND:,} "
                             "epochs per round (the paper: j1 1, j2 10) would take days a round")
    width = 8 * 4 * (dim + 2 * c.hidden + 4 * c.latent)  # float64 and temporaries, per row
    fits(f"--hidden {c.hidden} with --latent {c.latent}",
         8 * 4 * 2 * c.hidden * (dim + c.hidden + c.latent), "the weights")
    fits(f"--batch-size {c.batch_size} with --valid-samples {c.valid_samples}",
         width * c.batch_size * c.valid_samples, "a validation batch")
    for option, value in samples:  # (S, points) log-weights, float32 and float64
        fits(f"{option} {value}", 16 * points * value, "a batch's importance weights")


def config_options_given(args):
    """The Config fields given on the command line (their options default to None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
            if getattr(args, f.name, None) is not None}


def ignored_on_resume(given, stored):
    """Options given with --resume that differ from the checkpoint's configuration (the
    run continues with the checkpoint's; ``--epochs`` and ``--data-dir`` are used)."""
    wanted = dataclasses.replace(stored, **given).resolved()
    return [(name, getattr(wanted, name), getattr(stored, name)) for name in given
            if name not in ("epochs", "data_dir")
            and getattr(wanted, name) != getattr(stored, name)]


def positive(name, value):
    """``value``, refused in one line naming the option unless it is at least 1."""
    if value < 1:
        raise ValueError(f"{name} must be at least 1 (got {value})")
    return value


def non_negative(name, value):
    if value < 0:
        raise ValueError(f"{name} must be non-negative (got {value})")
    return value


class _StoreOnce(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("given_options", set())
        if self.dest in given:
            raise argparse.ArgumentError(self, "given twice (only one value is used: give it "
                                               "once)")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but an option given twice is refused: argparse keeps the last
    value without a word (``--method vae --method iop`` would train IOP alone).  Its
    sub-command parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in (None, "store"):
            self.register("action", name, _StoreOnce)


def add_config_options(parser, skip=(), required=()):
    """An option per Config field (``--batch-size`` for ``batch_size``) but those in
    ``skip``, with the field's help and default.  The options default to None, so
    that ``config_options_given`` can tell what the command line set."""
    defaults = Config()
    for field in dataclasses.fields(Config):
        if field.name in skip:
            continue
        default = getattr(defaults, field.name)
        required_here = field.name in required
        shown = "" if default == "" or required_here else f" (default: {default})"
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default),
                            choices=CHOICES.get(field.name), default=None,
                            required=required_here, help=field.metadata["help"] + shown)
