"""Data augmentation for image batches: random crops with zero padding and horizontal flips."""
import functools

import numpy as np

from greedy.kernels.augment import crop_flip
from greedy.nn.augment1d import random_shift


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


def augmenter(ndim, pad, flip=True):
    """The augmentation of a batch, as a function of (x, rng): ``random_crop_flip`` by up to ``pad`` pixels,
    mirrored when ``flip``, for images (ndim 2: (N, C, H, W)); ``random_shift`` by up to ``pad`` positions,
    never mirrored, for sequences (ndim 1: (N, C, L))."""
    if ndim == 1:
        return functools.partial(random_shift, pad=pad)
    return functools.partial(random_crop_flip, pad=pad, flip=flip)
