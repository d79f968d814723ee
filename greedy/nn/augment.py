"""Data augmentation for image batches: random crops with zero padding and horizontal flips.

Flips are random (each image mirrored with probability 1/2, drawn afresh every epoch) or alternating
(airbench's: a fixed half of the images mirrored in odd epochs, the other half in even ones, so every
image is seen both ways in any two epochs in a row).
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels.augment import crop_flip
from greedy.nn.augment1d import random_shift

FLIPS = ("random", "alternate", "none")
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def alternating_flips(idx, epoch, seed=0):
    """Which samples of ``idx`` (B,) int are mirrored in ``epoch`` (counted from 1) under alternating flips.

    A sample's half is the top bit of splitmix64(seed, index), a function of the index alone, so a
    resumed run mirrors the images a whole one would. Returns (B,) bool.
    """
    h = np.asarray(idx).astype(np.uint64) + np.uint64((seed + 1) * _GOLDEN % 2**64)
    h = (h ^ (h >> np.uint64(30))) * _MIX1
    h = (h ^ (h >> np.uint64(27))) * _MIX2
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(63)).astype(bool) ^ (epoch % 2 == 0)


def random_crop_flip(x, rng, pad=4, flip=True):
    """Random translation by up to ``pad`` pixels (zero fill) and mirroring: at random if ``flip`` is True,
    never if False, or of the images where ``flip`` (N,) bool is set.

    x (N, C, H, W) float; rng a numpy Generator. Returns a new array of the same shape and dtype.
    """
    n = len(x)
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    if isinstance(flip, np.ndarray):
        if flip.shape != (n,) or flip.dtype != np.bool_:
            raise ConfigError(f"random_crop_flip: flip must be ({n},) bool, got {flip.shape} {flip.dtype}")
        fl = flip
    else:
        fl = rng.random(n) < 0.5 if flip else np.zeros(n, np.bool_)
    out = np.empty_like(x)
    crop_flip(np.ascontiguousarray(x), dy, dx, fl, pad, out)
    return out


def augmenter(ndim, pad, flip="random", seed=0):
    """The augmentation of a batch, as a function of (x, rng, idx, epoch), x the batch, idx (N,) its sample
    indices and epoch its epoch from 1: for images (ndim 2: (N, C, H, W)) ``random_crop_flip`` by up to
    ``pad`` pixels, with ``flip`` one of ``FLIPS`` (True and False: random and none), alternating flips
    drawn from ``seed``; for sequences (ndim 1: (N, C, L)) ``random_shift`` by up to ``pad`` positions,
    never mirrored."""
    flip = {True: "random", False: "none"}.get(flip, flip)
    if flip not in FLIPS:
        raise ConfigError(f"flips must be one of {', '.join(FLIPS)}, got {flip!r}")
    if ndim == 1:
        return lambda x, rng, idx=None, epoch=None: random_shift(x, rng, pad=pad)
    if flip == "alternate":
        return lambda x, rng, idx, epoch: random_crop_flip(x, rng, pad, alternating_flips(idx, epoch, seed))
    return lambda x, rng, idx=None, epoch=None: random_crop_flip(x, rng, pad, flip == "random")
