"""Numba kernels of ``greedy.nn.basismix``: ReLU and region means of a mixed map, and their gradient.

The map of each sample is position-major, (H*W, F): the rows of a GEMM of the channels-last basis
maps. Both kernels run one sample per thread.
"""
import numba
import numpy as np
from numba import prange


@numba.njit(parallel=True, cache=True)
def relu_region_means(pre, h, w, pool, out):
    """out (n, F, h // pool, w // pool) = the means of relu(pre) over pool x pool regions, for pre
    (n, h*w, F), positions row-major; h and w multiples of pool."""
    n, p, f = pre.shape
    rh, rw = h // pool, w // pool
    scale = 1.0 / (pool * pool)
    for i in prange(n):
        acc = np.zeros((rh * rw, f), np.float64)
        for q in range(p):
            r = (q // w) // pool * rw + (q % w) // pool
            for k in range(f):
                v = pre[i, q, k]
                if v > 0:
                    acc[r, k] += v
        for r in range(rh * rw):
            for k in range(f):
                out[i, k, r // rw, r % rw] = acc[r, k] * scale


@numba.njit(parallel=True, cache=True)
def relu_region_means_grad(pre, dout, h, w, pool, dpre):
    """dpre (n, h*w, F) = dout[n, F, region of the position] / pool^2 where pre > 0, else 0: the gradient
    of ``relu_region_means`` for dout (n, F, h // pool, w // pool)."""
    n, p, f = pre.shape
    rw = w // pool
    scale = 1.0 / (pool * pool)
    for i in prange(n):
        for q in range(p):
            a, b = (q // w) // pool, (q % w) // pool
            for k in range(f):
                dpre[i, q, k] = dout[i, k, a, b] * scale if pre[i, q, k] > 0 else 0.0
