"""Run folders and checkpoints: a run folder's lock, a checkpoint read and checked
before anything trusts it, a trainer resumed from it, a model loaded from it, and the
data a run trained on (runs.py's Trainer writes the checkpoints)."""
import fcntl
import math
import os
import stat
import zipfile

import numpy as np

import autograd_lite as ag
import datasets
import iopvae
from autograd_lite.files import loads_json, open_lock
from experiments import runs

_HELD_LOCKS = {}  # run folder -> its open lock file, held until this process ends


def lock_run_folder(folder):
    """Take the run folder for this process: an exclusive lock on ``folder/.lock``
    (``flock``, released by the system when the process ends, however it ends), so
    that a second training of the same run, fresh or resumed, is refused instead of
    writing the same checkpoint."""
    folder = os.path.abspath(folder)
    if folder in _HELD_LOCKS:
        return
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"run folder {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    lock = open_lock(path)
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


def resume_rng(config, meta, log=print):
    """How a resumed run's random numbers go on: ``(None, True)`` when the checkpoint's
    generator state can be put back (NumPy; ``resume_trainer`` restores it after
    building the model), else ``(generator, False)``: a fresh generator seeded
    from (seed, epoch), announced by a log line, since the run then goes on
    reproducibly but not bit-identically to one that was never interrupted."""
    seed, epoch = config.seed, meta["epoch"]
    if meta["rng_state"] is not None and runs.rng_state(ag.default_rng(0)) is not None:
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
        meta["config"] = runs.Config(**meta["config"]).checked_types().validate()
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


META_TYPES = {"format": int, "epoch": int, "bad_epochs": int, "best_epoch": int, "dim": int,
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
    if meta["format"] != runs.CHECKPOINT_FORMAT:
        raise ValueError(f"format {meta['format']}, where this program reads format "
                         f"{runs.CHECKPOINT_FORMAT}")
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
    runs.fits(f"the checkpoint's dim {meta['dim']}",
              8 * 4 * 2 * meta["dim"] * (c.hidden + c.latent),
              "its networks' weights and their optimizer moments")


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


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
    """A runs.Trainer restored from a checkpoint so that training continues exactly (on NumPy;
    under CuPy as ``resume_rng`` says)."""
    meta, arrays = read_checkpoint(path)
    check_split(meta.get("split_id"), data, path)
    rng, exact = resume_rng(meta["config"], meta, log)
    trainer = runs.Trainer(meta["config"], data, out_dir, log, rng=rng)
    try:
        trainer.model.load_state_dict(_sub_state(arrays, "model"))
        trainer.vae_opt.load_state_dict(_sub_state(arrays, "opt_vae"))
        if trainer.density_ratio_opt is not None:
            trainer.density_ratio_opt.load_state_dict(_sub_state(arrays, "opt_disc"))
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
    model = runs.build_model(config, meta["dim"], meta["likelihood"], ag.default_rng(0))
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
