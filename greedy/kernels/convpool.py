"""Bias, ReLU and max pooling applied to a convolution chunk's GEMM output, and their gradient.

``greedy.kernels.conv`` calls these per chunk of n samples, on the transposed
output yt (F, n, Ho*Wo) of one BLAS call, while it is still in cache: the
full-size conv, ReLU and pool-input maps are never written. Pool windows are
size x size with stride size, without padding (floor on odd sides), like
``greedy.kernels.pool``. The training forward records each window's maximum as
a flat index oh*Wo + ow into the (Ho, Wo) conv plane, or -1 where the ReLU
clipped the window to 0 (its gradient is 0); the backward scatters the pooled
gradient back through those indices. Serial ``nogil`` kernels; arrays float32 or
float64, indices int32.
"""
import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def fnp_to_nfp_relu_pool(yt, bias, wo, size, relu, y):
    """yt (F, n, Ho*Wo) -> y (n, F, Ho // size, Wo // size): max over size x size windows, + bias, then ReLU if ``relu``.

    Equals bias, ReLU, then max pooling, since both commute with a per-channel max.
    Windows of 2 (the usual pool) take an unrolled path, 3x faster than the general loop.
    """
    f, n = yt.shape[0], yt.shape[1]
    hp, wp = y.shape[2], y.shape[3]
    lo = yt.dtype.type(0) if relu else yt.dtype.type(-np.inf)
    for k in range(f):
        bk = bias[k]
        for s in range(n):
            src, dst = yt[k, s], y[s, k]
            for a in range(hp):
                r0 = a * size * wo
                if size == 2:
                    r1 = r0 + wo
                    for b in range(wp):
                        c = 2 * b
                        best = max(max(src[r0 + c], src[r0 + c + 1]), max(src[r1 + c], src[r1 + c + 1]))
                        dst[a, b] = max(best + bk, lo)
                    continue
                for b in range(wp):
                    best = src[r0 + b * size]
                    for u in range(size):
                        for v in range(size):
                            best = max(best, src[r0 + u * wo + b * size + v])
                    dst[a, b] = max(best + bk, lo)


@numba.njit(nogil=True, cache=True)
def fnp_to_nfp_relu_pool_argmax(yt, bias, wo, size, relu, y, argmax):
    """As ``fnp_to_nfp_relu_pool``, for training: also argmax (n, F, Ho // size, Wo // size) int32.

    The maximum is taken over yt + bias, the first in row-major window order among
    equal values (what bias, ``ReLU`` and ``MaxPool2d`` in turn give, bit for bit);
    its index is -1 where ``relu`` clipped the window.
    """
    f, n = yt.shape[0], yt.shape[1]
    hp, wp = y.shape[2], y.shape[3]
    zero = yt.dtype.type(0)
    for k in range(f):
        bk = bias[k]
        for s in range(n):
            src, dst, idx = yt[k, s], y[s, k], argmax[s, k]
            for a in range(hp):
                if size == 2:
                    _window2_argmax(src, bk, 2 * a * wo, wo, wp, relu, dst[a], idx[a])
                    continue
                for b in range(wp):
                    at = a * size * wo + b * size
                    best = src[at] + bk
                    for u in range(size):
                        for v in range(size):
                            q = (a * size + u) * wo + b * size + v
                            val = src[q] + bk
                            if val > best:
                                best = val
                                at = q
                    if relu and not best > zero:
                        best = zero
                        at = -1
                    dst[a, b] = best
                    idx[a, b] = at


@numba.njit(nogil=True, cache=True, inline="always")
def max4_argmax(v0, v1, v2, v3, at, wo, relu, zero):
    """Max of the 2x2 window (v0, v1; v2, v3) whose top-left value is at flat index ``at`` of a plane ``wo``
    wide, and that value's index: the first in row-major order among equal values, or (``zero``, -1) where
    ``relu`` clips the window. The argmax of every 2x2 window here and in ``greedy.kernels.winograd``."""
    # selects, not branches: which value wins is data-dependent and would be mispredicted half the time
    up = v1 > v0
    best = v1 if up else v0
    where = at + 1 if up else at
    up = v2 > best
    best = v2 if up else best
    where = at + wo if up else where
    up = v3 > best
    best = v3 if up else best
    where = at + wo + 1 if up else where
    clipped = relu and not best > zero
    return (zero if clipped else best), (-1 if clipped else where)


@numba.njit(nogil=True, cache=True, inline="always")
def _window2_argmax(src, bk, r0, wo, wp, relu, dst, idx):
    """One output row of 2x2 windows whose top row starts at src[r0]: the unrolled path (4x faster)."""
    zero = src.dtype.type(0)
    r1 = r0 + wo
    for b in range(wp):
        c = 2 * b
        dst[b], idx[b] = max4_argmax(src[r0 + c] + bk, src[r0 + c + 1] + bk, src[r1 + c] + bk, src[r1 + c + 1] + bk,
                                     r0 + c, wo, relu, zero)


@numba.njit(nogil=True, cache=True)
def pooled_to_fnp(dy, argmax, dyt, dbpart):
    """Gradient of ``fnp_to_nfp_relu_pool_argmax``: pooled dy (n, F, hp, wp) -> dyt (F, n, Ho*Wo).

    dyt holds dy at each window's argmax and 0 elsewhere (argmax -1: nowhere);
    dbpart (n, F) float64 gets the bias-gradient partials, the sums of dy over those windows.
    """
    n, f, hp, wp = dy.shape
    zero = dyt.dtype.type(0)
    for s in range(n):
        for k in range(f):
            row = dyt[k, s]
            row[:] = zero
            acc = 0.0
            for a in range(hp):
                for b in range(wp):
                    at = argmax[s, k, a, b]
                    if at >= 0:
                        g = dy[s, k, a, b]
                        row[at] = g
                        acc += g
            dbpart[s, k] = acc
