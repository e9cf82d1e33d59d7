"""Files that appear whole or not at all: the one atomic-write helper of the project
(every file the program writes goes through ``atomic_write``; ``save_png`` is it for a
matplotlib figure), the one checked reader of JSON files (``read_json_file``), and the
locks (``open_lock``, ``folder_lock``)."""
import contextlib
import errno
import fcntl
import glob
import json
import os
import stat
import tempfile
import time


def atomic_write(path, write, mode="wb"):
    """Write ``path`` through ``write(f)`` so that it is never seen half-written.

    ``write`` writes into a temporary file beside ``path`` (the same folder, so
    that the final rename is atomic), which is flushed to disk and renamed over
    ``path``.  If ``write`` raises, the temporary file is removed, ``path`` keeps
    its old content (if any), and the exception propagates; an ``OSError`` names
    ``path``, never the temporary file.  ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8).
    The file gets the permissions a plain ``open(path, "w")`` would give it: those
    of the file it replaces, else 0666 less the umask (not ``mkstemp``'s 0600).  A
    symbolic link is written through (its target replaced, the link kept).  The
    temporary file is locked (``flock``) until it is renamed, and the temporaries of
    ``path`` that killed writes left are removed first (``remove_stale_temporaries``).
    """
    shown = os.fspath(path)
    target = os.path.realpath(shown)  # through a symbolic link: the link stays
    folder, name = os.path.split(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{shown} not written: its folder {folder} does not exist")
    if os.path.exists(target) and not os.path.isfile(target):
        raise OSError(f"{shown} not written: it is not a regular file")
    remove_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, f"{shown} not written: {exc.strerror}") from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until renamed: this write is alive
            os.fchmod(fd, _permissions(target))
            write(f)
            f.flush()
            os.fsync(fd)
            os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, f"{shown} not written: {exc.strerror}") from None
        raise


FRESH_SECONDS = 2  # a temporary file this young may not be locked by its writer yet


def remove_stale_temporaries(path):
    """Remove the temporary files ``.NAME.*.tmp`` beside ``path`` that killed writes of
    it left (kill -9, a full disk): those that no live process holds.  Every write holds
    a lock on its temporary until the rename (``atomic_write``), and the system lets go
    of a lock when its process ends, however it ends; a temporary created in the last
    ``FRESH_SECONDS`` is kept (its writer may not have locked it yet)."""
    folder, name = os.path.split(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if (stat.S_ISREG(os.fstat(fd).st_mode)
                    and time.time() - os.fstat(fd).st_mtime > FRESH_SECONDS):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while written
                os.remove(stale)
        except OSError:  # BlockingIOError: a live write's; or gone meanwhile
            pass
        finally:
            os.close(fd)


def check_folder(option, folder, writable=True):
    """Refuse in one line naming ``option`` a ``folder`` that this process could not make
    or (if ``writable``) write into: empty, a file, a symbolic link to nothing or in a
    loop, read-only (the folder itself or, if missing, the one it would be made in)."""
    if not folder:
        raise ValueError(f"{option} is empty: name a folder")
    path = os.path.abspath(folder)
    while True:
        try:
            info = os.stat(path)
            break
        except (FileNotFoundError, NotADirectoryError):  # made below the first that is
            if os.path.islink(path):
                raise ValueError(f"{option} {folder}: {path} is a symbolic link to nothing") \
                    from None
            path = os.path.dirname(path)
        except OSError as exc:  # a link in a loop (ELOOP), a folder without access
            raise ValueError(f"{option} {folder}: {exc.strerror}") from None
    where = f"{option} {folder}" + ("" if path == os.path.abspath(folder) else f": {path}")
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{where} is a file, not a folder")
    if writable and not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{where} is not writable (read-only)")


def save_png(fig, path, **savefig_options):
    """The matplotlib figure ``fig`` as the PNG ``path``, through ``atomic_write``."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", **savefig_options))


def png_path(option, path):
    """``path`` as the PNG file a figure goes to: ``.png`` added to a name without an
    extension; another extension, or a folder, refused naming ``option``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; name the PNG file (e.g. "
                         f"{os.path.join(path, 'figure.png')})")
    stem, extension = os.path.splitext(path)
    if not extension:
        return path + ".png"
    if extension.lower() != ".png":
        raise ValueError(f"{option} {path}: the figure is written as a PNG; name it NAME.png")
    return path


MAX_JSON_BYTES = 256 * 2 ** 20  # no file the program writes comes near this


def _finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is not finite (beyond float range)")
    return value


def _bounded_int(text):
    if len(text.lstrip("-")) > 300:
        raise ValueError(f"the integer {text[:40]}... is beyond float range")
    return int(text)


def _no_constant(name):
    raise ValueError(f"{name} (a number that is not finite)")


def loads_json(text):
    """JSON text as Python objects; every number finite (NaN, Infinity and 1e400 are
    refused), nesting bounded: a ValueError otherwise."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json_file(path, what="file"):
    """The JSON in the regular file ``path`` (``loads_json``'s checks); one ValueError
    line naming ``what`` and ``path`` for anything else: a FIFO or device, a file too
    large, text that is not JSON."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_JSON_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than {MAX_JSON_BYTES}")
        with open(path, encoding="utf-8") as f:
            return loads_json(f.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc.strerror or exc})"
                         if isinstance(exc, OSError) else
                         f"{what} {path} is not usable (not UTF-8 text)") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{what} {path} is not usable ({exc})") from None


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


def open_lock(path):
    """The lock file ``path``, opened for reading and writing (created if missing), never
    through a symbolic link: a link or anything but a regular file there is refused, so
    that the holder's process id written into it cannot change another file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"lock {path} is a symbolic link; remove it") from None
        raise OSError(exc.errno, f"lock {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"lock {path} is not a regular file; remove it")
    return os.fdopen(fd, "r+")


@contextlib.contextmanager
def folder_lock(folder):
    """An exclusive ``flock`` on ``folder`` itself (no lock file left behind), held for
    the ``with`` block: another process's block on the same folder waits for this one."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
