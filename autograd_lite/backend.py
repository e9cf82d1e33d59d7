"""The array backend: the one place that chooses between NumPy, CuPy and the simulator.

Model code never imports numpy-vs-cupy itself; it asks ``xp()`` for the active
array module.  CuPy is imported lazily, only when it is asked for.  Arrays
cross between host and device only through ``as_array`` and ``to_numpy``
(``to_numpy_all`` for many at once).

``cupy-sim`` is a simulated GPU (``autograd_lite.testing.cupy_sim``): CuPy's API, strictness and
device-resident scalars, computed by NumPy, with every device-to-host
transfer counted (``count_syncs``).  It runs wherever NumPy does, so code
meant for CuPy is tested without a GPU.
"""
import contextlib
import os

import numpy as np

from .testing import cupy_sim

_BACKENDS = ("numpy", "cupy", "cupy-sim")
_DEVICE_BACKENDS = ("cupy", "cupy-sim")
_state = {"name": None, "xp": None, "array_type": None}


class BackendError(RuntimeError):
    """The requested backend cannot be used, or arrays of two backends were mixed."""


def _import_cupy():
    try:
        import cupy  # noqa: F401 (lazy import by design: the only place cupy is imported)
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
    """Select the array module: ``"numpy"``, ``"cupy"`` or ``"cupy-sim"``."""
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {_BACKENDS}")
    if name == "cupy":
        _state["xp"] = _import_cupy()
    else:
        _state["xp"] = np if name == "numpy" else cupy_sim.module()
    _state["array_type"] = _state["xp"].ndarray
    _state["name"] = name


def backend_name():
    """The active backend's name; the first call reads ``AUTOGRAD_LITE_BACKEND``."""
    if _state["name"] is None:
        name = os.environ.get("AUTOGRAD_LITE_BACKEND", "numpy")
        try:
            set_backend(name)
        except BackendError as exc:
            raise BackendError(f"AUTOGRAD_LITE_BACKEND={name}: {exc}; unset the variable "
                               f"(for NumPy) or set it to one of {', '.join(_BACKENDS)}") \
                from None
    return _state["name"]


def xp():
    """The active array module (``numpy``, ``cupy`` or the simulated ``cupy``)."""
    backend_name()
    return _state["xp"]


def array_type():
    """The array class of the active backend: what every tensor's data is (``numpy.ndarray``,
    ``cupy.ndarray`` or the simulator's); one ``type(a) is`` test tells the usual case."""
    backend_name()
    return _state["array_type"]


def cupy_available():
    """True when CuPy imports and sees at least one GPU (never raises)."""
    try:
        _import_cupy()
        return True
    except BackendError:
        return False


def array_backend(a):
    """``"numpy"``, ``"cupy"`` or ``"cupy-sim"`` for an array (``None`` for plain
    Python numbers)."""
    if isinstance(a, np.ndarray) or isinstance(a, np.generic):
        return "numpy"
    if isinstance(a, cupy_sim.ndarray):
        return "cupy-sim"
    module = type(a).__module__ or ""
    if module.split(".")[0] == "cupy":
        return "cupy"
    return None


def as_array(a, dtype=None):
    """Host-to-device boundary: an array of the active backend holding ``a``."""
    kind = array_backend(a)
    if kind in _DEVICE_BACKENDS and kind != backend_name():
        a = a.get()   # from another device through the host
    return xp().asarray(a, dtype=dtype)


def to_numpy(a):
    """Device-to-host boundary: a NumPy array (a Tensor's data is unwrapped)."""
    if getattr(a, "is_tensor", False):
        a = a.data
    if array_backend(a) in _DEVICE_BACKENDS:
        return a.get()
    return np.asarray(a)


def to_numpy_all(arrays):
    """Device-to-host boundary for many arrays at once: NumPy copies of the values of the
    dict ``arrays`` (or of the list), under the same keys (in the same order).

    Every ``to_numpy`` of a device array is a transfer that waits for the device;
    here the device arrays are packed, one flat array per dtype, copied to the
    host in one transfer each and cut apart there (views of that one copy).
    Host values (NumPy arrays, numbers) are copied as they are; Tensors give
    their data.
    """
    keyed = isinstance(arrays, dict)
    items = list(arrays.items()) if keyed else list(enumerate(arrays))
    out, groups = {}, {}
    for key, a in items:
        if getattr(a, "is_tensor", False):
            a = a.data
        if array_backend(a) in _DEVICE_BACKENDS and array_backend(a) == backend_name():
            groups.setdefault(a.dtype, []).append((key, a))
        else:
            out[key] = np.array(to_numpy(a), copy=True)
    for group in groups.values():
        if len(group) == 1:
            (key, a), = group
            out[key] = a.get()
            continue
        host = xp().concatenate([a.reshape(-1) for _, a in group]).get()  # one transfer
        offset = 0
        for key, a in group:
            out[key] = host[offset:offset + a.size].reshape(a.shape)
            offset += a.size
    return {key: out[key] for key, _ in items} if keyed else [out[key] for key, _ in items]


def read_numbers(*values):
    """Python floats of scalars on the device (or the host), with one device-to-host
    transfer for all of them; ``None`` stays ``None``.

    On a GPU each read waits until the device has finished its queued work, so a
    training loop that read its loss every step would stall every step; it reads a
    round's numbers here, once."""
    present = [xp().asarray(v, dtype=np.float64) for v in values if v is not None]
    host = iter(to_numpy_all(present))   # one float64 group: one transfer
    return tuple(None if v is None else float(next(host)) for v in values)

def default_rng(seed=None):
    """A seeded random Generator of the active backend."""
    return xp().random.default_rng(seed)


def sync_count():
    """Device-to-host transfers and synchronisations on ``cupy-sim`` so far (this process).

    Each ``.get()``, ``to_numpy``, ``float()``/``int()``/``bool()``/``.item()``/
    ``.tolist()``/printing of a device array, boolean-mask indexing and
    data-dependent-size call (``nonzero``, ``unique``, ...) counts one.  Only
    the simulator counts: under ``numpy`` and ``cupy`` nothing is added.
    """
    return cupy_sim.counts()["syncs"]


def upload_count():
    """Host-to-device copies on ``cupy-sim`` so far: ``as_array``/``asarray`` of host
    data, host arrays used as indices, ``ndarray.set``."""
    return cupy_sim.counts()["uploads"]


@contextlib.contextmanager
def count_syncs():
    """Count the simulator's transfers inside a block::

        with count_syncs() as counted:
            loss = float(model_step())
        assert counted.syncs == 1 and counted.uploads == 0

    ``counted.syncs`` and ``counted.uploads`` are live inside the block and
    frozen at its end.
    """
    counter = cupy_sim.TransferCounter()
    try:
        yield counter
    finally:
        counter.stop()
