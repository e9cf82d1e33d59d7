"""CPU threads for the large elementwise updates of the optimizers.

NumPy runs each ufunc on one core but releases the GIL while it runs, so an
update over millions of parameters can be cut into contiguous pieces that
threads work on at once.  BLAS keeps its own threads (set through
``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` before NumPy is imported); by
default this module uses as many threads as ``OMP_NUM_THREADS`` says, else one
per core.  Under CuPy the GPU does the work and everything runs in one thread.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from . import backend

MIN_PIECE = 1 << 16  # elements; a smaller piece costs more to hand over than it saves
_state = {"threads": None, "executor": None, "workers": 0}


def set_num_threads(n):
    """Use ``n`` threads (1 = none besides the caller's) for the optimizers' updates."""
    if int(n) < 1:
        raise ValueError(f"set_num_threads: need at least 1 thread, got {n}")
    _state["threads"] = int(n)


def num_threads():
    """The thread count in use: ``set_num_threads``, else ``OMP_NUM_THREADS``, else cores."""
    if _state["threads"] is None:
        value = os.environ.get("OMP_NUM_THREADS", "")
        _state["threads"] = int(value) if value.isdigit() and int(value) > 0 else (
            os.cpu_count() or 1)
    return _state["threads"]


def _executor(workers):
    """The shared pool of worker threads, grown to ``workers`` if it is smaller."""
    if _state["workers"] < workers:
        if _state["executor"] is not None:
            _state["executor"].shutdown()
        _state["executor"] = ThreadPoolExecutor(workers, thread_name_prefix="autograd_lite")
        _state["workers"] = workers
    return _state["executor"]


def _pieces(arrays, parts):
    """Matching contiguous pieces of same-shaped arrays: at most ``parts``, each at least
    MIN_PIECE elements; the arrays themselves when they cannot be cut into views."""
    size = arrays[0].size
    parts = min(parts, size // MIN_PIECE)
    if parts < 2 or not all(a.flags.c_contiguous for a in arrays):
        return [arrays]
    flat = [a.reshape(-1) for a in arrays]
    bounds = [size * k // parts for k in range(parts + 1)]
    return [tuple(f[lo:hi] for f in flat) for lo, hi in zip(bounds[:-1], bounds[1:])]


def for_each(update, jobs):
    """``update(*arrays)`` for each tuple of same-shaped arrays in ``jobs``.

    ``update`` must work elementwise (so that it can be applied piece by piece)
    and must not touch arrays of another job.  Large jobs are cut into pieces
    spread over the threads, which run at once; this call returns when all are done.
    """
    threads = num_threads() if backend.backend_name() == "numpy" else 1
    shares, loads = [[] for _ in range(threads)], [0] * threads
    for arrays in jobs:
        for piece in _pieces(arrays, threads):
            k = loads.index(min(loads))
            shares[k].append(piece)
            loads[k] += piece[0].size

    def run(share):
        for piece in share:
            update(*piece)

    busy = [share for share in shares[1:] if share]
    futures = [_executor(len(busy)).submit(run, share) for share in busy] if busy else []
    run(shares[0])
    for future in futures:
        future.result()
