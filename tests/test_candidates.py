"""The screen's extra candidates: where IOP's T drops out, and VampPrior's start from
training images plus noise."""
import numpy as np

import autograd_lite as ag
import iopvae
from experiments import runs
from experiments.figures import settings_label
from experiments.grid import Run, as_settings
from experiments.selection import candidates, select


def kinds(module):
    return [type(layer).__name__ for layer in module.body.layers]


def test_t_drops_out_after_every_hidden_layer_or_before_its_output_alone():
    every = iopvae.DensityRatio(3, 8, np.random.default_rng(0))
    last = iopvae.DensityRatio(3, 8, np.random.default_rng(0), dropout="last")
    assert kinds(every) == ["Linear", "Activation", "Dropout"] * 2
    assert kinds(last) == ["Linear", "Activation"] * 2 + ["Dropout"]
    assert all(np.array_equal(a, b) for a, b in zip(every.state_dict().values(),
                                                     last.state_dict().values()))
    assert "Dropout" not in kinds(iopvae.DensityRatio(3, 8, np.random.default_rng(0),
                                                      keep=1.0, dropout="last"))
    model = runs.build_model(runs.Config(method="iop", hidden=8,
                                         density_ratio_dropout="last"), 4, "bernoulli",
                             ag.default_rng(0))
    assert kinds(model.density_ratio) == kinds(last)


def test_vampprior_starts_from_training_points_plus_small_noise():
    train = np.random.default_rng(1).random((30, 6)).astype(np.float32)
    starts = {}
    for init in ("data", "noisy_data"):
        model = iopvae.VampPrior(6, "bernoulli", 2, 8, np.random.default_rng(0), components=5,
                                 pseudo_init=init)
        model.init_from_data(train, np.random.default_rng(2))
        starts[init] = ag.to_numpy(model.pseudo_inputs.data)
    picked = [np.flatnonzero((train == row).all(axis=1)) for row in starts["data"]]
    assert all(len(p) == 1 for p in picked) and len({int(p[0]) for p in picked}) == 5
    noise = starts["noisy_data"] - starts["data"]       # the same points, then the noise
    assert 0.005 < noise.std() < 0.02 and np.abs(noise).max() < 0.1


def test_the_screen_names_the_dropout_candidate_and_keeps_the_default_runs_names():
    assert candidates("iop", [3e-4], ["uniform"], ["every", "last"]) == [
        {"lr": 3e-4}, {"lr": 3e-4, "density_ratio_dropout": "last"}]
    assert candidates("vamp", [3e-4], ["uniform", "noisy_data"], ["every", "last"]) == [
        {"lr": 3e-4, "pseudo_init": "uniform"}, {"lr": 3e-4, "pseudo_init": "noisy_data"}]
    assert candidates("vae", [1e-4, 1e-3], ["uniform"]) == [{"lr": 1e-4}, {"lr": 1e-3}]


def _found(method, values_by_seed):
    """Results as `select` reads them: {Run: result} for each (settings, seed, score)."""
    found = {}
    for values, seed, score in values_by_seed:
        run = Run("freyfaces", method, seed, settings=as_settings(values))
        found[run] = {"run": run.name, "valid_log_likelihood": score,
                      "test_log_likelihood": -1.0, "pseudo_inputs_outside": 0.0}
    return found


def test_a_screen_in_stages_keeps_the_earlier_candidates_in_the_running():
    """Step sizes first, then T's dropout at the picked step size: the second `select`
    keeps the first one's candidates, and picks over all of them."""
    config = {"patience": 0}
    first = select(_found("iop", [({"lr": 1e-4}, 0, 10.0), ({"lr": 3e-4}, 0, 12.0)]),
                   "freyfaces", config, [0], 500)
    assert first["methods"]["iop"]["pick"] == {"lr": 3e-4}
    last = {"lr": 3e-4, "density_ratio_dropout": "last"}
    second = select(_found("iop", [({"lr": 3e-4}, 0, 12.0), (last, 0, 11.0)]),
                    "freyfaces", config, [0], 500, earlier=first)
    rows = second["methods"]["iop"]["candidates"]
    assert [row["settings"] for row in rows] == [{"lr": 3e-4}, last, {"lr": 1e-4}]
    assert second["methods"]["iop"]["pick"] == {"lr": 3e-4}
    # an earlier candidate better than the new ones stays the pick
    third = select(_found("iop", [(last, 0, 9.0)]), "freyfaces", config, [0], 500,
                   earlier={**first, "methods": {"iop": {
                       **first["methods"]["iop"], "pick": {"lr": 1e-4},
                       "candidates": [{**first["methods"]["iop"]["candidates"][0],
                                       "mean": 20.0}]}}})
    assert third["methods"]["iop"]["pick"] == {"lr": 1e-4}
    # VampPrior's candidates at another K do not compare: only the new ones are kept
    vamp = _found("vamp", [({"lr": 1e-4, "pseudo_init": "uniform"}, 0, 10.0)])
    at_100 = select(vamp, "freyfaces", config, [0], 100)
    at_500 = select(_found("vamp", [({"lr": 3e-4, "pseudo_init": "uniform"}, 0, 5.0)]),
                    "freyfaces", config, [0], 500, earlier=at_100)
    assert [row["settings"]["lr"] for row in at_500["methods"]["vamp"]["candidates"]] == [3e-4]


def test_the_curves_and_tables_tell_every_candidate_apart():
    """A label per candidate: IOP's T with dropout before its output alone is not drawn
    or grouped with the default of the same step size."""
    def result(method, **config):
        return {"method": method, "config": {"lr": 3e-4, "pseudo_init": "uniform",
                                             "components": 500, **config}}
    labels = {settings_label(r) for r in (
        result("iop"), result("iop", density_ratio_dropout="every"),
        result("iop", density_ratio_dropout="last"),
        result("vamp"), result("vamp", pseudo_init="noisy_data"))}
    assert labels == {"lr = 0.0003", "lr = 0.0003, T's dropout last",
                      "lr = 0.0003, uniform, K = 500", "lr = 0.0003, noisy_data, K = 500"}
