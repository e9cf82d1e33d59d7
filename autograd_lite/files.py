"""Files that appear whole or not at all: the one atomic-write helper of the project."""
import os
import tempfile


def atomic_write(path, write, mode="wb"):
    """Write ``path`` through ``write(f)`` so that it is never seen half-written.

    ``write`` writes into a temporary file beside ``path`` (the same folder, so
    that the final rename is atomic), which is flushed to disk and renamed over
    ``path``.  If ``write`` raises, the temporary file is removed, ``path`` keeps
    its old content (if any), and the exception propagates.  ``mode`` is ``"wb"``
    or ``"w"`` (text).
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
