"""The options every step takes, checked before its training: ``--quick`` (a few epochs of
a tiny model) and ``--out`` (the folder of its figure).  Not a step: the steps import it.

    args = step_options("Step 1: the standard VAE on OneHot", "step1_posteriors.png")
"""
import argparse
import os
import sys

from autograd_lite.files import check_folder


class StepParser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every error of the project
        self.exit(2, f"error: {message} (see --help)\n")


def step_options(description, *figures, more=()):
    """The parsed options of a step that writes ``figures`` (PNG names) into ``--out``.

    An unknown option (``--qiuck``), and an ``--out`` where a figure cannot be written
    (empty, a file, read-only, a folder in place of the PNG), are one ``error:`` line and
    exit 2 before any work; so, at the end, is a write that fails (a full disk,
    ``ulimit -f``), and Ctrl-C says "interrupted".  ``more``: (flags, keywords) of the
    step's other options.  Under Jupyter, whose kernel passes options of its own, the
    defaults.
    """
    parser = StepParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few epochs of a tiny model (tests)")
    parser.add_argument("--out", default=os.path.join("out", "steps"),
                        help="folder of the figure (default: out/steps)")
    for flags, keywords in more:
        parser.add_argument(*flags, **keywords)
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    try:
        check_out(args.out, figures)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    sys.excepthook = _one_line
    return args


def check_out(out, figures):
    """ValueError in one line unless each of ``figures`` can be written into the folder
    ``out`` (made if missing): what can be known before the training."""
    check_folder("--out", out)
    for figure in figures:
        path = os.path.join(out, figure)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, where the figure goes; move it away")


def _one_line(kind, error, traceback):
    """Errors of the files and the machine as one line (a traceback for anything else)."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
    elif issubclass(kind, (OSError, MemoryError)):
        said = getattr(error, "strerror", None) or str(error) or kind.__name__
        where = getattr(error, "filename", None)
        print(f"error: {f'{where}: ' if where else ''}{said}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, traceback)
