"""The grid's unfinished runs, in worker processes (one BLAS thread each, each
``python -m experiments run ...``) or printed as commands for a cluster scheduler; a worker
stops when its grid dies, and a run that diverged is recorded and not tried again."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading

from autograd_lite.files import check_folder
from experiments import runs
from experiments.grid import asked_config, diverged_path, run_one
from experiments.results import (
    check_config,
    check_of_run,
    check_split,
    current_split_ids,
    differences,
    has_result,
    read_json,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the source tree
PROGRAM = (sys.executable, "-m", "experiments")  # a worker: this Python, this source tree


def run_command(run, args, config_values, program=PROGRAM):
    """The shell command that does ``run_one`` for ``run`` in a fresh process:
    ``python -m experiments run ...``, or ``iopvae run ...`` with ``program=("iopvae",)``."""
    words = [*program, "run",
             "--dataset", run.dataset, "--method", run.method, "--seed", str(run.seed),
             "--out", args.out, "--results", args.results, "--samples", str(args.samples),
             "--tight-samples", str(args.tight_samples)]
    if run.components:
        words += ["--components", str(run.components)]
    if run.settings:
        words += ["--settings"] + [f"{key}={value}" for key, value in run.settings]
    if args.data_dir:
        words += ["--data-dir", args.data_dir]
    for name, value in config_values.items():
        words += ["--" + name.replace("_", "-"), str(value)]
    return words


PARENT_PIPE = "IOPVAE_PARENT_PIPE"  # a worker's end of the pipe its grid holds open


def worker_environment(watch):
    """A worker's environment: one BLAS thread, the pipe to watch, and this source tree
    first on the path (``-m experiments`` finds it installed or not)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **SINGLE_THREAD, PARENT_PIPE: str(watch), "PYTHONPATH": path}


def stop_with_parent():
    """In a worker of ``run_grid``: stop this process (SIGTERM) when the grid that
    started it is gone, seen as the end of the pipe named by ``$IOPVAE_PARENT_PIPE``."""
    fd = os.environ.pop(PARENT_PIPE, None)
    if fd is None or not fd.isdigit():
        return

    def watch():
        try:
            while os.read(int(fd), 1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()


def last_line(path):
    """The last non-empty line of the text file ``path`` ("" if none), shortened."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


class RunFailed(ValueError):
    """A worker process of the grid exited with an error (its train.log says why)."""


SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read_diverged(run, results, asked, split_id=None):
    """The record of ``run``'s divergence under the ``asked`` settings, or None (none, or
    one under other settings: then the run is tried again); checked as a result is (of
    this run, its config's fields, made on ``split_id``, the data's split now)."""
    path = diverged_path(run, results)
    if not os.path.exists(path):
        return None
    record = read_json(path, "; delete it to train the run again", what="divergence record")
    check_split(record, run, split_id, path)
    try:
        if not isinstance(record.get("diverged"), str):
            raise ValueError("it says no divergence")
        check_config(record.get("config"))
        check_of_run(record, run)
    except ValueError as exc:
        raise ValueError(f"divergence record {path} is not usable ({exc}); delete it to "
                         "train the run again") from None
    return None if differences(record["config"], asked) else record


def diverged_runs(todo, results, config_values, data_dir="", splits=None):
    """The runs of ``todo`` that diverged under these settings, with their records
    (``splits``: the data sets' split ids now, ``current_split_ids``)."""
    splits = splits or current_split_ids(todo, data_dir)
    found = {run: read_diverged(run, results, asked_config(run, config_values, data_dir),
                                splits[run.dataset]) for run in todo}
    return {run: record for run, record in found.items() if record is not None}


def pending_runs(todo, args, config_values):
    """The runs of ``todo`` without a result for these settings on the data's split now,
    and that did not diverge under them."""
    splits = current_split_ids(todo, args.data_dir)
    diverged = diverged_runs(todo, args.results, config_values, args.data_dir, splits)
    return [r for r in todo if r not in diverged
            and not has_result(r, args.results, args.samples, args.tight_samples,
                               splits[r.dataset], asked_config(r, config_values, args.data_dir))]


def run_grid(todo, args, config_values):
    """Run the unfinished ``runs``: in this process (``--jobs 1``) or in worker
    processes with one BLAS thread each, logging to ``<run>/train.log``.  A SIGTERM or
    SIGINT (Ctrl-C) to this process stops the workers at once, each said "stopped"
    (each run's lock keeps a second grid from training a run a worker still trains)."""
    pending = pending_runs(todo, args, config_values)
    print(f"{len(todo) - len(pending)} of {len(todo)} runs already evaluated (or diverged); "
          f"{len(pending)} to run with {args.jobs} worker(s)", flush=True)
    for option, folder in (("--out", args.out), ("--results", args.results)):
        if pending:  # before the first epoch, not at the first write
            check_folder(option, folder)
    if args.jobs <= 1:
        for run in pending:
            try:
                run_one(run, config_values, args.out, args.results, args.samples,
                        args.tight_samples, args.data_dir)
            except runs.TrainingDiverged as exc:  # recorded; the other runs go on
                print(f"{run.name}: diverged ({exc})", flush=True)
        return
    workers, starting, stopped = [], threading.Lock(), []

    def work(run):
        os.makedirs(os.path.join(args.out, run.name), exist_ok=True)
        log_path = os.path.join(args.out, run.name, "train.log")
        with open(log_path, "a") as log:  # appended to: a log, not a result
            with starting:  # no new worker once stop_workers has begun
                if stopped:
                    return 128 + stopped[0]
                # the worker watches the read end: when this process dies, however it
                # dies (kill -9 too), the kernel closes the write end and the worker stops
                watch, alive = os.pipe()
                try:
                    worker = subprocess.Popen(run_command(run, args, config_values),
                                              stdout=log, stderr=subprocess.STDOUT,
                                              pass_fds=(watch,),
                                              env=worker_environment(watch))
                finally:
                    os.close(watch)
                workers.append(worker)
            try:
                code = worker.wait()
            finally:
                os.close(alive)
        diverged = code != 0 and os.path.exists(diverged_path(run, args.results))
        why = "" if code == 0 or stopped else f": {last_line(log_path)}"
        said = ("done" if code == 0 else "diverged" if diverged else
                f"stopped by {signal.Signals(stopped[0]).name}" if stopped else "FAILED")
        print(f"{run.name}: {said}{why} (log: {log_path})", flush=True)
        return 0 if diverged else code  # a divergence is a result of the grid, kept

    def stop_workers(signum, frame):
        with starting:
            stopped.append(signum)
            for worker in workers:
                worker.terminate()  # the checkpoint of its last epoch is kept whole
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop_workers) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(work, pending))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(codes):
        raise RunFailed(f"{sum(c != 0 for c in codes)} run(s) failed; see their train.log")
