"""The gradient check: autograd_lite's gradients of every method's losses, in float64,
against central finite differences and against PyTorch (``iopvae gradcheck``).

- ``check``: the check itself and its table (the ``gradcheck`` command's options);
- ``torch_mirror``: the four methods' losses written again in PyTorch, from the paper's
  equations, as the independent reference.
"""
