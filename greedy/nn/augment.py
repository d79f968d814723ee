"""Data augmentation for image batches: random crops with zero padding and horizontal flips."""
import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _crop_flip(x, dy, dx, flip, pad, out):
    n, c, h, w = x.shape
    for i in numba.prange(n):
        for ch in range(c):
            for r in range(h):
                sr = r + dy[i] - pad
                for col in range(w):
                    sc = col + dx[i] - pad
                    if flip[i]:
                        sc = w - 1 - sc
                    if 0 <= sr < h and 0 <= sc < w:
                        out[i, ch, r, col] = x[i, ch, sr, sc]
                    else:
                        out[i, ch, r, col] = 0


def random_crop_flip(x, rng, pad=4, flip=True):
    """Random translation by up to ``pad`` pixels (zero fill) and, if ``flip``, random mirroring.

    x (N, C, H, W) float; rng a numpy Generator. Returns a new array of the same shape and dtype.
    """
    n = len(x)
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    fl = rng.random(n) < 0.5 if flip else np.zeros(n, np.bool_)
    out = np.empty_like(x)
    _crop_flip(np.ascontiguousarray(x), dy, dx, fl, pad, out)
    return out
