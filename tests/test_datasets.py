"""Tests for datasets.py, on small or zero-filled files written in the real formats.

No network is used: downloads go through an injected ``fetch``.
"""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
from datasets import DataError  # noqa: E402

# ---------------------------------------------------------------------------
# Writers for the real file formats


def idx_bytes(array, magic=2051):
    """An IDX file: big-endian magic, big-endian dims, raw uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_gz(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=1))


def index_images(n, bits=16):
    """n images whose first `bits` pixels hold the image index in binary (0 or 255).

    Pixels 0/255 survive binarization unchanged, so the index can be read back
    from any split. Pixel 100 is 128 everywhere (a gray value to binarize).
    """
    x = np.zeros((n, 784), dtype=np.uint8)
    idx = np.arange(n)
    x[:, :bits] = ((idx[:, None] >> np.arange(bits)) & 1) * 255
    x[:, 100] = 128
    return x


def decode_index(x, bits=16):
    return ((x[:, :bits] > 0.5).astype(np.int64) << np.arange(bits)).sum(axis=1)


def write_freyfaces(folder, array=None):
    if array is None:
        idx = np.arange(1965)
        array = np.full((1965, 560), 7, dtype=np.uint8)
        array[:, 0] = idx // 256
        array[:, 1] = idx % 256
        array[:, 2] = 255
    path = folder / "freyfaces" / "freyfaces.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps([array], protocol=2))
    return path


def histopathology_dict():
    data = {}
    for key, n in zip(("training", "validation", "test"), datasets.HISTOPATHOLOGY_SPLIT):
        x = np.full((n, 28, 28), 0.5, dtype=np.float32)
        x[:, 0, 0] = 0.0
        x[:, 0, 1] = 1.0
        x[:, 0, 2] = 0.25
        data[key] = x
    return data


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


class RunsShell:
    """Unpickling this calls os.system; a safe loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist_data")
    for name, n in (("train", 60_000), ("t10k", 10_000)):
        images = index_images(n).reshape(n, 28, 28)
        write_gz(root / "mnist" / f"{name}-images-idx3-ubyte.gz", idx_bytes(images))
    for name, n in (("train", 60_000), ("t10k", 10_000)):
        labels = idx_bytes(np.zeros(n, np.uint8), magic=2049)
        write_gz(root / "mnist" / f"{name}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def mnist(mnist_root):
    return datasets.load("mnist", mnist_root, verify_checksums=False)


# ---------------------------------------------------------------------------
# data_dir


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("IOPVAE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert datasets.data_dir() == tmp_path / "env"
    monkeypatch.delenv("IOPVAE_DATA")
    assert datasets.data_dir() == tmp_path / "xdg" / "iopvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.data_dir() == tmp_path / "home" / ".cache" / "iopvae"


def test_load_uses_env_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("IOPVAE_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "freyfaces" / "freyfaces.pkl")):
        datasets.load("freyfaces")


# ---------------------------------------------------------------------------
# onehot


def test_onehot_balanced_and_onehot():
    ds = datasets.load("onehot")
    assert (ds.name, ds.likelihood, ds.dynamic_binarization, ds.image_shape, ds.dim) == (
        "onehot", "bernoulli", False, None, 4)
    for x, n in zip((ds.train, ds.valid, ds.test), datasets.ONEHOT_SPLIT):
        assert x.shape == (n, 4) and x.dtype == np.float32 and x.flags.c_contiguous
        assert set(np.unique(x)) == {0.0, 1.0}
        assert np.all(x.sum(axis=1) == 1)
        assert np.all(x.sum(axis=0) == n // 4)


def test_onehot_split_fixed():
    a, b = datasets.load("onehot"), datasets.load("onehot")
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert a.split_id == b.split_id and a.split_id.startswith("onehot:1000/100/1000:")
    assert not np.array_equal(a.train[:8], np.eye(4)[np.arange(8) % 4])  # shuffled


def test_load_takes_no_run_seed():
    """Splits belong to the data set: a run's seed cannot reach them."""
    with pytest.raises(TypeError):
        datasets.load("onehot", None, 3)
    with pytest.raises(TypeError):
        datasets.load("onehot", seed=3)


# ---------------------------------------------------------------------------
# binarize


def test_binarize_statistics():
    p = np.repeat(np.array([0.0, 0.1, 0.5, 0.9, 1.0], dtype=np.float32), 40_000).reshape(5, -1)
    b = datasets.binarize(p, np.random.default_rng(0))
    assert b.dtype == np.float32 and b.shape == p.shape
    assert set(np.unique(b)) <= {0.0, 1.0}
    assert b[0].sum() == 0 and b[4].sum() == b.shape[1]
    np.testing.assert_allclose(b.mean(axis=1), [0.0, 0.1, 0.5, 0.9, 1.0], atol=0.01)


def test_binarize_seeded():
    x = np.random.default_rng(0).random((50, 30))
    assert np.array_equal(datasets.binarize(x, 5), datasets.binarize(x, np.random.default_rng(5)))
    assert not np.array_equal(datasets.binarize(x, 5), datasets.binarize(x, 6))


# ---------------------------------------------------------------------------
# MNIST


def test_mnist_split_and_scaling(mnist):
    assert mnist.likelihood == "bernoulli"
    assert mnist.dynamic_binarization and mnist.image_shape == (28, 28)
    for x, n in zip((mnist.train, mnist.valid, mnist.test), datasets.MNIST_SPLIT):
        assert x.shape == (n, 784) and x.dtype == np.float32 and x.flags.c_contiguous
    # Train: first 50,000 training images, in order, gray values / 255.
    assert np.array_equal(decode_index(mnist.train), np.arange(50_000))
    assert np.all(mnist.train[:, 100] == np.float32(128) / np.float32(255))
    # Valid: last 10,000; test: the test file in order.
    assert np.array_equal(decode_index(mnist.valid), np.arange(50_000, 60_000))
    assert np.array_equal(decode_index(mnist.test), np.arange(10_000))


def test_mnist_eval_sets_binarized_once(mnist, mnist_root):
    for x in (mnist.valid, mnist.test):
        assert set(np.unique(x)) == {0.0, 1.0}
        assert abs(x[:, 100].mean() - 128 / 255) < 0.03
    again = datasets.load("mnist", mnist_root, verify_checksums=False)
    assert np.array_equal(again.valid, mnist.valid) and np.array_equal(again.test, mnist.test)


def test_mnist_checksum_mismatch_names_digests(mnist_root):
    path = mnist_root / "mnist" / "train-images-idx3-ubyte.gz"
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        datasets.load("mnist", mnist_root)
    message = str(err.value)
    assert str(path) in message and actual in message
    assert datasets.CHECKSUMS["mnist/train-images-idx3-ubyte.gz"] in message
    assert "verify_checksums=False" in message


def test_mnist_missing_file_message(tmp_path):
    with pytest.raises(DataError) as err:
        datasets.load("mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert "not found" in message and "python -m datasets download mnist" in message


def _mnist_error(tmp_path, payload):
    write_gz(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", payload)
    with pytest.raises(DataError) as err:
        datasets.load("mnist", tmp_path, verify_checksums=False)
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    return str(err.value)


def test_mnist_wrong_magic(tmp_path):
    message = _mnist_error(tmp_path, idx_bytes(np.zeros((60_000,), np.uint8), magic=2049))
    assert "2049" in message and "2051" in message


def test_mnist_wrong_dims(tmp_path):
    message = _mnist_error(tmp_path, idx_bytes(np.zeros((10, 28, 28), np.uint8)))
    assert "(10, 28, 28)" in message and "(60000, 28, 28)" in message


def test_mnist_truncated_payload(tmp_path):
    header = idx_bytes(np.zeros((0, 28, 28), np.uint8))[:4] + b"".join(
        d.to_bytes(4, "big") for d in (60_000, 28, 28))
    message = _mnist_error(tmp_path, header + bytes(1000))
    assert str(60_000 * 784) in message and "got 1000" in message


def test_mnist_truncated_gzip(tmp_path):
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    write_gz(path, idx_bytes(np.zeros((60_000, 28, 28), np.uint8)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not a complete gzip file"):
        datasets.load("mnist", tmp_path, verify_checksums=False)


# ---------------------------------------------------------------------------
# OMNIGLOT


def write_omniglot(folder, n_train=24_345, n_test=8_070):
    scipy_io = pytest.importorskip("scipy.io",
                                   reason="scipy is needed to write and read .mat files")
    images = []
    for n in (n_train, n_test):
        # uint8 0/1 values keep the file small; the real file holds floats in [0, 1].
        x = np.zeros((n, 28, 28), dtype=np.uint8)  # (image, row, column)
        idx = np.arange(n)
        x[:, 0, :15] = (idx[:, None] >> np.arange(15)) & 1  # index in the first row
        x[:, 3, 10] = 1  # pixel (row 3, column 10)
        # chardata.mat stores each image column-major in one column.
        images.append(x.transpose(0, 2, 1).reshape(n, 784).T)
    path = folder / "omniglot" / "chardata.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"data": images[0], "testdata": images[1]}, do_compression=True)
    return path


def omniglot_index(x):
    return (x[:, :15].astype(np.int64) << np.arange(15)).sum(axis=1)


def test_omniglot(tmp_path):
    write_omniglot(tmp_path)
    # verify_checksums=False: this is not the original file (git blob id).
    ds = datasets.load("omniglot", tmp_path, verify_checksums=False)
    assert (ds.likelihood, ds.dynamic_binarization, ds.image_shape) == ("bernoulli", True, (28, 28))
    for x, n in zip((ds.train, ds.valid, ds.test), datasets.OMNIGLOT_SPLIT):
        assert x.shape == (n, 784) and x.dtype == np.float32 and x.flags.c_contiguous
        # Row-major rows: pixel (3, 10) is at 3 * 28 + 10, not at 10 * 28 + 3.
        assert np.all(x[:, 3 * 28 + 10] == 1) and np.all(x[:, 10 * 28 + 3] == 0)
    assert np.array_equal(omniglot_index(ds.test), np.arange(8_070))
    # Train and valid are a seeded shuffle of all training images.
    train_idx, valid_idx = omniglot_index(ds.train), omniglot_index(ds.valid)
    assert np.array_equal(np.sort(np.concatenate([train_idx, valid_idx])), np.arange(24_345))
    assert not np.array_equal(train_idx, np.sort(train_idx))
    # The authors' recipe: the training rows shuffled by the legacy generator seeded 42,
    # the first 1,345 as validation, the rest as training.
    order = np.arange(24_345)
    np.random.RandomState(42).shuffle(order)
    assert np.array_equal(valid_idx, order[:1_345])
    assert np.array_equal(train_idx, order[1_345:])
    again = datasets.load("omniglot", tmp_path, verify_checksums=False)
    assert np.array_equal(again.valid, ds.valid) and np.array_equal(again.train, ds.train)
    assert np.array_equal(again.test, ds.test)  # test set: fixed order, fixed binarization
    assert again.split_id == ds.split_id


def test_omniglot_wrong_shape(tmp_path):
    write_omniglot(tmp_path, n_train=100)
    expected = r"chardata.mat: variable 'data' has shape \(784, 100\), expected \(784, 24345\)"
    with pytest.raises(DataError, match=expected):
        datasets.load("omniglot", tmp_path, verify_checksums=False)


# ---------------------------------------------------------------------------
# FreyFaces


def test_freyfaces_split_and_scaling(tmp_path):
    write_freyfaces(tmp_path)
    ds = datasets.load("freyfaces", tmp_path, verify_checksums=False)
    assert (ds.likelihood, ds.dynamic_binarization, ds.image_shape, ds.dim) == (
        "gaussian", False, (28, 20), 560)
    for x, n in zip((ds.train, ds.valid, ds.test), (1_565, 200, 200)):
        assert x.shape == (n, 560) and x.dtype == np.float32 and x.flags.c_contiguous
        assert np.all(x[:, 3:] == np.float32(7 / 256)) and np.all(x[:, 2] == np.float32(255 / 256))
    both = np.concatenate([ds.train, ds.valid, ds.test]) * 256
    index = np.rint(both[:, 0]).astype(int) * 256 + np.rint(both[:, 1]).astype(int)
    assert np.array_equal(np.sort(index), np.arange(1965))
    assert not np.array_equal(index, np.arange(1965))  # shuffled
    same = datasets.load("freyfaces", tmp_path, verify_checksums=False)
    assert np.array_equal(same.test, ds.test) and np.array_equal(same.train, ds.train)
    assert same.split_id == ds.split_id
    # The authors' recipe, rebuilt here: arange shuffled by the legacy generator seeded 42,
    # then train = order[:1565], valid = order[1565:1765], test = order[1765:].
    order = np.arange(1965)
    np.random.RandomState(42).shuffle(order)
    assert np.array_equal(index, order)
    raw = np.full((1965, 560), 7, dtype=np.uint8)
    raw[:, 0], raw[:, 1], raw[:, 2] = np.arange(1965) // 256, np.arange(1965) % 256, 255
    for split, rows in ((ds.train, order[:1565]), (ds.valid, order[1565:1765]),
                        (ds.test, order[1765:])):
        assert np.array_equal(split, raw[rows].astype(np.float32) / 256)


def test_authors_order_is_the_legacy_shuffle_of_rows():
    """Shuffling an index and shuffling the rows themselves give the same order (the
    authors' OMNIGLOT loader shuffles rows, their FreyFaces loader an index)."""
    rows = np.arange(24_345 * 2).reshape(24_345, 2)
    np.random.RandomState(42).shuffle(rows)
    assert np.array_equal(rows[:, 0] // 2, datasets.authors_order(24_345, 42))
    # NumPy's Generator draws another permutation: the old split, not the authors'
    assert not np.array_equal(datasets.authors_order(1965, 42),
                              np.random.default_rng(42).permutation(1965))


def test_freyfaces_wrong_shape(tmp_path):
    write_freyfaces(tmp_path, np.zeros((1965, 784), dtype=np.uint8))
    expected = r"freyfaces.pkl: array has shape \(1965, 784\).*expected \(1965, 560\) uint8"
    with pytest.raises(DataError, match=expected):
        datasets.load("freyfaces", tmp_path, verify_checksums=False)


def test_freyfaces_checksum_mismatch(tmp_path):
    path = write_freyfaces(tmp_path)
    with pytest.raises(DataError) as err:
        datasets.load("freyfaces", tmp_path)
    message = str(err.value)
    assert str(path) in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert datasets.CHECKSUMS["freyfaces/freyfaces.pkl"] in message
    assert "verify_checksums=False" in message and "--no-verify" in message


def test_bad_pickle(tmp_path):
    path = tmp_path / "freyfaces" / "freyfaces.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps([np.zeros((1965, 560), np.uint8)], protocol=2)[:-50])
    with pytest.raises(DataError, match="freyfaces.pkl: not a readable pickle"):
        datasets.load("freyfaces", tmp_path, verify_checksums=False)


@pytest.mark.parametrize("name", ["freyfaces", "histopathology"])
def test_malicious_pickle_rejected(tmp_path, name):
    marker = tmp_path / "pwned"
    write_pickle(tmp_path / name / f"{name}.pkl", [RunsShell(marker)])
    with pytest.raises(DataError, match="refusing to unpickle (posix|os|nt).system"):
        datasets.load(name, tmp_path, verify_checksums=False)
    assert not marker.exists()


def test_safe_unpickler_reads_other_protocols(tmp_path):
    array = np.arange(1965 * 560).astype(np.uint8).reshape(1965, 560)
    for protocol in (0, 4, 5):
        path = tmp_path / "freyfaces" / "freyfaces.pkl"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(pickle.dumps([array], protocol=protocol))
        ds = datasets.load("freyfaces", tmp_path, verify_checksums=False)
        assert ds.train.shape == (1565, 560)


# ---------------------------------------------------------------------------
# Histopathology


def test_histopathology(tmp_path):
    write_pickle(tmp_path / "histopathology" / "histopathology.pkl", histopathology_dict())
    ds = datasets.load("histopathology", tmp_path)
    assert (ds.likelihood, ds.dynamic_binarization, ds.image_shape) == ("gaussian", False, (28, 28))
    for x, n in zip((ds.train, ds.valid, ds.test), (6_800, 2_000, 2_000)):
        assert x.shape == (n, 784) and x.dtype == np.float32 and x.flags.c_contiguous
        assert np.all(x[:, 0] == np.float32(1 / 512)) and np.all(x[:, 1] == np.float32(1 - 1 / 512))
        assert np.all(x[:, 2] == 0.25) and np.all(x[:, 3:] == 0.5)


def test_histopathology_from_tar_gz(tmp_path):
    payload = pickle.dumps(histopathology_dict(), protocol=2)
    archive = tmp_path / "histopathology" / "histopathology.pkl.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("histopathology.pkl")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    ds = datasets.load("histopathology", tmp_path, verify_checksums=False)
    assert ds.valid.shape == (2_000, 784)
    with pytest.raises(DataError, match="git blob id is"):
        datasets.load("histopathology", tmp_path)  # not the original archive


def test_histopathology_wrong_size(tmp_path):
    data = histopathology_dict()
    data["validation"] = data["validation"][:1999]
    write_pickle(tmp_path / "histopathology" / "histopathology.pkl", data)
    expected = r"histopathology.pkl: 'validation' has shape \(1999, 28, 28\), expected 2000"
    with pytest.raises(DataError, match=expected):
        datasets.load("histopathology", tmp_path)


def test_histopathology_wrong_structure(tmp_path):
    write_pickle(tmp_path / "histopathology" / "histopathology.pkl", [np.zeros(3)])
    with pytest.raises(DataError, match="expected a dict with keys"):
        datasets.load("histopathology", tmp_path)


def test_missing_files_name_path_without_download_hint(tmp_path):
    for name, file in (("histopathology", "histopathology.pkl"), ("omniglot", "chardata.mat")):
        with pytest.raises(DataError) as err:
            datasets.load(name, tmp_path)
        assert str(tmp_path / name / file) in str(err.value)
        assert "download" not in str(err.value)


def test_unknown_name():
    with pytest.raises(DataError, match="onehot, mnist, omniglot, freyfaces, histopathology"):
        datasets.load("cifar")


# ---------------------------------------------------------------------------
# Download


def serve(files):
    """A fetch that serves bytes by the URL's last path component."""
    calls = []

    def fetch(url, timeout):
        calls.append(url)
        return io.BytesIO(files[url.rsplit("/", 1)[-1]])

    fetch.calls = calls
    return fetch


def offline(url, timeout):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_download_freyfaces(tmp_path, monkeypatch):
    payload = pickle.dumps([np.zeros((1965, 560), np.uint8)], protocol=2)
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(datasets.CHECKSUMS, "freyfaces/freyfaces.pkl", digest)
    fetch = serve({"freyfaces.pkl": payload})
    paths = datasets.download("freyfaces", tmp_path, fetch=fetch)
    assert paths == [tmp_path / "freyfaces" / "freyfaces.pkl"]
    assert paths[0].read_bytes() == payload
    assert os.listdir(tmp_path / "freyfaces") == ["freyfaces.pkl"]  # no temporary file left
    assert datasets.load("freyfaces", tmp_path).train.shape == (1565, 560)  # verifies the checksum
    # A verified file is kept, not fetched again.
    datasets.download("freyfaces", tmp_path, fetch=offline)


def test_download_mnist_falls_back_to_mirror(tmp_path, monkeypatch):
    files = {}
    for relpath in datasets.URLS:
        if relpath.startswith("mnist/"):
            files[Path(relpath).name] = relpath.encode()
            digest = hashlib.sha256(relpath.encode()).hexdigest()
            monkeypatch.setitem(datasets.CHECKSUMS, relpath, digest)
    good = serve(files)
    first_mirror = datasets.URLS["mnist/train-images-idx3-ubyte.gz"][0].rsplit("/", 1)[0]

    def fetch(url, timeout):
        if url.startswith(first_mirror):
            raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)
        return good(url, timeout)

    paths = datasets.download("mnist", tmp_path, fetch=fetch)
    assert sorted(p.name for p in paths) == sorted(files)
    assert sorted(os.listdir(tmp_path / "mnist")) == sorted(files)


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    fetch = serve({"freyfaces.pkl": b"not the real file"})
    with pytest.raises(DataError) as err:
        datasets.download("freyfaces", tmp_path, fetch=fetch)
    message = str(err.value)
    assert hashlib.sha256(b"not the real file").hexdigest() in message
    assert datasets.CHECKSUMS["freyfaces/freyfaces.pkl"] in message
    assert len(fetch.calls) == len(datasets.URLS["freyfaces/freyfaces.pkl"])
    assert os.listdir(tmp_path / "freyfaces") == []


def test_download_offline_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        datasets.download("mnist", tmp_path, fetch=offline)
    message = str(err.value)
    assert "\n" not in message
    assert "could not download train-images-idx3-ubyte.gz: put it" in message
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert os.listdir(tmp_path / "mnist") == []


def test_download_refuses_a_different_existing_file(tmp_path):
    write_freyfaces(tmp_path)
    with pytest.raises(DataError, match="exists but its sha256 is"):
        datasets.download("freyfaces", tmp_path, fetch=offline)


@pytest.mark.parametrize("name", ["omniglot", "histopathology"])
def test_download_without_url(tmp_path, name):
    expected = f"no canonical download URL for {name}: put .* at {tmp_path / name}"
    with pytest.raises(DataError, match=expected):
        datasets.download(name, tmp_path, fetch=offline)


# ---------------------------------------------------------------------------
# Command line


def test_cli_error_is_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "datasets.py"), "info", "mnist", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not found" in lines[0]


def test_cli_unknown_name(capsys):
    assert datasets.main(["download", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data set 'nope'") and err.count("\n") == 1


def test_cli_info(capsys):
    assert datasets.main(["info", "onehot"]) == 0
    out = capsys.readouterr().out
    assert "(1000, 4)" in out and "(100, 4)" in out


# ---------------------------------------------------------------------------
# The real files, when IOPVAE_DATA points at them


def _real_dir(*relpaths):
    root = os.environ.get("IOPVAE_DATA")
    if not root:
        pytest.skip("IOPVAE_DATA is not set; set it to a folder holding the real data files "
                    "to run this test")
    missing = [p for p in relpaths if not (Path(root) / p).is_file()]
    if missing:
        pytest.skip(f"IOPVAE_DATA={root} lacks {', '.join(missing)}")
    return root


def test_real_mnist():
    root = _real_dir("mnist/train-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz")
    ds = datasets.load("mnist", root)  # verifies the checksums
    assert [len(x) for x in (ds.train, ds.valid, ds.test)] == [50_000, 10_000, 10_000]
    assert ds.train.min() == 0 and ds.train.max() == 1
    assert abs(ds.train.mean() - 0.1307) < 0.002  # the well-known MNIST pixel mean


def test_real_freyfaces():
    root = _real_dir("freyfaces/freyfaces.pkl")
    ds = datasets.load("freyfaces", root)
    all_x = np.concatenate([ds.train, ds.valid, ds.test])
    assert all_x.min() == np.float32(8 / 256) and all_x.max() == np.float32(238 / 256)
