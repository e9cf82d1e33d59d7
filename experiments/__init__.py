"""The experiments around the paper: Table 2, Figure 3, the step-size selection, the
validation curves and the README's generated tables.

    python iopvae.py table2 --datasets freyfaces --seeds 0 1 2 --jobs 2
    python iopvae.py table2 --datasets freyfaces --seeds 0 1 2 --print-commands
    python iopvae.py figure3 --dataset freyfaces --components 50 100 250 500 --seeds 0 1 2
    python iopvae.py run --dataset freyfaces --method iop --seed 0 --out runs/table2

One module per job; each imports only those above it in this list:

- ``stats``: Welch's t-test, the methods not worse than the best, ours against the paper;
- ``results``: the per-run result files, read, checked and written;
- ``grid``: the runs of a grid, one run trained and evaluated;
- ``workers``: the grid's unfinished runs in worker processes;
- ``tables``: Table 2 beside the paper's numbers, the causes tables, the goal;
- ``readme``: the README's generated tables;
- ``figures``: Figure 3 and the validation curves;
- ``selection``: the settings chosen on validation, never on test;
- ``commands``: the ``table2``, ``select``, ``curves``, ``figure3``, ``readme`` and ``run``
  commands, which cli.py adds to its parser (``add_commands``).
"""
