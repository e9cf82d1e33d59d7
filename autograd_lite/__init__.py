"""autograd_lite: a small reverse-mode autograd over a NumPy / CuPy backend."""
from . import denormals, nn, optim
from .backend import (
    BackendError,
    array_backend,
    as_array,
    backend_name,
    count_syncs,
    cupy_available,
    default_rng,
    read_numbers,
    set_backend,
    sync_count,
    to_numpy,
    to_numpy_all,
    upload_count,
    xp,
)
from .denormals import denormals_flushed
from .gradcheck import gradcheck, numerical_grad
from .ops import (
    add,
    binary_cross_entropy_with_logits,
    clip,
    clipped_relu,
    concatenate,
    div,
    dropout,
    exp,
    gated_linear,
    getitem,
    hardtanh,
    linear,
    log,
    log_sigmoid,
    logsumexp,
    matmul,
    mean,
    mul,
    neg,
    pow,
    relu,
    reshape,
    sigmoid,
    softplus,
    sub,
    sum,
    take,
    tanh,
    transpose,
)
from .tensor import Function, Tensor, grad_enabled, no_grad, sum_to
from .threads import num_threads, set_num_threads
