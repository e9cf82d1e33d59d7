"""Training (Algorithm 1), checkpoints and resume, divergence handling, VampPrior
initialisation and sampling, on OneHot and on tiny synthetic data sets.

Runs are short (hidden 16-32, a few epochs of 10 mini-batches) so the file
takes seconds; settings and seeds are fixed so that the outcomes are
deterministic.
"""
import copy
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograd_lite as ag  # noqa: E402
import datasets  # noqa: E402
import estimators  # noqa: E402
import iopvae  # noqa: E402
from experiments import checkpoints, runs  # noqa: E402

LN4 = math.log(4)


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def onehot():
    return datasets.load("onehot")


def synthetic(name="mnist", n=300, dim=8, likelihood="bernoulli", dynamic=True, seed=0):
    """A tiny grey-valued data set (unique rows), optionally dynamically binarised."""
    g = np.random.default_rng(seed)
    split = lambda m: g.uniform(0.05, 0.95, size=(m, dim)).astype(np.float32)  # noqa: E731
    valid, test = split(60), split(60)
    if dynamic:
        valid, test = (valid > 0.5).astype(np.float32), (test > 0.5).astype(np.float32)
    return datasets.Dataset(name, split(n), valid, test, likelihood, dynamic, None)


SHORT = dict(dataset="onehot", epochs=15, warmup=5, hidden=32, j2=5, lr=1e-3, patience=0, seed=0)


# =============================================================================
# Short OneHot runs: every method learns
# =============================================================================
@pytest.mark.parametrize("method", ["vae", "vamp", "avb", "iop"])
def test_short_onehot_run_improves(method, onehot, on_backend):
    """15 rounds of Algorithm 1 on OneHot (hidden 32) must raise the validation ELBO
    by at least 0.2 nats from the first to the last epoch; for IOP and AVB the
    density-ratio loss of the last round must be below ln 4 - 0.05 (chance level:
    T learned to tell q from p).  A gradient with the wrong sign, a frozen
    optimizer or a T that is never trained fails.  On every backend."""
    trainer = runs.Trainer(runs.Config(method=method, **SHORT), onehot, out_dir=None,
                             log=quiet)
    history = trainer.train()
    assert [r["epoch"] for r in history] == list(range(1, 16))
    first, last = history[0]["valid_elbo"], history[-1]["valid_elbo"]
    assert last > first + 0.2, [round(r["valid_elbo"], 3) for r in history]
    assert history[0]["beta"] == pytest.approx(0.2) and history[-1]["beta"] == 1.0
    if method in ("avb", "iop"):
        assert history[-1]["disc_loss"] < LN4 - 0.05, [r["disc_loss"] for r in history]
    else:
        assert all(r["disc_loss"] is None for r in history)


def test_early_stopping_stops_after_patience(onehot, monkeypatch):
    """With a validation ELBO that never improves after the first epoch past the
    warm-up, training must stop after `patience` further epochs and keep that
    epoch as the best."""
    values = iter([-2.0] + [-3.0] * 50)
    monkeypatch.setattr(iopvae, "elbo", lambda *a, **k: next(values))
    config = runs.Config(method="vae", dataset="onehot", hidden=16, epochs=50, patience=3,
                           warmup=0)
    trainer = runs.Trainer(config, onehot, out_dir=None, log=quiet)
    history = trainer.train()
    assert len(history) == 4
    assert trainer.best["epoch"] == 1


def test_early_stopping_ignores_warmup_epochs(onehot, monkeypatch):
    """Warm-up epochs (beta < 1) optimise another objective: a high validation ELBO
    during the warm-up must neither become the best epoch nor start the patience
    count.  Here the ELBO is best at epoch 1 (beta 0.2) and flat after: training
    must run the 5 warm-up epochs (beta reaches 1 at epoch 5) plus 1 + patience."""
    values = iter([-1.0, -2.0, -2.0, -2.0, -2.0] + [-3.0] * 50)
    monkeypatch.setattr(iopvae, "elbo", lambda *a, **k: next(values))
    config = runs.Config(method="vae", dataset="onehot", hidden=16, epochs=50, patience=3,
                           warmup=5)
    trainer = runs.Trainer(config, onehot, out_dir=None, log=quiet)
    history = trainer.train()
    assert [r["beta"] for r in history[:5]] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert trainer.best["epoch"] == 5 and trainer.best["valid_elbo"] == -2.0
    assert len(history) == 5 + 3


# =============================================================================
# Checkpoints and resume
# =============================================================================
def _config(method, **kw):
    base = dict(dataset="onehot", method=method, hidden=16, epochs=4, warmup=3, j2=2,
                components=6, patience=0, seed=3)
    base.update(kw)
    return runs.Config(**base)


def _strip_timing(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _assert_states_equal(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("method,data_kind", [
    ("vae", "onehot"), ("vamp", "onehot"), ("avb", "onehot"), ("iop", "onehot"),
    ("iop", "binarized"), ("vamp", "gaussian")])
def test_resume_is_bit_identical(method, data_kind, onehot, tmp_path):
    """4 epochs straight vs 2 epochs, a checkpoint, and `resume_trainer(...).train(4)`:
    final weights, optimizer moments, best weights and history (except timing) must
    be bit-identical.  Forgetting the RNG state, Adam's moments or step count, the
    best-so-far record, or the dropout generator breaks this.  Also run with dynamic
    binarisation and with a Gaussian decoder."""
    data = {"onehot": onehot, "binarized": synthetic(),
            "gaussian": synthetic("freyfaces", likelihood="gaussian", dynamic=False)}[data_kind]
    latent = {} if data_kind == "onehot" else {"latent": 2}
    straight = runs.Trainer(_config(method, **latent), data, str(tmp_path / "A"), quiet)
    straight.train(4)
    first = runs.Trainer(_config(method, **latent), data, str(tmp_path / "B"), quiet)
    first.train(2)
    resumed = checkpoints.resume_trainer(str(tmp_path / "B"), data, str(tmp_path / "B"), quiet)
    assert resumed.epoch == 2
    resumed.train(4)
    assert resumed.epoch == 4
    _assert_states_equal(straight.model.state_dict(), resumed.model.state_dict())
    _assert_states_equal(straight.vae_opt.state_dict(), resumed.vae_opt.state_dict())
    if straight.density_ratio_opt is not None:
        _assert_states_equal(straight.density_ratio_opt.state_dict(),
                             resumed.density_ratio_opt.state_dict())
    assert _strip_timing(straight.history) == _strip_timing(resumed.history)
    assert straight.best["epoch"] == resumed.best["epoch"]
    _assert_states_equal(straight.best["state"], resumed.best["state"])
    # the checkpoints on disk agree too
    meta_a, arrays_a = checkpoints.read_checkpoint(str(tmp_path / "A"))
    meta_b, arrays_b = checkpoints.read_checkpoint(str(tmp_path / "B" / "checkpoint.npz"))
    assert meta_a["epoch"] == meta_b["epoch"] == 4
    _assert_states_equal(arrays_a, arrays_b)


def test_checkpoint_files_written_atomically(onehot, tmp_path, monkeypatch):
    """A run folder holds exactly checkpoint.npz and config.json (no temporary files
    left behind); config.json is valid JSON with the configuration; and when a
    write fails half-way the previous checkpoint stays intact and readable."""
    out = tmp_path / "run"
    trainer = runs.Trainer(_config("iop", epochs=2), onehot, str(out), quiet)
    trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config == dataclasses.asdict(trainer.config)
    assert runs.Config(**config) == trainer.config
    meta, arrays = checkpoints.read_checkpoint(str(out))
    assert meta["epoch"] == 2 and meta["config"] == trainer.config
    assert meta["dim"] == 4 and meta["likelihood"] == "bernoulli"
    assert any(k.startswith("opt_disc/") for k in arrays)

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        trainer.train(3)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json"]
    meta_after, _ = checkpoints.read_checkpoint(str(out))
    assert meta_after["epoch"] == 2


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "no_meta"])
def test_bad_checkpoint_raises_checkpoint_error_naming_the_path(damage, onehot, tmp_path):
    """read_checkpoint, resume_trainer and load_model must turn a missing, garbled,
    truncated or meta-less checkpoint into CheckpointError whose message names the
    file, never a raw zipfile / KeyError / JSON traceback."""
    out = tmp_path / "run"
    runs.Trainer(_config("vae", epochs=1), onehot, str(out), quiet).train()
    path = out / "checkpoint.npz"
    if damage == "missing":
        path = tmp_path / "nowhere" / "checkpoint.npz"
    elif damage == "garbage":
        path.write_bytes(b"this is not a zip file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        with np.load(path) as archive:
            arrays = {k: archive[k] for k in archive.files if k != "meta"}
        np.savez(path, **arrays)
    for call in (lambda: checkpoints.read_checkpoint(str(path)),
                 lambda: checkpoints.resume_trainer(str(path), onehot, str(out), quiet),
                 lambda: checkpoints.load_model(str(path))):
        with pytest.raises(checkpoints.CheckpointError) as info:
            call()
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_checkpoint_of_another_configuration_is_rejected(onehot, tmp_path):
    """A checkpoint whose weights do not fit its stored configuration (here: hidden
    size edited) must give CheckpointError, not a shape error deep in NumPy."""
    out = tmp_path / "run"
    runs.Trainer(_config("iop", epochs=1), onehot, str(out), quiet).train()
    path = out / "checkpoint.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["hidden"] = 24
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    for call in (lambda: checkpoints.load_model(str(path)),
                 lambda: checkpoints.resume_trainer(str(path), onehot, str(out), quiet)):
        with pytest.raises(checkpoints.CheckpointError, match="does not match"):
            call()


def test_load_model_restores_best_weights(onehot, tmp_path, monkeypatch):
    """With the best validation ELBO at epoch 2 of 4, load_model must return the
    epoch-2 weights (and the last weights with best=False), in eval mode."""
    scripted = iter([-3.0, -1.0, -2.0, -2.5])
    monkeypatch.setattr(iopvae, "elbo", lambda *a, **k: next(scripted))
    out = tmp_path / "run"
    trainer = runs.Trainer(_config("iop", warmup=1), onehot, str(out), quiet)
    snapshots = []
    trainer.log = lambda line: snapshots.append(trainer.model.state_dict())
    trainer.train()
    assert trainer.best["epoch"] == 2 and len(snapshots) == 4
    model, config = checkpoints.load_model(str(out))
    assert config == trainer.config
    assert not any(m.training for m in model.modules())
    _assert_states_equal(model.state_dict(), snapshots[1])
    assert any(not np.array_equal(snapshots[1][k], snapshots[3][k]) for k in snapshots[1])
    last, _ = checkpoints.load_model(str(out), best=False)
    _assert_states_equal(last.state_dict(), snapshots[3])
    _assert_states_equal(trainer.best_model().state_dict(), snapshots[1])


# =============================================================================
# Divergence
# =============================================================================
@pytest.mark.parametrize("where", ["vae_loss", "valid_elbo"])
def test_divergence_raises_and_keeps_last_good_checkpoint(where, onehot, tmp_path, monkeypatch):
    """When the VAE loss (or the validation ELBO) turns NaN at epoch 3, run() must
    raise TrainingDiverged naming epoch 3, and the checkpoint on disk must still be
    the finite one of epoch 2 (not overwritten with NaN weights)."""
    out = tmp_path / "run"
    trainer = runs.Trainer(_config("iop", epochs=6), onehot, str(out), quiet)
    if where == "vae_loss":
        loss = trainer.model.loss

        def nan_from_epoch_3(x, rng, beta=1.0):
            value = loss(x, rng, beta)
            return value * float("nan") if trainer.epoch >= 2 else value
        trainer.model.loss = nan_from_epoch_3
    else:
        elbo = iopvae.elbo
        monkeypatch.setattr(iopvae, "elbo", lambda model, *a, **k: (
            float("nan") if trainer.epoch >= 2 else elbo(model, *a, **k)))
    with pytest.raises(runs.TrainingDiverged) as info:
        trainer.train()
    message = str(info.value)
    assert "epoch 3" in message and str(out) in message
    meta, arrays = checkpoints.read_checkpoint(str(out))
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    for name, value in arrays.items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    model, _ = checkpoints.load_model(str(out), best=False)
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())


# =============================================================================
# VampPrior pseudo-inputs
# =============================================================================
def _vamp(pseudo_init, dim=20, K=300, seed=0):
    return iopvae.VampPrior(dim, "bernoulli", 2, 8, ag.default_rng(seed), components=K,
                            pseudo_init=pseudo_init)


def test_vamp_uniform_init_spreads_over_unit_interval():
    """'uniform': U[0, 1] pseudo-inputs (mean 0.5, sd 1/sqrt(12), covering the interval),
    so that the K components start apart."""
    u = _vamp("uniform").pseudo_inputs.data
    assert u.shape == (300, 20)
    assert u.min() >= 0 and u.max() <= 1
    assert u.min() < 0.01 and u.max() > 0.99
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 1 / math.sqrt(12)) < 0.01
    assert len(np.unique(u.round(6), axis=0)) == 300


def test_vamp_constant_init_is_near_one_half():
    """'constant': 0.5 + N(0, 0.01^2), the documented failure case."""
    u = _vamp("constant").pseudo_inputs.data
    assert np.all(np.abs(u - 0.5) < 0.06)
    assert 0.008 < u.std() < 0.012


def test_vamp_data_init_uses_distinct_training_points():
    """'data': after the trainer starts, each pseudo-input is a training point, all
    K of them different points (sampled without replacement)."""
    data = synthetic(dynamic=False)
    config = runs.Config(dataset="mnist", method="vamp", latent=2, hidden=8, components=40,
                           pseudo_init="data", epochs=1)
    trainer = runs.Trainer(config, data, out_dir=None, log=quiet)
    u = trainer.model.pseudo_inputs.data
    assert u.shape == (40, data.dim)
    matches = [np.flatnonzero((data.train == row).all(axis=1)) for row in u]
    assert all(len(m) == 1 for m in matches)
    assert len({int(m[0]) for m in matches}) == 40
    # "uniform" is left alone by init_from_data
    model = _vamp("uniform", dim=data.dim, K=40)
    before = model.pseudo_inputs.data.copy()
    model.init_from_data(data.train, ag.default_rng(0))
    assert np.array_equal(before, model.pseudo_inputs.data)


def test_vamp_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="pseudo_init"):
        _vamp("zeros")


# =============================================================================
# Sampling and the prior Monte Carlo log-likelihood
# =============================================================================
@pytest.fixture(scope="module")
def trained(onehot):
    """A VAE (30 epochs, log p(x) about -1.66) and an IOP (15 epochs) trained on
    OneHot, shared by the tests below."""
    models = {}
    for method, settings in (("vae", dict(SHORT, epochs=30, lr=3e-3)), ("iop", SHORT)):
        trainer = runs.Trainer(runs.Config(method=method, **settings), onehot, None, quiet)
        trainer.train()
        models[method] = trainer.model
    return models


def test_iop_prior_sample_needs_data_and_sir_gives_requested_count(trained, onehot):
    """The implicit prior is sampled ancestrally from training data: without data a
    clear ValueError; with data and by SIR, exactly n latent vectors."""
    model = trained["iop"]
    rng = ag.default_rng(0)
    with pytest.raises(ValueError, match="data"):
        model.prior_sample(5, rng)
    with iopvae.evaluation(model):
        z = model.prior_sample(17, rng, onehot.train)
        assert z.shape == (17, 2) and np.all(np.isfinite(z.data))
        for n, candidates in ((13, None), (7, 50)):
            s = estimators.sir_prior_sample(model, n, rng, candidates)
            assert s.shape == (n, 2) and np.all(np.isfinite(s.data))


def test_sir_resamples_with_weights_exp_T(trained, monkeypatch):
    """SIR from N(0, I) with weights exp(T(z)): for T(z) = z_1 the target is
    N(0, I) * exp(z_1), i.e. N((1, 0), I).  Weights exp(-T) or uniform
    weights would leave the mean at -1 or 0."""
    model = trained["iop"]
    monkeypatch.setattr(model.density_ratio, "forward", lambda z: z[:, 0])
    z = estimators.sir_prior_sample(model, 3000, ag.default_rng(1)).data
    assert abs(z[:, 0].mean() - 1.0) < 0.12
    assert abs(z[:, 1].mean()) < 0.12
    assert abs(z[:, 0].std() - 1.0) < 0.12


def test_prior_log_likelihood_normalised_and_close_to_importance_sampling(trained, onehot):
    """prior_log_likelihood (Eq. 1 by plain MC over p(z)) for a trained VAE on OneHot:
    every value <= 0, the model's probabilities of all 16 binary 4-vectors sum to 1
    (same prior samples for all), and the mean over the test set is within 0.05 nats
    of the importance-sampled estimate with S = 500."""
    model = trained["vae"]
    allx = np.array([[(i >> k) & 1 for k in range(4)] for i in range(16)], dtype=np.float32)
    log_all = estimators.prior_log_likelihood(model, allx, 20_000, ag.default_rng(0))
    assert np.all(log_all <= 0)
    assert abs(np.exp(log_all).sum() - 1.0) < 1e-6
    x = onehot.test[:200]
    prior_ll = estimators.prior_log_likelihood(model, x, 20_000, ag.default_rng(1))
    is_ll = iopvae.test_log_likelihood(model, x, 500, ag.default_rng(2))
    assert np.all(prior_ll <= 0)
    assert abs(prior_ll.mean() - is_ll.mean()) < 0.05, (prior_ll.mean(), is_ll.mean())
    # no better than the data's entropy allows: uniform over four points
    assert prior_ll.mean() <= -LN4 + 0.01
    # the trained encoder is informative: the ELBO is clearly below log p(x)
    elbo = iopvae.elbo(model, x, ag.default_rng(3))
    assert prior_ll.mean() > elbo + 0.05


def test_prior_log_likelihood_for_iop_uses_aggregated_posterior(trained, onehot):
    """For IOP the prior is the aggregated posterior sampled from data: needs data,
    gives values <= 0, and the model's probabilities of the 16 binary vectors sum
    to 1."""
    model = trained["iop"]
    allx = np.array([[(i >> k) & 1 for k in range(4)] for i in range(16)], dtype=np.float32)
    with pytest.raises(ValueError):
        estimators.prior_log_likelihood(model, allx, 100, ag.default_rng(0))
    log_all = estimators.prior_log_likelihood(model, allx, 5000, ag.default_rng(0), onehot.train)
    assert np.all(log_all <= 0)
    assert abs(np.exp(log_all).sum() - 1.0) < 1e-6


def test_test_log_likelihood_with_another_prior(trained, onehot):
    """``log_prior`` swaps the prior alone: IOP with a constant T = c scores c more than
    the same weights with N(0, I) as the prior, on the same draws of z."""
    model = copy.deepcopy(trained["iop"])
    model.density_ratio.head.W.data[...] = 0.0
    model.density_ratio.head.b.data[...] = 0.75
    x = onehot.test[:50]
    with_t = iopvae.test_log_likelihood(model, x, 20, ag.default_rng(5))
    without = iopvae.test_log_likelihood(model, x, 20, ag.default_rng(5),
                                         log_prior=iopvae.log_standard_normal)
    np.testing.assert_allclose(with_t - without, 0.75, rtol=0, atol=1e-5)


def test_test_log_likelihood_refuses_avb(onehot):
    """AVB's posterior is implicit: importance sampling must be refused clearly."""
    model = runs.build_model(runs.Config(method="avb", hidden=8), 4, "bernoulli",
                               ag.default_rng(0))
    with pytest.raises(ValueError, match="implicit"):
        iopvae.test_log_likelihood(model, onehot.test[:5], 3, ag.default_rng(0))


# =============================================================================
# The contract between the methods and Algorithm 1
# =============================================================================
@pytest.mark.parametrize("method", ["vae", "vamp", "iop", "avb"])
def test_every_method_keeps_the_contract(method):
    """Each method is a VAEMethod; T is ``density_ratio`` exactly for IOP and AVB, and its
    parameters are the density ratio estimator's, disjoint from the VAE's; the others
    have none and refuse density_ratio_loss."""
    model = runs.build_model(runs.Config(method=method, hidden=8, components=3), 4, "bernoulli",
                             ag.default_rng(0))
    assert isinstance(model, iopvae.VAEMethod)
    vae = {id(p) for p in model.vae_parameters()}
    disc = {id(p) for p in model.density_ratio_parameters()}
    assert vae and not vae & disc
    assert vae | disc == {id(p) for p in model.parameters()}
    if method in ("iop", "avb"):
        assert model.has_density_ratio and disc
        assert disc == {id(p) for p in model.density_ratio.parameters()}
    else:
        assert not model.has_density_ratio and model.density_ratio is None and not disc
        z = ag.Tensor(np.eye(4, 2, dtype=np.float32))
        with pytest.raises(NotImplementedError):
            model.density_ratio_loss(z, z, ag.Tensor(np.eye(4, dtype=np.float32)))
        with pytest.raises(NotImplementedError):
            model.aggregated_posterior_sample(ag.Tensor(np.eye(4, dtype=np.float32)),
                                              ag.default_rng(0))


def test_minibatches_cover_a_fresh_shuffle_once():
    """minibatches(n, K, rng): consecutive batches of K (the last one smaller) that
    together are a permutation of range(n), a different one each epoch."""
    rng = ag.default_rng(0)
    first = list(iopvae.minibatches(250, 100, rng))
    assert [len(b) for b in first] == [100, 100, 50]
    assert sorted(np.concatenate(first).tolist()) == list(range(250))
    assert not np.array_equal(np.concatenate(first),
                              np.concatenate(list(iopvae.minibatches(250, 100, rng))))


# =============================================================================
# IOP's T rounds: the posteriors of data that are not binarized, encoded once a round
# =============================================================================
def _t_round_trainer(method="iop", dynamic=False):
    data = synthetic("freyfaces", n=200, dim=8, likelihood="gaussian", dynamic=dynamic)
    if dynamic:
        data = synthetic(n=200, dim=8)
    return runs.Trainer(_config(method, dataset=data.name, latent=2, batch_size=50, j2=3),
                        data, None, quiet)


def test_cached_posteriors_draw_the_same_z_as_encoding_the_batch():
    """z1 = mu + sigma * eps from the round's cached rows is the z of encoding the
    minibatch again, for the same noise (one seed for both): the same draw, hence the
    same distribution; only rounding of the larger matrix product may differ."""
    trainer = _t_round_trainer()
    model = trainer.model
    idx = ag.as_array(np.array([5, 17, 17, 199, 0]))
    with iopvae.frozen(model.encoder, model.decoder):
        posteriors = trainer.round_posteriors()
        x, cached = trainer.density_ratio_batch(idx, posteriors)
        assert x is None
        z_cached = model.aggregated_posterior_sample(None, ag.default_rng(7), cached)
        z_encoded = model.aggregated_posterior_sample(trainer.batch(idx), ag.default_rng(7))
    np.testing.assert_allclose(ag.to_numpy(z_cached.data), ag.to_numpy(z_encoded.data),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(ag.to_numpy(z_cached.data[0]), ag.to_numpy(z_cached.data[1]))


def _count_encoder_passes(trainer, monkeypatch):
    calls = []
    forward = type(trainer.model.encoder).forward
    monkeypatch.setattr(type(trainer.model.encoder), "forward",
                        lambda self, *a: calls.append(1) or forward(self, *a))
    return calls


def test_a_t_round_encodes_the_training_set_once_and_trains_t_the_same(monkeypatch):
    """A round of T on data that are not binarized encodes the training set once (one
    pass, not J2 epochs of minibatches), and trains T to the same weights as encoding
    every minibatch (the old way, forced here): the same z at every step."""
    runs_ = {}
    for cached in (True, False):
        trainer = _t_round_trainer()
        if not cached:
            monkeypatch.setattr(trainer, "round_posteriors", lambda: None)
        calls = _count_encoder_passes(trainer, monkeypatch)
        history = trainer.train(1)
        runs_[cached] = (len(calls), history, trainer.model.density_ratio.state_dict())
        monkeypatch.undo()
    batches, valid_batches, j2 = 200 // 50, 2, 3      # 60 validation points in 50s
    # the VAE epoch and the validation ELBO either way; then the training set once (one
    # batch of up to 1000 rows) against J2 epochs of minibatches
    assert runs_[True][0] == batches + valid_batches + 1
    assert runs_[False][0] == batches + valid_batches + j2 * batches
    assert runs_[True][1][0]["disc_loss"] == pytest.approx(runs_[False][1][0]["disc_loss"],
                                                           rel=1e-5)
    for name, value in runs_[True][2].items():
        np.testing.assert_allclose(ag.to_numpy(value), ag.to_numpy(runs_[False][2][name]),
                                   rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method, dynamic", [("iop", True), ("avb", False)])
def test_no_cached_posteriors_for_binarized_data_or_avb(method, dynamic, monkeypatch):
    """MNIST and OMNIGLOT encode each freshly binarized minibatch; AVB's implicit
    encoder needs fresh noise at every draw: neither caches anything."""
    trainer = _t_round_trainer(method, dynamic)
    assert trainer.round_posteriors() is None
    x, posterior = trainer.density_ratio_batch(ag.as_array(np.arange(3)), None)
    assert posterior is None and x.shape == (3, 8)


# =============================================================================
# frozen: Algorithm 1's "with psi fixed" / "with theta, phi fixed"
# =============================================================================
def _density_ratio():
    return iopvae.DensityRatio(2, 4, ag.default_rng(0))


def test_frozen_restores_a_parameter_frozen_before_entering():
    """A parameter that was already frozen when ``frozen`` began must still be frozen
    after it; the others come back trainable, and the modes come back too."""
    T = _density_ratio()
    before = T.head.W
    before.requires_grad = False
    T.eval()
    T.body.train()                      # a submodule in another mode than its parent
    with iopvae.frozen(T):
        assert not any(p.requires_grad for p in T.parameters())
        assert not any(m.training for m in T.modules())
    assert before.requires_grad is False
    assert all(p.requires_grad for p in T.parameters() if p is not before)
    assert T.training is False and T.body.training is True


def test_nested_frozen_of_the_same_module_leaves_the_outer_one_in_force():
    """The inner block's exit must not unfreeze what the outer block froze."""
    T = _density_ratio()
    T.train()
    with iopvae.frozen(T):
        with iopvae.frozen(T, None):
            pass
        assert not any(p.requires_grad for p in T.parameters())
        assert not T.training
    assert all(p.requires_grad for p in T.parameters()) and T.training


@pytest.mark.parametrize("method", ["vae", "vamp", "iop"])
def test_the_encoders_log_variance_bounds_come_from_the_config(method):
    """--encoder-logvar-min/max reach the hardtanh of q(z|x); a configuration stored
    before these options existed reads as the defaults (-6, 2), so its runs still match."""
    config = runs.Config(method=method, hidden=8, components=3, encoder_logvar_min=-12.0,
                         encoder_logvar_max=1.0)
    model = runs.build_model(config, 4, "bernoulli", ag.default_rng(0))
    assert model.encoder.logvar_bounds == (-12.0, 1.0)
    head = model.encoder.head
    head.b.data[...] = 0.0
    head.b.data[model.latent:] = -20.0        # every log-variance far below both bounds
    head.W.data[...] = 0.0
    _, logvar = model.encoder(ag.Tensor(np.eye(4, dtype=np.float32)))
    assert np.all(ag.to_numpy(logvar.data) == -12.0)
    old = {k: v for k, v in dataclasses.asdict(runs.Config(method=method)).items()
           if not k.startswith("encoder_logvar")}
    assert runs.Config(**old) == runs.Config(method=method)
    default = runs.build_model(runs.Config(method=method, hidden=8, components=3), 4,
                               "bernoulli", ag.default_rng(0))
    assert default.encoder.logvar_bounds == iopvae.ENCODER_LOGVAR_BOUNDS
    assert runs.not_applying(["encoder_logvar_min"], "avb") == ["encoder_logvar_min"]
