"""Numba kernels of the binary layers (``greedy.methods.binary.layers``): image patch codes and map patches.

Bit layout as in ``greedy.kernels.bitops``: a code of b bits is ceil(b/64) uint64 words, bit i
in bit i % 64 of word i // 64, unused high bits zero. Image patch code: bit ``(j*C + c)*T + t``
is set when value j (pixel of the 3x3 patch, row-major) of channel c, minus the patch's channel
mean if ``norm``, is above ``levels[c, t]``.
"""
import numba
import numpy as np
from numba import prange

from greedy.kernels.bitops import gather_patch, hamming_row


@numba.njit(cache=True)
def image_code(img, n, y, x, levels, norm, vals, code):
    """Bit code of the 3x3 patch of img (N, H+2, W+2, C) uint8 (padded) whose top-left is (y, x).

    levels (C, T) float64; vals (9, C) float64 scratch; code (ceil(9*C*T/64),) uint64 output.
    """
    nc, nt = levels.shape
    for c in range(nc):
        s = 0.0
        j = 0
        for dy in range(3):
            for dx in range(3):
                v = np.float64(img[n, y + dy, x + dx, c])
                vals[j, c] = v
                s += v
                j += 1
        if norm:
            m = s / 9.0
            for j in range(9):
                vals[j, c] -= m
    word = np.uint64(0)
    b = 0
    k = 0
    for j in range(9):
        for c in range(nc):
            v = vals[j, c]
            for t in range(nt):
                word |= np.uint64(v > levels[c, t]) << np.uint64(b)
                b += 1
                if b == 64:
                    code[k] = word
                    k += 1
                    word = np.uint64(0)
                    b = 0
    if b:
        code[k] = word


@numba.njit(cache=True, parallel=True)
def image_codes(img, nn, yy, xx, levels, norm, out):
    """Patch codes at positions (nn, yy, xx) (n,) int64 of img (N, H+2, W+2, C) uint8 -> out (n, w) uint64."""
    for i in prange(nn.shape[0]):
        vals = np.empty((9, levels.shape[0]), np.float64)
        image_code(img, nn[i], yy[i], xx[i], levels, norm, vals, out[i])


@numba.njit(cache=True, parallel=True)
def image_layer(img, levels, norm, ft, max_ham, out):
    """Image layer: out (N, H, W, ceil(F/64)) uint64 gets bit f where hamming(code, filter f) <= max_ham[f].

    img (N, H+2, W+2, C) uint8 edge-padded; ft (w, F) uint64 (filters transposed); max_ham (F,)
    int64; prange over (image, row).
    """
    n_img, h, wd, n_words = out.shape
    n_filters = ft.shape[1]
    for r in prange(n_img * h):
        n = r // h
        y = r - n * h
        vals = np.empty((9, levels.shape[0]), np.float64)
        code = np.empty(ft.shape[0], np.uint64)
        ham = np.empty(n_filters, np.int32)
        for x in range(wd):
            image_code(img, n, y, x, levels, norm, vals, code)
            hamming_row(code, ft, ham)
            for k in range(n_words):
                word = np.uint64(0)
                for f in range(64 * k, min(64 * k + 64, n_filters)):
                    word |= np.uint64(ham[f] <= max_ham[f]) << np.uint64(f - 64 * k)
                out[n, y, x, k] = word


@numba.njit(cache=True, parallel=True)
def map_patches(x, nn, yy, xx, out):
    """3x3 patches (zero padding) of the bit map x (N, H, W, w) uint64 around (nn, yy, xx) (n,) int64
    -> out (n, 9*w) uint64, pixels row-major."""
    for i in prange(nn.shape[0]):
        gather_patch(x, nn[i], yy[i], xx[i], out[i])
