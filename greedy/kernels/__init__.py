"""Numba kernels over plain arrays; the Python API lives in the other subpackages."""
