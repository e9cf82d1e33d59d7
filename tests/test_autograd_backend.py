"""The array backend: one place picks NumPy or CuPy, CuPy is imported lazily and
fails with one clear error, arrays cross host and device only at as_array and
to_numpy, and ops refuse arrays of another backend."""
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import autograd_lite as ag
from autograd_lite import backend
from conftest import HAS_CUPY, ROOT, needs_cupy


class FakeCupyArray:
    """Stands in for a cupy.ndarray on a machine without CuPy: only its class's
    module name matters to ``array_backend``."""

    __module__ = "cupy._core.core"

    def __init__(self, array):
        self._array = np.asarray(array)
        self.shape, self.dtype, self.ndim = self._array.shape, self._array.dtype, self._array.ndim

    def get(self):
        return self._array.copy()


@pytest.fixture
def fresh_backend_state(monkeypatch):
    """The backend as if nothing had chosen one yet (so the env var is read again)."""
    monkeypatch.setitem(backend._state, "name", None)
    monkeypatch.setitem(backend._state, "xp", None)


def test_numpy_is_the_default_backend(fresh_backend_state, monkeypatch):
    monkeypatch.delenv("AUTOGRAD_LITE_BACKEND", raising=False)
    assert ag.backend_name() == "numpy" and ag.xp() is np


def test_the_environment_variable_chooses_the_backend(fresh_backend_state, monkeypatch):
    monkeypatch.setenv("AUTOGRAD_LITE_BACKEND", "numpy")
    assert ag.xp() is np
    monkeypatch.setitem(backend._state, "name", None)
    monkeypatch.setenv("AUTOGRAD_LITE_BACKEND", "fortran")
    with pytest.raises(ag.BackendError, match="unknown backend 'fortran'"):
        ag.xp()


def test_unknown_backend_names_are_refused():
    with pytest.raises(ag.BackendError, match="choose one of"):
        ag.set_backend("jax")
    assert ag.backend_name() == "numpy"


@pytest.mark.skipif(HAS_CUPY, reason="CuPy and a GPU are present here")
def test_asking_for_cupy_without_cupy_raises_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)   # makes `import cupy` fail everywhere
    with pytest.raises(ag.BackendError, match="backend 'cupy' needs CuPy and a CUDA GPU"):
        ag.set_backend("cupy")
    assert ag.backend_name() == "numpy" and ag.xp() is np   # the failed switch changed nothing
    assert not ag.cupy_available()


def test_cupy_without_a_gpu_raises_the_same_kind_of_error(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice")
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(ag.BackendError, match="needs a CUDA GPU.*cudaErrorNoDevice"):
        ag.set_backend("cupy")
    fake.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(ag.BackendError, match="none was found"):
        ag.set_backend("cupy")
    assert ag.backend_name() == "numpy"


def test_importing_autograd_lite_does_not_import_cupy():
    """Not even the simulated GPU (nor its API snapshot) imports CuPy."""
    code = ("import sys; sys.path.insert(0, %r); import autograd_lite, autograd_lite.nn, "
            "autograd_lite.optim, autograd_lite.testing.cupy_api; "
            "autograd_lite.set_backend('cupy-sim'); "
            "float(autograd_lite.xp().ones(3).sum()); print('cupy' in sys.modules)" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"AUTOGRAD_LITE_BACKEND": "numpy", "PATH": ""})
    assert out.stdout.strip() == "False"


def test_only_the_backend_module_imports_cupy():
    """cupy_api imports CuPy as well, inside the function that regenerates the API snapshot
    by hand (``python -m autograd_lite.testing.cupy_api``); nothing else does."""
    for path in Path(ag.__file__).parent.glob("*.py"):
        source = path.read_text()
        if path.name not in ("backend.py", "cupy_api.py"):
            assert not re.search(r"^\s*(import|from)\s+cupy\b", source, re.M), path.name


def test_array_backend_tells_numpy_cupy_and_plain_values_apart():
    assert ag.array_backend(np.zeros(2)) == "numpy"
    assert ag.array_backend(np.float32(1)) == "numpy"
    assert ag.array_backend(FakeCupyArray([1.0])) == "cupy"
    assert ag.array_backend(1.5) is None and ag.array_backend([1, 2]) is None


def test_as_array_and_to_numpy_are_the_crossing_points(on_backend):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    device = ag.as_array(host)
    assert ag.array_backend(device) == on_backend and device.dtype == np.float32
    assert ag.as_array(host, dtype=np.float64).dtype == np.float64
    back = ag.to_numpy(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    np.testing.assert_array_equal(ag.to_numpy(ag.Tensor(device)), host)
    np.testing.assert_array_equal(ag.Tensor(device).numpy(), host)


def test_as_array_brings_device_arrays_to_the_host_under_numpy():
    fake = FakeCupyArray([[1.0, 2.0]])
    np.testing.assert_array_equal(ag.as_array(fake), [[1.0, 2.0]])
    np.testing.assert_array_equal(ag.to_numpy(fake), [[1.0, 2.0]])


def test_default_rng_is_a_seeded_generator_of_the_backend(on_backend):
    a = ag.to_numpy(ag.default_rng(3).random(4))
    b = ag.to_numpy(ag.default_rng(3).random(4))
    np.testing.assert_array_equal(a, b)
    assert ag.array_backend(ag.default_rng(0).random(2)) == on_backend


@pytest.mark.parametrize("op", [ag.add, ag.mul, ag.matmul, lambda a, b: a - b])
def test_an_op_given_arrays_of_two_backends_raises(op):
    host = ag.Tensor(np.ones((2, 2)), requires_grad=True)
    device = ag.Tensor(FakeCupyArray(np.ones((2, 2))))
    assert ag.array_backend(device.data) == "cupy"       # kept as it is, not converted
    for a, b in ((host, device), (device, host)):
        with pytest.raises(ag.BackendError, match="numpy.*cupy|cupy.*numpy"):
            op(a, b)


def test_an_op_on_arrays_of_an_inactive_backend_raises_naming_the_op():
    device = ag.Tensor(FakeCupyArray([1.0, 2.0]))
    with pytest.raises(ag.BackendError, match="exp: .*active backend is numpy.*as_array"):
        ag.exp(device)


def test_real_numpy_and_cupy_arrays_do_not_mix():
    needs_cupy()
    import cupy  # the test may; autograd_lite's model code never does

    ag.set_backend("cupy")
    with pytest.raises(ag.BackendError):
        ag.add(ag.Tensor(cupy.ones(2)), ag.Tensor(np.ones(2)))
    ag.set_backend("numpy")
    with pytest.raises(ag.BackendError):
        ag.add(ag.Tensor(np.ones(2)), ag.Tensor(cupy.ones(2)))


# --- denormal floats flushed to zero (autograd_lite/denormals.py) ------------------------
needs_mxcsr = pytest.mark.skipif(
    not ag.denormals.supported(),
    reason="denormals are flushed only on Linux x86-64 (the SSE control register MXCSR)")
TINY32 = np.finfo(np.float32).tiny                     # the smallest normal float32


def survives(value):
    """Whether a float32 ``value`` times 1 stays non-zero on this thread now."""
    return bool((np.array([value], np.float32) * np.float32(1.0))[0] != 0)


@needs_mxcsr
def test_denormals_are_zero_inside_the_block_and_back_after():
    denormal = TINY32 / 8
    assert survives(denormal)
    with ag.denormals_flushed():
        assert not survives(denormal)                                  # read as zero
        assert (np.array([TINY32], np.float32) * np.float32(0.5))[0] == 0  # made as zero
        assert survives(TINY32)                                        # normals untouched
        with ag.denormals_flushed():
            pass
        assert not survives(denormal)                  # an inner block leaves the outer's
    assert survives(denormal)


@needs_mxcsr
def test_training_runs_with_denormals_flushed():
    """Trainer.train (Algorithm 1) runs inside the block; after it, they are back."""
    import datasets
    from experiments import runs

    seen = []

    class Recording(runs.Trainer):
        def measure(self, record):
            seen.append(survives(TINY32 / 8))

    config = runs.Config(dataset="onehot", method="vae", hidden=8, epochs=2, warmup=1)
    Recording(config, datasets.load("onehot"), out_dir=None, log=lambda line: None).train()
    assert seen == [False, False] and survives(TINY32 / 8)


def test_without_the_register_the_block_changes_nothing(monkeypatch):
    """Where MXCSR cannot be reached (another OS or CPU), the block is a no-op."""
    monkeypatch.setattr(ag.denormals, "_LIBM", None)
    with ag.denormals_flushed():
        assert survives(TINY32 / 8)
