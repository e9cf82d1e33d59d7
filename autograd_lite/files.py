"""Files that appear whole or not at all: the one atomic-write helper of the project."""
import os
import tempfile


def atomic_write(path, write, mode="wb"):
    """Write ``path`` through ``write(f)`` so that it is never seen half-written.

    ``write`` writes into a temporary file beside ``path`` (the same folder, so
    that the final rename is atomic), which is flushed to disk and renamed over
    ``path``.  If ``write`` raises, the temporary file is removed, ``path`` keeps
    its old content (if any), and the exception propagates.  ``mode`` is ``"wb"``
    or ``"w"`` (text).  The file gets the permissions a plain ``open(path, "w")``
    would give it: those of the file it replaces, else 0666 less the umask (not
    ``mkstemp``'s 0600).
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), _permissions(path))
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


def _permissions(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask():
    """The process's umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask
