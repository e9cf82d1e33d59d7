"""``python -m experiments ...``: the same command line as the console script ``iopvae``."""
import sys

from experiments.cli import main

sys.exit(main())
