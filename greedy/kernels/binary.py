"""Numba kernels of the binary layers (``greedy.methods.binary.layers``): image patch codes and map patches.

Bit layout as in ``greedy.kernels.bitops``: a code of b bits is ceil(b/64) uint64 words, bit i
in bit i % 64 of word i // 64, unused high bits zero. Image patch code of a kh x kw window (3x3
on images, 1xk on sequences, which are images one row high): bit ``(j*C + c)*T + t`` is set when
value j (pixel of the window, row-major) of channel c, minus the window's channel mean if
``norm``, is above ``levels[c, t]``. Images are uint8, series float32; both are edge-padded.
"""
import numba
import numpy as np
from numba import prange

from greedy.kernels.bitops import gather_patch, hamming_row


@numba.njit(cache=True)
def image_code(img, n, y, x, kh, kw, levels, norm, vals, code):
    """Bit code of the kh x kw window of img (N, H+kh-1, W+kw-1, C) (padded) whose top-left is (y, x).

    levels (C, T) float64; vals (kh*kw, C) float64 scratch; code (ceil(kh*kw*C*T/64),) uint64 output.
    """
    nc, nt = levels.shape
    p = kh * kw
    for c in range(nc):
        s = 0.0
        j = 0
        for dy in range(kh):
            for dx in range(kw):
                v = np.float64(img[n, y + dy, x + dx, c])
                vals[j, c] = v
                s += v
                j += 1
        if norm:
            m = s / p
            for j in range(p):
                vals[j, c] -= m
    word = np.uint64(0)
    b = 0
    k = 0
    for j in range(p):
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
def image_codes(img, nn, yy, xx, kh, kw, levels, norm, out):
    """Window codes at positions (nn, yy, xx) (n,) int64 (top-left corners) of img (N, H+kh-1, W+kw-1, C)
    (padded) -> out (n, w) uint64."""
    for i in prange(nn.shape[0]):
        vals = np.empty((kh * kw, levels.shape[0]), np.float64)
        image_code(img, nn[i], yy[i], xx[i], kh, kw, levels, norm, vals, out[i])


@numba.njit(cache=True, parallel=True)
def image_layer(img, kh, kw, levels, norm, ft, max_ham, out):
    """Image layer: out (N, H, W, ceil(F/64)) uint64 gets bit f where hamming(code, filter f) <= max_ham[f].

    img (N, H+kh-1, W+kw-1, C) edge-padded for a kh x kw window; ft (w, F) uint64 (filters
    transposed); max_ham (F,) int64; prange over (image, row).
    """
    n_img, h, wd, n_words = out.shape
    n_filters = ft.shape[1]
    for r in prange(n_img * h):
        n = r // h
        y = r - n * h
        vals = np.empty((kh * kw, levels.shape[0]), np.float64)
        code = np.empty(ft.shape[0], np.uint64)
        ham = np.empty(n_filters, np.int32)
        for x in range(wd):
            image_code(img, n, y, x, kh, kw, levels, norm, vals, code)
            hamming_row(code, ft, ham)
            for k in range(n_words):
                word = np.uint64(0)
                for f in range(64 * k, min(64 * k + 64, n_filters)):
                    word |= np.uint64(ham[f] <= max_ham[f]) << np.uint64(f - 64 * k)
                out[n, y, x, k] = word


@numba.njit(cache=True, parallel=True)
def map_patches(x, nn, yy, xx, kh, kw, out):
    """kh x kw windows (zero padding) of the bit map x (N, H, W, w) uint64 centred on (nn, yy, xx) (n,) int64
    -> out (n, kh*kw*w) uint64, pixels row-major."""
    for i in prange(nn.shape[0]):
        gather_patch(x, nn[i], yy[i], xx[i], kh, kw, out[i])
