"""Data sets for the IOP-VAE experiments (Takahashi et al., AAAI 2019).

``load(name)`` returns a :class:`Dataset` with float32 ``(N, D)`` train,
validation and test arrays, split as in the paper's Table 1:

=============== ======== ====== ====== ==========  ========================
name            train    valid  test   likelihood  file(s) in the data dir
=============== ======== ====== ====== ==========  ========================
onehot          1,000    100    1,000  bernoulli   none (generated)
mnist           50,000   10,000 10,000 bernoulli   ``mnist/*-idx3-ubyte.gz``
omniglot        23,000   1,345  8,070  bernoulli   ``omniglot/chardata.mat``
freyfaces       1,565    200    200    gaussian    ``freyfaces/freyfaces.pkl``
histopathology  6,800    2,000  2,000  gaussian    ``histopathology/histopathology.pkl``
=============== ======== ====== ====== ==========  ========================

The data folder is chosen by :func:`data_dir`. MNIST and FreyFaces can be
fetched with ``python -m datasets download NAME``. OMNIGLOT and
Histopathology have no canonical download URL and must be put in place by hand.

Every problem with a data file raises :class:`DataError`, whose message
names the file and says what was expected. Nothing in this module writes a
partial file. Downloads go to a temporary file in the target folder and are
renamed only once their SHA-256 is right.

Command line::

    python datasets.py download NAME [--data-dir DIR]
    python datasets.py info NAME [--data-dir DIR] [--no-verify]

Splits are fixed per data set (:data:`SPLIT_SEEDS`), never drawn from a run's
seed: every run of a data set trains, validates and tests on the same points,
and :attr:`Dataset.split_id` names them so a checkpoint can record them.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from autograd_lite.files import atomic_write

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "DataError",
    "Dataset",
    "binarize",
    "data_dir",
    "download",
    "load",
    "read_idx_images",
    "summary",
    "verify",
]

DATASETS = ("onehot", "mnist", "omniglot", "freyfaces", "histopathology")

#: SHA-256 of the data files with a known canonical copy. Keys are paths
#: relative to the data directory.
CHECKSUMS = {
    "mnist/train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "freyfaces/freyfaces.pkl": "3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a",
}

#: Git blob ids (``git hash-object FILE``) of the two files that have no
#: published SHA-256: the copies in the original GitHub repositories.
GIT_BLOB_IDS = {
    "omniglot/chardata.mat": "016a3536ffe5e1d38e42563a18d7a78bfaf643ec",
    "histopathology/histopathology.pkl.tar.gz": "40e100f65969106cbcf3c0f6f29e70e8e7e14fe3",
}

_MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_VAMPPRIOR_COMMIT = "bb6ff3e58036adbea448e82d7bc55593d605b52c"

#: Download URLs, tried in order. Files not listed here cannot be downloaded.
URLS = {
    **{
        f"mnist/{f}": tuple(m + f for m in _MNIST_MIRRORS)
        for f in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    },
    "freyfaces/freyfaces.pkl": tuple(
        f"https://raw.githubusercontent.com/jmtomczak/vae_vampprior/{ref}/datasets/Freyfaces/freyfaces.pkl"
        for ref in (_VAMPPRIOR_COMMIT, "master")
    ),
}

#: Where each data set comes from, for error messages.
SOURCES = {
    "mnist": "the MNIST distribution of LeCun, Cortes & Burges",
    "omniglot": "github.com/yburda/iwae, datasets/OMNIGLOT/chardata.mat",
    "freyfaces": "github.com/jmtomczak/vae_vampprior, datasets/Freyfaces/freyfaces.pkl",
    "histopathology": (
        "github.com/jmtomczak/vae_householder_flow, "
        "datasets/histopathologyGray/histopathology.pkl.tar.gz: unpack it, "
        "or put the .tar.gz itself in the same folder"
    ),
}

#: The files ``download`` fetches for each data set.
_DOWNLOAD_FILES = {
    "mnist": tuple(k for k in URLS if k.startswith("mnist/")),
    "freyfaces": ("freyfaces/freyfaces.pkl",),
}

#: Seeds of the fixed shuffles that make the splits of the data sets whose files
#: have no split of their own. They belong to the data set, not to a run: a run
#: with seed 3 and a run with seed 0 see the same train/valid/test points.
#: FreyFaces and OMNIGLOT are shuffled as the authors' code shuffles them, with
#: NumPy's legacy generator (:func:`authors_order`), so the test images are theirs.
SPLIT_SEEDS = {"onehot": 0, "omniglot": 42, "freyfaces": 42}

# Split sizes (train, valid, test) from the paper's Table 1.
ONEHOT_SPLIT = (1_000, 100, 1_000)
MNIST_SPLIT = (50_000, 10_000, 10_000)
OMNIGLOT_SPLIT = (23_000, 1_345, 8_070)
FREYFACES_SPLIT = (1_565, 200, 200)
HISTOPATHOLOGY_SPLIT = (6_800, 2_000, 2_000)

#: Seed of the one-off binarization of the validation and test sets of
#: MNIST and OMNIGLOT. It belongs to the data set, so runs with different
#: seeds are evaluated on the same binary MNIST test set.
#: (777 is the value the VampPrior code passes to ``np.random.seed``; the
#: samples differ from its samples, since this module uses ``Generator``.)
EVAL_BINARIZATION_SEED = 777


class DataError(Exception):
    """A data file is missing, corrupt, or not what was expected."""


@dataclass
class Dataset:
    """A data set split into train, validation and test sets.

    Attributes:
        name: one of :data:`DATASETS`.
        train, valid, test: float32, C-contiguous arrays of shape ``(N, D)``.
        likelihood: ``"bernoulli"`` or ``"gaussian"``; the decoder to use.
        dynamic_binarization: if True, the trainer should draw a fresh
            Bernoulli sample (:func:`binarize`) of every training batch. The
            validation and test sets are then already binary.
        image_shape: ``(height, width)`` of one row reshaped as an image
            (row-major), or None when the rows are not images.
        split_id: which points are in which split: the data set's name, its
            split sizes and a SHA-256 of the three arrays (set on creation).
    """

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    likelihood: str
    dynamic_binarization: bool
    image_shape: Optional[tuple]
    split_id: str = ""

    def __post_init__(self):
        for split in ("train", "valid", "test"):
            x = np.ascontiguousarray(getattr(self, split), dtype=np.float32)
            if x.ndim != 2:
                raise ValueError(f"{self.name} {split}: expected a 2-D array, got shape {x.shape}")
            setattr(self, split, x)
        dims = {self.train.shape[1], self.valid.shape[1], self.test.shape[1]}
        if len(dims) != 1:
            raise ValueError(f"{self.name}: splits differ in dimension: {sorted(dims)}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"{self.name}: unknown likelihood {self.likelihood!r}")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != self.dim:
            raise ValueError(
                f"{self.name}: image_shape {self.image_shape} does not hold {self.dim} values"
            )
        self.split_id = split_fingerprint(self)

    @property
    def dim(self) -> int:
        """Number of values in one data point (D)."""
        return self.train.shape[1]


def split_fingerprint(ds: Dataset) -> str:
    """``name:train/valid/test:sha256-prefix`` of the split's contents.

    Two loads give the same string exactly when every split holds the same
    rows in the same order, so a checkpoint that stores it can refuse data
    that would mix its training points into the test set.
    """
    digest = hashlib.sha256()
    for split in (ds.train, ds.valid, ds.test):
        digest.update(str(split.shape).encode())
        digest.update(memoryview(np.ascontiguousarray(split)).cast("B"))
    sizes = "/".join(str(len(x)) for x in (ds.train, ds.valid, ds.test))
    return f"{ds.name}:{sizes}:{digest.hexdigest()[:16]}"


# ---------------------------------------------------------------------------
# Data directory, checksums


def data_dir(explicit=None) -> Path:
    """The folder holding the data files.

    In order of precedence: ``explicit`` (the CLI's ``--data-dir``), the
    environment variable ``IOPVAE_DATA``, then a per-user cache folder,
    ``$XDG_CACHE_HOME/iopvae`` or ``~/.cache/iopvae``. The folder is not
    created here.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("IOPVAE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache:
        return Path(cache).expanduser() / "iopvae"
    return Path.home() / ".cache" / "iopvae"


# ``load`` and ``download`` take a parameter called ``data_dir``, which hides
# the function of that name inside them.
_resolve_data_dir = data_dir


def _file_digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm, prefix)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path, sha256: str, hint: str = "") -> None:
    """Raise DataError unless the file at ``path`` has this SHA-256 digest.

    ``hint`` is appended to the error message.
    """
    path = Path(path)
    actual = _file_digest(path, "sha256")
    if actual != sha256.lower():
        raise DataError(f"{path}: sha256 is {actual}, expected {sha256.lower()}{hint}")


def _verify_git_blob(path: Path, blob_id: str, hint: str) -> None:
    # A git blob id is the SHA-1 of "blob <size>\0" followed by the content.
    header = b"blob %d\0" % path.stat().st_size
    actual = _file_digest(path, "sha1", header)
    if actual != blob_id:
        raise DataError(f"{path}: git blob id is {actual}, expected {blob_id}{hint}")


def _bypass_hint(name: str) -> str:
    return (
        f" (a different or damaged copy: delete it and download it again; a copy of {name} "
        "you knowingly changed can be loaded with load(..., verify_checksums=False) from "
        f"Python, or checked with `python datasets.py info {name} --no-verify`)"
    )


def _require(root: Path, relpath: str, name: str, verify_checksums: bool) -> Path:
    """Path of a data file that must exist; its checksum is checked if known."""
    path = root / relpath
    if not path.is_file():
        message = f"{path} not found: put {path.name} (from {SOURCES[name]}) there"
        if name in _DOWNLOAD_FILES:
            message += f", or run `python -m datasets download {name} --data-dir {root}`"
        raise DataError(message)
    if verify_checksums:
        if relpath in CHECKSUMS:
            verify(path, CHECKSUMS[relpath], _bypass_hint(name))
        elif relpath in GIT_BLOB_IDS:
            _verify_git_blob(path, GIT_BLOB_IDS[relpath], _bypass_hint(name))
    return path


# ---------------------------------------------------------------------------
# Binarization


def binarize(x, rng):
    """Bernoulli samples with success probabilities ``x`` (values in [0, 1]).

    Returns a float32 array of zeros and ones, ``x > u`` with u ~ U[0, 1).
    ``rng`` is a random Generator -- NumPy's, or CuPy's for a CuPy ``x``
    (the trainer's dynamic binarisation) -- or anything NumPy's
    ``default_rng`` accepts (e.g. an int seed).
    """
    if not hasattr(rng, "random"):
        rng = np.random.default_rng(rng)
    u = rng.random(x.shape, dtype=np.float32)
    return (x > u).astype(np.float32)


def _binarize_eval_splits(valid: np.ndarray, test: np.ndarray):
    """One fixed binarization of the validation and test sets.

    Each split gets its own stream, so the test set does not depend on the
    size of the validation set.
    """
    valid = binarize(valid, np.random.default_rng([EVAL_BINARIZATION_SEED, 0]))
    test = binarize(test, np.random.default_rng([EVAL_BINARIZATION_SEED, 1]))
    return valid, test


# ---------------------------------------------------------------------------
# File formats


def _gunzip(path: Path, size: int) -> bytes:
    """The content of a gzip file that should hold ``size`` bytes: reading stops one
    byte after them, so that a file that inflates to far more (a gzip bomb) is refused
    without being inflated whole into memory."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: not a complete gzip file ({e}); expected a gzip'd IDX file, "
            "delete it and download it again"
        ) from None
    if len(raw) > size:
        raise DataError(f"{path}: inflates to more than the {size} bytes expected "
                        "(a different or damaged file); delete it and download it again")
    return raw


def read_idx_images(path, count: int, rows: int = 28, cols: int = 28) -> np.ndarray:
    """Read a gzip'd IDX image file: a uint8 array of shape (count, rows, cols).

    The IDX format is a big-endian 32-bit magic number (2051 for unsigned
    byte, three dimensions), the three dimensions as big-endian 32-bit
    integers, then the pixels in row-major order.
    """
    path = Path(path)
    raw = _gunzip(path, 16 + count * rows * cols)
    if len(raw) < 16:
        raise DataError(
            f"{path}: {len(raw)} bytes after gunzip, expected a 16-byte IDX header and pixel data"
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic != 2051:
        what = " (that of an IDX label file)" if magic == 2049 else ""
        raise DataError(
            f"{path}: IDX magic number is {magic}{what}, expected 2051 (unsigned-byte images)"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=3, offset=4))
    if dims != (count, rows, cols):
        raise DataError(f"{path}: IDX dimensions are {dims}, expected {(count, rows, cols)}")
    expected = count * rows * cols
    got = len(raw) - 16
    if got != expected:
        raise DataError(
            f"{path}: expected {expected} bytes of pixel data for {count}x{rows}x{cols} images, "
            f"got {got} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(dims)


def _numpy_pickle_globals() -> dict:
    """The only globals that :class:`_NumpyUnpickler` will hand out."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    allowed = {}
    for package in ("numpy.core", "numpy._core"):
        # Old pickles name numpy.core, new ones numpy._core: both map to
        # whichever this numpy has, without importing the deprecated alias.
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes bytes as codecs.encode(str, "latin1") under protocols <= 2.
    allowed[("_codecs", "encode")] = codecs.encode
    for builtins in ("builtins", "__builtin__"):
        allowed[(builtins, "bytes")] = bytes
        allowed[(builtins, "bytearray")] = bytearray
    return allowed


class _NumpyUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, strings, numbers and numpy arrays.

    Unpickling can call any importable function; this one refuses every
    global that is not needed to rebuild a numpy array.
    """

    def __init__(self, file, source: Path):
        # latin1 decodes the byte strings of Python 2 pickles without loss.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _numpy_pickle_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle {module}.{name}; the file may hold "
                "only lists, dicts and numpy arrays, so it is not the expected data file"
            ) from None

    def persistent_load(self, pid):
        raise DataError(
            f"{self._source}: the pickle refers to external objects; expected plain numpy data"
        )


def _safe_unpickle(data: bytes, source: Path):
    try:
        return _NumpyUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as e:  # any of a dozen exception types for a corrupt pickle
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------
# Loaders


def _load_onehot(root: Path, verify_checksums: bool) -> Dataset:
    """The four 4-dimensional one-hot vectors, in equal numbers.

    Each split holds every vector exactly N/4 times (exactly uniform), in a
    fixed shuffled order.
    """
    rng = np.random.default_rng(SPLIT_SEEDS["onehot"])
    eye = np.eye(4, dtype=np.float32)
    train, valid, test = (eye[rng.permutation(np.arange(n) % 4)] for n in ONEHOT_SPLIT)
    return Dataset("onehot", train, valid, test, "bernoulli", False, None)


def _load_mnist(root: Path, verify_checksums: bool) -> Dataset:
    """MNIST in its published order.

    Train is the first 50,000 training images, valid the last 10,000, test
    the 10,000 test images. Pixels are divided by 255. Valid and test are
    binarized once (see EVAL_BINARIZATION_SEED); train stays gray, for
    dynamic binarization.
    """
    n_train, n_valid, n_test = MNIST_SPLIT
    train_path = _require(root, "mnist/train-images-idx3-ubyte.gz", "mnist", verify_checksums)
    images = read_idx_images(train_path, n_train + n_valid).reshape(n_train + n_valid, -1)
    test_path = _require(root, "mnist/t10k-images-idx3-ubyte.gz", "mnist", verify_checksums)
    test = read_idx_images(test_path, n_test).reshape(n_test, -1)
    images = images.astype(np.float32)
    images /= 255
    test = test.astype(np.float32)
    test /= 255
    valid, test = _binarize_eval_splits(images[n_train:], test)
    return Dataset("mnist", images[:n_train], valid, test, "bernoulli", True, (28, 28))


def _checked_array(x, path: Path, what: str, shape: tuple) -> np.ndarray:
    """``x`` as a float array of the given shape with values in [0, 1]."""
    x = np.asarray(x)
    if x.shape != shape:
        raise DataError(f"{path}: {what} has shape {x.shape}, expected {shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{path}: {what} has dtype {x.dtype}, expected numbers in [0, 1]")
    if x.size and not (np.min(x) >= 0 and np.max(x) <= 1):  # also false for NaN
        raise DataError(
            f"{path}: {what} has values in [{np.min(x)}, {np.max(x)}], expected values in [0, 1]"
        )
    return x.astype(np.float32)


def authors_order(n: int, seed: int) -> np.ndarray:
    """The order in which the authors' code puts ``n`` rows: ``np.arange(n)``
    shuffled in place by the legacy ``np.random.RandomState(seed)``.

    The legacy generator's stream is frozen by NumPy's compatibility policy, so
    this rebuilds their permutation exactly (``Generator.permutation`` would draw
    another one).
    """
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    return order


def _load_omniglot(root: Path, verify_checksums: bool) -> Dataset:
    """Burda et al.'s 28x28 OMNIGLOT, ``chardata.mat``.

    The file holds one image per column, each stored column-major (the
    MATLAB way); they are turned into row-major rows. The 24,345 training
    images are shuffled as the authors shuffle them (:func:`authors_order`,
    seed 42); the *first* 1,345 become the validation set and the rest the
    training set. Valid and test are binarized once (see
    EVAL_BINARIZATION_SEED).
    """
    n_train, n_valid, n_test = OMNIGLOT_SPLIT
    path = _require(root, "omniglot/chardata.mat", "omniglot", verify_checksums)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            f"{path}: reading MATLAB files needs scipy: `pip install scipy` "
            "(or install this project's `omniglot` extra)"
        ) from None
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for a bad file
        raise DataError(
            f"{path}: not a readable MATLAB v5 file ({type(e).__name__}: {e})"
        ) from None

    def images(key, n):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r}, expected 'data' and 'testdata'")
        x = _checked_array(mat[key], path, f"variable {key!r}", (784, n))
        # Column j is image j, column-major: x[c * 28 + r, j] is pixel (r, c).
        # Swapping the two image axes gives row-major rows.
        return x.T.reshape(n, 28, 28).transpose(0, 2, 1).reshape(n, 784)

    train = images("data", n_train + n_valid)
    test = images("testdata", n_test)
    train = train[authors_order(len(train), SPLIT_SEEDS["omniglot"])]
    valid, test = _binarize_eval_splits(train[:n_valid], test)
    return Dataset("omniglot", train[n_valid:], valid, test, "bernoulli", True, (28, 28))


def _load_freyfaces(root: Path, verify_checksums: bool) -> Dataset:
    """Brendan Frey's 1,965 face images (28x20, row-major), vae_vampprior's pickle.

    Pixels are divided by 256, so values lie in [0, 255/256]. (vae_vampprior
    itself divides by 255; 256 is what this project's specification asks
    for, as in Kingma & Welling's original VAE code and the IOP authors' code.)
    The split is the authors': the images in :func:`authors_order` (seed 42),
    the first 1,565 for training, the next 200 for validation, the last 200
    for the test.
    """
    n_train, n_valid, n_test = FREYFACES_SPLIT
    n = n_train + n_valid + n_test
    path = _require(root, "freyfaces/freyfaces.pkl", "freyfaces", verify_checksums)
    obj = _safe_unpickle(path.read_bytes(), path)
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], np.ndarray):
        raise DataError(
            f"{path}: expected a pickled list whose first element is a numpy array, "
            f"got {type(obj).__name__}"
        )
    x = obj[0]
    if x.shape != (n, 560) or x.dtype != np.uint8:
        raise DataError(
            f"{path}: array has shape {x.shape} and dtype {x.dtype}, expected ({n}, 560) uint8"
        )
    order = authors_order(n, SPLIT_SEEDS["freyfaces"])
    x = x[order].astype(np.float32) / np.float32(256)
    return Dataset(
        "freyfaces",
        x[:n_train],
        x[n_train : n_train + n_valid],
        x[n_train + n_valid :],
        "gaussian",
        False,
        (28, 20),
    )


def _histopathology_bytes(root: Path, verify_checksums: bool) -> tuple:
    """The pickle's bytes and a name for messages.

    Reads ``histopathology.pkl`` or, failing that, the member of that name
    inside the original ``histopathology.pkl.tar.gz`` (nothing is extracted).
    """
    folder = root / "histopathology"
    plain = folder / "histopathology.pkl"
    archive = folder / "histopathology.pkl.tar.gz"
    if plain.is_file() or not archive.is_file():
        path = _require(
            root, "histopathology/histopathology.pkl", "histopathology", verify_checksums
        )
        return path.read_bytes(), path
    _require(root, "histopathology/histopathology.pkl.tar.gz", "histopathology", verify_checksums)
    unpack = f"unpack it with `tar -xzf {archive} -C {folder}` so that {plain} exists"
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pkl")]
            if len(members) != 1:
                raise DataError(
                    f"{archive}: expected one .pkl file inside, found {len(members)}; {unpack}"
                )
            return tar.extractfile(members[0]).read(), Path(f"{archive}:{members[0].name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar.gz archive ({e}); {unpack}") from None


def _load_histopathology(root: Path, verify_checksums: bool) -> Dataset:
    """Tomczak & Welling's gray histopathology patches (28x28), as given.

    The pickle (Python 2) is a dict with keys 'training', 'validation' and
    'test', each a collection of 28x28 images in [0, 1] (the layout
    vae_householder_flow and vae_vampprior read). Values are clipped to
    [1/512, 1 - 1/512]. The splits are the file's.
    """
    data, source = _histopathology_bytes(root, verify_checksums)
    obj = _safe_unpickle(data, source)
    keys = ("training", "validation", "test")
    if not isinstance(obj, dict) or not all(k in obj for k in keys):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{source}: expected a dict with keys {list(keys)}, got {found}")
    splits = []
    for key, n in zip(keys, HISTOPATHOLOGY_SPLIT):
        try:
            x = np.asarray(obj[key])
        except Exception as e:
            raise DataError(f"{source}: {key!r} is not an array of images ({e})") from None
        if x.size != n * 784:
            raise DataError(f"{source}: {key!r} has shape {x.shape}, expected {n} images of 28x28")
        x = _checked_array(x.reshape(n, 784), source, repr(key), (n, 784))
        splits.append(np.clip(x, np.float32(1 / 512), np.float32(1 - 1 / 512)))
    return Dataset("histopathology", *splits, "gaussian", False, (28, 28))


_LOADERS = {
    "onehot": _load_onehot,
    "mnist": _load_mnist,
    "omniglot": _load_omniglot,
    "freyfaces": _load_freyfaces,
    "histopathology": _load_histopathology,
}


def _check_name(name) -> str:
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; expected one of: {', '.join(DATASETS)}")
    return key


def load(name: str, data_dir=None, *, verify_checksums: bool = True) -> Dataset:
    """Load a data set by name (one of :data:`DATASETS`).

    Args:
        name: the data set.
        data_dir: the data folder; see :func:`data_dir` for the default.
        verify_checksums: check files that have a known checksum
            (:data:`CHECKSUMS`, :data:`GIT_BLOB_IDS`) before reading them.

    Raises:
        DataError: for an unknown name or a missing, corrupt or unexpected file.
    """
    key = _check_name(name)
    return _LOADERS[key](_resolve_data_dir(data_dir), verify_checksums)


# ---------------------------------------------------------------------------
# Download


def _urlopen(url: str, timeout: float):
    """Open ``url`` for reading; returns a binary file-like context manager."""
    request = urllib.request.Request(url, headers={"User-Agent": "iopvae-datasets"})
    return urllib.request.urlopen(request, timeout=timeout)


def _fetch_verified(url: str, dest: Path, sha256: str, fetch, timeout: float) -> None:
    """Stream ``url`` into ``dest`` atomically; the file appears only if its sha256 is right."""

    def stream(out):
        digest = hashlib.sha256()
        with fetch(url, timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(f"sha256 of the download is {digest.hexdigest()}, expected {sha256}")

    atomic_write(dest, stream)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def download(
    name: str, data_dir=None, *, fetch: Optional[Callable] = None, timeout: float = 60.0
) -> list:
    """Download the files of a data set into the data folder.

    Each file is streamed into a temporary file next to its destination,
    checked against :data:`CHECKSUMS`, and renamed into place; on any failure
    the temporary file is deleted. A file already present with the right
    checksum is kept. Mirrors in :data:`URLS` are tried in order.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the data folder; see :func:`data_dir` for the default.
        fetch: ``fetch(url, timeout)`` returning a binary file-like context
            manager; defaults to ``urllib.request.urlopen``. For tests.
        timeout: seconds to wait for the network.

    Returns:
        The paths of the data set's files (an empty list for "onehot").

    Raises:
        DataError: for OMNIGLOT and Histopathology (no canonical URL), or
            when a file cannot be downloaded or does not verify.
    """
    key = _check_name(name)
    root = _resolve_data_dir(data_dir)
    if key == "onehot":
        return []
    if key not in _DOWNLOAD_FILES:
        where = {
            "omniglot": "omniglot/chardata.mat",
            "histopathology": "histopathology/histopathology.pkl",
        }[key]
        raise DataError(
            f"no canonical download URL for {key}: put {Path(where).name} "
            f"(from {SOURCES[key]}) at {root / where}"
        )
    fetch = fetch or _urlopen
    paths = []
    for relpath in _DOWNLOAD_FILES[key]:
        dest = root / relpath
        sha256 = CHECKSUMS[relpath]
        if dest.exists():
            actual = _file_digest(dest, "sha256")
            if actual != sha256:
                raise DataError(
                    f"{dest} exists but its sha256 is {actual}, expected {sha256}; "
                    "delete it to download a fresh copy"
                )
            paths.append(dest)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        failures = []
        for url in URLS[relpath]:
            try:
                _fetch_verified(url, dest, sha256, fetch, timeout)
                break
            except urllib.error.URLError as e:
                failures.append(f"{url}: {_one_line(getattr(e, 'reason', e))}")
            except (DataError, OSError, ValueError) as e:
                failures.append(f"{url}: {_one_line(e)}")
        else:
            raise DataError(
                f"could not download {dest.name}: put it (from {SOURCES[key]}) at {dest} "
                f"[{'; '.join(failures)}]"
            )
        paths.append(dest)
    return paths


# ---------------------------------------------------------------------------
# Command line


def summary(ds: Dataset) -> str:
    """A few lines describing a loaded data set."""
    lines = [
        f"{ds.name}: dim {ds.dim}, image shape {ds.image_shape}, likelihood {ds.likelihood}, "
        f"dynamic binarization {ds.dynamic_binarization}"
    ]
    for split in ("train", "valid", "test"):
        x = getattr(ds, split)
        lines.append(
            f"  {split:5s} {str(x.shape):14s} {x.dtype}  "
            f"min {x.min():.4f}  max {x.max():.4f}  mean {x.mean():.4f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python datasets.py", description="IOP-VAE data sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (
        ("download", "download a data set's files"),
        ("info", "load a data set and describe it"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name", help=", ".join(DATASETS))
        sub.add_argument(
            "--data-dir",
            default=None,
            help="data folder (default: $IOPVAE_DATA, else ~/.cache/iopvae)",
        )
        if command == "info":
            sub.add_argument("--no-verify", action="store_true", help="skip checksum checks")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            paths = download(args.name, args.data_dir)
            if not paths:
                print(f"{args.name} is generated; nothing to download")
            for path in paths:
                print(f"ok {path}")
        else:
            ds = load(args.name, args.data_dir, verify_checksums=not args.no_verify)
            print(summary(ds))
    except (DataError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
