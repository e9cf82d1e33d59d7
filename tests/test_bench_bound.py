"""benchmarks/bench_bound.py keeps working: a smoke run of its T step (few repetitions, not
a timing test), and its record of the matrix products of a step."""
import subprocess
import sys

import numpy as np

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_bound  # noqa: E402


def test_the_t_step_row_gives_a_time_a_bound_and_their_ratio():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_bound.py"), "--cases", "tstep",
               "--repeats", "0.01", "--profile", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("T step"))
    real, bound, ratio, products = (float(cell) for cell in row.split()[-4:])
    assert real > 0 and bound > 0 and products == 8
    assert abs(ratio - real / bound) < 0.01 + 0.01 * ratio
    assert "own ms" in result.stdout                          # the profile was printed


def test_a_t_step_records_its_eight_products_in_their_layouts():
    """T (2-500-500-1) on 2 x 100 rows: three forward products, three weight gradients
    x^T g (a transposed operand), and the input gradients of the upper two layers (z has
    none)."""
    import autograd_lite as ag
    import datasets
    import iopvae
    from experiments import runs

    products = bench_bound.record_products(
        ag, lambda: bench_bound.t_step_case(runs, iopvae, datasets.load("onehot")))
    assert ag.backend_name() == "numpy"                        # set back
    shapes = sorted((a[0], b[0]) for a, b, _ in products)
    assert shapes == sorted([((200, 2), (2, 500)), ((200, 500), (500, 500)),
                             ((200, 500), (500, 1)), ((2, 200), (200, 500)),
                             ((500, 200), (200, 500)), ((500, 200), (200, 1)),
                             ((200, 1), (1, 500)), ((200, 500), (500, 500))])
    assert {dtype for _, _, dtype in products} == {np.dtype(np.float32)}
    assert ((500, 200), "F") in [a for a, _, _ in products]  # x^T: a view, as BLAS gets it
