"""Tensor and the reverse-mode core: backward, accumulation, no_grad, detach, Python
operators with numbers and arrays on either side, very deep graphs, and memory
being released after each backward."""
import gc
import subprocess
import sys
import textwrap
import tracemalloc
import weakref

import numpy as np
import pytest

import autograd_lite as ag
from autograd_lite import Tensor
from conftest import ROOT


def test_tensor_holds_data_grad_and_requires_grad(on_backend, make_tensor):
    x = make_tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert x.shape == (2, 2) and x.ndim == 2 and x.size == 4 and len(x) == 2
    assert x.grad is None and x.requires_grad and x.is_leaf
    y = (x * x).sum()
    assert not y.is_leaf and y.requires_grad
    y.backward()
    np.testing.assert_array_equal(ag.to_numpy(x.grad), [[2.0, 4.0], [6.0, 8.0]])


def test_numbers_and_lists_become_arrays(on_backend):
    assert Tensor(3.0).data.shape == () and Tensor([1, 2]).data.shape == (2,)
    assert ag.array_backend(Tensor(np.float32(2.0)).data) == on_backend
    assert ag.array_backend(Tensor([1, 2]).data) == on_backend
    assert Tensor(Tensor([1.0])).data.shape == (1,)


def test_gradients_accumulate_where_a_tensor_is_used_several_times(on_backend, make_tensor):
    x = make_tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = x * x + x * 3.0 + ag.exp(x)          # x feeds four ops
    y.backward(ag.as_array(np.ones(3)))
    expected = 2 * np.array([1.0, -2.0, 3.0]) + 3.0 + np.exp([1.0, -2.0, 3.0])
    np.testing.assert_allclose(ag.to_numpy(x.grad), expected, rtol=1e-12)


def test_a_second_backward_adds_to_grad(on_backend, make_tensor):
    x = make_tensor([1.0, 2.0], requires_grad=True)
    (x * 2.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(ag.to_numpy(x.grad), [2.0 + 2.0, 2.0 + 4.0])


def test_leaf_gradients_are_never_shared_arrays(on_backend, make_tensor):
    shares_memory = ag.xp().shares_memory
    a = make_tensor(np.ones((2, 3)), requires_grad=True)
    b = make_tensor(np.ones((2, 3)), requires_grad=True)
    upstream = ag.as_array(np.full((2, 3), 2.0))
    (a + b).backward(upstream)
    assert a.grad is not b.grad and not shares_memory(a.grad, b.grad)
    assert not shares_memory(a.grad, upstream)
    a.grad += 1.0                             # the caller's array and b.grad are untouched
    np.testing.assert_array_equal(ag.to_numpy(b.grad), np.full((2, 3), 2.0))
    np.testing.assert_array_equal(ag.to_numpy(upstream), np.full((2, 3), 2.0))
    c = make_tensor(np.ones(3), requires_grad=True)
    c.backward(upstream[0])                   # backward on a leaf copies the argument too
    assert not shares_memory(c.grad, upstream)


def test_gradient_of_a_broadcast_leaf_is_summed_to_its_shape(on_backend, make_tensor):
    bias = make_tensor(np.zeros(3), requires_grad=True)
    (make_tensor(np.ones((4, 3))) + bias).sum().backward()
    np.testing.assert_array_equal(ag.to_numpy(bias.grad), [4.0, 4.0, 4.0])


def test_only_tensors_that_require_grad_get_one(on_backend, make_tensor):
    x = make_tensor([1.0, 2.0], requires_grad=True)
    c = make_tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None


def test_no_grad_records_no_graph(make_tensor):
    x = make_tensor([1.0, 2.0], requires_grad=True)
    with ag.no_grad():
        assert not ag.grad_enabled()
        y = x * 2.0
    assert ag.grad_enabled()
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_the_previous_state_on_error():
    with pytest.raises(KeyError):
        with ag.no_grad():
            raise KeyError
    assert ag.grad_enabled()


def test_detach_shares_data_and_cuts_the_graph(on_backend, make_tensor):
    x = make_tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    d = y.detach()
    assert d.data is y.data and d.creator is None and not d.requires_grad
    (d * x).sum().backward()
    np.testing.assert_array_equal(ag.to_numpy(x.grad), [3.0, 6.0])    # no path through d


def test_backward_on_a_non_scalar_without_gradient_raises(on_backend, make_tensor):
    y = make_tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"non-scalar.*\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match="gradient of shape"):
        y.backward(np.ones(3))


def test_backward_twice_through_a_freed_graph_raises_unless_retained(on_backend, make_tensor):
    x = make_tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(ag.to_numpy(x.grad), [4.0, 8.0])
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_gradients_have_the_dtype_of_their_tensor(on_backend, make_tensor):
    x = make_tensor(np.ones(3, np.float32), requires_grad=True)
    (x * make_tensor(np.full(3, 2.0))).sum().backward()     # a float64 constant upcasts y
    assert x.grad.dtype == np.float32


# --- Python operators ----------------------------------------------------------------
OPERATORS = {
    "+": (lambda a, b: a + b, lambda a, b: (np.ones_like(a), np.ones_like(b))),
    "-": (lambda a, b: a - b, lambda a, b: (np.ones_like(a), -np.ones_like(b))),
    "*": (lambda a, b: a * b, lambda a, b: (b, a)),
    "/": (lambda a, b: a / b, lambda a, b: (1 / b, -a / b ** 2)),
}


@pytest.mark.parametrize("symbol", OPERATORS)
@pytest.mark.parametrize("left", ["tensor", "array", "number"])
def test_operators_with_tensors_numbers_and_arrays_on_either_side(symbol, left, on_backend):
    op, derivatives = OPERATORS[symbol]
    a_value, b_value = np.array([1.5, -2.0, 3.0]), np.array([0.5, 4.0, -1.0])
    a = {"tensor": Tensor(ag.as_array(a_value), requires_grad=True),
         "array": ag.as_array(a_value), "number": 1.5}[left]
    if left == "number":
        a_value = np.full(3, 1.5)
    b = Tensor(ag.as_array(b_value), requires_grad=True)
    y = op(a, b)
    assert isinstance(y, Tensor) and y.creator is not None
    np.testing.assert_allclose(y.numpy(), op(a_value, b_value))
    y.backward(ag.as_array(np.ones(3)))
    da, db = derivatives(a_value, b_value)
    np.testing.assert_allclose(ag.to_numpy(b.grad), db)
    if left == "tensor":
        np.testing.assert_allclose(ag.to_numpy(a.grad), da)


def test_numpy_array_on_the_left_of_matmul_and_scalars_give_tensors():
    w = Tensor(np.eye(3) * 2.0, requires_grad=True)
    x = np.arange(6.0).reshape(2, 3)
    y = x @ w
    assert isinstance(y, Tensor) and y.creator is not None
    y.sum().backward()
    np.testing.assert_array_equal(w.grad, np.repeat(x.sum(axis=0)[:, None], 3, axis=1))
    z = np.float64(2.0) * Tensor(np.ones(2, np.float32), requires_grad=True)
    assert isinstance(z, Tensor) and z.creator is not None


def test_negation_power_and_subtraction_from_numbers(on_backend, make_tensor):
    x = make_tensor([1.0, 2.0], requires_grad=True)
    y = (-x) ** 2 + (1.0 - x) / 2.0
    np.testing.assert_allclose(y.numpy(), [1.0, 3.5])
    y.backward(np.ones(2))                    # a host gradient is copied to the backend
    np.testing.assert_allclose(ag.to_numpy(x.grad), [2.0 - 0.5, 4.0 - 0.5])


@pytest.mark.parametrize("scalar", [0.5, 2, np.float64(0.5), np.float32(0.5), np.int64(3)])
def test_scalars_keep_float32_tensors_float32(scalar, on_backend, make_tensor):
    x = make_tensor(np.ones(3, np.float32), requires_grad=True)
    for y in (x * scalar, scalar * x, x + scalar, scalar - x, x / scalar, scalar / x,
              x ** scalar):
        assert y.dtype == np.float32
        y.backward(np.ones(3, np.float32))
        assert x.grad.dtype == np.float32


def test_scalars_next_to_integer_tensors_are_not_truncated(on_backend, make_tensor):
    y = make_tensor(np.array([1, 2, 3])) * 0.5
    np.testing.assert_array_equal(y.numpy(), [0.5, 1.0, 1.5])


def test_indexing_methods_and_transpose_property(on_backend, make_tensor):
    x = make_tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    y = x[make_tensor(np.array([2, 2]))].sum() + x.T[0].sum() + x.reshape(-1)[5]
    y.backward()
    expected = np.zeros((3, 4))
    expected[2] += 2
    expected[:, 0] += 1
    expected[1, 1] += 1
    np.testing.assert_array_equal(ag.to_numpy(x.grad), expected)


# --- deep graphs ----------------------------------------------------------------------
DEPTH = 100_000


def chain(x, depth=DEPTH):
    y = x
    for i in range(depth):
        y = y * 1.0 if i % 2 else y + 1.0
    return y


def test_backward_through_a_graph_100000_ops_deep():
    assert DEPTH > 50 * sys.getrecursionlimit()
    x = Tensor(np.array([2.0]), requires_grad=True)
    y = chain(x).sum()
    y.backward()
    assert y.item() == 2.0 + DEPTH / 2
    assert x.grad.tolist() == [1.0]


DROP_SCRIPT = """
import gc, sys, threading
sys.path.insert(0, {root!r})
import numpy as np
import autograd_lite as ag

def build():
    y = x = ag.Tensor(np.ones(1), requires_grad=True)
    for i in range({depth}):
        y = ag.tanh(y) if i % 2 else y * 1.0
    return y

# drop a deep graph that never saw backward, then one kept by retain_graph
y = build(); del y; gc.collect()
y = build(); y.sum().backward(retain_graph=True); del y; gc.collect()
# and the same in a thread with a small C stack, where recursion would crash soonest
threading.stack_size(512 * 1024)
t = threading.Thread(target=lambda: build() and None); t.start(); t.join()
print("dropped")
"""


def test_dropping_a_100000_deep_graph_does_not_recurse():
    """Freeing a chain of 100k ops must not recurse through it: a crash would kill the
    interpreter, so the graphs are dropped in a child process."""
    script = textwrap.dedent(DROP_SCRIPT.format(root=str(ROOT), depth=DEPTH))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "dropped"


# --- memory -----------------------------------------------------------------------------
def test_backward_releases_intermediate_tensors_and_functions(on_backend, make_tensor):
    x = make_tensor(np.ones((4, 3)), requires_grad=True)
    w = make_tensor(np.ones((3, 2)), requires_grad=True)
    h = ag.tanh(x @ w)
    hidden, function = weakref.ref(h), weakref.ref(h.creator)
    saved = weakref.ref(h.creator.y) if hasattr(h.creator.y, "__weakref__") else None
    loss = (h * h).sum()
    del h
    gc.collect()
    assert hidden() is not None                # the graph keeps it alive until backward
    loss.backward()
    assert hidden() is None and function() is None
    if saved is not None:
        assert saved() is None
    assert loss.creator.released and loss.creator.inputs == ()


def test_a_graph_without_backward_is_freed_with_its_output(on_backend, make_tensor):
    x = make_tensor(np.ones(3), requires_grad=True)
    y = ag.exp(x) * 2.0
    first = weakref.ref(y.creator.inputs[0])
    del y
    assert first() is None


def test_memory_does_not_grow_across_training_steps(on_backend):
    """Each step makes ~1 MB of activations and gradients; keeping even one of them per
    step would add megabytes over 60 steps, far above the interpreter's own caches."""
    rng = np.random.default_rng(0)
    model = ag.nn.Sequential(ag.nn.GatedDense(64, 256, rng), ag.nn.Linear(256, 64, rng))
    optimizer = ag.optim.Adam(model.parameters())
    data = ag.as_array(rng.random((128, 64)).astype(np.float32))

    def step():
        loss = ag.binary_cross_entropy_with_logits(model(Tensor(data)), Tensor(data)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    gc.collect()
    tracemalloc.start()
    try:
        step()
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(60):
            step()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert grown < 500_000, f"{grown} bytes kept after 60 steps"
