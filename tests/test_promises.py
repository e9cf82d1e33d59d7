"""What the program promises (README, "What the program promises"): no silent wrong
numbers and no lost runs.  Bad input is refused in one ``error:`` line naming the
option or file before any training; damaged checkpoints and result files are
refused; divergence and impossible likelihoods are caught; a second process on a
run folder is refused; Ctrl-C keeps the last checkpoint."""
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import iopvae  # noqa: E402
import reproduce_onehot  # noqa: E402
from autograd_lite.files import atomic_write  # noqa: E402
from conftest import TINY, damaged_copy, one_error_line  # noqa: E402
from experiments import checkpoints, cli, runs  # noqa: E402
from experiments.grid import Run, asked_config  # noqa: E402
from experiments.results import write_json  # noqa: E402
from experiments.tables import table  # noqa: E402


def first_weight(arrays):
    return next(k for k in arrays if k.startswith("model/"))


# --- 1. non-finite weights ------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_checkpoint_with_non_finite_weights_is_refused_everywhere(vae_run, tmp_path, capsys,
                                                                  value):
    """evaluate, sample and train --resume refuse it naming the file (they printed
    'test ELBO: nan', wrote a white PNG, and exited 0)."""
    def poison(arrays, meta):
        arrays[first_weight(arrays)][...] = value
    bad = damaged_copy(vae_run, tmp_path / "bad", poison)
    png = tmp_path / "s.png"
    for argv in (["evaluate", str(bad)], ["sample", str(bad), "--out", str(png)],
                 ["train", "--dataset", "onehot", "--method", "vae", "--resume",
                  "--out", str(bad)]):
        assert cli.main(argv) == 2, argv
        one_error_line(capsys.readouterr().err, str(bad), "non-finite")
    assert not png.exists()


def test_huge_finite_weights_are_refused_at_evaluation(vae_run, tmp_path, capsys):
    """Weights of 1e30 are finite but give NaN numbers: refused, naming the checkpoint."""
    def huge(arrays, meta):
        for key in arrays:
            if key.startswith(("model/", "best/")):
                arrays[key][...] = 1e30
    bad = damaged_copy(vae_run, tmp_path / "huge", huge)
    assert cli.main(["evaluate", str(bad)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), "finite")
    assert cli.main(["sample", str(bad), "--out", str(tmp_path / "s.png")]) == 2
    one_error_line(capsys.readouterr().err, str(bad))
    assert not (tmp_path / "s.png").exists()


def test_weights_stored_as_integers_are_refused(vae_run, tmp_path):
    def as_int(arrays, meta):
        key = first_weight(arrays)
        arrays[key] = arrays[key].astype(np.int64)
    bad = damaged_copy(vae_run, tmp_path / "int", as_int)
    with pytest.raises(checkpoints.CheckpointError, match="int64"):
        checkpoints.read_checkpoint(str(bad))


def test_a_nan_result_is_never_written(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match="r.json"):
        write_json(path, {"log_likelihood": math.nan})
    assert not path.exists()


# --- 2. the lock on the run folder, stale temporary files ------------------------------
def hold_lock(folder):
    """Another process that holds ``folder``'s lock until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from experiments import checkpoints; "
         "checkpoints.lock_run_folder(sys.argv[1]); print('locked', flush=True); "
         "time.sleep(120)", str(folder)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(folder):
    """Let go of this process's lock on ``folder``, as if the process had ended."""
    checkpoints._HELD_LOCKS.pop(os.path.abspath(folder)).close()


def test_a_second_process_on_a_run_folder_is_refused(tmp_path, capsys):
    """Fresh or --resume, a training into a folder that another process holds is refused
    in one line naming that process (two runs started together both trained, and one
    checkpoint was lost)."""
    fresh, trained = tmp_path / "fresh", tmp_path / "trained"
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY, "--samples",
                     "2", "--out", str(trained)]) == 0
    release(trained)
    for folder, extra in ((fresh, []), (trained, ["--resume"])):
        holder = hold_lock(folder)
        try:
            assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY,
                             "--out", str(folder), *extra]) == 2
            one_error_line(capsys.readouterr().err, f"process {holder.pid}", "in use")
        finally:
            holder.kill()
            holder.wait()
    assert not (fresh / "checkpoint.npz").exists()


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [folder / ".checkpoint.npz.abc123.tmp", folder / ".config.json.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    (folder / "keep.tmp").write_bytes(b"not ours")
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY, "--samples",
                     "2", "--out", str(folder)]) == 0
    assert not any(path.exists() for path in stale) and (folder / "keep.tmp").exists()


# --- 3. divergence ------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--lr", "--lr-density-ratio"])
def test_a_huge_step_size_stops_as_diverged(option, tmp_path, capsys):
    """lr 100 gave finite garbage ('test ELBO: -64894524891070464') with exit 0."""
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "onehot", "--method", "iop", *TINY, "--j2", "1",
                     option, "100", "--out", str(out)])
    assert code == 2
    one_error_line(capsys.readouterr().err, "diverged", "divergence rule")


def test_the_divergence_rule_and_its_thresholds():
    data = datasets.load("onehot")
    trainer = runs.Trainer(runs.Config(dataset="onehot", method="vae", latent=2, hidden=8),
                           data, out_dir=None)
    trainer.round_start = 0.0
    bound = runs.DIVERGED_NATS_PER_DIMENSION * data.dim

    def record(loss=2.0, disc_loss=1.3, valid_elbo=-2.0):
        return {"epoch": 1, "loss": loss, "disc_loss": disc_loss, "valid_elbo": valid_elbo}

    trainer.check(record(loss=0.99 * bound, valid_elbo=-0.99 * bound))
    for bad in (record(loss=1.01 * bound), record(valid_elbo=-1.01 * bound),
                record(disc_loss=runs.DIVERGED_DENSITY_RATIO_LOSS * 1.01),
                record(loss=math.nan)):
        with pytest.raises(runs.TrainingDiverged):
            trainer.check(bad)
    assert runs.DIVERGED_DENSITY_RATIO_LOSS == pytest.approx(20 * math.log(2))


# --- 4. impossible likelihoods ------------------------------------------------------------
def test_impossible_estimates_are_flagged_and_iop_prints_log_z(iop_run, monkeypatch, capsys):
    """An estimate above 0 on binary data (IOP printed +2.68 on OneHot as a result) is
    marked IMPOSSIBLE, with a warning; IOP's evaluate prints log Z beside its estimate."""
    assert cli.main(["evaluate", str(iop_run), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "log Z" in out and "IMPOSSIBLE" not in out
    monkeypatch.setattr(iopvae, "test_log_likelihood",
                        lambda model, x, s, rng, **options: np.full(x.shape[0], 2.68))
    assert cli.main(["evaluate", str(iop_run), "--samples", "2"]) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.out.splitlines() if "log-likelihood" in x)
    assert "2.68" in line and "IMPOSSIBLE" in line
    assert "warning:" in captured.err and str(iop_run) in captured.err


def fake_result(run, ll, likelihood="bernoulli", **extra):
    config = asked_config(run, {})
    r = {"run": run.name, "dataset": run.dataset, "method": run.method, "seed": run.seed,
         "components": config.components if run.method == "vamp" else None,
         "config": __import__("dataclasses").asdict(config), "epochs_trained": 1,
         "best_epoch": 1, "finished": True, "samples": 10, "tight_samples": 20,
         "test_elbo": ll - 1, "log_likelihood": ll, "log_likelihood_tight": ll,
         "likelihood": likelihood, "log_likelihood_exact": ll - 5,
         "log_likelihood_exact_tight": None, "log_normalizer": 1.0,
         "split_id": datasets.load(run.dataset).split_id}
    r.update(extra)
    return r


def test_table2_marks_an_impossible_result_invalid_and_never_bold():
    results = {}
    for seed, (vae, iop) in enumerate([(-3.0, 2.0), (-3.1, 2.5)]):
        for method, ll in (("vae", vae), ("iop", iop)):
            run = Run("onehot", method, seed)
            results[run] = fake_result(run, ll)
    text = table(results)
    iop_row = next(line for line in text.splitlines() if "| iop |" in line)
    vae_row = next(line for line in text.splitlines() if "| vae |" in line)
    assert "INVALID" in iop_row and "**" not in iop_row
    assert "INVALID" not in vae_row


# --- 5. and 6. table2 result files and settings ----------------------------------------
RUN = Run("onehot", "vae", 0)


@pytest.mark.parametrize("content, why", [
    ('{"run": NaN}', "not finite"),
    ('{"run": "onehot-vae-seed0", "dataset"', "delimiter"),
    ("MISSING", "no log_likelihood"),
    ("OTHER", "onehot-vae-seed1"),
])
def test_a_damaged_result_file_is_refused_naming_it(tmp_path, capsys, content, why):
    """A NaN result was shown as '**nan ± nan**', bold as the best; a truncated one gave
    'Expecting ',' delimiter' naming no file; a missing key a traceback; another run's
    content was counted under the file's name."""
    path = tmp_path / "results" / "onehot-vae-seed0.json"
    path.parent.mkdir()
    result = fake_result(RUN, -2.0)
    if content == "MISSING":
        del result["log_likelihood"]
        content = json.dumps(result)
    elif content == "OTHER":
        content = json.dumps(fake_result(Run("onehot", "vae", 1), -2.0))
    elif "NaN" in content:
        result["log_likelihood"] = "NAN"
        content = json.dumps(result).replace('"NAN"', "NaN")
    path.write_text(content)
    code = cli.main(["table2", "--datasets", "onehot", "--methods", "vae", "--seeds", "0",
                     "--results", str(path.parent), "--out", str(tmp_path / "runs"),
                     "--samples", "10", "--tight-samples", "20"])
    assert code == 2
    one_error_line(capsys.readouterr().err, str(path), why)
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_table2_refuses_runs_made_with_other_settings_and_extends_epochs(tmp_path, capsys):
    """A grid asked with other settings reused the old results silently, and after they
    were deleted resumed the old checkpoints; now both are refused naming what
    differs, and only --epochs may differ (it sets the run's new end)."""
    folders = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
               "--samples", "2", "--tight-samples", "2"]
    base = ["run", "--dataset", "onehot", "--method", "vae", "--seed", "0", *folders,
            "--hidden", "8", "--warmup", "1", "--patience", "0"]
    assert cli.main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    grid = ["table2", "--datasets", "onehot", "--methods", "vae", "--seeds", "0", *folders,
            "--warmup", "1", "--patience", "0", "--epochs", "1"]
    assert cli.main([*grid, "--hidden", "16"]) == 2
    one_error_line(capsys.readouterr().err, "--hidden 16 (stored: 8)")
    (tmp_path / "results" / "onehot-vae-seed0.json").unlink()
    assert cli.main([*base[:-6], "--hidden", "16", "--warmup", "1", "--epochs", "1"]) == 2
    one_error_line(capsys.readouterr().err, "--hidden 16 (stored: 8)", "--patience")
    assert cli.main([*base, "--epochs", "2"]) == 0  # extends the run to two epochs
    meta, _ = checkpoints.read_checkpoint(str(tmp_path / "runs" / "onehot-vae-seed0"))
    assert meta["epoch"] == 2 and meta["config"].epochs == 2
    result = json.loads((tmp_path / "results" / "onehot-vae-seed0.json").read_text())
    assert result["epochs_trained"] == 2 and result["config"]["epochs"] == 2


# --- options checked up front ----------------------------------------------------------------
@pytest.mark.parametrize("argv, name", [
    (["--latent", "-1"], "latent"), (["--components", "-1"], "components"),
    (["--noise-dim", "-1"], "noise_dim"), (["--seed", "-1"], "seed"),
    (["--samples", "0"], "--samples"), (["--decoder-logvar-min", "nan"], "decoder_logvar_min"),
    (["--encoder-logvar-min", "3"], "encoder_logvar_min"),
    (["--method", "avb", "--noise-dim", "0"], "noise_dim"),
])
def test_bad_training_options_are_refused_before_training(argv, name, tmp_path, capsys):
    out = tmp_path / "run"
    method = [] if "--method" in argv else ["--method", "vae"]
    code = cli.main(["train", "--dataset", "onehot", *method, *TINY, *argv, "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, name)
    assert "training" not in captured.out and not (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("argv, name", [
    (["sample", "RUN", "--n", "0"], "--n"), (["sample", "RUN", "--n", "-1"], "--n"),
    (["sample", "RUN", "--seed", "-1"], "--seed"), (["evaluate", "RUN", "--seed", "-1"], "--seed"),
    (["evaluate", "RUN", "--samples", "0"], "--samples"),
    (["gradcheck", "--seed", "-1"], "--seed"),
    (["table2", "--jobs", "0"], "--jobs"), (["table2", "--jobs", "-1"], "--jobs"),
    (["table2", "--seeds", "0", "0"], "--seeds 0 0"), (["table2", "--seeds", "-1"], "--seed"),
    (["table2", "--tight-samples", "0"], "--tight-samples"),
    (["run", "--dataset", "onehot", "--method", "vae", "--samples", "0"], "--samples"),
])
def test_bad_options_of_the_other_commands_are_refused(argv, name, vae_run, tmp_path, capsys):
    argv = [str(vae_run) if word == "RUN" else word for word in argv]
    if argv[0] in ("table2", "run"):
        argv += ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, name)
    assert not (tmp_path / "runs").exists()


def test_a_huge_dimension_says_how_much_memory_it_needs(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", "--latent",
                     str(10 ** 13), "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, "not enough memory", "iB")


def test_reproduce_onehot_refuses_a_negative_seed_and_says_quick_overrides(capsys):
    with pytest.raises(SystemExit):
        reproduce_onehot.parse_args(["--seed", "-1"])
    assert "--seed" in capsys.readouterr().err
    args = reproduce_onehot.parse_args(["--quick", "--epochs", "500"])
    assert args.epochs == reproduce_onehot.QUICK["epochs"]
    assert "--quick overrides --epochs" in capsys.readouterr().err


def test_options_that_do_not_apply_are_said_aloud(vae_run, tmp_path, capsys):
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY, "--samples", "2",
                     "--components", "5", "--j2", "3", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "warning: --components does not apply to --method vae" in out
    assert "warning: --j2 does not apply" in out
    assert cli.main(["sample", str(vae_run), "--sir", "--n", "4",
                     "--out", str(tmp_path / "s.png")]) == 0
    assert "warning: --sir applies to IOP only" in capsys.readouterr().out


# --- data -------------------------------------------------------------------------------------
def test_a_gzip_bomb_is_refused_at_the_expected_size(tmp_path):
    path = tmp_path / "images.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0" * 10_000_000)  # 10 MB of zeros where 20 bytes are expected
    with pytest.raises(datasets.DataError, match="more than the 20 bytes expected"):
        datasets.read_idx_images(path, 1, 2, 2)


def test_the_checksum_hint_names_no_option_that_train_lacks():
    hint = datasets._bypass_hint("mnist")
    assert "--no-verify on the command line" not in hint
    assert "python datasets.py info mnist --no-verify" in hint


# --- checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("epoch", "three"), ("history", 5),
                                          ("best_valid_elbo", "high"), ("dim", "4")])
def test_checkpoint_meta_of_the_wrong_type_is_refused(vae_run, tmp_path, field, value):
    def change(arrays, meta):
        meta[field] = value
    bad = damaged_copy(vae_run, tmp_path / "meta", change)
    with pytest.raises(checkpoints.CheckpointError, match=field):
        checkpoints.read_checkpoint(str(bad))


def test_a_checkpoint_before_the_end_of_the_warm_up_resumes(tmp_path):
    """Before the warm-up ends there is no best epoch: its validation ELBO is written as
    null (JSON has no -inf), and a checkpoint of older code, with -Infinity there, still
    reads; both resume with no best weights."""
    out = tmp_path / "early"
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", "--epochs", "1",
                     "--warmup", "5", "--hidden", "8", "--samples", "2", "--out",
                     str(out)]) == 0
    meta, _ = checkpoints.read_checkpoint(str(out))
    assert meta["best_valid_elbo"] is None and meta["best_epoch"] == 0

    def as_older_code_wrote_it(arrays, meta):
        meta["best_valid_elbo"] = -math.inf            # json.dumps writes -Infinity
    older = damaged_copy(out, tmp_path / "older", as_older_code_wrote_it)
    data = datasets.load("onehot")
    for folder in (out, older):
        trainer = checkpoints.resume_trainer(str(folder), data, None, log=lambda line: None)
        assert trainer.best["valid_elbo"] == -math.inf and trainer.best["state"] is None


def test_a_wrong_image_shape_names_the_checkpoint(vae_run, tmp_path, capsys):
    def change(arrays, meta):
        meta["image_shape"] = [3, 5]
    bad = damaged_copy(vae_run, tmp_path / "shape", change)
    assert cli.main(["sample", str(bad), "--out", str(tmp_path / "s.png")]) == 2
    one_error_line(capsys.readouterr().err, str(bad), "image_shape")


def test_an_rng_state_of_another_generator_names_the_checkpoint(vae_run, tmp_path, capsys):
    def change(arrays, meta):
        meta["rng_state"] = {"bit_generator": "MT19937", "state": {"key": [1], "pos": 0}}
    bad = damaged_copy(vae_run, tmp_path / "rng", change)
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", "--resume",
                     "--epochs", "3", "--out", str(bad)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), "generator")


# --- processes -------------------------------------------------------------------------------
def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Ctrl-C printed a traceback; now one line, exit 130, and --resume continues."""
    def interrupt(self, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(runs.Trainer, "measure", interrupt)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "onehot", "--method", "vae", "--epochs", "3", "--hidden",
            "8", "--warmup", "1", "--samples", "2", "--out", str(out)]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.strip() == "interrupted at epoch 1; continue with --resume"
    meta, _ = checkpoints.read_checkpoint(str(out))
    assert meta["epoch"] == 1
    monkeypatch.undo()
    release(out)  # as if in a new process
    assert cli.main([*argv, "--resume"]) == 0
    assert checkpoints.read_checkpoint(str(out))[0]["epoch"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_killing_table2_stops_its_workers(tmp_path, sig):
    """SIGTERM to `table2 --jobs 2` left its workers training as orphans; after kill -9
    they went on too (each now watches a pipe its grid holds)."""
    grid = subprocess.Popen(
        [sys.executable, "-m", "experiments", "table2", "--datasets", "onehot", "--methods",
         "vae", "iop", "--seeds", "0", "--jobs", "2", "--out", str(tmp_path / "runs"),
         "--results", str(tmp_path / "results"), "--epochs", "100000", "--hidden", "8",
         "--patience", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [tmp_path / "runs" / name / ".lock" for name in ("onehot-vae-seed0",
                                                              "onehot-iop-seed0")]
    deadline = time.time() + 120
    while not all(p.exists() and p.read_text().strip() for p in locks):
        assert time.time() < deadline and grid.poll() is None, "the workers did not start"
        time.sleep(0.2)
    workers = [int(p.read_text()) for p in locks]
    grid.send_signal(sig)
    assert grid.wait(timeout=60) != 0
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers):
        assert time.time() < deadline, "a worker outlived its grid"
        time.sleep(0.2)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as stopped
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


# --- outputs ---------------------------------------------------------------------------------
def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY,
                     "--out", str(file)]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, str(file))
    assert "training" not in captured.out
    assert cli.main(["table2", "--datasets", "onehot", "--results", str(file),
                     "--out", str(tmp_path / "runs")]) == 2
    one_error_line(capsys.readouterr().err, "--results", str(file))


def test_sample_on_a_full_disk_leaves_no_empty_png(vae_run, tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    def full_disk(self, target, **kwargs):
        if isinstance(target, (str, os.PathLike)):
            open(target, "wb").close()
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", full_disk)
    png = tmp_path / "samples.png"
    assert cli.main(["sample", str(vae_run), "--n", "4", "--out", str(png)]) == 2
    one_error_line(capsys.readouterr().err, "No space left")
    assert not png.exists() and not list(tmp_path.glob(".*.tmp"))


def test_sample_out_without_extension_says_the_file_it_wrote(vae_run, tmp_path, capsys):
    name = tmp_path / "grid"
    assert cli.main(["sample", str(vae_run), "--n", "4", "--out", str(name)]) == 0
    assert (tmp_path / "grid.png").is_file() and not name.exists()
    assert f"to {name}.png" in capsys.readouterr().out


def test_written_files_respect_the_umask(tmp_path):
    """Checkpoints and JSON were written 0600 whatever the umask (mkstemp's mode)."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write("{}"), mode="w")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "b.json", lambda f: f.write("{}"), mode="w")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
        os.chmod(tmp_path / "a.json", 0o664)  # an existing file keeps its mode
        atomic_write(tmp_path / "a.json", lambda f: f.write("{}"), mode="w")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


# --- backends ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", ["examples/onehot_iop.py", "reproduce_onehot.py"])
def test_a_bad_backend_variable_is_one_line_saying_to_unset_it(script, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / script), "--out", str(tmp_path)],
                            env={**os.environ, "AUTOGRAD_LITE_BACKEND": "bogus"}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    one_error_line(result.stderr, "AUTOGRAD_LITE_BACKEND=bogus", "unset the variable")
