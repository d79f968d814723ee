"""greedy: layer-wise training of convolutional networks in NumPy + Numba."""
import os

# Numba's OpenMP threads and OpenBLAS's threads take turns in every conv and
# k-means step; spinning idle threads of one pool then starve the other.
# Both must be set before the libraries start their thread pools.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
