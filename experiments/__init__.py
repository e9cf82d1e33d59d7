"""The experiments around the paper: Table 2, Figure 3, the step-size selection, the
validation curves and the README's generated tables.

    iopvae table2 --datasets freyfaces --seeds 0 1 2 --jobs 2
    iopvae table2 --datasets freyfaces --seeds 0 1 2 --print-commands
    iopvae figure3 --dataset freyfaces --components 50 100 250 500 --seeds 0 1 2
    iopvae run --dataset freyfaces --method iop --seed 0 --out runs/table2

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
  commands, which ``cli`` adds to its parser (``add_commands``);
- ``runs``, ``checkpoints``, ``run_commands``: what a run is and how it trains, its
  checkpoints, and the ``train``, ``evaluate`` and ``sample`` commands;
- ``gradcheck/``: the gradient check and its PyTorch mirror;
- ``cli``: the command line (the console script ``iopvae``, or ``python -m experiments``).
"""
