"""Test doubles for the engine, as ``numpy.testing`` is for NumPy: not part of the autograd.

- ``cupy_sim``: a simulated CuPy device (``AUTOGRAD_LITE_BACKEND=cupy-sim``), CuPy's API
  computed by NumPy with every device-to-host transfer counted, so code meant for a GPU is
  tested without one;
- ``cupy_api``: the snapshot of CuPy's names (``cupy_api.json``) the simulator offers.
"""
