"""Data augmentation for sequence batches: random shifts along the length, zero filled."""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels.shift import shift_sequences


def random_shift(x, rng, pad=4):
    """Each sequence of x (N, C, L) shifted by a random whole number of positions in [-pad, pad].

    Positions shifted in are zero; byte codes stay whole numbers. rng a numpy Generator. Returns a
    new array of x's shape and dtype.
    """
    if x.ndim != 3:
        raise ConfigError(f"random_shift takes sequences (N, C, L), got shape {x.shape}")
    out = np.empty_like(x)
    shift_sequences(np.ascontiguousarray(x), rng.integers(-pad, pad + 1, len(x)).astype(np.int64), out)
    return out
