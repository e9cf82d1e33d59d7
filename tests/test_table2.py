"""Table 2 with the paper's protocol (issue 7): fixed splits per data set, S = 10 as the
headline, early stopping after the warm-up, fresh binarizations for T, separate step
sizes, the grid in worker processes or as commands, and the t-test."""
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograd_lite as ag  # noqa: E402
import datasets  # noqa: E402
import experiments.tables  # noqa: E402
from experiments import checkpoints, cli, runs  # noqa: E402
from experiments.figures import figure3, stopping_point  # noqa: E402
from experiments.grid import (  # noqa: E402
    Run,
    as_settings,
    decoder_logvar_at_bound,
    elbo_terms_by_split,
    encoder_logvar_at_bounds,
    parse_settings,
)
from experiments.readme import README_COLUMNS, columns, fill_readme, readme_tables  # noqa: E402
from experiments.results import load_results  # noqa: E402
from experiments.stats import against_paper, not_worse_than_best, welch_t_test  # noqa: E402
from experiments.tables import PICKED, causes_summary, causes_table, goal_summary  # noqa: E402

TINY = ["--epochs", "2", "--hidden", "16", "--j2", "1", "--warmup", "1"]


def other_warmup(argv, warmup):
    """``argv`` with its --warmup value replaced (an option given twice is refused)."""
    at = argv.index("--warmup")
    return [*argv[:at + 1], warmup, *argv[at + 2:]]


def fake_freyfaces(folder, monkeypatch):
    """A FreyFaces pickle in the real format whose 1,965 rows are all different, with
    its checksum registered so that the normal (verifying) loader accepts it."""
    g = np.random.default_rng(0)
    array = g.integers(0, 256, size=(1965, 560), dtype=np.uint8)
    path = folder / "freyfaces" / "freyfaces.pkl"
    path.parent.mkdir(parents=True)
    import pickle
    path.write_bytes(pickle.dumps([array], protocol=2))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(datasets.CHECKSUMS, "freyfaces/freyfaces.pkl", digest)
    return folder


def _rows(x):
    return {row.tobytes() for row in np.asarray(x)}


def test_seed1_run_is_evaluated_on_test_points_it_never_trained_on(tmp_path, monkeypatch):
    """Defect 1: `evaluate` on a seed-1 run must load the split the run trained on.
    Before the fix the split followed the run seed, and on FreyFaces most of the
    seed-1 test images were seed-0 training images."""
    data_dir = fake_freyfaces(tmp_path / "data", monkeypatch)
    loads = []
    real_load = checkpoints._load_data
    monkeypatch.setattr(checkpoints, "_load_data",
                        lambda *a: loads.append(real_load(*a)) or loads[-1])
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "freyfaces", "--method", "vae", *TINY, "--seed",
                        "1", "--samples", "2", "--out", str(out),
                        "--data-dir", str(data_dir)]) == 0
    assert cli.main(["evaluate", str(out), "--samples", "2", "--data-dir", str(data_dir)]) == 0
    trained_on, evaluated = loads[0], loads[-1]
    assert len(loads) == 2
    assert not _rows(trained_on.train) & _rows(evaluated.test)
    assert not _rows(trained_on.train) & _rows(evaluated.valid)
    # whatever the seed, `load` gives the same split
    assert datasets.load("freyfaces", data_dir).split_id == trained_on.split_id


def test_evaluate_and_resume_refuse_another_split(tmp_path, monkeypatch, capsys):
    """A checkpoint records its split; data split differently are refused in one line."""
    data_dir = fake_freyfaces(tmp_path / "data", monkeypatch)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "freyfaces", "--method", "vae", *TINY,
                        "--samples", "2", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(datasets.SPLIT_SEEDS, "freyfaces", 7)  # another split
    for argv in (["evaluate", str(out), "--data-dir", str(data_dir)],
                 ["train", "--dataset", "freyfaces", "--method", "vae", "--resume",
                  "--out", str(out), "--data-dir", str(data_dir)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was trained on split freyfaces:" in err


def small_mnist(n=120):
    g = np.random.default_rng(0)
    p = g.random((n, 784), dtype=np.float32) ** 3
    return datasets.Dataset(name="mnist", train=p[:80], valid=(p[80:100] > 0.5),
                            test=(p[100:] > 0.5), likelihood="bernoulli",
                            dynamic_binarization=True, image_shape=(28, 28))


def test_density_ratio_sees_a_fresh_binarization_every_batch(monkeypatch):
    """Defect 4: every T step draws its own binarization of its batch (the authors
    binarize per batch); before, T's ten epochs reused one binarization per round."""
    data = small_mnist()
    data.train[:] = 0.5  # every point: p = 0.5 per pixel
    config = runs.Config(dataset="mnist", method="iop", hidden=8, epochs=1, warmup=1,
                           j2=3, batch_size=80, latent=2)
    trainer = runs.Trainer(config, data, out_dir=None, log=lambda line: None)
    seen = []
    real = trainer.model.density_ratio_loss
    monkeypatch.setattr(trainer.model, "density_ratio_loss",
                        lambda z1, z0, x: seen.append(ag.to_numpy(x.data).copy())
                        or real(z1, z0, x))
    trainer.train()
    assert len(seen) == 3 and all(set(np.unique(x)) == {0.0, 1.0} for x in seen)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])


def test_separate_step_sizes_for_vae_and_density_ratio():
    """Defect 5: Adam for T uses --lr-density-ratio, the VAE's uses --lr."""
    config = runs.Config(dataset="onehot", method="iop", hidden=8, lr=1e-4,
                           lr_density_ratio=1e-3)
    trainer = runs.Trainer(config, datasets.load("onehot"), out_dir=None)
    assert trainer.vae_opt.lr == 1e-4 and trainer.density_ratio_opt.lr == 1e-3
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--dataset", "onehot", "--method", "iop",
                              "--lr-density-ratio", "0.002"])
    config = runs.Config(**runs.config_options_given(args))
    assert config.lr_density_ratio == 0.002 and config.lr == runs.Config.lr


def test_table2_headline_is_S10_with_a_tighter_column(tmp_path, monkeypatch, capsys):
    """Defect 2: the headline column uses S = 10 (the paper's), a second column a
    tighter S, and both say which; IOP gets its exact value and log Z.  A second
    call finds every result and trains nothing."""
    monkeypatch.setattr(checkpoints, "_load_data", lambda name, data_dir: small_mnist())
    argv = ["table2", "--datasets", "mnist", "--seeds", "0", *TINY, "--tight-samples", "20",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| data set"))
    assert "S = 10 |" in header and "S = 20 |" in header and "IOP exact" in header
    rows = {line.split("|")[2].strip(): line for line in out.splitlines()
            if line.startswith("| mnist")}
    assert set(rows) == {"vae", "vamp", "iop"}
    assert "-85.84" in rows["vae"] and "≈ -83.21" in rows["iop"]
    for method in ("vae", "vamp", "iop"):
        result = json.loads((tmp_path / "results" / f"mnist-{method}-seed0.json").read_text())
        assert result["samples"] == 10 and result["tight_samples"] == 20
        assert np.isfinite(result["log_likelihood"]) and result["log_likelihood"] < 0
        assert result["finished"] and result["epochs_trained"] == 2
    iop = json.loads((tmp_path / "results" / "mnist-iop-seed0.json").read_text())
    assert np.isfinite(iop["log_likelihood_exact"]) and np.isfinite(iop["log_normalizer"])
    assert np.isfinite(iop["log_likelihood_normal_prior"])
    assert iop["log_likelihood_normal_prior"] != iop["log_likelihood"]   # T counts
    for method in ("vae", "vamp", "iop"):
        terms = json.loads((tmp_path / "results" / f"mnist-{method}-seed0.json").read_text())[
            "elbo_terms"]
        assert set(terms) == {"train", "test"}
        for split in terms.values():   # binary data: log p(x|z) < 0; KL > 0 but for IOP's
            assert split["reconstruction"] < 0 and (method == "iop" or split["kl"] > 0)
    assert cli.main(argv) == 0
    assert "3 of 3 runs already evaluated (or diverged); 0 to run" in capsys.readouterr().out


def test_print_commands_and_run_one_command(tmp_path, capsys):
    """--print-commands prints one runnable command per unfinished run; running one of
    them (a fresh process, as a scheduler would) writes its result, after which it is
    no longer printed."""
    argv = ["table2", "--datasets", "onehot", "--methods", "iop", "vae", "--seeds", "3", *TINY,
            "--tight-samples", "12", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--print-commands"]
    assert cli.main(argv) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and all(" iopvae run --dataset onehot " in c for c in commands)
    iop = next(c for c in commands if "--method iop" in c)
    assert "OMP_NUM_THREADS=1" in iop and "--seed 3" in iop and "--epochs 2" in iop
    script = str(Path(sys.executable).with_name("iopvae"))  # the console script, installed
    done = subprocess.run(iop.replace(" iopvae ", f" {script} ", 1), shell=True,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results" / "onehot-iop-seed3.json").read_text())
    assert result["tight_samples"] == 12 and result["seed"] == 3
    assert cli.main(argv) == 0
    again = capsys.readouterr().out.strip().splitlines()
    assert len(again) == 1 and "--method vae" in again[0]


def test_against_paper_is_the_goal_of_two_combined_standard_errors():
    """The table's last column: ours - paper against 2 sqrt(s^2/n + s_paper^2/8)."""
    cell = against_paper([1380.0, 1384.0, 1382.0], (1382.53, 3.57))
    two_se = 2 * math.sqrt(np.var([1380.0, 1384.0, 1382.0], ddof=1) / 3 + 3.57 ** 2 / 8)
    assert cell == f"-0.53 (2 SE {two_se:.2f}): within"
    assert against_paper([1358.0, 1359.0, 1360.0], (1382.53, 3.57)).endswith("below")
    assert against_paper([1400.0, 1401.0, 1402.0], (1382.53, 3.57)).endswith("above")
    # one run: the paper's spread alone
    assert against_paper([1381.0], (1382.53, 3.57)) == (
        f"-1.53 (2 SE {2 * 3.57 / math.sqrt(8):.2f}): within")


def test_welch_t_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference")
    g = np.random.default_rng(0)
    for n_a, n_b, shift in ((3, 3, 0.5), (8, 5, 2.0), (4, 8, 0.0), (3, 4, 10.0)):
        a, b = g.normal(size=n_a), g.normal(shift, 2.0, size=n_b)
        want = stats.ttest_ind(a, b, equal_var=False).pvalue
        assert abs(welch_t_test(a, b) - want) < 1e-10
    bold = not_worse_than_best({"x": [1.0, 1.1, 0.9], "y": [5.0, 5.1, 4.9],
                                       "z": [4.0, 6.0, 5.5]})
    assert bold == {"y", "z"}


def test_figure3_plots_vamp_against_k_with_iop_lines(tmp_path):
    """figure3 draws VampPrior's mean ± std per K and IOP's lines from result files."""
    results = {}
    for k, base in ((50, 10.0), (0, 12.0)):
        for seed in (0, 1):
            run = Run("freyfaces", "vamp", seed, k)
            results[run] = {"dataset": "freyfaces", "method": "vamp", "components": k or 500,
                            "log_likelihood": base + seed, "samples": 10}
    for seed in (0, 1):
        results[Run("freyfaces", "iop", seed)] = {
            "dataset": "freyfaces", "method": "iop", "components": None, "samples": 10,
            "log_likelihood": 13.0 + seed, "log_likelihood_exact": 11.0 + seed}
    numbers = figure3(results, "freyfaces", str(tmp_path / "f3.png"))
    assert numbers["K"] == [50, 500] and numbers["vampprior"]["500"] == [12.0, 13.0]
    assert (tmp_path / "f3.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "f3.json").read_text())["log_likelihood_exact"] == [11.0, 12.0]


# --- settings chosen on validation, curves, split refusal -------------------------------
def test_select_picks_on_validation_and_table2_reuses_the_picked_runs(tmp_path, monkeypatch,
                                                                      capsys):
    """`select` trains every candidate on the seeds, picks per method the best mean
    validation log-likelihood (never a test number), records the pick; `table2
    --selected` then trains with the pick and reuses the candidate's runs."""
    data_dir = fake_freyfaces(tmp_path / "data", monkeypatch)
    out, res = tmp_path / "runs", tmp_path / "results"
    common = ["--dataset", "freyfaces", "--seeds", "0", "1", "--out", str(out), "--results",
              str(res), "--samples", "2", "--tight-samples", "3", "--data-dir", str(data_dir),
              *TINY, "--patience", "0"]
    assert cli.main(["select", "--methods", "vae", "vamp", "--lrs", "1e-4", "1e-3",
                        "--pseudo-inits", "uniform", "constant", "--components", "5",
                        *common]) == 0
    doc = json.loads((res / "freyfaces-selection.json").read_text())
    assert doc["config"]["patience"] == 0 and doc["methods"]["vamp"]["components"] == 5
    assert len(doc["methods"]["vae"]["candidates"]) == 2
    assert len(doc["methods"]["vamp"]["candidates"]) == 4
    for method, entry in doc["methods"].items():
        best = max(entry["candidates"], key=lambda row: row["mean"])
        assert entry["pick"] == best["settings"]
        for row in entry["candidates"]:
            # the score is the validation log-likelihood stored in each run's result
            scores = [json.loads((res / f"{name}.json").read_text())["valid_log_likelihood"]
                      for name in row["runs"]]
            assert row["valid_log_likelihood"] == scores and len(scores) == 2
    name = doc["methods"]["vamp"]["candidates"][0]["runs"][0]
    result = json.loads((res / f"{name}.json").read_text())
    assert 0.0 <= result["pseudo_inputs_outside"] <= 1.0
    row = doc["methods"]["vamp"]["candidates"][0]
    assert row["pseudo_inputs_outside"][0] == result["pseudo_inputs_outside"]
    assert "pseudo_inputs_outside" not in doc["methods"]["vae"]["candidates"][0]
    assert 0.0 <= result["decoder_logvar_at_bound"] <= 1.0   # FreyFaces: Gaussian decoder
    printed = capsys.readouterr().out
    vamp_rows = [line for line in printed.splitlines() if line.startswith("| vamp |")]
    assert len(vamp_rows) == 4 and all(line.endswith("% |") for line in vamp_rows)
    assert result["history"]["epoch"] == [1, 2] and len(result["history"]["valid_elbo"]) == 2
    assert result["step_sizes"]["lr"] == result["config"]["lr"]
    capsys.readouterr()

    # table2 --selected: the vae pick's runs exist already, so nothing is trained again
    pick = doc["methods"]["vae"]["pick"]
    assert cli.main(["table2", "--methods", "vae", "--selected", *common[2:]]) == 0
    printed = capsys.readouterr().out
    assert "2 of 2 runs already evaluated" in printed
    tag = f"lr={pick['lr']}"
    assert (res / f"freyfaces-vae-{tag}-seed0.json").exists()
    # an option that differs from the selection's is refused
    assert cli.main(["table2", "--methods", "vae", "--selected",
                     *other_warmup(common[2:], "5")]) == 2
    assert "was made with other options: --warmup 5" in capsys.readouterr().err
    # a method the selection has no pick for is refused, not trained with the defaults
    assert cli.main(["table2", "--methods", "vae", "iop", "--selected", *common[2:]]) == 2
    assert "has no pick for iop" in capsys.readouterr().err

    # a later selection of another method with the same options keeps the earlier picks;
    # one with other options is refused
    assert cli.main(["select", "--methods", "iop", "--lrs", "1e-3", *common]) == 0
    later = json.loads((res / "freyfaces-selection.json").read_text())
    assert later["methods"]["vae"] == doc["methods"]["vae"] and "iop" in later["methods"]
    capsys.readouterr()
    assert cli.main(["select", "--methods", "iop", "--lrs", "1e-3",
                     *other_warmup(common, "2")]) == 2
    assert "selection on file was made with options" in capsys.readouterr().err

    # curves: one figure, and where a patience would have stopped each run
    assert cli.main(["curves", "--dataset", "freyfaces", "--results", str(res),
                        "--figure", str(tmp_path / "curves.png"),
                        "--compare-patience", "1"]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "patience 1 stops at" in capsys.readouterr().out
    # --match (any of the strings) and --seeds (any of the seeds) both narrow the runs drawn
    assert cli.main(["curves", "--dataset", "freyfaces", "--results", str(res),
                     "--figure", str(tmp_path / "one.png"), "--match", "freyfaces-vae",
                     "--seeds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| freyfaces-")]
    assert rows and all("-vae-" in row and row.split(" | ")[0].endswith("-seed1")
                        for row in rows)


def test_stopping_point_from_a_curve():
    history = {"epoch": [1, 2, 3, 4, 5, 6, 7], "beta": [0.5, 1, 1, 1, 1, 1, 1],
               "valid_elbo": [9.0, 1.0, 3.0, 2.0, 2.5, 4.0, 1.0]}
    # epoch 1 is warm-up; best 3.0 at epoch 3; two bad epochs (4, 5) end a patience of 2
    assert stopping_point(history, 2) == (5, 3, 3.0)
    assert stopping_point(history, 3) == (None, 6, 4.0)  # never ran out


def test_results_of_another_split_are_refused(tmp_path, monkeypatch):
    """A result file made on another split is not mixed into the table: refused, named."""
    data_dir = fake_freyfaces(tmp_path / "data", monkeypatch)
    res = tmp_path / "results"
    res.mkdir()
    run = Run("freyfaces", "vae", 0)
    (res / f"{run.name}.json").write_text(json.dumps({"run": run.name,
                                                      "split_id": "freyfaces:old"}))
    with pytest.raises(ValueError, match=f"{run.name}.json was made on split "
                                         "freyfaces:old"):
        load_results([run], str(res), str(data_dir))


def test_run_names_carry_their_settings():
    run = Run("freyfaces", "vamp", 3, 100,
                     as_settings({"pseudo_init": "constant", "lr": 1e-4}))
    assert run.name == "freyfaces-vamp-K100-lr=0.0001-pseudo_init=constant-seed3"
    assert parse_settings(["lr=0.0001", "pseudo_init=constant"]) == {
        "lr": 1e-4, "pseudo_init": "constant"}
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_settings(["nonsense=1"])


def test_decoder_logvar_at_bound_counts_the_log_variances_the_hardtanh_holds():
    """The fraction of a Gaussian decoder's log-variances at the lower bound: all of
    them when the head's log-variance half sits far below it, none when inside."""
    import iopvae
    model = iopvae.StandardVAE(6, "gaussian", 2, 8, ag.default_rng(0),
                               decoder_logvar_bounds=(-5.0, 0.0))
    head, x = model.decoder.head, np.full((4, 6), 0.5, dtype=np.float32)
    head.W.data[:, 6:] = 0.0
    for bias, expected in ((-50.0, 1.0), (-2.0, 0.0)):
        head.b.data[6:] = bias
        assert decoder_logvar_at_bound(model, x) == expected
    head.b.data[6:9] = -50.0   # three of the six pixels held
    assert decoder_logvar_at_bound(model, x) == 0.5


def test_encoder_logvar_at_bounds_counts_both_ends_of_the_hardtanh():
    import iopvae
    model = iopvae.StandardVAE(6, "gaussian", 4, 8, ag.default_rng(0),
                               encoder_logvar_bounds=(-6.0, 2.0))
    head, x = model.encoder.head, np.full((5, 6), 0.5, dtype=np.float32)
    head.W.data[:, 4:] = 0.0
    head.b.data[4:] = [-50.0, 50.0, 50.0, 0.0]   # one latent held below, two above
    assert encoder_logvar_at_bounds(model, x) == [0.25, 0.5]


def test_elbo_terms_by_split_gives_each_split_its_own_terms():
    """The same images in both splits: the VAE's closed-form KL is the same and the
    reconstructions agree within Monte Carlo noise; other images: other terms."""
    import iopvae
    model = iopvae.StandardVAE(784, "bernoulli", 4, 8, ag.default_rng(0))
    data = small_mnist()
    same = datasets.Dataset(name="mnist", train=data.test, valid=data.valid, test=data.test,
                            likelihood="bernoulli", dynamic_binarization=False,
                            image_shape=(28, 28))
    terms = elbo_terms_by_split(model, same, ag.default_rng(1), samples=50)
    assert terms["train"]["kl"] == pytest.approx(terms["test"]["kl"], rel=1e-6)
    assert terms["train"]["reconstruction"] == pytest.approx(
        terms["test"]["reconstruction"], abs=1.0)
    other = elbo_terms_by_split(model, data, ag.default_rng(1), samples=50)
    assert other["train"]["kl"] != pytest.approx(other["test"]["kl"], rel=1e-3)
    # gray training images are binarised as in training: log p(x|z) is a log-probability
    binarised = checkpoints.training_images(data)
    assert set(np.unique(binarised)) == {0.0, 1.0}
    assert np.array_equal(binarised, checkpoints.training_images(data))   # one fixed draw


# --- the README's generated tables ------------------------------------------------------
def _result(folder, name, method, value):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(
        {"method": method, "log_likelihood": value}))


def test_columns_keeps_the_named_columns_in_the_tables_order():
    markdown = "| a | b | c |\n|---|---|---|\n| 1 | 2 |  |\n| 4 | 5 | 6 |"
    assert columns(markdown, ("c", "a")) == "| a | c |\n|---|---|\n| 1 |  |\n| 4 | 6 |"


def test_causes_table_measures_each_cause_from_its_result_files(tmp_path, monkeypatch):
    """Each row: the S = 10 test log-likelihoods of one method before and after, the
    change of the means and twice its standard error; a cause not measured is left out;
    "table2.json" stands for the runs that table lists."""
    for seed, (b, a) in enumerate([(10.0, 13.0), (12.0, 17.0)]):
        _result(tmp_path / "before", f"freyfaces-vae-seed{seed}", "vae", b)
        _result(tmp_path / "before", f"freyfaces-iop-seed{seed}", "iop", 99.0)  # other method
        _result(tmp_path / "after", f"freyfaces-vae-x-seed{seed}", "vae", a)
    (tmp_path / "after" / "table2.json").write_text(json.dumps(
        {"markdown": "", "runs": ["freyfaces-vae-x-seed0", "freyfaces-vae-x-seed1"]}))
    monkeypatch.setattr(experiments.tables, "CAUSES", (
        ("c", "vae", "all else", "before/*", "after/*"),
        ("t", "vae", "", "before/*", "after/table2.json"),
        ("not yet", "vae", "", "before/*", "missing/*")))
    rows = causes_table(str(tmp_path)).splitlines()
    two_se = 2 * math.sqrt(2.0 / 2 + 8.0 / 2)   # sample variances 2 and 8, two runs each
    assert rows[2] == (f"| c | vae | all else | 11.00 ± 1.41 (2) | 15.00 ± 2.83 (2) | "
                       f"+4.00 ({two_se:.2f}) |")
    assert rows[3].startswith("| t | vae |") and len(rows) == 4


def test_causes_summary_folds_the_causes_to_one_row_each(tmp_path, monkeypatch):
    """One column per method; a cause measured twice for a method shows both changes."""
    for seed, (b, a) in enumerate([(10.0, 13.0), (12.0, 17.0)]):
        _result(tmp_path / "before", f"freyfaces-vae-seed{seed}", "vae", b)
        _result(tmp_path / "after", f"freyfaces-vae-seed{seed}", "vae", a)
        _result(tmp_path / "after", f"freyfaces-iop-seed{seed}", "iop", a)
    monkeypatch.setattr(experiments.tables, "CAUSES", (
        ("c", "vae", "one setting", "before/*", "after/*"),
        ("c", "vae", "another", "after/*", "before/*"),
        ("d", "iop", "", "after/*", "after/*"),
        ("not yet", "iop", "", "before/*", "after/*")))   # no iop runs before
    two_se = f"{2 * math.sqrt(2.0 / 2 + 8.0 / 2):.2f}"
    monkeypatch.setattr(experiments.tables, "KEPT", {"c": "kept", "d": "tried, not kept"})
    assert causes_summary(str(tmp_path), methods=("vae", "iop")).splitlines() == [
        "| cause | vae | iop | in the protocol |", "|---|---|---|---|",
        f"| c | +4.00 ({two_se}), 2 → 2 runs; -4.00 ({two_se}), 2 → 2 runs |  | kept |",
        f"| d |  | +0.00 ({2 * math.sqrt(8.0 / 2 + 8.0 / 2):.2f}), 2 → 2 runs | tried, not "
        "kept |"]


def test_fill_readme_puts_each_named_table_in_its_block():
    text = "intro\n<!-- generated: t -->\nold\nrows\n<!-- end -->\nafter\n"
    assert fill_readme(text, {"t": "| new |"}) == (
        "intro\n<!-- generated: t -->\n| new |\n<!-- end -->\nafter\n")
    empty = "<!-- generated: t -->\n<!-- end -->"
    assert fill_readme(empty, {"t": "| x |"}) == "<!-- generated: t -->\n| x |\n<!-- end -->"
    with pytest.raises(ValueError, match="'t', which has no results"):
        fill_readme(text, {})


def test_the_readmes_tables_are_generated_from_the_committed_results():
    """The README's numbers come from results/: regenerate with `iopvae readme`."""
    text = (ROOT / "README.md").read_text()
    assert fill_readme(text, readme_tables(str(ROOT / "results"))) == text, \
        "README.md's tables differ from results/: run `iopvae readme`"


def test_readme_command_rewrites_the_blocks(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- generated: freyfaces-causes -->\n\n<!-- end -->\n")
    assert cli.main(["readme", "--readme", str(readme), "--results", str(ROOT / "results")]) == 0
    assert "| cause | vae | vamp | iop |" in readme.read_text()
    assert "updated" in capsys.readouterr().out
    assert cli.main(["readme", "--readme", str(readme), "--results", str(ROOT / "results")]) == 0
    assert "already up to date" in capsys.readouterr().out


def test_goal_summary_says_where_the_paper_is_met_and_where_its_order_fails():
    paper = {"iop": (10.0, 1.0), "vamp": (8.0, 1.0), "vae": (5.0, 1.0)}
    values = {"iop": [6.0, 7.0, 8.0], "vamp": [8.0, 9.0, 10.0], "vae": [4.0, 5.0, 6.0]}
    lines = goal_summary(values, paper).splitlines()
    assert lines[0].startswith("- iop: ours − paper -3.00 (2 SE ") and lines[0].endswith("below")
    assert lines[1].startswith("- vamp: ours − paper +1.00") and lines[1].endswith("within")
    # each gap to the VAE against the paper's: 2 SE of the difference, four variances
    two_se = 2 * math.sqrt(1 / 3 + 1 / 3 + 2 / 8)
    assert lines[3] == f"- iop − vae: ours +2.00, paper +5.00: -3.00 (2 SE {two_se:.2f}): below"
    assert lines[4] == f"- vamp − vae: ours +4.00, paper +3.00: +1.00 (2 SE {two_se:.2f}): within"
    wide = goal_summary({"iop": [20.0, 21.0], "vae": [4.0, 6.0]}, paper).splitlines()
    assert wide[0].endswith("above") and wide[2].startswith("- iop − vae: ours +15.50, paper")
    assert wide[2].endswith("above")
    assert len(goal_summary({"iop": [9.0, 11.0]}, paper).splitlines()) == 2  # no VAE, no gap
    p = {(a, b): f"{welch_t_test(values[a], values[b]):.3f}"
         for a, b in (("iop", "vamp"), ("iop", "vae"), ("vamp", "vae"))}
    assert lines[5] == ("- the paper's order iop ≥ vamp ≥ vae of the means fails at iop < vamp: "
                        f"iop − vamp = -2.00 (Welch p = {p['iop', 'vamp']}), iop − vae = +2.00 "
                        f"(Welch p = {p['iop', 'vae']}), vamp − vae = +4.00 "
                        f"(Welch p = {p['vamp', 'vae']})")
    below_the_last = goal_summary({"iop": [4.0, 5.0], "vamp": [6.0, 7.0], "vae": [5.0, 6.0]},
                                         paper).splitlines()[-1]
    assert "fails at iop < vamp, iop < vae:" in below_the_last  # not only neighbours
    held = goal_summary({"iop": [9.0, 11.0], "vae": [4.0, 6.0]}, paper)
    assert held.splitlines()[-1].startswith(
        "- the paper's order iop ≥ vamp ≥ vae of the means holds: iop − vae = +5.00")


def test_readme_tables_add_the_eight_run_table_and_the_goal_once_table2_json_exists(tmp_path):
    listed = tmp_path / PICKED
    folder = listed.parent
    folder.mkdir()
    names = []
    for method, base in (("vae", 1380.0), ("vamp", 1390.0), ("iop", 1395.0)):
        for seed in range(2):
            name = f"freyfaces-{method}-seed{seed}"
            names.append(name)
            (folder / f"{name}.json").write_text(json.dumps(
                {"dataset": "freyfaces", "method": method, "components": 500,
                 "samples": 10, "tight_samples": 1000, "epochs_trained": 9, "best_epoch": 7,
                 "log_likelihood": base + seed, "log_likelihood_tight": base + seed + 20,
                 "log_likelihood_exact": 1.0, "log_likelihood_exact_tight": 2.0,
                 "log_normalizer": -1.0}))
    assert "freyfaces-goal" not in readme_tables(str(tmp_path))
    # the table is made again from the runs listed, never taken from the stored markdown
    listed.write_text(json.dumps({"markdown": "| stale |", "runs": names}))
    tables = readme_tables(str(tmp_path))
    assert tables["freyfaces-table2"].splitlines()[0] == "| " + " | ".join(README_COLUMNS) + " |"
    vae_row = tables["freyfaces-table2"].splitlines()[2]
    assert vae_row.startswith("| vae | 2 | 1380.50 ± 0.71 | 1400.50 ± 0.71 |")
    assert "of the means holds" in tables["freyfaces-goal"]
    assert tables["freyfaces-goal"].startswith("- iop: ours − paper -0.77")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_diverging_candidate_is_recorded_and_left_out_of_the_pick(tmp_path, capsys, jobs):
    """A step size that diverges no longer aborts the screen on every rerun: the run's
    divergence is recorded beside the results, the candidate is listed as diverged and
    never picked, and a rerun does not train it again."""
    argv = ["select", "--dataset", "onehot", "--methods", "vae", "--lrs", "0.001", "100",
            "--seeds", "0", "--epochs", "3", "--warmup", "1", "--hidden", "8",
            "--samples", "2", "--tight-samples", "2", "--jobs", jobs,
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "diverged: onehot-vae-lr=100.0-seed0" in out
    doc = json.loads((tmp_path / "results" / "onehot-selection.json").read_text())
    assert doc["methods"]["vae"]["pick"] == {"lr": 0.001}
    assert doc["methods"]["vae"]["diverged"] == [{"settings": {"lr": 100.0},
                                                  "runs": ["onehot-vae-lr=100.0-seed0"]}]
    record = json.loads((tmp_path / "results" / "onehot-vae-lr=100.0-seed0.diverged.json")
                        .read_text())
    assert "diverged at epoch" in record["diverged"]
    assert cli.main(argv) == 0
    assert "2 of 2 runs already evaluated (or diverged); 0 to run" in capsys.readouterr().out
