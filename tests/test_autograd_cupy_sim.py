"""The simulated GPU (``cupy-sim``): it offers exactly CuPy's names, refuses implicit
crossings between host and device as CuPy does, keeps scalars on the device, counts
every transfer, and trains bit-for-bit like the NumPy backend."""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import autograd_lite as ag
from autograd_lite import backend, nn, optim
from autograd_lite.testing import cupy_api, cupy_sim
from conftest import ROOT


@pytest.fixture
def xp():
    """The simulated ``cupy`` module, made the active backend."""
    ag.set_backend("cupy-sim")
    return ag.xp()


@pytest.fixture
def a(xp):
    """A small float64 device array."""
    return ag.as_array(np.arange(6.0).reshape(2, 3))


# --- selecting it -----------------------------------------------------------------------
def test_the_environment_variable_selects_the_simulator():
    code = ("import sys; sys.path.insert(0, %r); import autograd_lite as ag; "
            "print(ag.backend_name(), type(ag.xp().ones(2)).__module__)" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"AUTOGRAD_LITE_BACKEND": "cupy-sim", "PATH": ""})
    assert out.stdout.split() == ["cupy-sim", "autograd_lite.testing.cupy_sim"]


def test_set_backend_selects_it_and_arrays_say_where_they_live(a):
    assert ag.backend_name() == "cupy-sim" and ag.array_backend(a) == "cupy-sim"
    assert isinstance(a, ag.xp().ndarray) and not isinstance(a, np.ndarray)
    ag.set_backend("numpy")
    back = ag.as_array(a)                       # another device's array comes through the host
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, np.arange(6.0).reshape(2, 3))


# --- no implicit crossing between host and device -----------------------------------------
@pytest.mark.parametrize("convert", [np.asarray, np.array, np.ascontiguousarray,
                                     lambda x: np.testing.assert_allclose(x, 0.0)])
def test_implicit_conversion_to_numpy_raises_cupys_type_error(a, convert):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        convert(a)


def test_get_and_to_numpy_are_the_ways_out(a):
    for host in (a.get(), ag.to_numpy(a), ag.xp().asnumpy(a)):
        assert isinstance(host, np.ndarray)
        np.testing.assert_array_equal(host, np.arange(6.0).reshape(2, 3))
    host = a.get()
    host[0, 0] = 99.0                           # a copy: the device array is untouched
    assert float(a[0, 0]) == 0.0


@pytest.mark.parametrize("mix", [
    lambda xp, a: a + np.ones(3),
    lambda xp, a: np.ones(3) * a,
    lambda xp, a: xp.exp(np.ones(3)),
    lambda xp, a: xp.maximum(a, [1.0, 2.0, 3.0]),          # CuPy's ufuncs take no lists
    lambda xp, a: xp.concatenate([a, np.ones((1, 3))]),
    lambda xp, a: a.dot(np.ones((3, 2))),
    lambda xp, a: xp.random.default_rng(0).standard_normal(size=None) + np.ones(1),
], ids=["add", "numpy_left", "ufunc", "list", "concatenate", "dot", "rng"])
def test_numpy_operands_are_refused_as_cupy_refuses_them(xp, a, mix):
    with pytest.raises(TypeError, match="Unsupported type"):
        mix(xp, a)


def test_uploads_copy_host_data_to_fresh_device_memory(xp):
    host = np.arange(4.0)
    device = ag.as_array(host)
    device[0] = 7.0
    assert host[0] == 0.0 and device.flags.owndata and device.base is None


def test_assigning_host_arrays_follows_cupy(xp, a):
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[...] = np.ones((2, 3))                # basic indexing: CuPy only fills scalars
    a[...] = np.float64(2.0)
    rows = xp.asarray([1])
    with ag.count_syncs() as counted:
        a[rows] = np.full((1, 3), 5.0)          # advanced indexing copies the value over
    assert counted.uploads == 1
    np.testing.assert_array_equal(a.get(), [[2.0, 2.0, 2.0], [5.0, 5.0, 5.0]])


def test_numpy_functions_dispatch_to_the_device_as_cupy_does(xp, a):
    """CuPy implements NumPy's __array_ufunc__ / __array_function__: np.exp(device) is
    cupy.exp(device).  Functions CuPy lacks raise TypeError instead of running on the host."""
    for result in (np.exp(a), np.sum(a), np.concatenate([a, a]), np.linalg.norm(a)):
        assert isinstance(result, xp.ndarray)
    np.testing.assert_allclose(np.exp(a).get(), np.exp(np.arange(6.0)).reshape(2, 3))
    with pytest.raises(TypeError):
        np.spacing(a)                           # CuPy has no spacing
    with pytest.raises(TypeError):
        np.insert(a, 0, 1.0)                    # nor insert


# --- only CuPy's names ---------------------------------------------------------------------
def test_generator_has_only_cupys_samplers(xp):
    rng = xp.random.default_rng(0)
    for missing in ("permutation", "choice", "shuffle", "normal", "bytes", "spawn"):
        with pytest.raises(AttributeError, match=f"no attribute '{missing}'"):
            getattr(rng, missing)
    assert isinstance(rng.bit_generator, xp.random.BitGenerator)
    assert set(dir(rng)) == set(cupy_api.load()["random.Generator"])
    assert isinstance(xp.random.permutation(5), xp.ndarray)    # the legacy function exists


@pytest.mark.parametrize("name", ["errstate", "spacing", "insert", "matrix", "nditer",
                                  "datetime64", "geomspace"])
def test_numpy_only_module_names_are_absent(xp, name):
    assert hasattr(np, name) and name not in cupy_api.load()["module"]
    with pytest.raises(AttributeError, match="cupy-sim offers only CuPy's names"):
        getattr(xp, name)


def test_numpy_only_ndarray_names_are_absent(xp, a):
    for name in ("resize", "ctypes", "setflags", "getfield"):
        assert hasattr(np.ndarray, name)
        with pytest.raises(AttributeError, match="has no attribute"):
            getattr(a, name)
    with pytest.raises(TypeError):
        range(xp.asarray(3))                    # no __index__: device scalars are not ints


def test_cupy_names_without_a_numpy_stand_in_say_they_are_not_simulated(xp, a):
    with pytest.raises(AttributeError, match="does not simulate cupy.cuda"):
        xp.cuda
    with pytest.raises(AttributeError, match="does not simulate cupy.ndarray.data"):
        a.data


def test_the_simulated_namespaces_offer_no_name_beyond_cupys(xp, a):
    api = cupy_api.load()
    assert dir(xp) == api["module"] and dir(xp.linalg) == api["linalg"]
    assert dir(xp.random) == api["random"] and dir(a) == api["ndarray"]
    public = {name for name in dir(type(a)) if not name.startswith("_")}
    assert public <= set(api["ndarray"])
    assert {n for n in dir(cupy_sim.ufunc) if not n.startswith("_")} <= set(api["ufunc"])
    assert isinstance(xp.add, xp.ufunc) and not isinstance(xp.matmul, xp.ufunc)


def test_the_snapshot_matches_the_installed_cupy():
    """The names are CuPy's, whichever CUDA build it is (cupy-cuda12x and cupy-cuda13x
    are one ``import cupy`` with one API per version); another CuPy version may differ
    in names, so it is compared only at the snapshot's version."""
    try:
        import cupy  # noqa: F401  (introspection needs no GPU)
    except Exception as exc:  # ImportError, or a CUDA library failing to load
        pytest.skip(f"CuPy is not importable here ({type(exc).__name__}), so the snapshot "
                    "cannot be compared; regenerate it with "
                    "python -m autograd_lite.testing.cupy_api")
    stored = cupy_api.load()
    if cupy.__version__ != stored["cupy_version"]:
        pytest.skip(f"the snapshot is of CuPy {stored['cupy_version']}, this is CuPy "
                    f"{cupy.__version__}: compare after python -m autograd_lite.testing.cupy_api")
    assert cupy_api.introspect() == stored


# --- scalars stay on the device and transfers are counted ----------------------------------
def test_reductions_and_indexing_give_0d_device_arrays(xp, a):
    for scalar in (a.sum(), a.max(), a.mean(axis=None), a[1, 2], xp.sum(a), a.sum() * 2.0):
        assert isinstance(scalar, xp.ndarray) and scalar.shape == ()
    assert isinstance(xp.allclose(a, a), xp.ndarray)   # a device bool, as in CuPy


def test_float_of_a_sum_counts_one_sync(a):
    with ag.count_syncs() as counted:
        total = a.sum()
        assert counted.syncs == 0               # still on the device
        value = float(total)
    assert value == 15.0 and counted.syncs == 1


@pytest.mark.parametrize("read", [
    lambda a: a.get(), lambda a: ag.to_numpy(a), lambda a: a.tolist(),
    lambda a: a[0, 0].item(), lambda a: int(a[0, 0]), lambda a: bool(a[0, 0]),
    lambda a: repr(a), lambda a: f"{a[0, 0]:.3f}", lambda a: a[a > 2.0],
    lambda a: a.nonzero(), lambda a: pickle.dumps(a)],
    ids=["get", "to_numpy", "tolist", "item", "int", "bool", "repr", "format", "mask",
         "nonzero", "pickle"])
def test_each_read_back_to_the_host_counts_one_sync(a, read):
    with ag.count_syncs() as counted:
        read(a)
    assert counted.syncs == 1


def test_device_work_counts_no_sync_and_uploads_are_counted_apart(xp, a):
    before = ag.sync_count(), ag.upload_count()
    with ag.count_syncs() as counted:
        b = xp.exp(a) @ a.T + a.sum(axis=1, keepdims=True)
        b[0] = b[1] * 2.0
        xp.add.at(b, xp.asarray([0, 0]), 1.0)
        xp.asarray(b, dtype=np.float32)
        assert counted.syncs == 0 and counted.uploads == 1   # the index list [0, 0]
        ag.as_array(np.ones(2))
    assert (counted.syncs, counted.uploads) == (0, 2)
    assert (ag.sync_count(), ag.upload_count()) == (before[0], before[1] + 2)


def test_a_training_step_never_synchronises(xp):
    """Forward, backward and the optimizer's update stay on the device; reading the loss
    is the step's one transfer."""
    rng = ag.default_rng(0)
    model = nn.Sequential(nn.GatedDense(6, 8, rng), nn.Linear(8, 6, rng))
    opt = optim.Adam(model.parameters(), weight_decay=1e-4)
    x = ag.Tensor(ag.as_array(np.random.default_rng(1).random((4, 6))))
    with ag.count_syncs() as counted:
        loss = ag.binary_cross_entropy_with_logits(model(x), x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert counted.syncs == 0
        loss.item()
    assert counted.syncs == 1 and counted.uploads == 0


def test_constants_in_formulas_are_made_on_the_device(xp):
    """``0.5 * x - 1.0`` makes its constants on the device (CuPy fills a 0-d array, it
    copies nothing), in x's dtype: no upload, no sync."""
    x = ag.Tensor(xp.ones(3, dtype=np.float32), requires_grad=True)
    with ag.count_syncs() as counted:
        y = (0.5 * x - 1.0 + np.float64(2.0)).sum()
        y.backward()
    assert (counted.syncs, counted.uploads) == (0, 0)
    assert y.dtype == np.float32 and float(y.data) == 4.5


def test_many_arrays_reach_the_host_in_one_transfer_per_dtype(xp, a):
    """to_numpy_all packs the device arrays of each dtype into one flat array and reads it
    once; host values pass through as copies; keys, order, shapes and values are kept."""
    f32 = ag.as_array(np.arange(4, dtype=np.float32).reshape(2, 2))
    arrays = {"a": a, "scalar": a.sum(), "f32": f32, "host": np.ones(2), "f32b": f32.T + 1,
              "number": 3.0}
    with ag.count_syncs() as counted:
        host = ag.to_numpy_all(arrays)
    assert counted.syncs == 2 and counted.uploads == 0     # float64 and float32
    assert list(host) == list(arrays)
    for key, value in arrays.items():
        assert isinstance(host[key], np.ndarray)
        expected = value.get() if isinstance(value, xp.ndarray) else np.asarray(value)
        assert host[key].dtype == expected.dtype and host[key].shape == expected.shape, key
        np.testing.assert_array_equal(host[key], expected, err_msg=key)
    host["host"][0] = 5.0                                  # a copy, not the caller's array
    assert arrays["host"][0] == 1.0
    with ag.count_syncs() as counted:
        as_list = ag.to_numpy_all([a, a * 2.0, f32])
    assert counted.syncs == 2 and [x.shape for x in as_list] == [(2, 3), (2, 3), (2, 2)]


def test_state_dicts_kept_on_the_device_cost_no_transfer(xp):
    """state_dict(device=True) copies on the device (no sync), and loading it back needs
    none either; the host state_dict of a model, or of Adam, is one transfer."""
    rng = ag.default_rng(0)
    model = nn.Sequential(nn.GatedDense(3, 4, rng), nn.Linear(4, 2, rng))
    opt = optim.Adam(model.parameters())
    loss = model(ag.Tensor(xp.ones((2, 3), dtype=np.float32))).sum()
    loss.backward()
    opt.step()
    with ag.count_syncs() as counted:
        kept, moments = model.state_dict(device=True), opt.state_dict(device=True)
        assert all(isinstance(v, xp.ndarray) for v in kept.values())
        kept["layers.1.b"][...] = 7.0                    # a copy: the model is untouched
        model.load_state_dict(kept)
        opt.load_state_dict(moments)
    assert counted.syncs == 0 and counted.uploads == 0
    assert float(model.layers[1].b.data[0]) == 7.0
    with ag.count_syncs() as counted:
        host, host_moments = model.state_dict(), opt.state_dict()
    assert counted.syncs == 2
    assert all(isinstance(v, np.ndarray) for v in (*host.values(), *host_moments.values()))


# --- CuPy's behaviours kept ---------------------------------------------------------------
def test_outputs_and_no_copy_casts_return_the_same_array(xp, a):
    assert xp.exp(a, out=a) is a and xp.add(a, 1.0, a) is a
    assert a.astype(a.dtype, copy=False) is a and xp.asarray(a) is a
    assert a.astype(np.float32) is not a


def test_no_floating_point_warnings_as_on_a_gpu(xp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = [xp.log(xp.zeros(2)), xp.exp(xp.full(2, 1e4)), xp.ones(2) / xp.zeros(2),
                  xp.zeros(2) / xp.zeros(2)]
    assert [v[0].item() for v in values[:3]] == [-np.inf, np.inf, np.inf]
    assert np.isnan(values[3][0].item())


def test_random_numbers_follow_numpy_for_the_same_seed(xp):
    device, host = xp.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(device.random(4).get(), host.random(4))
    np.testing.assert_array_equal(device.standard_normal((2, 2), dtype=np.float32).get(),
                                  host.standard_normal((2, 2), dtype=np.float32))
    np.testing.assert_array_equal(device.integers(0, 10, 5).get(), host.integers(0, 10, 5))
    assert device.uniform(size=3, dtype=np.float32).dtype == np.float32   # CuPy's dtype
    for one, dtype in ((device.integers(5), np.int64), (device.random(), np.float64),
                       (device.standard_normal(dtype=np.float32), np.float32)):
        assert isinstance(one, xp.ndarray) and one.shape == () and one.dtype == dtype


def test_save_npz_takes_device_arrays(xp, a, tmp_path):
    nn.save_npz(tmp_path / "a.npz", {"a": a, "t": np.asarray(1.0)})
    with np.load(tmp_path / "a.npz") as archive:
        np.testing.assert_array_equal(archive["a"], a.get())


# --- the same numbers as NumPy -------------------------------------------------------------
def train_steps(name, steps=3):
    """Parameters and losses after a few Adam steps of a small dropout MLP on ``name``."""
    ag.set_backend(name)
    rng = ag.default_rng(0)
    model = nn.Sequential(nn.mlp((6, 8, 8), kind="tanh", dropout_keep=0.8, rng=rng),
                          nn.GatedDense(8, 4, rng), nn.Linear(4, 6, rng))
    opt = optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    data = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    x = ag.Tensor(ag.as_array(data))
    losses = []
    for _ in range(steps):
        loss = ag.binary_cross_entropy_with_logits(model(x), x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.state_dict(), losses


def test_a_training_run_equals_numpys_bit_for_bit():
    """The simulator computes with the same NumPy calls in the same order, and its
    generator is NumPy's for the same seed, so every bit agrees."""
    (state, losses), (sim_state, sim_losses) = train_steps("numpy"), train_steps("cupy-sim")
    assert losses == sim_losses and losses[-1] < losses[0]
    assert state.keys() == sim_state.keys()
    for name in state:
        assert state[name].tobytes() == sim_state[name].tobytes(), name


def test_counters_are_plain_numbers_under_numpy():
    assert backend.backend_name() == "numpy"
    with ag.count_syncs() as counted:
        float(np.ones(3).sum())
    assert (counted.syncs, counted.uploads) == (0, 0)   # only the simulator counts
