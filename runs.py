"""Runs of iopvae.py's methods: configurations, checkpoints and the commands train,
evaluate and sample.

The paper itself, with Algorithm 1, is in iopvae.py; this file adds what a run
needs around it (the command line that calls it is cli.py):

1. ``Config``: every setting of a run, with its help text;
2. ``Trainer``: iopvae's Trainer with the loop's hooks filled in: divergence, timing,
   a checkpoint and a progress line after every round;
3. checkpoints: save, read, resume, load a model, check the data split;
4. the commands train, evaluate and sample, and the options of a Config.
"""
import dataclasses
import fcntl
import glob
import json
import math
import os
import stat
import sys
import time
import zipfile

import numpy as np

import autograd_lite as ag
import datasets
import estimators
import iopvae
from autograd_lite import nn
from autograd_lite.files import atomic_write, loads_json, png_path, save_png

# =============================================================================
# 1. Configuration.
# =============================================================================
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


# =============================================================================
# 2. A trainer that writes checkpoints.
# =============================================================================
class TrainingDiverged(RuntimeError):
    """A loss or the validation ELBO became NaN or infinite, or beyond ``Trainer.check``'s
    bounds."""


# The divergence rule (Trainer.check): numbers no working run reaches.
DIVERGED_NATS_PER_DIMENSION = 1e4   # |VAE loss| or |validation ELBO| per point and data dimension
DIVERGED_DENSITY_RATIO_LOSS = 10 * 2 * math.log(2)  # T's loss: ten times a coin flip's (1.39)


def _hms(seconds):
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


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
        now = time.time()
        record["seconds"], self.round_start = now - self.round_start, now
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


# =============================================================================
# 3. Run folders and checkpoints.
# =============================================================================
_HELD_LOCKS = {}  # run folder -> its open lock file, held until this process ends


def lock_run_folder(folder):
    """Take the run folder for this process: an exclusive lock on ``folder/.lock``
    (``flock``, released by the system when the process ends, however it ends), so
    that a second training of the same run, fresh or resumed, is refused instead of
    writing the same checkpoint.  Then remove the temporary files that killed writes
    left behind (no one else can be writing them now)."""
    folder = os.path.abspath(folder)
    if folder in _HELD_LOCKS:
        return
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"run folder {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ValueError(f"run folder {folder} is in use by process {holder} (lock {path}); "
                         "wait for it to end or stop it") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    _HELD_LOCKS[folder] = lock
    for name in ("checkpoint.npz", "config.json", "result.json"):
        for stale in glob.glob(os.path.join(glob.escape(folder), f".{name}.*.tmp")):
            os.remove(stale)


def save_checkpoint(trainer, path):
    """Weights, optimizer moments, best weights, RNG state and history in one ``.npz``,
    written atomically, plus ``config.json`` beside it.

    The arrays are gathered on the device and copied to the host together
    (``nn.save_npz``): one device-to-host transfer per checkpoint, not one per array.
    """
    arrays = {f"model/{k}": v for k, v in trainer.model.state_dict(device=True).items()}
    if trainer.best["state"] is not None:
        arrays.update({f"best/{k}": v for k, v in trainer.best["state"].items()})
    for prefix, opt in (("opt_vae", trainer.vae_opt), ("opt_disc", trainer.disc_opt)):
        if opt is not None:
            arrays.update({f"{prefix}/{k}": v for k, v in opt.state_dict(device=True).items()})
    meta = {"config": dataclasses.asdict(trainer.config), "epoch": trainer.epoch,
            "history": trainer.history, "bad_epochs": trainer.bad_epochs,
            "best_epoch": trainer.best["epoch"],  # none yet during the warm-up: null, not -inf
            "best_valid_elbo": (trainer.best["valid_elbo"] if trainer.best["state"] is not None
                                else None),
            "rng_state": rng_state(trainer.rng), "format": 1,
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


def resume_rng(config, meta, log=print):
    """How a resumed run's random numbers go on: ``(None, True)`` when the checkpoint's
    generator state can be put back (NumPy; ``resume_trainer`` restores it after
    building the model), else ``(generator, False)``: a fresh generator seeded
    from (seed, epoch), announced by a log line, since the run then goes on
    reproducibly but not bit-identically to one that was never interrupted."""
    seed, epoch = config.seed, meta["epoch"]
    if meta["rng_state"] is not None and rng_state(ag.default_rng(0)) is not None:
        return None, True
    why = ("the checkpoint holds no generator state (it was written under CuPy, whose "
           "Generator does not expose one)" if meta["rng_state"] is None else
           f"the {ag.backend_name()} backend's generator cannot take the saved state")
    log(f"note: {why}; random numbers continue from a generator seeded with (seed {seed}, "
        f"epoch {epoch}): reproducible, but not bit-identical to an uninterrupted run")
    return ag.default_rng([seed, epoch]), False


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or inconsistent."""


def read_checkpoint(path):
    """(meta, arrays) of a checkpoint, or CheckpointError with one clear line: also for
    meta fields of the wrong type and for weights that are not finite floats (a
    checkpoint of NaN weights would evaluate to NaN and sample blank images)."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} not found")
    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        # checkpoints written before null stood for "no best epoch yet" held -Infinity there
        meta = loads_json(str(arrays.pop("meta")).replace('"best_valid_elbo": -Infinity',
                                                          '"best_valid_elbo": null'))
        meta["config"] = Config(**meta["config"]).checked_types().validate()
        check_meta(meta)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable iopvae checkpoint (.npz "
                              f"with a 'meta' entry): {type(exc).__name__}: {exc}"[:300]) from None
    for name, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"checkpoint {path}: {name} holds {value.dtype}, not floats")
        if not np.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path}: {name} holds "
                                  f"{np.size(value) - np.isfinite(value).sum()} non-finite "
                                  "values (NaN or infinite weights): not usable")
        if name.startswith(("model/", "best/")) and np.abs(value).max(initial=0) > MAX_WEIGHT:
            raise CheckpointError(f"checkpoint {path}: {name} holds weights up to "
                                  f"{np.abs(value).max():.3g}, beyond {MAX_WEIGHT:g} (no "
                                  "trained network comes near): not usable")
    return meta, arrays


# A weight beyond this is absurd: Adam moves a weight by about the step size per step
# (1e-3 x 17,000 steps of 1,000 FreyFaces epochs: 17), and 1e6 times an input of order 1
# overflows exp() of a float32 (beyond 88).
MAX_WEIGHT = 1e6
NPZ_SLACK = 2 ** 20  # what an uncompressed .npz may hold beyond its file size: headers


def check_npz_file(path):
    """Refuse, before NumPy reads it, a checkpoint that is not a regular file (a FIFO
    would hang, /dev/zero never end), not a zip archive (NumPy's error would suggest
    unsafe loading), or whose arrays would inflate beyond the file's size (checkpoints
    are written uncompressed, so a compressed one is crafted: it is refused, as the data
    loader refuses a gzip file beyond its expected size)."""
    def refuse(why):
        raise CheckpointError(f"checkpoint {path} is not a readable iopvae checkpoint: {why}")
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            refuse("not a regular file")
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                refuse("not an .npz archive")
        total = 0
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                total += member.file_size
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                    total += math.prod(shape) * dtype.itemsize
    except CheckpointError:  # refused inside: said once
        raise
    except OSError as exc:
        refuse(exc.strerror or str(exc))
    except (ValueError, zipfile.BadZipFile, EOFError, TypeError) as exc:
        refuse(f"{type(exc).__name__}: {exc}"[:200])
    if total > 2 * info.st_size + NPZ_SLACK:
        refuse(f"its arrays would take {total:,} bytes, from a file of {info.st_size:,} "
               "(an .npz written by this program is not compressed)")


META_TYPES = {"epoch": int, "bad_epochs": int, "best_epoch": int, "dim": int,
              "best_valid_elbo": (int, float, type(None)), "history": list, "likelihood": str,
              "rng_state": (dict, type(None)), "split_id": (str, type(None)),
              "image_shape": (list, type(None))}


def check_meta(meta):
    """ValueError naming the first meta field that is missing or of the wrong type."""
    for key, kind in META_TYPES.items():
        if key not in meta:
            raise ValueError(f"no {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise ValueError(f"{key} is {meta[key]!r}")
    if meta["likelihood"] not in ("bernoulli", "gaussian") or meta["dim"] < 1:
        raise ValueError(f"likelihood {meta['likelihood']!r}, dim {meta['dim']}")
    shape = meta["image_shape"]
    if shape is not None and (len(shape) != 2 or not all(isinstance(n, int) for n in shape)
                              or shape[0] * shape[1] != meta["dim"]):
        raise ValueError(f"image_shape {shape} does not hold dim {meta['dim']} pixels")
    if not 0 <= meta["best_epoch"] <= meta["epoch"] or meta["bad_epochs"] < 0:
        raise ValueError(f"epoch {meta['epoch']}, best_epoch {meta['best_epoch']}, bad_epochs "
                         f"{meta['bad_epochs']}: not counts of this run's epochs")
    history = meta["history"]
    if len(history) != meta["epoch"]:
        raise ValueError(f"history holds {len(history)} records for epoch {meta['epoch']}")
    for i, record in enumerate(history):
        if not (isinstance(record, dict) and record.get("epoch") == i + 1
                and all(_finite(record.get(k)) for k in ("beta", "loss", "valid_elbo"))
                and (record.get("disc_loss") is None or _finite(record["disc_loss"]))):
            raise ValueError(f"history record {i} is {record!r:.80}, not epoch {i + 1}'s "
                             "numbers")
    c = meta["config"].resolved()
    fits(f"the checkpoint's dim {meta['dim']}", 8 * 4 * 2 * meta["dim"] * (c.hidden + c.latent),
         "its networks' weights and their optimizer moments")


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


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


def _sub_state(arrays, prefix):
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def check_split(trained_on, data, path):
    """Refuse data whose split differs from ``trained_on``, the split the checkpoint
    trained on: evaluating on another split would score training points as test points."""
    if trained_on != data.split_id:
        raise CheckpointError(f"checkpoint {path} was trained on split {trained_on} but the data "
                              f"loaded now are split {data.split_id}; evaluate or resume it on "
                              "the data it was trained on")


def resume_trainer(path, data, out_dir, log=print):
    """A Trainer restored from a checkpoint so that training continues exactly (on NumPy;
    under CuPy as ``resume_rng`` says)."""
    meta, arrays = read_checkpoint(path)
    check_split(meta.get("split_id"), data, path)
    rng, exact = resume_rng(meta["config"], meta, log)
    trainer = Trainer(meta["config"], data, out_dir, log, rng=rng)
    try:
        trainer.model.load_state_dict(_sub_state(arrays, "model"))
        trainer.vae_opt.load_state_dict(_sub_state(arrays, "opt_vae"))
        if trainer.disc_opt is not None:
            trainer.disc_opt.load_state_dict(_sub_state(arrays, "opt_disc"))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its configuration ({exc})") \
            from None
    best = {k: ag.as_array(v) for k, v in _sub_state(arrays, "best").items()}  # on the device
    trainer.best = {"epoch": meta["best_epoch"], "state": best or None,
                    "valid_elbo": -math.inf if meta["best_valid_elbo"] is None
                    else meta["best_valid_elbo"]}
    trainer.epoch, trainer.history = meta["epoch"], meta["history"]
    trainer.saved_epoch = meta["epoch"]
    trainer.bad_epochs = meta["bad_epochs"]
    if exact:  # the weights were drawn from the generator: only now is its stream restored
        try:
            trainer.rng.bit_generator.state = meta["rng_state"]
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: its random generator state does not fit "
                                  f"this generator ({exc})") from None
    return trainer


def load_model(path, best=True):
    """(model, config) from a checkpoint: the best weights unless ``best=False``."""
    meta, arrays = read_checkpoint(path)
    config = meta["config"].resolved()
    state = _sub_state(arrays, "best" if best and meta["best_epoch"] else "model")
    model = build_model(config, meta["dim"], meta["likelihood"], ag.default_rng(0))
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its configuration ({exc})") \
            from None
    model.eval()
    model.image_shape = meta.get("image_shape")
    model.split_id = meta.get("split_id")
    check_outputs(model, f"checkpoint {path}")
    return model, config


PROBES = 16  # N(0, I) draws that check_outputs decodes


def check_outputs(model, source):
    """The one check of a model's outputs that every command (evaluate, sample,
    sample --sir, the grid's evaluation) passes through ``load_model``: the decoder
    (and IOP's T) on ``PROBES`` draws of N(0, I) (a generator of its own: no number of
    the command changes) must give finite numbers; ``read_checkpoint`` has refused
    non-finite and absurd weights before."""
    z = ag.Tensor(ag.as_array(np.random.default_rng(0).standard_normal(
        (PROBES, model.latent)).astype(np.float32)))
    with ag.no_grad(), np.errstate(all="ignore"):
        decoded = model.decoder(z)
        outputs = {"decoder": decoded if isinstance(decoded, tuple) else (decoded,)}
        if isinstance(model, iopvae.ImplicitOptimalPrior):
            outputs["density ratio T"] = (model.density_ratio(z),)
        for name, tensors in outputs.items():
            if not all(np.isfinite(ag.to_numpy(t.data)).all() for t in tensors):
                raise ValueError(f"{source}: its {name} gives numbers that are not finite: "
                                 "its weights are not usable")


def _load_data(name, data_dir):
    return datasets.load(name, data_dir=data_dir or None)


def load_run_data(path, model, config, data_dir=""):
    """The data set the checkpoint ``path`` trained ``model`` on (``load_model``'s pair),
    refused if its split is not the same."""
    data = _load_data(config.dataset, data_dir or config.data_dir)
    check_split(model.split_id, data, path)
    return data


# =============================================================================
# 4. Commands.
# =============================================================================
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


def command_train(args):
    given = config_options_given(args)
    config = Config(**given).resolved().validate()
    positive("--samples", args.samples)
    check_sizes(config, DATA_DIMS.get(config.dataset, 784), [("--samples", args.samples)])
    out = args.out or os.path.join("runs", f"{config.dataset}-{config.method}-seed{config.seed}")
    lock_run_folder(out)
    if args.resume:
        meta, _ = read_checkpoint(out)
        config = meta["config"]
        ignored = ignored_on_resume(given, config)
        if ignored:
            print("--resume continues with the checkpoint's configuration; ignored: " + ", ".join(
                f"--{name.replace('_', '-')} {value} (checkpoint: {kept})"
                for name, value, kept in ignored))
        if args.epochs is not None and args.epochs < meta["epoch"]:
            raise ValueError(f"--epochs {args.epochs}: {out} has trained {meta['epoch']} epochs "
                             "already; give a later end to continue it")
        data = _load_data(config.dataset, args.data_dir or config.data_dir)
        trainer = resume_trainer(out, data, out)
        print(f"resuming {out} at epoch {trainer.epoch}")
    else:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ValueError(f"{out} already holds a checkpoint: continue it with --resume, "
                             "or choose another --out")
        for name in not_applying(given, config.method):
            print(f"warning: --{name.replace('_', '-')} does not apply to --method "
                  f"{config.method}; ignored")
        data = _load_data(config.dataset, config.data_dir)
        trainer = Trainer(config, data, out)
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


def training_images(data):
    """The training points as the model sees them: for dynamically binarised data one
    fixed binarisation (the same every call), else the images themselves."""
    if data.dynamic_binarization:
        return datasets.binarize(data.train, np.random.default_rng(2024))
    return data.train


def aggregated_posterior_components(model, data):
    """q(z|x_n)'s (mu_n, logvar_n) over the training points the encoder saw (freshly
    binarised ones for dynamically binarised data)."""
    return iopvae.aggregated_posterior_components(model, ag.as_array(training_images(data)))


def report_evaluation(model, data, samples, rng, split="test", source="the model"):
    """Print the ELBO and log-likelihood of ``split``; refuse non-finite numbers (naming
    ``source``), flag impossible ones, and for IOP print log Z beside its estimate."""
    # the training split as the model saw it (binarised, for MNIST), never gray pixels
    x = ag.as_array(training_images(data) if split == "train" else getattr(data, split))
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite numbers: refused below
        numbers = {"elbo": float(iopvae.elbo(model, x, rng))}
        if model.explicit_posterior:
            numbers["log_likelihood"] = float(iopvae.test_log_likelihood(model, x, samples,
                                                                         rng).mean())
    bad = [f"{split} {key} is {value}" for key, value in numbers.items()
           if not math.isfinite(value)]
    if bad:
        raise ValueError(f"{source}: {', '.join(bad)}: its weights give no finite numbers")
    flagged = [key for key, value in numbers.items() if impossible(value, data.likelihood)]

    def mark(key):
        return IMPOSSIBLE if key in flagged else ""

    estimated = " (estimated)" if model.has_discriminator else ""
    print(f"{split} ELBO{estimated}: {numbers['elbo']:.4f}{mark('elbo')}")
    if "log_likelihood" in numbers:
        iop = isinstance(model, iopvae.ImplicitOptimalPrior)
        note = (" (an estimate: log p(z) = log N(z) + T(z) uses the learned density ratio)"
                if iop else "")
        print(f"{split} log-likelihood, importance sampling with S={samples}: "
              f"{numbers['log_likelihood']:.4f}{note}{mark('log_likelihood')}")
        if iop:
            numbers["log_normalizer"] = float(estimators.density_ratio_log_normalizer(
                model, rng, components=aggregated_posterior_components(model, data)))
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
    positive("--samples", args.samples)
    non_negative("--seed", args.seed)
    model, config = load_model(args.checkpoint)
    check_sizes(config, model.decoder.dim, [("--samples", args.samples)])
    data = load_run_data(args.checkpoint, model, config, args.data_dir)
    report_evaluation(model, data, args.samples, ag.default_rng(args.seed), args.split,
                      source=f"checkpoint {args.checkpoint}")


def command_sample(args):
    positive("--n", args.n)
    non_negative("--seed", args.seed)
    run_dir = (args.checkpoint if os.path.isdir(args.checkpoint)
               else os.path.dirname(os.path.abspath(args.checkpoint)))
    out = png_path("--out", args.out or os.path.join(run_dir, "samples.png"))
    model, config = load_model(args.checkpoint)
    dim = model.decoder.dim
    pixels = 1.3 * (0.6 * 120) ** 2 * max(1, dim / 784)  # a 0.6-inch tile at 120 dpi
    fits(f"--n {args.n}", args.n * (8 * 4 * (dim + 2 * config.hidden + 21 * config.latent)
                                     + 4 * 8 * pixels), "the samples and their image")
    remove_stale_temporaries(out)
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
                    load_run_data(args.checkpoint, model, config, args.data_dir).train)
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


STALE_SECONDS = 600  # no PNG takes this long to write


def remove_stale_temporaries(path):
    """Remove the temporary files that killed writes of ``path`` left (older than
    ``STALE_SECONDS``, so that a write under way now keeps its own)."""
    folder, name = os.path.split(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        try:
            if time.time() - os.stat(stale).st_mtime > STALE_SECONDS:
                os.remove(stale)
        except FileNotFoundError:
            pass


# =============================================================================
# The parser.
# =============================================================================
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

