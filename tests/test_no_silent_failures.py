"""Issue 25: no silent wrong output from the experiment tools.  The seven silent
failures a hostile probe found (each test fails on the code before the fix), the one
atomic writer, the one check of a model's weights and outputs, and the weak errors,
by kind: each a single ``error:`` line naming the file, field or option."""
import ast
import dataclasses
import errno
import fcntl
import json
import os
import shutil
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
import reproduce_onehot  # noqa: E402
from conftest import TINY, damaged_copy, one_error_line  # noqa: E402
from experiments import checkpoints, cli, run_commands, runs  # noqa: E402
from experiments.figures import stopping_point, stopping_table  # noqa: E402
from experiments.grid import Run, asked_config  # noqa: E402
from experiments.readme import fill_readme  # noqa: E402
from experiments.tables import PICKED, goal_summary  # noqa: E402

HUGE = str(10 ** 12)


def fake_result(run, ll, **extra):
    config = asked_config(run, {})
    r = {"run": run.name, "dataset": run.dataset, "method": run.method, "seed": run.seed,
         "components": None, "config": dataclasses.asdict(config), "epochs_trained": 1,
         "best_epoch": 1, "finished": True, "samples": 10, "tight_samples": 20,
         "test_elbo": -3.0, "log_likelihood": ll, "log_likelihood_tight": ll,
         "likelihood": "bernoulli", "split_id": datasets.load(run.dataset).split_id}
    r.update(extra)
    return r


def table2(tmp_path, *extra):
    return cli.main(["table2", "--datasets", "onehot", "--methods", "vae", "--seeds", "0",
                     "--results", str(tmp_path / "results"), "--out", str(tmp_path / "runs"),
                     "--samples", "10", "--tight-samples", "20", *extra])


def write_result(tmp_path, text):
    path = tmp_path / "results" / "onehot-vae-seed0.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def readme_copy(tmp_path, change=lambda text: text):
    path = tmp_path / "README.md"
    path.write_text(change((ROOT / "README.md").read_text()))
    return path


# === the seven silent failures ========================================================
@pytest.mark.parametrize("change, block", [
    (lambda t: t.replace("<!-- end -->", "", 1), "freyfaces-causes"),
    (lambda t: t.replace("<!-- generated: freyfaces-goal -->\n", "", 1), "freyfaces-table2"),
    (lambda t: t.replace("<!-- generated: ", "<!-- was: "), "no <!-- generated"),
])
def test_1_readme_refuses_markers_that_do_not_pair_up(tmp_path, capsys, change, block):
    """A missing end marker deleted a paragraph and a whole block ('updated', exit 0);
    a README without markers was 'already up to date'."""
    readme = readme_copy(tmp_path, change)
    before = readme.read_text()
    assert cli.main(["readme", "--readme", str(readme), "--results", str(ROOT / "results")]) == 2
    one_error_line(capsys.readouterr().err, str(readme), block)
    assert readme.read_text() == before


def test_1_fill_readme_wants_one_start_and_one_end_per_block():
    with pytest.raises(ValueError, match="'t' starts twice"):
        fill_readme("<!-- generated: t -->\n<!-- end -->\n<!-- generated: t -->\n<!-- end -->",
                    {"t": "| x |"})
    with pytest.raises(ValueError, match="closes no"):
        fill_readme("<!-- end -->", {})


def test_2_readme_refuses_a_partial_results_folder(tmp_path, capsys):
    """With --results holding only the eight runs' folder, the causes table shrank from 7
    rows to 2."""
    readme = readme_copy(tmp_path)
    before = readme.read_text()
    partial = tmp_path / "partial"
    folder = Path(PICKED).parent  # the folder of the eight runs per method at the picks
    shutil.copytree(ROOT / "results" / folder, partial / folder)
    argv = ["readme", "--readme", str(readme), "--results", str(partial)]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, "freyfaces-causes", "shrink", "1: the authors' split",
                   "--allow-fewer-rows")
    assert readme.read_text() == before
    assert cli.main(argv + ["--allow-fewer-rows"]) == 0  # when the user asks for it
    assert len(readme.read_text()) < len(before)


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_3_a_result_beyond_float_range_is_refused_like_nan(tmp_path, capsys, literal):
    """1e400 is inf: table2 printed a bold '**inf ± nan**' row and saved it."""
    result = fake_result(Run("onehot", "vae", 0), -2.0)
    path = write_result(tmp_path, json.dumps(result).replace("-2.0,", literal + ",", 1))
    assert table2(tmp_path) == 2
    one_error_line(capsys.readouterr().err, str(path), "not finite")
    assert not (tmp_path / "results" / "table2.json").exists()


def test_3_readme_refuses_an_infinite_number_in_a_listed_result(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    name = json.loads((results / "table2" / "table2.json").read_text())["runs"][0]
    path = results / "table2" / f"{name}.json"
    r = json.loads(path.read_text())
    path.write_text(json.dumps(r).replace(json.dumps(r["log_likelihood"]), "1e400", 1))
    readme = readme_copy(tmp_path)
    assert cli.main(["readme", "--readme", str(readme), "--results", str(results)]) == 2
    one_error_line(capsys.readouterr().err, str(path), "not finite")


def full_disk_savefig(monkeypatch):
    """Figure.savefig writing 5 bytes to its target, then failing as under ulimit -f."""
    from matplotlib.figure import Figure

    def savefig(self, target, **kwargs):
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as f:
                f.write(b"trunc")
        else:
            target.write(b"trunc")
        raise OSError(errno.EFBIG, "File too large")
    monkeypatch.setattr(Figure, "savefig", savefig)


def curve_result(run, lr=1e-3):
    r = fake_result(run, -2.0, config={**dataclasses.asdict(asked_config(run, {})), "lr": lr})
    r["history"] = {"epoch": [1, 2, 3, 4], "beta": [0.5, 1.0, 1.0, 1.0],
                    "valid_elbo": [-3.0, -2.5, -2.6, -2.7]}
    return r


def curves_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    for seed in (0, 1):
        run = Run("onehot", "vae", seed)
        (folder / f"{run.name}.json").write_text(json.dumps(curve_result(run)))
    return folder


def test_4_curves_and_figure3_on_a_full_disk_keep_the_old_png(tmp_path, monkeypatch, capsys):
    """`curves` and `figure3` left a PNG truncated at the file-size limit."""
    folder = curves_folder(tmp_path)
    png = tmp_path / "curves.png"
    png.write_bytes(b"the good old figure")
    full_disk_savefig(monkeypatch)
    assert cli.main(["curves", "--dataset", "onehot", "--results", str(folder),
                     "--figure", str(png)]) == 2
    one_error_line(capsys.readouterr().err, str(png), "File too large")
    assert png.read_bytes() == b"the good old figure"
    assert not list(tmp_path.glob(".*.tmp"))

    from experiments.figures import figure3
    results = {Run("onehot", "vamp", s): fake_result(Run("onehot", "vamp", s), -2.0 - s,
                                                     components=50) for s in (0, 1)}
    for r in results.values():
        r["method"] = "vamp"
    fig3 = tmp_path / "figure3.png"
    fig3.write_bytes(b"the good old figure")
    with pytest.raises(OSError, match="File too large"):
        figure3(results, "onehot", str(fig3))
    assert fig3.read_bytes() == b"the good old figure"


def test_4_reproduce_onehots_figures_on_a_full_disk_keep_the_old_png(tmp_path, monkeypatch):
    png = tmp_path / "figure1_posteriors.png"
    png.write_bytes(b"the good old figure")
    full_disk_savefig(monkeypatch)
    result = {"method": "vae", "z": [[0.0, 0.0], [1.0, 1.0]], "labels": [0, 1],
              "history": [], "elbo_is_estimate": False}
    with pytest.raises(OSError, match="File too large"):
        reproduce_onehot.plot_figures([result], str(tmp_path), 1)
    assert png.read_bytes() == b"the good old figure"
    assert not list(tmp_path.glob(".*.tmp"))


PROGRAM = ["iopvae.py", "estimators.py", "datasets.py",
           "reproduce_onehot.py", "experiments", "autograd_lite", "steps",
           "examples", "benchmarks"]
WRITER = ("autograd_lite/files.py",)  # atomic_write itself
ALLOWED = {  # (file, what): why it is not a whole-file write
    ("experiments/workers.py", "open"): "a worker's train.log, appended to as it trains",
    ("autograd_lite/testing/cupy_api.py", "write_text"): "a developer's tool refreshing the "
                                                         "snapshot",
    ("autograd_lite/testing/cupy_sim.py", "dump"): "CuPy's ndarray.dump(file), mirrored",
    ("benchmarks/bench_step.py", "open"): "/proc/self/clear_refs, a kernel control file",
}


def write_calls(path):
    """(function, line) of each call in ``path`` that writes a file by another way than
    ``atomic_write``: open() for writing, savefig/np.savez/json.dump to a path or a
    file, write_text/write_bytes; a call inside ``lambda f: ...`` (handed to
    ``atomic_write``) that writes to ``f`` is the writer's."""
    tree = ast.parse(path.read_text())
    handed = {id(call) for lam in ast.walk(tree) if isinstance(lam, ast.Lambda)
              for call in ast.walk(lam.body) if isinstance(call, ast.Call)
              and any(isinstance(a, ast.Name) and a.id in [p.arg for p in lam.args.args]
                      for a in call.args[:2])}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                found.append((name, node.lineno))
        elif name in ("savefig", "savez", "savez_compressed", "save", "write_text",
                      "write_bytes", "imsave", "tofile") and id(node) not in handed:
            found.append((name, node.lineno))
        elif name == "dump" and len(node.args) > 1 and id(node) not in handed:  # json.dump
            found.append((name, node.lineno))
    return found


def test_every_file_is_written_through_the_one_atomic_writer():
    """Every JSON, PNG, README and checkpoint goes through autograd_lite.files.atomic_write
    (``save_png`` for figures): a write by another way (open(..., "w"), savefig(path),
    np.savez(path), json.dump(f)) outside a lambda handed to it is refused here."""
    files = [p for entry in PROGRAM for p in
             ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir() else [ROOT / entry])]
    others = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in WRITER:
            continue
        for name, line in write_calls(path):
            if (rel, name) not in ALLOWED:
                others.append(f"{rel}:{line} {name}")
    assert not others, f"writes that bypass atomic_write: {others}"


def test_a_symlinked_readme_is_written_through_the_link(tmp_path, capsys):
    target = readme_copy(tmp_path, lambda t: t.replace("| 1: the authors' split", "| old", 1))
    link = tmp_path / "link.md"
    link.symlink_to(target)
    assert cli.main(["readme", "--readme", str(link), "--results", str(ROOT / "results")]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == (ROOT / "README.md").read_text()


def big_weights(prefix, part, value):
    def change(arrays, meta):
        for key in arrays:
            if key.startswith(prefix) and part in key:
                arrays[key][...] = value
    return change


@pytest.mark.parametrize("method, prefix, part, value, argv", [
    ("iop", "", "density_ratio", 3e38, ["--sir"]),
    ("vae", "best/", "encoder", 1e30, []),
])
def test_5_sample_refuses_weights_that_evaluate_refuses(vae_run, iop_run, tmp_path, capsys,
                                                        method, prefix, part, value, argv):
    """T's weights at 3e38: evaluate exited 2, sample --sir 0 with 64 identical images;
    the encoder's best weights at 1e30: the same without --sir."""
    run = {"vae": vae_run, "iop": iop_run}[method]
    bad = damaged_copy(run, tmp_path / "bad", big_weights(prefix, part, value))
    png = tmp_path / "s.png"
    for command in (["evaluate", str(bad)], ["sample", str(bad), "--out", str(png), *argv]):
        assert cli.main(command) == 2, command
        one_error_line(capsys.readouterr().err, str(bad))
    assert not png.exists()


def test_5_the_output_check_serves_every_command(iop_run, monkeypatch):
    """A decoder giving NaN from finite weights is refused by load_model, which evaluate,
    sample, sample --sir and the grid's evaluation all use."""
    import iopvae
    monkeypatch.setattr(iopvae.Decoder, "forward",
                        lambda self, z: runs.ag.Tensor(runs.ag.as_array(
                            np.full((z.shape[0], self.dim), np.nan, np.float32))))
    with pytest.raises(ValueError, match="decoder gives numbers that are not finite"):
        checkpoints.load_model(str(iop_run))


def test_6_compare_patience_0_never_stops_as_in_training(tmp_path, capsys):
    """`curves --compare-patience 0` said 'patience 0 stops at 9, lost 0.23'; training
    with --patience 0 never stops early.  A negative patience was accepted."""
    h = curve_result(Run("onehot", "vae", 0))["history"]
    assert stopping_point(h, 0) == (None, 2, -2.5)
    assert "patience 0 (never stops)" in stopping_table([curve_result(Run("onehot", "vae", 0))],
                                                        0)
    folder = curves_folder(tmp_path)
    argv = ["curves", "--dataset", "onehot", "--results", str(folder), "--figure",
            str(tmp_path / "c.png")]
    assert cli.main(argv + ["--compare-patience", "0"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split("|")[5].strip() == "-" and row.split("|")[7].strip() == "0.00"
    assert cli.main(argv + ["--compare-patience", "-5"]) == 2
    one_error_line(capsys.readouterr().err, "--compare-patience", "-5")


def test_7_evaluate_split_train_scores_the_binarised_training_images(monkeypatch, capsys):
    """On MNIST `evaluate --split train` scored gray pixels as Bernoulli data."""
    import iopvae
    seen = []
    monkeypatch.setattr(iopvae, "elbo", lambda model, x, rng: seen.append(np.array(x)) or -1.0)
    gray = np.full((6, 4), 0.5, np.float32)
    data = datasets.Dataset(name="mnist", train=gray, valid=gray, test=gray,
                            likelihood="bernoulli", dynamic_binarization=True,
                            image_shape=None)
    model = type("M", (), {"explicit_posterior": False, "has_density_ratio": False,
                           "name": "m"})()
    run_commands.report_evaluation(model, data, 1, None, split="train")
    assert set(np.unique(seen[0])) <= {0.0, 1.0}
    assert np.array_equal(seen[0], checkpoints.training_images(data))


# === one atomic writer: its errors ======================================================
def test_a_missing_folder_names_the_file_not_its_temporary(tmp_path):
    from autograd_lite.files import atomic_write
    with pytest.raises(FileNotFoundError) as caught:
        atomic_write(tmp_path / "no" / "x.png", lambda f: f.write(b"x"))
    assert str(tmp_path / "no" / "x.png") in str(caught.value) and ".tmp" not in str(
        caught.value)


# === weak errors: one `error:` line naming the file and the field ======================
def write_selection(tmp_path, change):
    doc = {"dataset": "onehot", "score": "s", "seeds": [0], "config": {"epochs": 2},
           "methods": {"vae": {"pick": {"lr": 0.001}, "candidates": [
               {"settings": {"lr": 0.001}, "runs": ["r"], "valid_log_likelihood": [-2.0],
                "mean": -2.0, "std": 0.0, "invalid": False}]}}}
    change(doc)
    path = tmp_path / "results" / "onehot-selection.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("change, field", [
    (lambda d: d["methods"]["vae"]["pick"].update(lr="abc"), "lr"),
    (lambda d: d["methods"]["vae"]["pick"].update(seed=5), "'seed'"),
    (lambda d: d["methods"]["vae"]["pick"].update(colour=1), "'colour'"),
    (lambda d: d.pop("methods"), "methods"),
    (lambda d: d.update(config=[1, 2]), "config"),
])
def test_hand_edited_selection_files_are_one_error_line(tmp_path, capsys, change, field):
    path = write_selection(tmp_path, change)
    assert table2(tmp_path, "--selected", "--epochs", "2") == 2
    one_error_line(capsys.readouterr().err, str(path), field)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, field", [
    (lambda r: r["history"].pop("beta"), "beta"),
    (lambda r: r["config"].pop("lr"), "lr"),
    (lambda r: r["history"]["valid_elbo"].__setitem__(1, "x"), "valid_elbo"),
    (lambda r: r["history"].update(epoch=[]), "epoch"),
    ("NESTED", "nested"),
])
def test_curves_results_that_cannot_be_drawn_are_one_error_line(tmp_path, capsys, change,
                                                                 field):
    folder = curves_folder(tmp_path)
    path = folder / "onehot-vae-seed0.json"
    r = json.loads(path.read_text())
    if change == "NESTED":
        path.write_text('{"history": ' + "[" * 100_000 + "]" * 100_000 + "}")
    else:
        change(r)
        path.write_text(json.dumps(r))
    assert cli.main(["curves", "--dataset", "onehot", "--results", str(folder),
                     "--figure", str(tmp_path / "c.png")]) == 2
    one_error_line(capsys.readouterr().err, str(path), field)


def test_curves_of_a_method_it_does_not_draw_is_one_error_line(tmp_path, capsys):
    """An AVB result (which no grid makes) left curves with no panel to draw: matplotlib's
    "Number of columns must be a positive integer, not 0" and no file named."""
    folder = curves_folder(tmp_path)
    for path in folder.glob("*.json"):
        r = json.loads(path.read_text())
        r["method"] = "avb"
        path.write_text(json.dumps(r))
    assert cli.main(["curves", "--dataset", "onehot", "--results", str(folder),
                     "--figure", str(tmp_path / "c.png")]) == 2
    one_error_line(capsys.readouterr().err, str(folder), "avb")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("value", ['"abc"', "[1, 2]", "true"])
def test_a_result_number_of_the_wrong_type_is_one_error_line(tmp_path, capsys, value):
    result = fake_result(Run("onehot", "vae", 0), -2.0)
    path = write_result(tmp_path, json.dumps(result).replace("-2.0,", value + ",", 1))
    assert table2(tmp_path) == 2
    one_error_line(capsys.readouterr().err, str(path), "log_likelihood")


def test_finished_must_be_true_or_false(tmp_path, capsys):
    path = write_result(tmp_path, json.dumps(fake_result(Run("onehot", "vae", 0), -2.0,
                                                         finished="no")))
    assert table2(tmp_path) == 2
    one_error_line(capsys.readouterr().err, str(path), "finished")


@pytest.mark.parametrize("change, field", [
    (lambda a, m: m.update(history=[["x", 1]] + m["history"][1:]), "history record 0"),
    (lambda a, m: m.update(epoch=-4, best_epoch=-4), "epoch -4"),
    (lambda a, m: m.update(history=[]), "history holds 0 records"),
    (lambda a, m: m.update(dim=10 ** 9), "not enough memory"),
])
def test_checkpoint_meta_that_would_fail_later_is_refused_at_once(vae_run, tmp_path, capsys,
                                                                  change, field):
    """A history of ["x", 1] failed only after training; epoch -4 resumed with beta -3;
    an empty history gave '-inf ... nan'; a dim of 10^9 hung."""
    bad = damaged_copy(vae_run, tmp_path / "bad", change)
    for argv in (["evaluate", str(bad)],
                 ["train", "--dataset", "onehot", "--method", "vae", "--resume", "--out",
                  str(bad), "--epochs", "5"]):
        assert cli.main(argv) == 2
        one_error_line(capsys.readouterr().err, str(bad), field)


@pytest.mark.parametrize("setting, said", [("seed=5", "--seed"), ("dataset=mnist", "--dataset"),
                                           ("lr=abc", "lr must be a float")])
def test_run_settings_are_checked(tmp_path, capsys, setting, said):
    assert cli.main(["run", "--dataset", "onehot", "--method", "vae", "--settings", setting,
                     "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r")]) == 2
    one_error_line(capsys.readouterr().err, setting, said)


def test_reproduce_onehot_refuses_an_out_that_is_a_file(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(SystemExit):
        reproduce_onehot.parse_args(["--out", str(file)])
    assert f"--out {file} is a file" in capsys.readouterr().err


def test_figure_paths_are_said_as_written_and_checked_before_training(vae_run, tmp_path,
                                                                      capsys):
    """`--figure fig` wrote fig.png but said fig; `figure3 --figure f.xyz` was refused
    after training; `sample --out FOLDER` wrote FOLDER.png beside it."""
    folder = curves_folder(tmp_path)
    assert cli.main(["curves", "--dataset", "onehot", "--results", str(folder), "--figure",
                     str(tmp_path / "fig")]) == 0
    assert f"wrote {tmp_path / 'fig'}.png" in capsys.readouterr().out
    assert (tmp_path / "fig.png").is_file()
    assert cli.main(["figure3", "--dataset", "onehot", "--seeds", "0", "--figure",
                     str(tmp_path / "f.xyz"), "--out", str(tmp_path / "runs"), "--results",
                     str(tmp_path / "r"), *TINY]) == 2
    one_error_line(capsys.readouterr().err, "--figure", "f.xyz")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "pngs").mkdir()
    assert cli.main(["sample", str(vae_run), "--out", str(tmp_path / "pngs")]) == 2
    one_error_line(capsys.readouterr().err, "--out", "folder")
    assert not (tmp_path / "pngs.png").exists()


@pytest.mark.parametrize("argv, said", [
    (["train", "--dataset", "onehot", "--method", "iop", "--j1", HUGE], "--j1"),
    (["train", "--dataset", "onehot", "--method", "iop", "--j2", HUGE], "--j2"),
    (["train", "--dataset", "onehot", "--method", "vae", "--valid-samples", HUGE],
     "--valid-samples"),
    (["train", "--dataset", "onehot", "--method", "vae", "--samples", HUGE], "--samples"),
    (["table2", "--datasets", "onehot", "--tight-samples", HUGE], "--tight-samples"),
])
def test_size_options_are_checked_against_the_machine_before_any_work(tmp_path, capsys, argv,
                                                                     said):
    assert cli.main(argv + ["--out", str(tmp_path / "runs")]) == 2
    one_error_line(capsys.readouterr().err, said, HUGE)
    assert not (tmp_path / "runs").exists() or argv[0] == "train"


def test_sample_n_is_checked_against_memory(vae_run, tmp_path, capsys):
    assert cli.main(["sample", str(vae_run), "--n", str(10 ** 9), "--out",
                     str(tmp_path / "s.png")]) == 2
    one_error_line(capsys.readouterr().err, "--n", "not enough memory")


def test_reproduce_onehot_checks_prior_samples_against_memory(capsys):
    with pytest.raises(SystemExit):
        reproduce_onehot.parse_args(["--prior-samples", HUGE])
    assert "--prior-samples" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "config-json", "inflating",
                                  "dangling-link", "link-to-json"])
def test_checkpoints_that_are_no_npz_file_are_refused_at_once(vae_run, tmp_path, capsys, kind):
    """A FIFO hung, /dev/zero never ended, a JSON file (also through a link) got NumPy's
    allow_pickle hint, a compressed .npz inflated 17 MB to 4.9 GB; a link to nothing is a
    checkpoint not found.  Each is said once, in one line."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.npz"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "config-json":
        path = vae_run / "config.json"
    elif kind == "dangling-link":
        path.symlink_to(tmp_path / "nowhere.npz")
    elif kind == "link-to-json":
        path.symlink_to(vae_run / "config.json")
    else:
        with np.load(vae_run / "checkpoint.npz") as archive:
            arrays = {k: archive[k] for k in archive.files}
        arrays["model/padding"] = np.zeros(2 ** 24, np.float32)
        np.savez_compressed(path, **arrays)
    assert cli.main(["evaluate", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err, str(path))
    assert line.count("not a readable") <= 1, line


def test_a_fifo_as_result_file_is_refused(tmp_path, capsys):
    path = tmp_path / "results" / "onehot-vae-seed0.json"
    path.parent.mkdir()
    os.mkfifo(path)
    assert table2(tmp_path) == 2
    one_error_line(capsys.readouterr().err, str(path), "not a regular file")


@pytest.mark.parametrize("extra, said", [
    (["--methods", "vae", "vae"], "--methods"),
    (["--components", "10", "10"], "--components"),
])
def test_values_given_twice_are_refused_before_training(tmp_path, capsys, extra, said):
    argv = ["figure3" if said == "--components" else "table2", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "r"), "--seeds", "0", *TINY, *extra]
    if said == "--components":
        argv += ["--dataset", "onehot"]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, said)
    assert not (tmp_path / "runs").exists()


def test_a_bad_backend_under_jobs_is_one_line_before_any_worker(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "table2", "--datasets", "onehot", "--seeds",
         "0", "--jobs", "2", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r")],
        env={**os.environ, "AUTOGRAD_LITE_BACKEND": "bogus"}, capture_output=True, text=True,
        timeout=120, cwd=ROOT)
    assert result.returncode == 2
    one_error_line(result.stderr, "AUTOGRAD_LITE_BACKEND")


def test_select_refuses_lr_which_it_would_ignore(tmp_path, capsys):
    assert cli.main(["select", "--dataset", "onehot", "--lr", "0.5", "--out",
                     str(tmp_path / "runs"), "--results", str(tmp_path / "r")]) == 2
    one_error_line(capsys.readouterr().err, "--lr", "--lrs")


def test_welch_p_with_one_run_says_so_instead_of_nan():
    paper = {"iop": (10.0, 1.0), "vamp": (8.0, 1.0), "vae": (5.0, 1.0)}
    text = goal_summary({"iop": [9.0], "vae": [4.0, 6.0]}, paper)
    assert "nan" not in text and "Welch p = n/a (one run)" in text


def test_resume_with_an_earlier_end_is_refused(vae_run, capsys):
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", "--resume", "--out",
                     str(vae_run), "--epochs", "1"]) == 2
    one_error_line(capsys.readouterr().err, "--epochs 1", "2 epochs")


def aged(path, seconds=3600):
    """``path``, written and dated ``seconds`` ago."""
    path.write_bytes(b"x")
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


def test_stale_temporary_pngs_of_killed_samples_are_removed(vae_run, tmp_path, capsys):
    png = tmp_path / "s.png"
    stale, live = aged(tmp_path / ".s.png.abc.tmp"), aged(tmp_path / ".s.png.def.tmp")
    with open(live, "rb") as held:  # a write under way holds its temporary's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert cli.main(["sample", str(vae_run), "--n", "4", "--out", str(png)]) == 0
    assert png.is_file() and not stale.exists() and live.exists()


def test_an_ascii_terminal_gets_the_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "readme", "--readme", str(tmp_path / "é.md")],
        env={**os.environ, "PYTHONIOENCODING": "ascii"}, capture_output=True, timeout=120,
        cwd=ROOT)
    assert result.returncode == 2
    err = result.stderr.decode("ascii")
    assert err.startswith("error: --readme") and "codec" not in err and "Traceback" not in err


# === issue 38: the third probe's silent failures ========================================
def grid_argv(command, tmp_path, *extra, methods=("vae",)):
    """``command`` (table2, select, figure3) on OneHot, seed 0, in ``tmp_path``."""
    data = ["--datasets", "onehot"] if command == "table2" else ["--dataset", "onehot"]
    chosen = [] if command == "figure3" else ["--methods", *methods]
    return [command, *data, *chosen, "--seeds", "0", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--samples", "10", "--tight-samples", "5",
            *extra]


def test_38_1_a_short_iop_run_is_evaluated_then_extended(tmp_path, capsys):
    """An IOP run of 3 to 5 epochs measured T at epochs 1 and 2 only: KeyError
    'density_ratio_truth' in history_columns, for the smoke run and for its extension."""
    for epochs in ("3", "7"):
        assert cli.main(grid_argv("table2", tmp_path, "--epochs", epochs, "--warmup", "1",
                                  "--hidden", "8", "--j2", "1", methods=("iop",))) == 0
        r = json.loads((tmp_path / "results" / "onehot-iop-seed0.json").read_text())
        assert r["epochs_trained"] == int(epochs)
        assert r["history"]["epoch"] == list(range(1, int(epochs) + 1))
        assert "density_ratio_truth" not in r["history"]
    assert [m["epoch"] for m in r["density_ratio_truth_along_training"]] == [1, 2, 4, 5]


def test_38_2_select_refuses_the_single_value_of_its_candidates(tmp_path, capsys):
    """`select --density-ratio-dropout last --density-ratio-dropouts every last` trained its
    "every" candidate with `last`: both run folders said `last`."""
    argv = grid_argv("select", tmp_path, "--density-ratio-dropout", "last",
                     "--density-ratio-dropouts", "every", "last", *TINY, methods=("iop",))
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, "--density-ratio-dropout ", "--density-ratio-dropouts")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, values", [("--density-ratio-dropouts", ["last", "last"]),
                                            ("--pseudo-inits", ["constant", "constant"])])
def test_38_candidates_given_twice_are_refused(tmp_path, capsys, option, values):
    argv = grid_argv("select", tmp_path, option, *values, *TINY, methods=("iop", "vamp"))
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, option)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, value, method", [("--pseudo-inits", "constant", "vamp"),
                                                   ("--density-ratio-dropouts", "last", "iop")])
def test_38_candidates_for_a_method_not_selected_are_a_warning(tmp_path, capsys, option, value,
                                                                method):
    argv = grid_argv("select", tmp_path, option, value, "--print-commands", *TINY)
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert f"warning: {option} applies to {method} alone" in captured.err
    assert captured.out.count("iopvae run") == 2 and value not in captured.out


def test_38_3_a_run_that_diverged_later_leaves_the_table(tmp_path, capsys, monkeypatch):
    """A run evaluated at --epochs 2 that diverged when extended to 4: table2 said "not in
    the table, diverged", yet showed and saved its stale 2-epoch result."""
    argv = grid_argv("table2", tmp_path, "--warmup", "1", "--hidden", "8", "--patience", "0")
    assert cli.main(argv + ["--epochs", "2"]) == 0
    monkeypatch.setattr(runs, "DIVERGED_NATS_PER_DIMENSION", 1e-9)  # epoch 3 diverges
    assert cli.main(argv + ["--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "not in the table, diverged: onehot-vae-seed0" in out
    assert "| onehot | vae |" not in out.split("diverged:")[1]
    saved = json.loads((tmp_path / "results" / "table2.json").read_text())
    assert saved["runs"] == [] and "| onehot | vae |" not in saved["markdown"]


def test_38_4_figure3_with_every_vampprior_run_diverged_keeps_the_figure(tmp_path, capsys,
                                                                          monkeypatch):
    """Exit 0, "VampPrior K = []", and the good PNG and JSON overwritten by an empty figure."""
    png, numbers = tmp_path / "f3.png", tmp_path / "f3.json"
    png.write_bytes(b"the good old figure")
    numbers.write_text('{"K": [50]}')
    monkeypatch.setattr(runs, "DIVERGED_NATS_PER_DIMENSION", 1e-9)  # every run diverges
    argv = grid_argv("figure3", tmp_path, "--components", "10", "--figure", str(png), *TINY)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "not in the figure, diverged: onehot-vamp-K10-seed0" in captured.out
    one_error_line(captured.err, "no VampPrior result of onehot", str(png))
    assert png.read_bytes() == b"the good old figure" and numbers.read_text() == '{"K": [50]}'


def test_38_5_two_selects_at_once_keep_both_picks(tmp_path, monkeypatch):
    """`select --methods vae` and `select --methods iop` at once on one results folder: both
    exited 0 and the selection file held one method's pick (each wrote what it read at
    its start).  Here the vae select runs whole while the iop select trains."""
    from experiments import commands
    real = commands.run_grid

    def another_select_meanwhile(todo, args, values):
        monkeypatch.setattr(commands, "run_grid", real)
        assert cli.main(grid_argv("select", tmp_path, "--lrs", "0.001", "--j2", "1", *TINY)) == 0
        real(todo, args, values)
    monkeypatch.setattr(commands, "run_grid", another_select_meanwhile)
    assert cli.main(grid_argv("select", tmp_path, "--lrs", "0.001", "--j2", "1", *TINY,
                              methods=("iop",))) == 0
    doc = json.loads((tmp_path / "results" / "onehot-selection.json").read_text())
    assert sorted(doc["methods"]) == ["iop", "vae"]


def test_38_6_a_lock_that_is_a_symbolic_link_is_refused(tmp_path, capsys):
    """The run folder's .lock was opened with a+ through the link, truncated and written:
    the file it pointed to then held a process id."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(precious)
    assert cli.main(["train", "--dataset", "onehot", "--method", "vae", *TINY,
                     "--out", str(run)]) == 2
    one_error_line(capsys.readouterr().err, str(run / ".lock"), "symbolic link")
    assert precious.read_text() == "keep me" and not (run / "checkpoint.npz").exists()


def test_38_7_printed_commands_keep_a_path_that_is_not_utf8(tmp_path, capsysbinary):
    """`--print-commands` printed '/tmp/x-\\udcff/runs': run as printed, the command
    trained into another folder, and the grid still listed the run as unfinished."""
    odd = tmp_path / "x-\udcff"
    argv = ["table2", "--datasets", "onehot", "--methods", "vae", "--seeds", "0", "--out",
            str(odd / "runs"), "--results", str(odd / "results"), "--samples", "2",
            "--tight-samples", "2", *TINY, "--print-commands"]
    assert cli.main(argv) == 0
    [line] = capsysbinary.readouterr().out.splitlines()
    assert os.fsencode(str(odd / "runs")) in line and b"udcff" not in line
    command = line.replace(b" iopvae run ", b" %s -m experiments run " % sys.executable.encode())
    subprocess.run([b"bash", b"-c", command], cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    assert os.path.isfile(os.fsencode(str(odd / "results" / "onehot-vae-seed0.json")))
    assert cli.main(argv) == 0 and capsysbinary.readouterr().out == b""


@pytest.mark.parametrize("missing, row", [
    ("table2/freyfaces-vae-lr=0.001-seed3.json", "7: step size picked inside"),
    ("freyfaces-lr-screen/freyfaces-vamp-lr=0.0002-pseudo_init=noisy_data-seed1.json",
     "9: pseudo-inputs start at training images")])
def test_38_8_readme_refuses_a_cell_computed_from_fewer_runs(tmp_path, capsys, missing, row):
    """With one result file missing, cause 7's VAE cell went from +13.81 (8.52) to +12.58
    (8.88) on 7 runs: the guard counted rows, not the runs behind each cell."""
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    (results / missing).unlink()
    readme = readme_copy(tmp_path)
    before = readme.read_text()
    argv = ["readme", "--readme", str(readme), "--results", str(results)]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, "fewer runs", row, "--allow-fewer-rows")
    assert readme.read_text() == before
    assert cli.main(argv + ["--allow-fewer-rows"]) == 0 and readme.read_text() != before


# === issue 38: the weak errors, by kind ==================================================
def test_38_a_killed_writes_temporary_goes_with_the_next_write_a_live_ones_stays(tmp_path):
    """kill -9 during a write left its .NAME.*.tmp, and a clean rerun left it there."""
    from autograd_lite.files import atomic_write
    target = tmp_path / "r.json"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from autograd_lite.files import atomic_write; "
         "atomic_write(sys.argv[1], lambda f: (f.write(b'half'), print('writing', flush=True), "
         "time.sleep(120)))", str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        [temporary] = tmp_path.glob(".r.json.*.tmp")
        os.utime(temporary, (time.time() - 3600, time.time() - 3600))  # only its lock is left
        atomic_write(target, lambda f: f.write(b"one"))
        assert temporary.exists()  # another process is writing it
    finally:
        writer.kill()
        writer.wait()
    atomic_write(target, lambda f: f.write(b"two"))
    assert not temporary.exists() and target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_38_a_rerun_removes_the_litter_of_killed_writes(tmp_path, capsys):
    """In results/, README's folder and figure folders."""
    results = tmp_path / "results"
    results.mkdir()
    litter = [aged(results / f".{name}.abc123.tmp")
              for name in ("onehot-vae-seed0.json", "table2.json")]
    assert cli.main(grid_argv("table2", tmp_path, *TINY)) == 0
    readme = readme_copy(tmp_path)
    litter.append(aged(tmp_path / ".README.md.k9.tmp"))
    assert cli.main(["readme", "--readme", str(readme), "--results", str(ROOT / "results")]) == 0
    (tmp_path / "curves").mkdir()
    folder = curves_folder(tmp_path / "curves")
    litter.append(aged(tmp_path / ".c.png.x.tmp"))
    assert cli.main(["curves", "--dataset", "onehot", "--results", str(folder),
                     "--figure", str(tmp_path / "c.png")]) == 0
    assert not any(path.exists() for path in litter)


def test_38_figure3_refuses_the_papers_k_given_twice(tmp_path, capsys):
    """`figure3 --components 50 0` on OneHot, where 0 means the paper's K = 50."""
    assert cli.main(grid_argv("figure3", tmp_path, "--components", "50", "0", *TINY)) == 2
    one_error_line(capsys.readouterr().err, "--components 50 0", "K = 50")
    assert not (tmp_path / "runs").exists()


def test_38_reproduce_onehot_refuses_a_method_given_twice(capsys):
    with pytest.raises(SystemExit):
        reproduce_onehot.parse_args(["--methods", "vae", "vae"])
    assert "--methods vae vae: a method given twice" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--method", "iop"], ["--settings", "lr=0.01"],
                                   ["--seed", "1"]])
def test_38_an_option_given_twice_is_refused(tmp_path, capsys, extra):
    """A repeated --method or --settings kept the last one without a word."""
    argv = ["run", "--dataset", "onehot", "--method", "vae", "--settings", "lr=0.1", "--seed",
            "0", *extra, "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    assert f"argument {extra[0]}: given twice" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_38_a_setting_given_twice_is_refused(tmp_path, capsys):
    assert cli.main(["run", "--dataset", "onehot", "--method", "vae", "--settings", "lr=0.1",
                     "lr=0.01", "--out", str(tmp_path / "runs"), "--results",
                     str(tmp_path / "r")]) == 2
    one_error_line(capsys.readouterr().err, "lr=0.01", "given twice")


@pytest.mark.parametrize("method, key", [("vae", "valid_log_likelihood"),
                                         ("vamp", "pseudo_inputs_outside")])
def test_38_select_on_a_result_of_older_code_is_one_error_line(tmp_path, capsys, method, key):
    """A result without a key newer code writes: KeyError in select."""
    run = Run("onehot", method, 0, 0, (("lr", 0.001),) + (
        (("pseudo_init", "uniform"),) if method == "vamp" else ()))
    result = fake_result(run, -2.0, valid_log_likelihood=-2.1, pseudo_inputs_outside=0.0)
    if method == "vamp":
        result["components"] = 50
    del result[key]
    write_result(tmp_path, "{}").unlink()
    (tmp_path / "results" / f"{run.name}.json").write_text(json.dumps(result))
    inits = ["--pseudo-inits", "uniform"] if method == "vamp" else []
    assert cli.main(["select", "--dataset", "onehot", "--methods", method, "--lrs", "0.001",
                     *inits, "--seeds", "0", "--samples", "10",
                     "--tight-samples", "20", "--out", str(tmp_path / "runs"),
                     "--results", str(tmp_path / "results")]) == 2
    one_error_line(capsys.readouterr().err, f"{run.name}.json", key, "older code")


def test_38_a_checkpoint_whose_history_has_no_seconds_is_evaluated(vae_run, tmp_path):
    """History records of older code, without `seconds`: KeyError in the evaluation."""
    def untimed(arrays, meta):
        for record in meta["history"]:
            del record["seconds"]
    damaged_copy(vae_run, tmp_path / "runs" / "onehot-vae-seed0", untimed)
    assert cli.main(["run", "--dataset", "onehot", "--method", "vae", *TINY, "--samples", "2",
                     "--tight-samples", "2", "--out", str(tmp_path / "runs"),
                     "--results", str(tmp_path / "results")]) == 0
    r = json.loads((tmp_path / "results" / "onehot-vae-seed0.json").read_text())
    assert r["seconds_per_epoch"] is None and r["train_seconds"] is None


def test_38_a_checkpoint_of_another_format_is_refused(vae_run, tmp_path, capsys):
    bad = damaged_copy(vae_run, tmp_path / "bad", lambda arrays, meta: meta.update(format=2))
    assert cli.main(["evaluate", str(bad)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), "format 2")


@pytest.mark.parametrize("change, said", [
    (lambda r: r["config"].update(colour=1), "colour"),
    (lambda r: r.update(run="onehot-vae-seed1", seed=1), "not of onehot-vae-seed0"),
    (lambda r: r.update(split_id="another"), "split another"),
    (lambda r: r.update(config=[1]), "config"),
])
def test_38_divergence_records_are_checked_as_results_are(tmp_path, capsys, change, said):
    """A divergence record with an unknown config key gave a traceback; one of another
    split or naming another run was trusted."""
    run = Run("onehot", "vae", 0)
    record = {"run": run.name, "dataset": "onehot", "method": "vae", "seed": 0,
              "config": dataclasses.asdict(asked_config(run, {})), "diverged": "at epoch 3",
              "split_id": datasets.load("onehot").split_id}
    change(record)
    path = write_result(tmp_path, "{}").with_name(f"{run.name}.diverged.json")
    path.with_name(f"{run.name}.json").unlink()
    path.write_text(json.dumps(record))
    assert table2(tmp_path) == 2
    one_error_line(capsys.readouterr().err, str(path), said)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind, said", [("dangling", "symbolic link to nothing"),
                                        ("loop", "Too many levels of symbolic links"),
                                        ("below-a-file", "is a file")])
def test_38_a_results_folder_that_cannot_be_is_refused_before_training(tmp_path, capsys, kind,
                                                                        said):
    """A dangling or looping --results was refused after the training, at its first write."""
    results = tmp_path / "results"
    if kind == "dangling":
        results.symlink_to(tmp_path / "nowhere")
    elif kind == "loop":
        results.symlink_to(results)
    else:
        (tmp_path / "file").write_text("x")
        results = tmp_path / "file" / "results"
    argv = grid_argv("table2", tmp_path, *TINY)
    argv[argv.index("--results") + 1] = str(results)
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, "--results", said)
    assert not (tmp_path / "runs").exists()


def test_38_a_read_only_results_folder_refuses_training_but_tabulates(tmp_path, capsys,
                                                                      monkeypatch):
    """Read-only: refused after hours of training; and finished runs there could not be
    tabulated."""
    results = str(tmp_path / "results")
    os.makedirs(results)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and os.fspath(p) != results)
    argv = grid_argv("table2", tmp_path, *TINY)
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err, "--results", "read-only")
    assert not (tmp_path / "runs").exists()
    monkeypatch.setattr(os, "access", real)
    assert cli.main(argv) == 0
    capsys.readouterr()
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and os.fspath(p) != results)
    import experiments.commands
    monkeypatch.setattr(experiments.commands, "write_json", lambda path, obj: (_ for _ in ()).throw(
        PermissionError(13, f"{path} not written: Permission denied")))
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "| onehot | vae | 1 |" in captured.out
    assert captured.err.startswith("warning: ") and "table2.json not written" in captured.err


@pytest.mark.parametrize("argv", [["table2", "--lr", "5e-324"], ["select", "--lrs", "1e-3",
                                                                  "5e-324"]])
def test_38_a_step_size_that_is_0_in_float32_is_refused_before_training(tmp_path, capsys, argv):
    full = grid_argv(argv[0], tmp_path, *argv[1:], *TINY)
    assert cli.main(full) == 2
    one_error_line(capsys.readouterr().err, "5e-324", "float32")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_38_a_signal_to_a_grid_stops_its_workers_at_once(tmp_path, signum):
    """SIGINT to `table2 --jobs 2` waited for the workers' whole runs; SIGTERM reported the
    stopped workers as FAILED."""
    argv = grid_argv("table2", tmp_path, "--epochs", "100000", "--hidden", "8", "--warmup",
                     "1", "--jobs", "2", methods=("vae", "iop"))
    grid = subprocess.Popen([sys.executable, "-m", "experiments", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    logs = [tmp_path / "runs" / f"onehot-{m}-seed0" / "train.log" for m in ("vae", "iop")]
    try:
        deadline = time.time() + 120
        while not all(log.exists() and "epoch" in log.read_text() for log in logs):
            assert time.time() < deadline and grid.poll() is None
            time.sleep(0.2)
        grid.send_signal(signum)  # to the grid alone, not to its workers
        out, _ = grid.communicate(timeout=60)
    finally:
        if grid.poll() is None:
            os.killpg(grid.pid, signal.SIGKILL)
    assert grid.returncode == 128 + signum, out
    name = signal.Signals(signum).name
    for method in ("vae", "iop"):
        assert f"onehot-{method}-seed0: stopped by {name}" in out, out
    assert "FAILED" not in out and "Traceback" not in out, out


# === issue 38: progress and an ETA on every long wait ====================================
def test_38_progress_is_one_line_in_place_on_a_terminal_and_lines_in_a_log(monkeypatch):
    import io
    clock = iter(range(100))
    monkeypatch.setattr(runs.time, "time", lambda: float(next(clock)))

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    for stream, every in ((Terminal(), 1.0), (io.StringIO(), 2.0)):
        progress = runs.Progress("work", 4, stream=stream, every=every)
        for _ in range(4):
            progress(1)
        text = stream.getvalue()
        if isinstance(stream, Terminal):  # one line, rewritten: 25% at 1 s, ETA 3 s
            assert text.startswith("\rwork: 25% | elapsed 0:00:01 | ETA 0:00:03")
            assert text.count("\n") == 1 and text.endswith("work: 100% | elapsed 0:00:04 | "
                                                           "ETA 0:00:00\n")
        else:  # a line each 2 s, and the end
            assert text.splitlines() == ["work: 50% | elapsed 0:00:02 | ETA 0:00:02",
                                         "work: 100% | elapsed 0:00:04 | ETA 0:00:00"]
    quiet = io.StringIO()
    runs.Progress("quick", 2, stream=quiet)(2)  # done before its first line: nothing said
    assert quiet.getvalue() == ""


def test_38_evaluate_says_how_far_its_log_likelihood_is(vae_run, capsys, monkeypatch):
    """`evaluate RUN --samples 5000` printed nothing for 202 s."""
    argv = ["evaluate", str(vae_run), "--samples", "300"]
    assert cli.main(argv) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""  # done within the first 10 s: nothing to say
    monkeypatch.setattr(runs, "PROGRESS_EVERY", 1e-9)  # a line every pass
    assert cli.main(argv) == 0
    told = capsys.readouterr()
    assert told.out == quiet.out  # the same numbers
    lines = told.err.splitlines()
    assert lines[0].startswith("test log-likelihood, S = 300, 1,000 points: ")
    assert "ETA" in lines[0] and len(lines) > 10
    assert lines[-1].startswith("test log-likelihood, S = 300, 1,000 points: 100% |")


def test_38_sample_sir_keeps_plain_samplings_png(iop_run, capsys):
    """`sample --sir` overwrote the samples.png of plain sampling."""
    for extra, name in (([], "samples.png"), (["--sir"], "samples_sir.png")):
        assert cli.main(["sample", str(iop_run), "--n", "4", *extra]) == 0
        assert f"to {iop_run / name}" in capsys.readouterr().out
    assert (iop_run / "samples.png").read_bytes() != (iop_run / "samples_sir.png").read_bytes()
