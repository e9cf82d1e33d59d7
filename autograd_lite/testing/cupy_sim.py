"""``cupy-sim``: a simulated CUDA device that offers exactly CuPy's API, computed by NumPy.

Code written for the ``cupy`` backend can be exercised here without a GPU.
The simulator is strict where CuPy is strict, so a test that passes on it
has already met the rules that a GPU would enforce:

* **Only CuPy's names.**  The module (``xp.*``), ``ndarray``, ``ufunc`` and
  ``random.Generator`` offer the names that CuPy offers (read from the
  snapshot ``cupy_api.json``, see ``cupy_api``) and nothing else:
  ``xp.random.default_rng(0).permutation`` raises AttributeError, as it
  would under CuPy.  A few CuPy names that NumPy cannot stand in for
  (``xp.cuda``, ``xp.fuse``, ``ndarray.data``, ...) raise AttributeError
  that says they are not simulated.
* **No implicit crossing to the host.**  ``np.asarray(device_array)`` raises
  TypeError with CuPy's message; ``.get()`` (or ``backend.to_numpy``) is
  the way out.  NumPy arrays are refused as operands of ufuncs, operators
  and functions (TypeError), except where CuPy copies them to the device
  itself: ``asarray``/``array``, advanced indices, and values assigned
  through an advanced index.
* **Scalars stay on the device.**  Reductions and integer indexing give
  0-d device arrays, not Python numbers: turning one into a number
  (``float``, ``int``, ``bool``, ``.item()``, ``.tolist()``, printing it)
  is a device-to-host transfer that waits for the device.
* **No floating-point warnings**: a GPU raises none, so none are raised.

Every device-to-host transfer or synchronisation (those conversions,
``.get()``, boolean-mask indexing, ``nonzero`` and other calls whose result
size depends on the data) adds one to a ``syncs`` count, and every copy from
the host (``asarray`` of host data, host indices, ``.set``) adds one to an
``uploads`` count; ``TransferCounter`` reads them.

NumPy functions given device arrays follow CuPy's own protocol: a ufunc or
array function that CuPy also has runs on the device (``np.exp(a)`` returns a
device array, as it does for a ``cupy.ndarray``), anything else raises
TypeError.

Random numbers come from NumPy's PCG64 (CuPy uses XORWOW), so a seed gives
the same numbers here as on the ``numpy`` backend, not as on a GPU.
"""
import json
import pickle
import types
from pathlib import Path

import numpy as np

# CuPy's names, written by ``python -m autograd_lite.testing.cupy_api`` (see cupy_api.py)
API = json.loads(Path(__file__).with_name("cupy_api.json").read_text())
CUPY_VERSION = API["cupy_version"]
IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                       "Please use `.get()` to construct a NumPy array explicitly.")

_counts = {"syncs": 0, "uploads": 0}


# --- counting transfers ----------------------------------------------------------------
def _count(kind):
    _counts[kind] += 1


def counts():
    """Totals since the process started: ``{"syncs": n, "uploads": m}``."""
    return dict(_counts)


class TransferCounter:
    """Syncs (device-to-host transfers) and uploads (host-to-device copies) since it started.

    The counts are live until ``stop`` freezes them (``backend.count_syncs``
    stops it when its block ends).
    """

    def __init__(self):
        self._start, self._end = counts(), None

    def stop(self):
        self._end = counts()

    def _since_start(self, kind):
        now = self._end if self._end is not None else _counts
        return now[kind] - self._start[kind]

    @property
    def syncs(self):
        return self._since_start("syncs")

    @property
    def uploads(self):
        return self._since_start("uploads")

    def __repr__(self):
        return f"TransferCounter(syncs={self.syncs}, uploads={self.uploads})"


# --- moving values between the simulated device and NumPy ------------------------------
def _is_scalar(value):
    """A Python or NumPy scalar: what CuPy's kernels take besides device arrays."""
    return type(value) in (int, float, bool, complex) or isinstance(value, np.generic)


def _host_array_error(value):
    return TypeError(f"Unsupported type {type(value)}: a NumPy array is host memory; "
                     "cupy-sim, like CuPy, needs device arrays here (copy it with "
                     "asarray / autograd_lite.as_array first)")


def _unwrap(value, keep, host_ok=False):
    """The NumPy data behind ``value`` for a call: device arrays give their data
    (remembered in ``keep`` so that a result that *is* an input keeps its
    wrapper), lists and tuples are opened, NumPy arrays are refused unless
    ``host_ok`` (then they are copied, as an upload copies)."""
    if isinstance(value, ndarray):
        keep[id(value._a)] = value
        return value._a
    if isinstance(value, np.ndarray):
        if not host_ok:
            raise _host_array_error(value)
        return np.array(value, copy=True)  # device memory is never the host's memory
    if type(value) in (list, tuple):
        return type(value)(_unwrap(v, keep, host_ok) for v in value)
    return value


def _wrap(result, keep):
    """Device arrays for the arrays and NumPy scalars in a NumPy result."""
    if isinstance(result, np.ndarray):
        kept = keep.get(id(result))
        return kept if kept is not None else ndarray._of(result)
    if isinstance(result, np.generic):
        return ndarray._of(np.asarray(result))
    if isinstance(result, list):
        return [_wrap(r, keep) for r in result]
    if isinstance(result, tuple):
        items = [_wrap(r, keep) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    return result


def _call(function, args, kwargs, host_ok=False):
    """``function`` (a NumPy callable) on the data of device arguments, results wrapped."""
    keep = {}
    args = [_unwrap(a, keep, host_ok) for a in args]
    kwargs = {k: _unwrap(v, keep, host_ok) for k, v in kwargs.items()}
    with np.errstate(all="ignore"):
        result = function(*args, **kwargs)
    return _wrap(result, keep)


def _from_host(array):
    """A device copy of a NumPy array (used by pickle)."""
    _count("uploads")
    return ndarray._of(np.array(array))


def _device_index(key):
    """(NumPy index, advanced, mask) for ``key``: device arrays in it give their data;
    host arrays and lists in it are copied to the device, as CuPy does.  ``advanced``
    says an array or list is part of it, ``mask`` that one of them is boolean."""
    parts = key if type(key) is tuple else (key,)
    plain, advanced, mask = [], False, False
    for part in parts:
        if isinstance(part, (ndarray, np.ndarray, list)):
            if not isinstance(part, ndarray):
                _count("uploads")
            data = part._a if isinstance(part, ndarray) else np.asarray(part)
            advanced = True
            mask = mask or data.dtype == np.bool_
            plain.append(data)
        else:
            plain.append(part)
    return (tuple(plain) if type(key) is tuple else plain[0]), advanced, mask


def _defers_to(other):
    """CuPy's rule for ``array <op> other``: hand over to ``other``'s reflected operator
    when it opts out of NumPy's ufunc protocol, or outranks arrays by priority."""
    if isinstance(other, (ndarray, np.ndarray)):
        return False
    try:
        handler = other.__array_ufunc__
    except AttributeError:
        return getattr(other, "__array_priority__", 0) > ndarray.__array_priority__
    return handler is None


# --- ufuncs ---------------------------------------------------------------------------------
def _apply(function, inputs, outputs=(), **kwargs):
    """A ufunc call as CuPy checks it: inputs are device arrays or scalars, outputs are
    device arrays; the result is ``outputs[0]`` itself when one was given."""
    for x in inputs:
        if not (isinstance(x, ndarray) or _is_scalar(x)):
            raise (_host_array_error(x) if isinstance(x, np.ndarray)
                   else TypeError(f"Unsupported type {type(x)}"))
    for y in outputs:
        if not isinstance(y, ndarray):
            raise TypeError(f"Output arguments must be cupy.ndarray, not {type(y)}")
    if outputs:
        kwargs["out"] = outputs if len(outputs) > 1 else outputs[0]
    return _call(function, inputs, kwargs)


class ufunc:
    """A CuPy ufunc on the simulated device (a NumPy ufunc or function underneath)."""

    def __init__(self, name, function):
        self.__name__ = name
        self._function = function

    name = property(lambda self: self.__name__)
    nin = property(lambda self: getattr(self._function, "nin", 1))
    nout = property(lambda self: getattr(self._function, "nout", 1))
    nargs = property(lambda self: getattr(self._function, "nargs", 2))
    types = property(lambda self: getattr(self._function, "types", []))

    def __repr__(self):
        return f"<ufunc '{self.__name__}'>"

    def __call__(self, *args, out=None, **kwargs):
        inputs, outputs = args[:self.nin], args[self.nin:]
        if out is not None:
            outputs = out if isinstance(out, tuple) else (out,)
        return _apply(self._function, inputs, tuple(outputs), **kwargs)

    def _numpy_method(self, method):
        if not isinstance(self._function, np.ufunc):
            raise NotImplementedError(f"cupy-sim does not simulate {self.__name__}.{method}")
        return getattr(self._function, method)

    def at(self, a, indices, b=None):
        """In place: ``a[indices] op= b``, with repeated indices applied each time."""
        if not isinstance(a, ndarray):
            raise TypeError(f"{self.__name__}.at: the target must be a cupy.ndarray")
        index, _, _ = _device_index(indices)
        if isinstance(b, np.ndarray):
            _count("uploads")  # CuPy copies host values to the device here
        args = (a._a, index) if b is None else (a._a, index, _unwrap(b, {}, host_ok=True))
        with np.errstate(all="ignore"):
            self._numpy_method("at")(*args)

    def reduce(self, array, *args, **kwargs):
        return _call(self._numpy_method("reduce"), (array,) + args, kwargs)

    def accumulate(self, array, *args, **kwargs):
        return _call(self._numpy_method("accumulate"), (array,) + args, kwargs)

    def reduceat(self, array, indices, *args, **kwargs):
        return _call(self._numpy_method("reduceat"), (array, indices) + args, kwargs)

    def outer(self, a, b, **kwargs):
        return _apply(self._numpy_method("outer"), (a, b), **kwargs)


# --- the device array -----------------------------------------------------------------------
class _Flags:
    """CuPy's ``ndarray.flags``: three read-only attributes, also readable by key."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, c_contiguous, f_contiguous, owndata):
        self.c_contiguous, self.f_contiguous, self.owndata = c_contiguous, f_contiguous, owndata

    def __getitem__(self, key):
        return getattr(self, key.lower())

    def __repr__(self):
        return "\n".join(f"  {name.upper()} : {getattr(self, name)}" for name in self.__slots__)


def _binary(numpy_ufunc, reflected=False):
    """``a <op> b`` (or its reflection) as CuPy runs it."""
    def operator(self, other):
        if not reflected and _defers_to(other):
            return NotImplemented
        return _apply(numpy_ufunc, (other, self) if reflected else (self, other))
    return operator


def _in_place(numpy_ufunc):
    def operator(self, other):
        return _apply(numpy_ufunc, (self, other), (self,))
    return operator


def _unary(numpy_ufunc):
    def operator(self):
        return _apply(numpy_ufunc, (self,))
    return operator


def _through_host(convert):
    """A conversion to a host value: one transfer (``.get()``), then ``convert``."""
    def method(self, *args, **kwargs):
        return convert(self.get(), *args, **kwargs)
    return method


class ndarray:
    """A multi-dimensional array on the simulated device.

    It holds a NumPy array (``_a``) and shows CuPy's ``cupy.ndarray``
    interface on it: the arithmetic, indexing and the methods CuPy has
    (``shape``, ``sum``, ``astype``, ``get``, ...), with CuPy's rules for
    host data and for scalars (see the module docstring).  The constructor
    is CuPy's (an uninitialised array of ``shape``).
    """

    __slots__ = ("_a", "__weakref__")  # CuPy arrays take weak references too
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("cupy-sim does not simulate ndarray(memptr=, strides=)")
        self._a = np.empty(shape, dtype=dtype, order=order)

    @classmethod
    def _of(cls, data):
        """The device array holding the NumPy array ``data`` (not copied)."""
        array = object.__new__(cls)
        array._a = data
        return array

    # --- attributes ----------------------------------------------------------------
    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, shape):
        self._a.shape = shape

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: self if self.ndim < 2 else ndarray._of(self._a.T))
    mT = property(lambda self: ndarray._of(self._a.mT))
    real = property(lambda self: ndarray._of(self._a.real))
    imag = property(lambda self: ndarray._of(self._a.imag))

    @property
    def base(self):
        base = self._a.base
        return ndarray._of(base) if isinstance(base, np.ndarray) else None

    @property
    def flags(self):
        a = self._a
        return _Flags(a.flags.c_contiguous, a.flags.f_contiguous, self.base is None)

    def __getattr__(self, name):
        if name in _NDARRAY_NAMES:
            raise AttributeError(f"cupy-sim does not simulate cupy.ndarray.{name}")
        raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} (CuPy "
                             f"{CUPY_VERSION} has none; cupy-sim offers only CuPy's names)")

    def __dir__(self):
        return sorted(_NDARRAY_NAMES)

    # --- the way to and from the host ------------------------------------------------
    def get(self, stream=None, order="C", out=None):
        """A NumPy copy of the array: a device-to-host transfer (counted)."""
        _count("syncs")
        if out is None:
            return np.array(self._a, order=order, copy=True)
        if not isinstance(out, np.ndarray):
            raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
        if out.dtype != self.dtype or out.shape != self.shape:
            raise ValueError(f"get(out=): expected {self.dtype} {self.shape}, "
                             f"got {out.dtype} {out.shape}")
        np.copyto(out, self._a)
        return out

    def set(self, arr, stream=None):
        """Copy a NumPy array of the same dtype and shape in: a host-to-device copy (counted)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype or arr.shape != self.shape:
            raise ValueError(f"set(): expected {self.dtype} {self.shape}, "
                             f"got {arr.dtype} {arr.shape}")
        _count("uploads")
        self._a[...] = arr

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().item()

    tolist = _through_host(np.ndarray.tolist)
    tobytes = _through_host(np.ndarray.tobytes)
    tofile = _through_host(np.ndarray.tofile)
    __bool__ = _through_host(bool)
    __int__ = _through_host(int)
    __float__ = _through_host(float)
    __complex__ = _through_host(complex)
    __bytes__ = _through_host(bytes)
    __oct__ = _through_host(oct)
    __hex__ = _through_host(hex)
    __repr__ = _through_host(repr)
    __str__ = _through_host(str)
    __format__ = _through_host(format)

    def dump(self, file):
        pickle.dump(self, file, -1)

    def dumps(self):
        return pickle.dumps(self, -1)

    def __reduce__(self):
        return _from_host, (self.get(),)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    # --- NumPy's protocols: CuPy's answers ---------------------------------------------
    def __array_ufunc__(self, numpy_ufunc, method, *inputs, **kwargs):
        """``np.<ufunc>(device array, ...)``: CuPy's ufunc of that name, if CuPy has one."""
        if method != "__call__" or numpy_ufunc.__name__ not in _MODULE_NAMES:
            return NotImplemented
        outputs = kwargs.get("out", ())
        for x in inputs + tuple(outputs):
            if not (isinstance(x, (ndarray, np.ndarray)) or _is_scalar(x)):
                return NotImplemented
        if "out" in kwargs:
            kwargs["out"] = outputs[0]
        try:
            device_ufunc = getattr(module(), numpy_ufunc.__name__)
        except AttributeError:  # a CuPy name that cupy-sim does not simulate
            return NotImplemented
        if numpy_ufunc.__name__ in ("greater", "greater_equal", "less", "less_equal",
                                    "equal", "not_equal"):
            inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x
                           for x in inputs)
        return device_ufunc(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """``np.<function>(device array, ...)``: CuPy's function of that name, if CuPy has one."""
        namespace = module()
        try:
            for part in func.__module__.split(".")[1:]:
                namespace = getattr(namespace, part)
            function = getattr(namespace, func.__name__)
        except AttributeError:
            return NotImplemented
        if any(t not in (ndarray, np.ndarray) for t in types):
            return NotImplemented
        return function(*args, **kwargs)

    # --- indexing ------------------------------------------------------------------------
    def __getitem__(self, key):
        index, _, mask = _device_index(key)
        if mask:
            _count("syncs")  # CuPy reads the number of True entries back to size the result
        return _wrap(self._a[index], {})

    def __setitem__(self, key, value):
        index, advanced, mask = _device_index(key)
        if mask:
            _count("syncs")
        if isinstance(value, ndarray):
            value = value._a
        elif isinstance(value, (np.ndarray, list, tuple)):
            value = _host_value_for_setitem(value, advanced)
        with np.errstate(all="ignore"):
            self._a[index] = value

    def __delitem__(self, key):
        raise ValueError("cannot delete array elements")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    # --- methods with CuPy's own rules ---------------------------------------------------
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if casting is not None or subok is not None:
            raise TypeError("astype: casting= and subok= are not supported by CuPy")
        data = self._a.astype(dtype, order=order, copy=copy)
        return self if data is self._a else ndarray._of(data)

    def fill(self, value):
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        self._a.fill(value._a if isinstance(value, ndarray) else value)

    def nonzero(self):
        _count("syncs")  # the number of non-zero entries is read back
        return _wrap(self._a.nonzero(), {})

    def compress(self, condition, axis=None, out=None):
        _count("syncs")
        return _call(np.compress, (condition, self), {"axis": axis, "out": out})

    def ptp(self, axis=None, out=None, keepdims=False):
        return _call(np.ptp, (self,), {"axis": axis, "out": out, "keepdims": keepdims})

    def take(self, indices, axis=None, out=None):
        index, _, _ = _device_index(indices)
        return _call(self._a.take, (index,), {"axis": axis, "out": out})

    def put(self, indices, values, mode="wrap"):
        index, _, _ = _device_index(indices)
        _call(self._a.put, (index, values), {"mode": mode}, host_ok=True)

    def _scatter(self, numpy_ufunc, slices, value):
        index, _, _ = _device_index(slices)
        with np.errstate(all="ignore"):
            numpy_ufunc.at(self._a, index, _unwrap(value, {}, host_ok=True))

    def scatter_add(self, slices, value):
        self._scatter(np.add, slices, value)

    def scatter_max(self, slices, value):
        self._scatter(np.maximum, slices, value)

    def scatter_min(self, slices, value):
        self._scatter(np.minimum, slices, value)


def _host_value_for_setitem(value, advanced):
    """A host value assigned into a device array: CuPy copies it to the device behind an
    advanced index, and otherwise takes only scalars (it calls ``fill``)."""
    if advanced:
        _count("uploads")
        return value
    if isinstance(value, np.ndarray) and value.shape == ():
        return value.item()
    if isinstance(value, np.ndarray):
        raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
    raise TypeError(f"Unsupported type {type(value)}")


def _device_method(name):
    """``ndarray.<name>`` for a method that NumPy's ndarray has with CuPy's meaning."""
    def method(self, *args, **kwargs):
        return _call(getattr(self._a, name), args, kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"cupy.ndarray.{name} (NumPy's ndarray.{name} on the device data)."
    return method


_OPERATORS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.divide,
              "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power,
              "matmul": np.matmul, "and": np.bitwise_and, "or": np.bitwise_or,
              "xor": np.bitwise_xor, "lshift": np.left_shift, "rshift": np.right_shift,
              "divmod": np.divmod}
_COMPARISONS = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
                "gt": np.greater, "ge": np.greater_equal}
_UNARY = {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}
_NDARRAY_NAMES = frozenset(API["ndarray"])


def _install_ndarray_interface():
    """Give ``ndarray`` CuPy's operators, and NumPy's methods for CuPy's other method names."""
    for name, function in {**_OPERATORS, **_COMPARISONS}.items():
        for dunder, made in ((f"__{name}__", _binary(function)),
                             (f"__r{name}__", _binary(function, reflected=True)),
                             (f"__i{name}__", _in_place(function))):
            if dunder in _NDARRAY_NAMES:
                setattr(ndarray, dunder, made)
    for name, function in _UNARY.items():
        setattr(ndarray, f"__{name}__", _unary(function))
    for name in _NDARRAY_NAMES:
        if name.startswith("_") or name in vars(ndarray):
            continue
        if callable(getattr(np.ndarray, name, None)):
            setattr(ndarray, name, _device_method(name))


_install_ndarray_interface()


# --- random numbers -----------------------------------------------------------------------
class BitGenerator:
    """CuPy's ``random.BitGenerator`` interface over NumPy's PCG64."""

    def __init__(self, seed=None):
        self._bits = np.random.PCG64(seed)

    def random_raw(self, size=None, out=False):
        return ndarray._of(np.asarray(self._bits.random_raw(size), dtype=np.uint64))


def _sampler(name):
    """``Generator.<name>``: NumPy's sampler on the device.  CuPy's ``dtype`` argument
    is honoured by casting where NumPy's sampler lacks one."""
    cast_after = name in ("beta", "uniform")

    def sample(self, *args, **kwargs):
        dtype = kwargs.pop("dtype", None) if cast_after else kwargs.get("dtype")
        result = _call(getattr(self._numpy, name), args, kwargs)
        if not isinstance(result, ndarray):  # NumPy gives one value as a Python number
            result = ndarray._of(np.asarray(result, dtype=dtype))
        return result if dtype is None else result.astype(dtype, copy=False)
    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = f"cupy.random.Generator.{name} (NumPy's sampler on the device)."
    return sample


class Generator:
    """CuPy's ``random.Generator``: only the samplers CuPy has (no ``permutation``,
    ``choice``, ``shuffle``, ...), each returning device arrays (0-d for one value)."""

    def __init__(self, bit_generator):
        if not isinstance(bit_generator, BitGenerator):
            raise TypeError("Generator needs a cupy.random.BitGenerator")
        self.bit_generator = bit_generator
        self._numpy = np.random.Generator(bit_generator._bits)

    def __getattr__(self, name):
        raise AttributeError(f"'cupy.random.Generator' object has no attribute {name!r} (CuPy "
                             f"{CUPY_VERSION} has none; cupy-sim offers only CuPy's names)")

    def __dir__(self):
        return list(API["random.Generator"])


for _name in API["random.Generator"]:
    if _name != "bit_generator":
        setattr(Generator, _name, _sampler(_name))


def default_rng(seed=None):
    """A Generator seeded like NumPy's ``default_rng(seed)`` (the same numbers)."""
    if isinstance(seed, Generator):
        return seed
    return Generator(seed if isinstance(seed, BitGenerator) else BitGenerator(seed))


# --- the module ---------------------------------------------------------------------------
def _device_function(qualified_name, function):
    """A module function of the simulated device: NumPy's ``function`` on device data.

    Functions that copy host data to the device take NumPy arrays (and count an
    upload); those whose result size depends on the data count a sync; those
    that CuPy answers with a 0-d device array do so here too.
    """
    name = qualified_name.rsplit(".", 1)[-1]
    uploads = name in _UPLOADING_FUNCTIONS

    def call(*args, **kwargs):
        if uploads:
            source = args[0] if args else next(iter(kwargs.values()), None)
            if not isinstance(source, ndarray):
                _count("uploads")
        if name in _SYNCING_FUNCTIONS or (name == "where" and len(args) + len(kwargs) == 1):
            _count("syncs")
        result = _call(function, args, kwargs, host_ok=uploads)
        if name in _DEVICE_SCALAR_FUNCTIONS and _is_scalar(result):
            result = ndarray._of(np.asarray(result))
        return result
    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{qualified_name} on the simulated device (NumPy's {name} underneath)."
    return call


_UPLOADING_FUNCTIONS = {"array", "asarray", "asanyarray", "ascontiguousarray", "asfortranarray"}
_SYNCING_FUNCTIONS = {"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract",
                      "save", "savez", "savez_compressed"}
_DEVICE_SCALAR_FUNCTIONS = {"allclose", "array_equal", "array_equiv", "count_nonzero"}
# CuPy names whose NumPy counterparts would compute on, or hand back, host arrays.
_NOT_SIMULATED = {"c_", "r_", "mgrid", "ogrid", "broadcast", "flatiter", "poly1d", "vectorize"}


class _Namespace(types.ModuleType):
    """A module of the simulated device: CuPy's names (from the snapshot), NumPy's work.

    A name is made on first use: ``extras`` first, then ufuncs, then NumPy's
    object of that name (types and constants as they are, functions wrapped
    by ``_device_function``).  Names CuPy lacks raise AttributeError.
    """

    def __init__(self, name, names, source, extras=(), ufuncs=()):
        super().__init__(name, f"cupy-sim's {name}: CuPy's names, computed by NumPy.")
        self._names, self._source = frozenset(names), source
        self._extras, self._ufuncs = dict(extras), frozenset(ufuncs)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._names:
            raise AttributeError(f"module '{self.__name__}' has no attribute {name!r} (CuPy "
                                 f"{CUPY_VERSION} has none; cupy-sim offers only CuPy's names)")
        value = self._simulate(name)
        setattr(self, name, value)
        return value

    def __dir__(self):
        return sorted(self._names)

    def _simulate(self, name):
        if name in self._extras:
            return self._extras[name]
        value = getattr(self._source, name, None)
        if (name in _NOT_SIMULATED or value is None and name != "newaxis"
                or isinstance(value, types.ModuleType)):
            raise AttributeError(f"cupy-sim does not simulate {self.__name__}.{name}")
        if name in self._ufuncs:
            return ufunc(name, value)
        if isinstance(value, type) or not callable(value):
            return value
        return _device_function(f"{self.__name__}.{name}", value)


def _asnumpy(a, stream=None, order="C", out=None):
    """cupy.asnumpy: a NumPy copy (a counted transfer for device arrays)."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return np.asarray(a, order=order)


def _get_array_module(*args):
    """cupy.get_array_module: this module if any argument is a device array, else NumPy."""
    return module() if any(isinstance(a, ndarray) for a in args) else np


_ALIASES = {"Inf": np.inf, "Infinity": np.inf, "PINF": np.inf, "infty": np.inf,
            "NINF": -np.inf, "NAN": np.nan, "NaN": np.nan, "PZERO": 0.0, "NZERO": -0.0,
            "float_": np.float64, "complex_": np.complex128, "cfloat": np.complex128,
            "singlecomplex": np.complex64, "AxisError": np.exceptions.AxisError,
            "ComplexWarning": np.exceptions.ComplexWarning,
            "VisibleDeprecationWarning": np.exceptions.VisibleDeprecationWarning,
            "ModuleDeprecationWarning": np.exceptions.ModuleDeprecationWarning,
            "RankWarning": np.exceptions.RankWarning, "TooHardError": np.exceptions.TooHardError}
_MODULE_NAMES = frozenset(API["module"])
_module = []


def module():
    """The simulated ``cupy`` module (made once)."""
    if not _module:
        random = _Namespace("cupy.random", API["random"], np.random.RandomState(), {
            "default_rng": default_rng, "Generator": Generator, "BitGenerator": BitGenerator})
        linalg = _Namespace("cupy.linalg", API["linalg"], np.linalg)
        extras = {"ndarray": ndarray, "ufunc": ufunc, "random": random, "linalg": linalg,
                  "exceptions": np.exceptions, "asnumpy": _asnumpy,
                  "get_array_module": _get_array_module, "is_available": lambda: True,
                  **_ALIASES}
        _module.append(_Namespace("cupy", API["module"], np, extras, API["module_ufuncs"]))
    return _module[0]
