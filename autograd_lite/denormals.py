"""Denormal floats flushed to zero on the CPU, as deep-learning frameworks do.

A float below the smallest normal number (about 1.2e-38 in float32) is *denormal*.
On x86 CPUs every arithmetic operation that reads or makes one leaves the fast
path for microcode, about a hundred times slower.  They appear when a model grows
certain: a decoder that predicts its bits exactly has logits of size 90 and more,
so its gradients sigma(logit) - x are e^-90 and smaller, and every matrix product of
the backward pass then meets them.  Training AVB on OneHot, a VAE step became 1.5
to 3 times slower over the run this way.  Their contribution is below float32's
precision of anything they are added to, so setting them to zero changes nothing
that can be measured; TensorFlow does so by default and PyTorch offers
``torch.set_flush_denormal``.

``denormals_flushed()`` does the same for the block it guards, on Linux x86-64 (the
FTZ and DAZ bits of the SSE control register MXCSR, set through the C library's
``fegetenv``/``fesetenv``).  The register belongs to the calling thread: it covers
NumPy and a single-threaded BLAS, not the worker threads of a multi-threaded one.
Elsewhere, and for CuPy arrays (the GPU has its own rules), it changes nothing.
"""
import contextlib
import ctypes
import ctypes.util
import platform
import sys

FLUSH_TO_ZERO = 0x8000      # MXCSR bit 15: a denormal result becomes 0
DENORMALS_ARE_ZERO = 0x0040  # MXCSR bit 6: a denormal input is read as 0


class _FloatEnvironment(ctypes.Structure):
    """glibc's ``fenv_t`` on x86-64: the x87 environment (28 bytes), then MXCSR."""
    _fields_ = [("x87", ctypes.c_ubyte * 28), ("mxcsr", ctypes.c_uint32)]


def _libm():
    """The C maths library, where it can be asked for MXCSR; None where it cannot."""
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return None
    name = ctypes.util.find_library("m")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBM = _libm()


def supported():
    """Whether ``denormals_flushed`` can act on this machine."""
    return _LIBM is not None


@contextlib.contextmanager
def denormals_flushed():
    """Inside this block, on this thread, denormal floats are read and made as zero;
    on leaving, the control register is as it was (so blocks nest)."""
    env = _FloatEnvironment()
    if _LIBM is None or _LIBM.fegetenv(ctypes.byref(env)) != 0:
        yield
        return
    before = env.mxcsr
    env.mxcsr = before | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO
    _LIBM.fesetenv(ctypes.byref(env))
    try:
        yield
    finally:
        env.mxcsr = before
        _LIBM.fesetenv(ctypes.byref(env))
