"""Data augmentation for image batches: random crops with zero padding and horizontal flips."""
import numpy as np

from greedy.kernels.augment import crop_flip


def random_crop_flip(x, rng, pad=4, flip=True):
    """Random translation by up to ``pad`` pixels (zero fill) and, if ``flip``, random mirroring.

    x (N, C, H, W) float; rng a numpy Generator. Returns a new array of the same shape and dtype.
    """
    n = len(x)
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    fl = rng.random(n) < 0.5 if flip else np.zeros(n, np.bool_)
    out = np.empty_like(x)
    crop_flip(np.ascontiguousarray(x), dy, dx, fl, pad, out)
    return out
