"""Shared test setup: the repository on sys.path, and autograd_lite's backend per test.

Every test starts and ends on the NumPy backend (``_numpy_backend_around_each_test``),
so a test that switches to CuPy, or fails half-way, cannot leak its backend into
the next one.  Tests that take the ``on_backend`` fixture run once per backend:
``numpy``, ``cupy-sim`` (the simulated GPU, which runs everywhere, so every CI run
checks the CuPy code paths) and ``cupy``, skipped with the reason below where CuPy
or a GPU is missing (``needs_cupy``), all said in one line of pytest's summary
(``pytest_runtest_makereport``), not one line per test.
"""
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograd_lite as ag  # noqa: E402

CUPY_MISSING = "CuPy with a CUDA GPU is not available here"
HAS_CUPY = ag.cupy_available()
BACKENDS = ["numpy", "cupy-sim", "cupy"]


def needs_cupy():
    """Skip the test calling it where CuPy with a GPU is missing."""
    if not HAS_CUPY:
        pytest.skip(CUPY_MISSING)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Every skip for want of CuPy reported at ``needs_cupy``: one line of the summary."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and \
            report.longrepr[2].endswith(CUPY_MISSING):
        report.longrepr = (__file__, inspect.getsourcelines(needs_cupy)[1], CUPY_MISSING)
    return report


@pytest.fixture(autouse=True)
def _numpy_backend_around_each_test():
    ag.set_backend("numpy")
    yield
    ag.set_backend("numpy")


@pytest.fixture(autouse=True)
def _small_ais_for_tiny_models(monkeypatch):
    """IOP's evaluation runs AIS for log Z at the real runs' settings, minutes on a
    FreyFaces model; the tests' tiny models use fewer chains and temperatures (AIS's own
    accuracy is tested in test_ais.py at settings of its own)."""
    from experiments import grid
    monkeypatch.setattr(grid, "AIS_SETTINGS", {"chains": 64, "temperatures": 64, "leapfrog": 2})


@pytest.fixture(params=BACKENDS)
def on_backend(request):
    """Run the test under each backend; the value is the backend's name."""
    if request.param == "cupy":
        needs_cupy()
    ag.set_backend(request.param)
    return request.param


@pytest.fixture
def make_tensor():
    """``make_tensor(array_like, requires_grad=False)``: a Tensor on the active backend."""
    def make(value, requires_grad=False):
        return ag.Tensor(ag.as_array(np.asarray(value)), requires_grad=requires_grad)
    return make


# --- runs and checks shared by the tests of the program's promises -----------------------
TINY = ["--epochs", "2", "--hidden", "8", "--warmup", "1"]


def one_error_line(err, *names):
    """``err`` is one ``error:`` line, no traceback, naming each of ``names``, and never
    a temporary file's name or NumPy's hint about unsafe loading."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "allow_pickle" not in lines[0] and ".tmp" not in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from experiments import cli
    out = tmp_path_factory.mktemp("runs") / "vae"
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY, "--samples", "2",
                     "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def iop_run(tmp_path_factory):
    from experiments import cli
    out = tmp_path_factory.mktemp("runs") / "iop"
    assert cli.main(["train", "--dataset", "onehot", "--method", "iop", *TINY, "--j2", "1",
                     "--samples", "2", "--out", str(out)]) == 0
    return out


def damaged_copy(run, folder, change):
    """A copy of ``run``'s checkpoint in ``folder`` with ``change(arrays, meta)`` applied."""
    import json
    with np.load(run / "checkpoint.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    change(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "checkpoint.npz", **arrays)
    return folder
