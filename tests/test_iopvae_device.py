"""The project on the simulated GPU: training, checkpoints, resume, evaluation and
sampling run on every backend (numpy, cupy-sim, and cupy where a GPU is found); numpy
and cupy-sim give the same bits for the same seed; and a round of Algorithm 1 reads
the device a fixed number of times, however many mini-batches it has.

The data are tiny and MNIST-like (grey training points binarised afresh in every
batch, binary validation and test points) and the networks have 16 units, so
every run takes a fraction of a second.
"""
import functools
import math
import shutil

import numpy as np
import pytest

import autograd_lite as ag
import datasets
import estimators
import iopvae
from experiments import checkpoints, runs

METHODS = ["vae", "vamp", "iop", "avb"]
# A round of Algorithm 1 (J1 VAE epochs, J2 epochs of T, the validation ELBO) reads the
# device once: its mean losses and validation ELBO, together, for the log and the NaN
# check.  Writing a checkpoint adds one: every array of it, packed into one transfer.
SYNCS_PER_ROUND = 1
SYNCS_PER_CHECKPOINT = 1


def quiet(_line):
    pass


def synthetic(n=120, dim=12, seed=0, dynamic=True):
    """Grey training points (dynamic binarisation, as MNIST; or not, as OneHot, whose
    posteriors IOP then caches for a round of T) and binary valid/test sets."""
    g = np.random.default_rng(seed)
    train = g.uniform(0.05, 0.95, size=(n, dim)).astype(np.float32)
    valid, test = ((g.uniform(size=(30, dim)) > 0.5).astype(np.float32) for _ in range(2))
    return datasets.Dataset("mnist", train, valid, test, "bernoulli", dynamic, None)


def config(method, **settings):
    base = dict(dataset="mnist", method=method, latent=2, hidden=16, epochs=3, warmup=2, j2=2,
                batch_size=30, components=6, pseudo_init="data", patience=0, seed=1)
    return runs.Config(**{**base, **settings})


def strip_timing(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def assert_same_arrays(a, b):
    assert list(a) == list(b)
    for name in a:
        x, y = ag.to_numpy(a[name]), ag.to_numpy(b[name])
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


@functools.lru_cache(maxsize=None)
def everything(method, backend):
    """Train ``method`` for 3 rounds on ``backend`` and evaluate it every way the project
    does; host copies of the results (cached: the tests below share the runs)."""
    ag.set_backend(backend)
    data = synthetic()
    trainer = runs.Trainer(config(method), data, None, quiet)
    start = trainer.model.pseudo_inputs.numpy().copy() if method == "vamp" else None
    history = trainer.train()
    model, rng = trainer.best_model(), ag.default_rng(5)
    train, test = ag.as_array(data.train), ag.as_array(data.test)
    out = {"history": history, "state": model.state_dict(), "pseudo_start": start,
           "arrays_on": {ag.array_backend(p.data) for p in model.parameters()}}
    with iopvae.evaluation(model):
        out["prior_sample"] = model.prior_sample(7, rng, train).data
        out["posterior_sample"] = model.posterior_sample(ag.Tensor(test[:5]), rng).data
        if method == "iop":
            out["sir_sample"] = estimators.sir_prior_sample(model, 9, rng, candidates=40).data
    out["elbo"] = iopvae.elbo(model, test, rng)
    out["elbo_terms"] = iopvae.mean_elbo_terms(model, test, rng)
    out["prior_log_likelihood"] = estimators.prior_log_likelihood(model, test, 300, rng, train)
    if model.explicit_posterior:
        out["log_likelihood"] = iopvae.test_log_likelihood(model, test, 6, rng, batch_size=16)
    else:
        with pytest.raises(ValueError, match="implicit"):
            iopvae.test_log_likelihood(model, test, 6, rng)
    if method == "iop":
        fixed = datasets.binarize(data.train, 0)   # the encoder's view of the training set
        components = iopvae.aggregated_posterior_components(model, ag.as_array(fixed))
        out["exact_log_likelihood"] = estimators.exact_aggregated_log_likelihood(
            model, test, components, 6, rng)
        out["exact_elbo"] = estimators.exact_aggregated_elbo(model, test, components, 2, rng)
        out["log_normalizer"] = estimators.density_ratio_log_normalizer(model, rng, 500, 200)
    results = {k: v for k, v in out.items() if k not in ("history", "state", "pseudo_start",
                                                         "arrays_on")}
    host = ag.to_numpy_all({k: v for k, v in results.items() if not isinstance(v, tuple)})
    host.update({k: tuple(ag.to_numpy_all(list(v))) for k, v in results.items()
                 if isinstance(v, tuple)})
    return {**out, **host}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_evaluates_and_samples_on_every_backend(method, on_backend):
    """Three rounds of Algorithm 1, then the ELBO, log p(x) by importance sampling (not
    AVB: refused) and by Monte Carlo over the prior, IOP's exact aggregated-posterior
    numbers and log Z, prior, SIR and posterior samples: all finite, of the right
    shapes, with the weights on the backend's device."""
    r = everything(method, on_backend)
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
    for h in r["history"]:
        assert math.isfinite(h["loss"]) and math.isfinite(h["valid_elbo"])
        assert (h["disc_loss"] is None) == (method in ("vae", "vamp"))
    assert r["arrays_on"] == {on_backend}
    assert r["prior_sample"].shape == (7, 2) and r["posterior_sample"].shape == (5, 2)
    assert r["prior_log_likelihood"].shape == (30,) and np.all(r["prior_log_likelihood"] <= 0)
    numbers = [v for k, v in r.items() if k not in ("history", "state", "pseudo_start",
                                                     "arrays_on")]
    for value in numbers:
        for array in (value if isinstance(value, tuple) else (value,)):
            assert np.all(np.isfinite(array))
    assert ("log_likelihood" in r) == (method != "avb")
    if method == "iop":
        assert r["sir_sample"].shape == (9, 2) and r["exact_log_likelihood"].shape == (30,)
    if method == "vamp":   # pseudo_init="data": K distinct training points to start from
        train = synthetic().train
        rows = [np.flatnonzero((train == u).all(axis=1)) for u in r["pseudo_start"]]
        assert all(len(m) == 1 for m in rows) and len({int(m[0]) for m in rows}) == 6


@pytest.mark.parametrize("method", METHODS)
def test_numpy_and_cupy_sim_give_the_same_bits(method):
    """The simulator computes with NumPy, and its generator is NumPy's PCG64 for the same
    seed; the shuffles, VampPrior's data start and SIR use what both backends have, the
    same way.  So the training history, the weights and every evaluation agree bit for
    bit (on a real GPU, CuPy's own generator gives other numbers)."""
    a, b = everything(method, "numpy"), everything(method, "cupy-sim")
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    assert_same_arrays(a["state"], b["state"])
    keys = [k for k in a if k not in ("history", "state", "arrays_on")]
    assert keys == [k for k in b if k not in ("history", "state", "arrays_on")]
    for key in keys:
        x, y = (v if isinstance(v, tuple) else (v,) for v in (a[key], b[key]))
        assert len(x) == len(y), key
        for u, v in zip(x, y):
            assert (u is None) == (v is None), key
            assert u is None or np.asarray(u).tobytes() == np.asarray(v).tobytes(), key


def test_checkpoint_and_resume_on_every_backend(on_backend, tmp_path):
    """A checkpoint after 2 of 4 rounds restores weights, Adam's moments, the best weights
    and the history exactly on every backend, and two resumes from it continue alike.
    On NumPy the continuation is the uninterrupted run's, bit for bit.  CuPy's
    generator has no state to save, so there the resume says, in one log line, that
    it continues reproducibly but not bit-identically."""
    data = synthetic()
    settings = config("iop", epochs=4, warmup=1)
    straight = runs.Trainer(settings, data, str(tmp_path / "A"), quiet)
    straight.train(4)
    first = runs.Trainer(settings, data, str(tmp_path / "B"), quiet)
    first.train(2)
    continuations = []
    for name in ("C", "D"):
        shutil.copytree(tmp_path / "B", tmp_path / name)
        lines = []
        resumed = checkpoints.resume_trainer(str(tmp_path / name), data, str(tmp_path / name),
                                      lines.append)
        assert resumed.epoch == 2 and resumed.history == first.history
        assert_same_arrays(resumed.model.state_dict(), first.model.state_dict())
        assert_same_arrays(resumed.vae_opt.state_dict(), first.vae_opt.state_dict())
        assert_same_arrays(resumed.density_ratio_opt.state_dict(),
                           first.density_ratio_opt.state_dict())
        assert resumed.best["epoch"] == first.best["epoch"] == 2
        assert {ag.array_backend(v) for v in resumed.best["state"].values()} == {on_backend}
        assert_same_arrays(resumed.best["state"], first.best["state"])
        resumed.train(4)
        notes = [line for line in lines if line.startswith("note:")]
        continuations.append((strip_timing(resumed.history), resumed.model.state_dict()))
    assert continuations[0][0] == continuations[1][0]
    assert_same_arrays(continuations[0][1], continuations[1][1])
    if on_backend == "numpy":
        assert notes == []
        assert continuations[0][0] == strip_timing(straight.history)
        assert_same_arrays(continuations[0][1], straight.model.state_dict())
    else:
        assert len(notes) == 1 and "not bit-identical" in notes[0], lines
        assert "seed 1, epoch 2" in notes[0]
        assert continuations[0][0][:2] == strip_timing(straight.history)[:2]


@pytest.mark.parametrize("dynamic", [True, False], ids=["binarized", "not-binarized"])
@pytest.mark.parametrize("method", METHODS)
def test_a_round_reads_the_device_a_fixed_number_of_times(method, dynamic, tmp_path):
    """On the simulated GPU a round of Algorithm 1 makes SYNCS_PER_ROUND device-to-host
    transfers, plus SYNCS_PER_CHECKPOINT when it writes a checkpoint, with 2 or with 6
    mini-batches per epoch alike (so no step reads the device), and copies nothing from
    the host (the data stay on the device).  Each measured round improves on the best
    validation ELBO, so the best weights are kept too: on the device, without a read.
    The same with data that are not binarized (IOP's T steps then draw from the
    posteriors cached for the round)."""
    ag.set_backend("cupy-sim")
    for batches in (2, 6):
        for out_dir in (None, str(tmp_path / f"run{batches}")):
            data = synthetic(n=10 * batches, dynamic=dynamic)
            trainer = runs.Trainer(config(method, batch_size=10, warmup=0, epochs=5), data,
                                   out_dir, quiet)
            trainer.train(1)
            for epoch in (2, 3):
                trainer.best["valid_elbo"] = -math.inf    # this round becomes the best one
                with ag.count_syncs() as counted:
                    trainer.train(epoch)
                expected = SYNCS_PER_ROUND + (SYNCS_PER_CHECKPOINT if out_dir else 0)
                assert (counted.syncs, counted.uploads) == (expected, 0), (batches, out_dir)
                assert trainer.best["epoch"] == epoch
