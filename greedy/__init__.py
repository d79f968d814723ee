"""greedy: layer-wise training of convolutional networks in NumPy + Numba."""
import os

# Numba's OpenMP threads and OpenBLAS's threads take turns in every conv and
# k-means step; spinning idle threads of one pool then starve the other.
# Both must be set before the libraries start their thread pools.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.2.0"


def __getattr__(name):
    # the estimator imports every method and its kernels: only when asked for
    if name in ("LayerwiseClassifier", "load"):
        from greedy import estimator
        return getattr(estimator, name)
    raise AttributeError(f"module 'greedy' has no attribute {name!r}")
