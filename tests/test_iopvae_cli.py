"""The command line, through ``cli.main(argv)``: train, evaluate, sample, and
the one-line errors for bad input (exit status 2, no traceback)."""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
from experiments import checkpoints, cli, runs  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "2", "--hidden", "16", "--j2", "1", "--warmup", "2"]


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def iop_run(tmp_path_factory):
    """A tiny IOP run trained through the CLI (shared by the evaluate/sample tests)."""
    out = tmp_path_factory.mktemp("cli") / "iop"
    code = cli.main(["train", "--dataset", "onehot", "--method", "iop", *TINY,
                        "--samples", "5", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_checkpoint_and_reports(iop_run, capsys):
    """`train` returns 0, writes checkpoint.npz and config.json with the command-line
    settings, and the checkpoint holds both epochs."""
    assert (iop_run / "checkpoint.npz").is_file()
    config = json.loads((iop_run / "config.json").read_text())
    assert config["method"] == "iop" and config["hidden"] == 16 and config["j2"] == 1
    assert config["epochs"] == 2 and config["latent"] == 2
    meta, _ = checkpoints.read_checkpoint(str(iop_run))
    assert meta["epoch"] == 2 and len(meta["history"]) == 2


@pytest.mark.parametrize("method", ["vae", "vamp", "avb"])
def test_train_other_methods_print_results(method, tmp_path, capsys):
    """Every method trains from the CLI and prints its test ELBO; the explicit-posterior
    methods also print an importance-sampled log-likelihood, AVB says it has none."""
    out = tmp_path / method
    assert cli.main(["train", "--dataset", "onehot", "--method", method, *TINY,
                        "--components", "5", "--samples", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test ELBO" in text
    if method == "avb":
        assert "not available" in text
    else:
        assert "log-likelihood, importance sampling with S=3" in text
    assert (out / "checkpoint.npz").is_file()


def test_train_resume_continues(iop_run, tmp_path, capsys):
    """`train --resume --epochs 3` continues a 2-epoch run to epoch 3."""
    import shutil
    out = tmp_path / "again"
    shutil.copytree(iop_run, out)
    assert cli.main(["train", "--dataset", "onehot", "--method", "iop", "--epochs", "3",
                        "--resume", "--samples", "3", "--out", str(out)]) == 0
    assert "resuming" in capsys.readouterr().out
    meta, _ = checkpoints.read_checkpoint(str(out))
    assert meta["epoch"] == 3


def test_evaluate_prints_elbo_and_log_likelihood(iop_run, capsys):
    """`evaluate CHECKPOINT` returns 0 and prints finite numbers for the chosen split."""
    capsys.readouterr()
    assert cli.main(["evaluate", str(iop_run / "checkpoint.npz"), "--samples", "4",
                        "--split", "valid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    elbo = [line for line in lines if line.startswith("valid ELBO")]
    ll = [line for line in lines if line.startswith("valid log-likelihood")]
    assert len(elbo) == 1 and len(ll) == 1
    assert np.isfinite(float(elbo[0].split(":")[1].split()[0]))
    assert np.isfinite(float(ll[0].split(":")[1].split()[0]))


@pytest.mark.parametrize("sir", [False, True])
def test_sample_writes_png(iop_run, tmp_path, sir, capsys):
    """`sample` (ancestral from the data, or --sir from N(0,I) with exp(T)) returns 0
    and writes a PNG."""
    png = tmp_path / ("sir.png" if sir else "samples.png")
    argv = ["sample", str(iop_run / "checkpoint.npz"), "--n", "9", "--out", str(png)]
    assert cli.main(argv + (["--sir"] if sir else [])) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "wrote 9 samples" in capsys.readouterr().out


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A data folder with MNIST's two image files in MNIST's format (gzip'd IDX, 28 x 28
    unsigned bytes), holding 160 + 40 training and 40 test images instead of 60,000 +
    10,000: the loader's split sizes are made to fit, and the checksums of the real
    files are not asked for."""
    import gzip
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    g = np.random.default_rng(0)
    for name, n in (("train", 200), ("t10k", 40)):
        images = (g.random((n, 28, 28)) ** 3 * 255).astype(np.uint8)   # mostly dark, grey
        header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
        (root / "mnist" / f"{name}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + images.tobytes(), compresslevel=1))
        monkeypatch.delitem(datasets.CHECKSUMS, f"mnist/{name}-images-idx3-ubyte.gz")
    monkeypatch.setattr(datasets, "MNIST_SPLIT", (160, 40, 40))
    return root


@pytest.mark.parametrize("method", ["iop", "vamp"])
def test_mnist_shaped_run_and_evaluate_on_every_backend(method, tiny_mnist, tmp_path, capsys,
                                                        on_backend):
    """`train` on MNIST-format files (dynamic binarisation of every training batch,
    28 x 28 images), then `evaluate` and `sample` of its checkpoint, through the
    command line, on every backend (cupy-sim: the simulated GPU)."""
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist", "--method", method, "--data-dir",
                      str(tiny_mnist), "--epochs", "2", "--warmup", "1", "--hidden", "16",
                      "--latent", "4", "--batch-size", "40", "--j2", "2", "--components", "5",
                      "--pseudo-init", "data", "--samples", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training " + method + " on mnist (160 points" in text and "epoch    2/2" in text
    assert cli.main(["evaluate", str(out), "--samples", "4", "--split", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for start in ("test ELBO", "test log-likelihood"):
        [line] = [x for x in lines if x.startswith(start)]
        assert np.isfinite(float(line.split(":")[1].split()[0])), line
    png = tmp_path / "samples.png"
    assert cli.main(["sample", str(out), "--n", "4", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    meta, _ = checkpoints.read_checkpoint(str(out))
    assert meta["image_shape"] == [28, 28] and meta["split_id"].startswith("mnist:160/40/40:")


def test_unknown_method_is_an_argparse_error(capsys):
    """An unknown --method is rejected by argparse (SystemExit 2) with its usage message."""
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--dataset", "onehot", "--method", "gan"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("option,value,word", [("--lr", "-1", "lr"), ("--keep", "0", "keep"),
                                               ("--hidden", "0", "hidden")])
def test_invalid_setting_is_one_error_line(option, value, word, tmp_path, capsys):
    """A bad setting returns 2 with one line 'error: ...' naming it on stderr and
    writes no run folder."""
    out = tmp_path / "never"
    code = cli.main(["train", "--dataset", "onehot", "--method", "vae", option, value,
                        "--out", str(out)])
    assert code == 2
    assert word in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_unreadable_checkpoint_is_one_error_line(tmp_path, capsys):
    """evaluate/sample on a file that is not a checkpoint (or is missing) returns 2 with
    one line naming the file."""
    bad = tmp_path / "checkpoint.npz"
    bad.write_bytes(b"not a checkpoint")
    for argv in (["evaluate", str(bad)], ["sample", str(bad)],
                 ["evaluate", str(tmp_path / "missing.npz")]):
        assert cli.main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert argv[1] in line


def test_missing_mnist_file_is_one_error_line(tmp_path, capsys):
    """Training on MNIST with an empty --data-dir returns 2 with one line naming the
    missing file (no download attempt, no traceback)."""
    empty = tmp_path / "data"
    empty.mkdir()
    code = cli.main(["train", "--dataset", "mnist", "--method", "vae", "--data-dir",
                        str(empty), "--out", str(tmp_path / "run"), *TINY])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(empty) in line and "train-images-idx3-ubyte.gz" in line


def test_train_refuses_to_overwrite_an_existing_run(iop_run, capsys):
    """`train` into a folder that already holds a checkpoint, without --resume, returns 2
    with one line pointing to --resume, and leaves the checkpoint untouched."""
    before = (iop_run / "checkpoint.npz").read_bytes()
    code = cli.main(["train", "--dataset", "onehot", "--method", "iop", *TINY,
                        "--out", str(iop_run)])
    assert code == 2
    assert "--resume" in one_error_line(capsys.readouterr().err)
    assert (iop_run / "checkpoint.npz").read_bytes() == before


def _subcommands():
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_every_option_has_help_and_table2_reuses_the_train_options():
    """Every option of every command has a help text; the Config options of `train` (but
    the plural --datasets/--methods/--seeds) are those of `table2`, with the Config's
    own help; data set, method and pseudo-input start offer their choices."""
    commands = _subcommands()
    for name, parser in commands.items():
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    options = {name: {a.dest: a for a in parser._actions} for name, parser in commands.items()}
    for field in dataclasses.fields(runs.Config):
        train = options["train"][field.name]
        assert train.help.startswith(field.metadata["help"]), field.name
        if field.name not in ("dataset", "method", "seed", "components"):  # set per run
            assert options["table2"][field.name].help == train.help, field.name
    assert options["train"]["dataset"].choices == datasets.DATASETS
    assert sorted(options["train"]["method"].choices) == ["avb", "iop", "vae", "vamp"]
    assert list(options["train"]["pseudo_init"].choices) == ["uniform", "data", "noisy_data",
                                                             "constant"]
    assert list(options["train"]["density_ratio_dropout"].choices) == ["every", "last"]


def test_resume_names_the_options_it_ignores(iop_run, tmp_path, capsys):
    """`train --resume` continues with the checkpoint's configuration and prints one line
    naming each given option that differs from it (here --hidden and --lr); options
    equal to the checkpoint's are not named, --epochs sets the new end."""
    import shutil
    out = tmp_path / "again"
    shutil.copytree(iop_run, out)
    assert cli.main(["train", "--dataset", "onehot", "--method", "iop", "--epochs", "3",
                      "--hidden", "32", "--lr", "0.01", "--j2", "1", "--resume",
                      "--samples", "3", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "ignored" in line]
    assert len(lines) == 1
    assert "--hidden 32 (checkpoint: 16)" in lines[0] and "--lr 0.01" in lines[0]
    assert "--j2" not in lines[0] and "--epochs" not in lines[0]
    meta, _ = checkpoints.read_checkpoint(str(out))
    assert meta["epoch"] == 3 and meta["config"].hidden == 16


def test_iopvae_py_names_the_new_command_line_and_imports_no_tool():
    """`python iopvae.py train ...`, the old form, fails with one line that names the
    command to type now (no traceback); importing iopvae imports nothing of experiments/
    (the paper does not depend on the run machinery)."""
    import subprocess
    result = subprocess.run([sys.executable, str(ROOT / "iopvae.py"), "train", "--dataset",
                             "onehot"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "`iopvae train --dataset onehot`" in one_error_line(result.stderr)
    assert "`python -m experiments train --dataset onehot`" in result.stderr
    check = subprocess.run([sys.executable, "-c", "import sys, iopvae, estimators, datasets; "
                            "sys.exit(any(m.startswith('experiments') for m in sys.modules))"],
                           cwd=ROOT, timeout=120)
    assert check.returncode == 0


# Every module of the project on its floor: a module imports only from floors below its own.
# The paper (iopvae), its data, its estimators and the engine sit under the tools
# (experiments/), which the steps never import; the command line is the top floor.
FLOORS = {"autograd_lite": 0, "datasets": 1, "iopvae": 2, "estimators": 3, "steps": 4,
          "experiments.runs": 4, "experiments.stats": 4, "experiments.gradcheck.torch_mirror": 4,
          "experiments.checkpoints": 5, "experiments.gradcheck.check": 5, "reproduce_onehot": 5,
          "experiments.run_commands": 6, "experiments.results": 7, "experiments.grid": 8,
          "experiments.selection": 8, "experiments.workers": 9, "experiments.tables": 9,
          "experiments.figures": 9, "experiments.readme": 10, "experiments.commands": 11,
          "experiments.cli": 12, "experiments.__main__": 13}
PACKAGES = ("experiments", "experiments.gradcheck")  # names whose own __init__ is no floor


def _module_name(path):
    """``experiments/gradcheck/check.py`` -> ``experiments.gradcheck.check``; every file of
    autograd_lite/ is ``autograd_lite`` and every step ``steps``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0] if parts[0] in ("autograd_lite", "steps") else ".".join(parts)


def _first_party_imports(path):
    """The project's modules ``path`` imports anywhere: in functions and in its
    ``if __name__ == "__main__":`` block too."""
    import ast
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            names = []
        for name in names:
            top = name.split(".")[0]
            if top in ("autograd_lite", "datasets", "iopvae", "estimators", "reproduce_onehot"):
                found.add(top)
            elif top == "experiments" and name not in PACKAGES:
                found.add(name)
    return found


def _project_files():
    return [p for p in [*ROOT.glob("*.py"), *(ROOT / "autograd_lite").rglob("*.py"),
                        *(ROOT / "experiments").rglob("*.py"), *(ROOT / "steps").glob("*.py")]
            if p.name != "__init__.py" or p.parent.name in ("autograd_lite", "testing")]


def test_imports_run_one_way_down_the_floors():
    """No module imports one on its own floor or above it (no import circle, not even a
    lazy one inside a function or a ``__main__`` block): nothing of experiments/ is
    imported by iopvae.py, datasets.py, estimators.py, autograd_lite/ or steps/."""
    upward = []
    for path in _project_files():
        module = _module_name(path)
        for imported in _first_party_imports(path) - {module}:
            if FLOORS[imported] >= FLOORS[module]:
                upward.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not upward, upward
    assert set(FLOORS) == {_module_name(p) for p in _project_files()}
    assert len(list(ROOT.glob("*.py"))) <= 4, "the top level holds the paper's files alone"


def test_no_module_imports_in_a_circle():
    """The import graph of the project's modules, ``__main__`` blocks included, has no
    circle, found by a depth-first walk (a check of its own, beside the floors)."""
    graph = {}
    for path in _project_files():
        module = _module_name(path)
        graph.setdefault(module, set()).update(_first_party_imports(path) - {module})
    done, on_path = set(), []

    def walk(module):
        if module in on_path:
            raise AssertionError("import circle: " + " -> ".join(
                on_path[on_path.index(module):] + [module]))
        if module in done or module not in graph:
            return
        on_path.append(module)
        for imported in sorted(graph[module]):
            walk(imported)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        walk(module)


def test_the_experiments_package_has_one_entry_point():
    """experiments/ runs as ``iopvae ...`` or ``python -m experiments ...``: only its
    ``__main__.py`` calls the command line, no module of it runs as a script."""
    for path in (ROOT / "experiments").rglob("*.py"):
        if path.name != "__main__.py":
            assert "__main__" not in path.read_text(), path.name


def test_the_console_script_and_python_m_run_the_command_line(tmp_path):
    """The installed ``iopvae`` script (pip install -e .) and ``python -m experiments``
    from the source tree, run from another folder, both answer --help; the script trains
    a tiny run."""
    import os
    import shutil
    import subprocess
    script = shutil.which("iopvae") or str(Path(sys.executable).with_name("iopvae"))
    if not Path(script).exists():
        pytest.skip("the console script iopvae is not installed (pip install -e . adds it)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in ([script], [sys.executable, "-m", "experiments"]):
        result = subprocess.run([*command, "--help"], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path, env=env)
        assert result.returncode == 0 and "usage: iopvae" in result.stdout, result.stderr
    out = tmp_path / "run"
    result = subprocess.run([script, "train", "--dataset", "onehot", "--method", "vae", *TINY,
                             "--samples", "2", "--out", str(out)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test ELBO" in result.stdout and (out / "checkpoint.npz").is_file()
