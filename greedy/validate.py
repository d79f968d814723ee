"""Checks of user input, shared by every module: each returns the checked value or raises ConfigError.

One-line messages name the argument and what was wrong with it, so that the CLI can print them
as they are. Private helpers behind a checked public function trust what they receive.
"""
import numpy as np

from greedy.errors import ConfigError


def integer(value, name, minimum=None, allow_none=False):
    """``value`` as an int, refusing bools, floats and values below ``minimum``."""
    if allow_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def positive_int(value, name, allow_none=False):
    """``value`` as an int >= 1."""
    if allow_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def number(value, name, low=None, high=None, low_open=False, high_open=False, allow_none=False):
    """``value`` as a finite float inside the given bounds (closed unless ``*_open``)."""
    if allow_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"{name} must lie in {left}{'-inf' if low is None else low}, "
                          f"{'inf' if high is None else high}{right}, got {value}")
    return float(value)


def fraction(value, name):
    """``value`` as a float in [0, 1]."""
    return number(value, name, 0.0, 1.0)


def one_of(value, name, choices):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def float_array(a, name, ndim=None):
    """A C-contiguous float32 or float64 NumPy array of ``ndim`` dimensions (the dtype is kept)."""
    if not isinstance(a, np.ndarray):
        raise ConfigError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise ConfigError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a)


def finite_matrix(X, name, dtype=None):
    """X as a non-empty, finite, C-contiguous (n, d) array: float64 kept, anything else float32
    (or ``dtype`` when given)."""
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a numeric array: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"{name} is empty: shape {arr.shape}")
    if dtype is None:
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
    arr = np.ascontiguousarray(arr, dtype)
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name} contains NaN or infinite values")
    return arr


def labels(y, n, n_classes=None, name="labels"):
    """y as (n,) int64 labels in [0, n_classes) (any non-negative integers when n_classes is None)."""
    y = np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be {n} integers of shape ({n},), got {y.dtype} {y.shape}")
    if n and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        raise ConfigError(f"{name} must lie in [0, {n_classes if n_classes is not None else 'inf'}), "
                          f"got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64, copy=False)
