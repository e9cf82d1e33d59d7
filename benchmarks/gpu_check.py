"""The whole GPU check in one command: about 8 minutes on one CUDA GPU.

    python benchmarks/gpu_check.py --out out/gpu_check --data-dir /path/to/data
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check   # no GPU: on cupy-sim

Runs from the source tree (no install, no network) on a machine with a CUDA GPU,
NumPy, CuPy (a CUDA 12 or 13 build: ``cupy-cuda12x`` or ``cupy-cuda13x``),
PyTorch with CUDA, matplotlib and pytest.  In order, each part in a subprocess
of its own that is stopped at its time limit, so that a slow part cannot eat
the rest:

1. ``device``: CuPy's version and build, the CUDA runtime and driver, the GPU,
   and a small computation on it through autograd_lite's backend;
2. ``tests``: the device and autograd tests with ``AUTOGRAD_LITE_BACKEND=cupy``
   (their ``cupy`` cases run on the GPU);
3. ``bench_step``: ``benchmarks/bench_step.py --backend cupy``, autograd_lite on
   CuPy against PyTorch on CUDA;
4. ``mnist_epochs``: one MNIST epoch (one round of Algorithm 1) per method, timed
   after a round on 1,000 points has compiled CuPy's kernels, with its
   device-to-host syncs (counted on ``cupy-sim``, where every sync is seen, for
   the same round on 1,000 points: the count does not depend on the number of
   mini-batches);
5. ``onehot_quick``: ``reproduce_onehot.py --quick`` on the GPU, timed.

MNIST is read from ``--data-dir`` or ``IOPVAE_DATA``; without it the epochs run on
random data of MNIST's shape, and the JSON says so.  Written to ``--out``:
``gpu_check.json`` (every part's status, seconds and numbers) and
``gpu_check.txt`` (the table printed at the end).

``--dry-run`` runs the same script with the simulated device ``cupy-sim`` for
CuPy, the CPU for PyTorch's CUDA, and small sizes, in about a minute on a CPU:
the test suite runs it, so the script is known to work before a GPU is lent.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from autograd_lite.files import atomic_write  # noqa: E402  (numpy only: no device touched)

PARTS = ("device", "tests", "bench_step", "mnist_epochs", "onehot_quick")
# seconds per part on the GPU: 465 in all, under the 8 minutes with the start-up; the dry
# run's parts are small (about 40 CPU seconds in all) but may share a busy machine
LIMITS = {"device": 30, "tests": 150, "bench_step": 90, "mnist_epochs": 120, "onehot_quick": 75}
DRY_RUN_LIMIT = 300
TESTS = ["tests/test_iopvae_device.py", "tests/test_autograd_backend.py",
         "tests/test_autograd_cupy_sim.py", "tests/test_autograd_nn.py",
         "tests/test_autograd_ops.py", "tests/test_autograd_tensor.py"]
DRY_TESTS = ["tests/test_autograd_backend.py"]
METHODS = ("vae", "vamp", "iop", "avb")
RESULT = "GPU_CHECK_RESULT "           # the line a child part prints its numbers on


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("out", "gpu_check"),
                        help="folder for gpu_check.json, gpu_check.txt and the parts' output")
    parser.add_argument("--data-dir", default="", help="folder with MNIST (else $IOPVAE_DATA)")
    parser.add_argument("--dry-run", action="store_true",
                        help="cupy-sim instead of CuPy, the CPU instead of CUDA, small sizes")
    parser.add_argument("--part", choices=("device", "mnist_epochs"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)    # the child parts' backend
    parser.add_argument("--points", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# =============================================================================
# The parts that run in this file (in a child process: ``--part NAME``)
# =============================================================================
def device_part(backend):
    """What the device is, and a matrix product on it through the backend."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import autograd_lite as ag
    ag.set_backend(backend)
    info = {"backend": backend}
    if backend == "cupy":
        import importlib.metadata

        import cupy  # only to describe the device; the project reaches it through ag
        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(0)
        info.update(cupy_version=cupy.__version__,
                    cupy_packages=sorted(d.metadata["Name"] for d in
                                         importlib.metadata.distributions()
                                         if d.metadata["Name"].startswith("cupy")),
                    cuda_runtime=runtime.runtimeGetVersion(),
                    cuda_driver=runtime.driverGetVersion(),
                    gpu=bytes(props["name"]).decode(errors="replace"),
                    gpus=runtime.getDeviceCount(),
                    memory_gb=round(props["totalGlobalMem"] / 2**30, 1))
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = ag.as_array(host)
    info["matmul_ok"] = bool(np.allclose(ag.to_numpy(a @ a.T), host @ host.T))
    return info


def mnist_epochs_part(backend, data_dir, points, hidden):
    """Seconds of one MNIST epoch per method on ``backend`` (after one untimed epoch),
    and the device-to-host syncs of a round, counted on cupy-sim.  ``points`` and
    ``hidden`` (0: all, the paper's 500) make it small for the dry run."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_epoch import load

    import autograd_lite as ag
    from experiments import runs

    data, kind = load("mnist", data_dir)
    if points:
        data.train, data.valid = data.train[:points], data.valid[:points // 5]
    out = {"data": kind, "train_points": int(data.train.shape[0]), "methods": {}}
    for method in METHODS:
        config = runs.Config(dataset="mnist", method=method, warmup=0, patience=0,
                             hidden=hidden or 500)
        ag.set_backend(backend)
        quiet = lambda line: None  # noqa: E731
        runs.Trainer(config, subset(data, 1000), None, quiet).train(1)  # compiles the kernels
        trainer = runs.Trainer(config, data, out_dir=None, log=quiet)
        started = time.perf_counter()
        trainer.train(1)                          # its record's float() waits for the device
        seconds = time.perf_counter() - started
        ag.set_backend("cupy-sim")
        small = runs.Trainer(config, subset(data, 1000), out_dir=None, log=quiet)
        small.train(1)
        with ag.count_syncs() as counted:
            small.train(2)
        out["methods"][method] = {"seconds": seconds, "syncs_per_epoch": counted.syncs,
                                  "uploads_per_epoch": counted.uploads}
        ag.set_backend("numpy")
    return out


def subset(data, n):
    import dataclasses
    return dataclasses.replace(data, train=data.train[:n], valid=data.valid[:n // 5])


# =============================================================================
# The driver: each part in a subprocess with its time limit
# =============================================================================
def run_part(name, command, limit, out_dir, env=None):
    """Run ``command`` with a time limit; its output goes to ``out_dir/NAME.log``."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                              env={**os.environ, **(env or {})})
        status = "ok" if done.returncode == 0 else f"failed (exit status {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"stopped at its time limit ({limit} s)"
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "")
                         for x in (exc.stdout, exc.stderr))
    atomic_write(os.path.join(out_dir, f"{name}.log"), lambda f: f.write(output), mode="w")
    record = {"status": status, "seconds": round(time.perf_counter() - started, 1),
              "limit_s": limit, "log": f"{name}.log"}
    for line in output.splitlines():
        if line.startswith(RESULT):
            record.update(json.loads(line[len(RESULT):]))
    return record, output


def junit_counts(path):
    """tests / failures / errors / skipped of a pytest JUnit XML file."""
    if not os.path.exists(path):
        return {}
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def bench_numbers(output):
    """The rows of bench_step.py's table: label -> [autograd_lite, torch, ratio]."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"(median ms / step, \w+|peak [\w ]+\(MB\))\s+([\d.]+)\s+([\d.]+)"
                         r"\s*([\d.]*)", line)
        if match:
            rows[match.group(1)] = [float(v) for v in match.groups()[1:] if v]
    return rows


def check(args):
    """Every part in order; the JSON and the table."""
    os.makedirs(args.out, exist_ok=True)
    python, me = sys.executable, os.path.abspath(__file__)
    backend = "cupy-sim" if args.dry_run else "cupy"
    env = {"AUTOGRAD_LITE_BACKEND": backend}
    if args.data_dir:
        env["IOPVAE_DATA"] = os.path.abspath(args.data_dir)
    dry = args.dry_run
    onehot_out = os.path.join(os.path.abspath(args.out), "onehot_quick")
    junit = os.path.join(os.path.abspath(args.out), "tests.xml")
    commands = {
        "device": [python, me, "--part", "device", "--backend", backend],
        "tests": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        + (DRY_TESTS if dry else TESTS),
        "bench_step": [python, "benchmarks/bench_step.py"]
        + (["--backend", "numpy", "--threads", "1", "--steps", "2", "--warmup", "1",
            "--batch", "10"] if dry else ["--backend", "cupy"]),
        "mnist_epochs": [python, me, "--part", "mnist_epochs", "--backend", backend]
        + (["--points", "200", "--hidden", "32"] if dry else []),
        "onehot_quick": [python, "reproduce_onehot.py", "--quick", "--out", onehot_out]
        + (["--methods", "iop"] if dry else []),
    }
    report = {"dry_run": dry, "backend": backend, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "parts": {}}
    for name in PARTS:
        print(f"{name} ...", flush=True)
        limit = DRY_RUN_LIMIT if dry else LIMITS[name]
        record, output = run_part(name, commands[name], limit, args.out, env)
        if name == "tests":
            record.update(junit_counts(junit))
        elif name == "bench_step":
            record["table"] = bench_numbers(output)
        elif name == "onehot_quick" and record["status"] == "ok":
            with open(os.path.join(onehot_out, "summary.json")) as f:
                record["methods"] = {r["method"]: round(r["seconds"], 1)
                                     for r in json.load(f)["methods"]}
        report["parts"][name] = record
    report["seconds"] = round(sum(p["seconds"] for p in report["parts"].values()), 1)
    atomic_write(os.path.join(args.out, "gpu_check.json"),
                 lambda f: f.write(json.dumps(report, indent=2)), mode="w")
    table = format_table(report)
    atomic_write(os.path.join(args.out, "gpu_check.txt"), lambda f: f.write(table + "\n"),
                 mode="w")
    print(table)
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


def format_table(report):
    parts = report["parts"]
    lines = [f"GPU check on {report['backend']}{' (dry run)' if report['dry_run'] else ''}, "
             f"{report['seconds']:.0f} s in all",
             f"{'part':<14}{'status':<40}{'seconds':>8}  numbers"]
    for name, p in parts.items():
        if name == "device":
            numbers = ", ".join(f"{k} {v}" for k, v in p.items()
                                if k not in ("status", "seconds", "limit_s", "log"))
        elif name == "tests":
            numbers = ", ".join(f"{p.get(k, '?')} {k}" for k in
                                ("tests", "failures", "errors", "skipped"))
        elif name == "bench_step":
            numbers = "; ".join(f"{k}: " + " / ".join(f"{v:g}" for v in values)
                                for k, values in p.get("table", {}).items())
            numbers += "  (autograd_lite / torch / ratio)" if numbers else ""
        elif name == "mnist_epochs":
            numbers = ", ".join(f"{m} {r['seconds']:.2f} s, {r['syncs_per_epoch']} sync(s)"
                                for m, r in p.get("methods", {}).items())
            numbers += f" ({p.get('data', '?')} data)" if numbers else ""
        else:
            numbers = ", ".join(f"{m} {s} s" for m, s in p.get("methods", {}).items())
        lines.append(f"{name:<14}{p['status']:<40}{p['seconds']:>8.1f}  {numbers}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.part == "device":
        print(RESULT + json.dumps(device_part(args.backend)))
        return 0
    if args.part == "mnist_epochs":
        data_dir = args.data_dir or os.environ.get("IOPVAE_DATA", "")
        print(RESULT + json.dumps(mnist_epochs_part(args.backend, data_dir, args.points,
                                                    args.hidden)))
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
