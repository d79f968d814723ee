"""greedy: layer-wise training of convolutional networks in NumPy + Numba."""
import os
import sys

# Numba's OpenMP threads and OpenBLAS's threads take turns in every conv and
# k-means step; spinning idle threads of one pool then starve the other.
# Both must be set before the libraries start their thread pools.
_numpy_first = "numpy" in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.2.0"


def _warn_spinning_openblas():
    """Warn when NumPy's OpenBLAS started its threads before the timeout above was set."""
    import warnings

    from threadpoolctl import threadpool_info

    if any(p.get("internal_api") == "openblas" and p.get("num_threads", 1) > 1 for p in threadpool_info()):
        warnings.warn("NumPy was imported before greedy, so OpenBLAS's idle threads spin and take cores from "
                      "greedy's workers (a training step up to 1.45x slower); import greedy first, or set "
                      "OPENBLAS_THREAD_TIMEOUT=4 in the environment", RuntimeWarning, stacklevel=3)


if _numpy_first:
    _warn_spinning_openblas()


def __getattr__(name):
    # the estimator imports every method and its kernels: only when asked for
    if name in ("LayerwiseClassifier", "load"):
        from greedy import estimator
        return getattr(estimator, name)
    raise AttributeError(f"module 'greedy' has no attribute {name!r}")
