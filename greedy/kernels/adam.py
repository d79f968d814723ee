"""The Adam update in one pass over each parameter array (``greedy.nn.optim.Adam``).

NumPy spends seven passes and three temporaries on an Adam step; this kernel reads
p, g, m, v once and writes p, m, v once. It does the arithmetic of the NumPy
formulation in the same order and in the arrays' dtype, so the results are equal
bit for bit. Arrays are flat, C-contiguous, float32 or float64, all of one dtype.
"""
import numba
import numpy as np
from numba import prange

# Parameter arrays of fewer entries (biases, small heads) are updated serially: threads do not pay there.
THREADED_MIN_SIZE = 1 << 16


def adam_update(p, g, m, v, beta1, beta2, eps, step_size, decay):
    """In place: m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
    p -= step_size * m / (sqrt(v) + eps); then p -= decay * p.

    p, g, m, v (P,) of one float dtype; the scalars are Python floats (cast to that dtype).
    """
    t = p.dtype.type
    kernel = _adam_threaded if p.size >= THREADED_MIN_SIZE else _adam_serial
    kernel(p, g, m, v, t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps), t(step_size), t(decay))


# Serial and threaded twins have separate source: Numba's cache keys a kernel by its
# source, not by its flags, so one function compiled both ways would share cache entries.

@numba.njit(cache=True, inline="always")
def _adam_entry(i, p, g, m, v, b1, c1, b2, c2, eps, step, decay):
    gi = g[i]
    mi = m[i] * b1 + c1 * gi
    vi = v[i] * b2 + c2 * gi * gi
    m[i] = mi
    v[i] = vi
    q = p[i] - step * (mi / (np.sqrt(vi) + eps))
    p[i] = q - decay * q


@numba.njit(cache=True)
def _adam_serial(p, g, m, v, b1, c1, b2, c2, eps, step, decay):
    for i in range(p.size):
        _adam_entry(i, p, g, m, v, b1, c1, b2, c2, eps, step, decay)


@numba.njit(parallel=True, cache=True)
def _adam_threaded(p, g, m, v, b1, c1, b2, c2, eps, step, decay):
    for i in prange(p.size):
        _adam_entry(i, p, g, m, v, b1, c1, b2, c2, eps, step, decay)
