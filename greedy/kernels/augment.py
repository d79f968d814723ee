"""Numba kernel for image augmentation; the Python API is ``greedy.nn.augment.random_crop_flip``."""
import numba


@numba.njit(parallel=True, cache=True)
def crop_flip(x, dy, dx, flip, pad, out):
    """out[i] = x[i] shifted by (dy[i] - pad, dx[i] - pad) with zero fill, mirrored left-right where flip[i].

    x, out (N, C, H, W) of one float dtype; dy, dx (N,) int in [0, 2*pad]; flip (N,) bool; prange over images.
    """
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
