"""Numba kernels of ``greedy.nn.basismix``: a 1x1 mix of basis maps, its ReLU and region means, and their
gradient, fused.

A sample's basis maps are position-major, (H*W, d), and the mix is applied eight positions at a time: the
(H*W, F) mixed map is never stored, only which of its values are positive (a uint8 mask for the
backward pass). The forward pass runs one sample per thread; the backward pass gives each thread a
contiguous run of samples and its own gradient accumulators, summed at the end.
"""
import numba
import numpy as np
from numba import prange


BLOCK = 8  # positions mixed together: each row of the mix is read once for them


@numba.njit(cache=True)
def _region(q, w, pool, rw):
    return (q // w) // pool * rw + (q % w) // pool


@numba.njit(parallel=True, cache=True)
def mix_relu_region_means(z, wt, b, h, w, pool, mask, out):
    """out (n, R, F) = the means over pool x pool regions (R = (h // pool) * (w // pool), row-major) of
    relu(z[i] @ wt + b), for z (n, h*w, d) basis maps, wt (d, F) the mix transposed, b (F,); h and w
    multiples of pool. mask (n, h*w, F) uint8 gets 1 where the mixed value is positive, unless it is
    empty (shape (0, 0, 0)): then it is not written."""
    n, p, d = z.shape
    f = wt.shape[1]
    rw = w // pool
    scale = 1.0 / (pool * pool)
    keep = mask.shape[0] > 0
    for i in prange(n):
        acc = np.empty((BLOCK, f), wt.dtype)
        sums = np.zeros((out.shape[1], f), wt.dtype)
        for q0 in range(0, p, BLOCK):
            m = min(BLOCK, p - q0)
            for j in range(m):
                acc[j] = b
            if m == BLOCK:  # eight positions share each row of the mix
                for k in range(d):
                    a0, a1, a2, a3 = z[i, q0, k], z[i, q0 + 1, k], z[i, q0 + 2, k], z[i, q0 + 3, k]
                    a4, a5, a6, a7 = z[i, q0 + 4, k], z[i, q0 + 5, k], z[i, q0 + 6, k], z[i, q0 + 7, k]
                    for c in range(f):
                        v = wt[k, c]
                        acc[0, c] += a0 * v
                        acc[1, c] += a1 * v
                        acc[2, c] += a2 * v
                        acc[3, c] += a3 * v
                        acc[4, c] += a4 * v
                        acc[5, c] += a5 * v
                        acc[6, c] += a6 * v
                        acc[7, c] += a7 * v
            else:
                for j in range(m):
                    for k in range(d):
                        a = z[i, q0 + j, k]
                        for c in range(f):
                            acc[j, c] += a * wt[k, c]
            for j in range(m):
                r = _region(q0 + j, w, pool, rw)
                for c in range(f):
                    v = acc[j, c]
                    if v > 0:
                        sums[r, c] += v
                if keep:
                    for c in range(f):
                        mask[i, q0 + j, c] = acc[j, c] > 0
        for r in range(out.shape[1]):
            for c in range(f):
                out[i, r, c] = sums[r, c] * scale


@numba.njit(parallel=True, cache=True)
def mix_relu_region_means_grad(z, mask, dout, h, w, pool, gwt, gb):
    """The gradient of ``mix_relu_region_means`` for dout (n, R, F): gwt (T, d, F) and gb (T, F) get, over
    T runs of samples, the gradients of the transposed mix and the bias; their sums over T are the
    gradients. mask (n, h*w, F) is the forward pass's."""
    n, p, d = z.shape
    f = gb.shape[1]
    runs = gb.shape[0]
    rw = w // pool
    scale = 1.0 / (pool * pool)
    for t in prange(runs):
        g, gbias = gwt[t], gb[t]
        g[:] = 0
        gbias[:] = 0
        dpre = np.empty((BLOCK, f), gb.dtype)
        for i in range(t * n // runs, (t + 1) * n // runs):
            for q0 in range(0, p, BLOCK):
                m = min(BLOCK, p - q0)
                for j in range(m):
                    r = _region(q0 + j, w, pool, rw)
                    for c in range(f):
                        dpre[j, c] = dout[i, r, c] * scale if mask[i, q0 + j, c] else 0.0
                        gbias[c] += dpre[j, c]
                if m == BLOCK:
                    for k in range(d):
                        a0, a1, a2, a3 = z[i, q0, k], z[i, q0 + 1, k], z[i, q0 + 2, k], z[i, q0 + 3, k]
                        a4, a5, a6, a7 = z[i, q0 + 4, k], z[i, q0 + 5, k], z[i, q0 + 6, k], z[i, q0 + 7, k]
                        for c in range(f):
                            g[k, c] += (a0 * dpre[0, c] + a1 * dpre[1, c] + a2 * dpre[2, c] + a3 * dpre[3, c]
                                        + a4 * dpre[4, c] + a5 * dpre[5, c] + a6 * dpre[6, c] + a7 * dpre[7, c])
                else:
                    for j in range(m):
                        for k in range(d):
                            a = z[i, q0 + j, k]
                            for c in range(f):
                                g[k, c] += a * dpre[j, c]
