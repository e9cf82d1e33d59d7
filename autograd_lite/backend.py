"""The array backend: the one place that chooses between NumPy and CuPy.

Model code never imports numpy-vs-cupy itself; it asks ``xp()`` for the active
array module.  CuPy is imported lazily, only when it is asked for.  Arrays
cross between host and device only through ``as_array`` and ``to_numpy``.
"""
import os

import numpy as np

_BACKENDS = ("numpy", "cupy")
_state = {"name": None, "xp": None}


class BackendError(RuntimeError):
    """The requested backend cannot be used, or arrays of two backends were mixed."""


def _import_cupy():
    try:
        import cupy  # noqa: lazy import by design: the only place cupy is imported
    except Exception as exc:  # ImportError, or a CUDA library failing to load
        raise BackendError(
            f"backend 'cupy' needs CuPy and a CUDA GPU: importing cupy failed ({exc}); "
            "install the 'cuda' extra on a GPU machine or use set_backend('numpy')") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendError(f"backend 'cupy' needs a CUDA GPU: none is usable ({exc})") from None
    if count < 1:
        raise BackendError("backend 'cupy' needs a CUDA GPU: none was found")
    return cupy


def set_backend(name):
    """Select the array module: ``"numpy"`` or ``"cupy"``."""
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {_BACKENDS}")
    _state["xp"] = np if name == "numpy" else _import_cupy()
    _state["name"] = name


def backend_name():
    """The active backend's name; the first call reads ``AUTOGRAD_LITE_BACKEND``."""
    if _state["name"] is None:
        set_backend(os.environ.get("AUTOGRAD_LITE_BACKEND", "numpy"))
    return _state["name"]


def xp():
    """The active array module (``numpy`` or ``cupy``)."""
    backend_name()
    return _state["xp"]


def cupy_available():
    """True when CuPy imports and sees at least one GPU (never raises)."""
    try:
        _import_cupy()
        return True
    except BackendError:
        return False


def array_backend(a):
    """``"numpy"`` or ``"cupy"`` for an array (``None`` for plain Python numbers)."""
    if isinstance(a, np.ndarray) or isinstance(a, np.generic):
        return "numpy"
    module = type(a).__module__ or ""
    if module.split(".")[0] == "cupy":
        return "cupy"
    return None


def as_array(a, dtype=None):
    """Host-to-device boundary: an array of the active backend holding ``a``."""
    module = xp()
    if module is np and array_backend(a) == "cupy":
        a = a.get()
    return module.asarray(a, dtype=dtype)


def to_numpy(a):
    """Device-to-host boundary: a NumPy array (a Tensor's data is unwrapped)."""
    if getattr(a, "is_tensor", False):
        a = a.data
    if array_backend(a) == "cupy":
        return a.get()
    return np.asarray(a)


def default_rng(seed=None):
    """A seeded random Generator of the active backend."""
    return xp().random.default_rng(seed)
