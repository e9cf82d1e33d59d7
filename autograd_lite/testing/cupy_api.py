"""CuPy's API surface, kept as a snapshot for the ``cupy-sim`` backend.

The simulated device (``cupy_sim``) must offer exactly the names that CuPy
offers: a call that CuPy lacks (``Generator.permutation``, say) has to fail
in the simulator as it would fail on a GPU.  Those names are read from
``cupy_api.json`` beside this file, so the simulator never imports CuPy.

Regenerate the snapshot from the installed CuPy (no GPU needed)::

    python -m autograd_lite.testing.cupy_api            # rewrites cupy_api.json
    python -m autograd_lite.testing.cupy_api --check    # exit status 1 if it is stale

CuPy is imported only inside ``introspect``, which only this command runs.
"""
import __future__

import argparse
import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("cupy_api.json")

# Attributes that CuPy sets on each instance in ``__init__``, so that ``dir`` of
# the class cannot see them (CuPy's Generator needs a GPU to be instantiated).
INSTANCE_ATTRIBUTES = {"random.Generator": ["bit_generator"]}


def _is_api_name(name):
    """Public names and Python's dunder protocol names; not private or Cython internals."""
    if name.startswith("__pyx"):
        return False
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _public(namespace, dunders=False):
    """The sorted names of ``namespace`` that are part of its interface.

    ``from __future__ import annotations`` leaves a name ``annotations`` in some
    CuPy modules; it is not API and is dropped.
    """
    names = []
    for name in dir(namespace):
        if not (_is_api_name(name) if dunders else not name.startswith("_")):
            continue
        if isinstance(getattr(namespace, name, None), __future__._Feature):
            continue
        names.append(name)
    return sorted(names)


def introspect():
    """The snapshot of the installed CuPy: name lists per namespace, and CuPy's version."""
    import cupy  # the one import of cupy outside backend.py, run by hand only

    module_names = _public(cupy)
    return {
        "cupy_version": cupy.__version__,
        "module": module_names,
        "module_ufuncs": [name for name in module_names
                          if isinstance(getattr(cupy, name), cupy.ufunc)],
        "ndarray": _public(cupy.ndarray, dunders=True),
        "ufunc": _public(cupy.ufunc),
        "linalg": _public(cupy.linalg),
        "random": _public(cupy.random),
        "random.Generator": sorted(_public(cupy.random.Generator)
                                   + INSTANCE_ATTRIBUTES["random.Generator"]),
        "random.BitGenerator": _public(cupy.random.BitGenerator),
    }


def load():
    """The stored snapshot (a dict of name lists), as ``introspect`` wrote it."""
    return json.loads(SNAPSHOT.read_text())


def dumps(snapshot):
    """The snapshot as JSON text: sorted keys, one name per line (readable diffs)."""
    return json.dumps(snapshot, indent=1, sort_keys=True) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the stored snapshot instead of rewriting it")
    args = parser.parse_args(argv)
    text = dumps(introspect())
    if args.check:
        stale = not SNAPSHOT.exists() or SNAPSHOT.read_text() != text
        print(f"{SNAPSHOT.name} is {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    SNAPSHOT.write_text(text)
    snapshot = json.loads(text)
    print(f"wrote {SNAPSHOT} (CuPy {snapshot['cupy_version']}: "
          f"{len(snapshot['module'])} module names, {len(snapshot['ndarray'])} ndarray names)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
