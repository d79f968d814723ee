"""Numba kernels for the per-element layers: ReLU, GELU, the tanh gradient, batch normalisation, the column
statistics of the final classifier's features, and the centred patch rows of a whitening fit.

NumPy spends several full passes (and temporaries) on each of these; here each
is one or two passes over the data, threaded where the arrays are large enough to
pay for it. Arrays are C-contiguous, float32 or float64; batch-norm arrays are
viewed as (N, C, P) with P = H*W.
"""
import math

import numba
import numpy as np
from numba import prange

# Elementwise layers on fewer elements (a dense layer's batch) run serially: threads do not
# pay there, and a run that never reaches this size does not compile the threaded kernels.
THREADED_MIN_SIZE = 1 << 18


def relu_forward(x, y):
    """y = max(x, 0) over flat arrays x, y of equal size and dtype."""
    (_relu_forward_threaded if x.size >= THREADED_MIN_SIZE else _relu_forward_serial)(x, y)


def relu_backward(y, dy, dx):
    """dx = dy where the forward output y > 0, else 0 (flat arrays of one dtype)."""
    (_relu_backward_threaded if y.size >= THREADED_MIN_SIZE else _relu_backward_serial)(y, dy, dx)


def tanh_backward(y, dy, dx):
    """dx = dy * (1 - y^2) over flat arrays of one dtype, y the forward output."""
    (_tanh_backward_threaded if y.size >= THREADED_MIN_SIZE else _tanh_backward_serial)(y, dy, dx)


def gelu_forward(x, y):
    """y = x Phi(x) (Phi the standard normal distribution function, exact by erf) over flat arrays x, y of
    equal size and dtype."""
    (_gelu_forward_threaded if x.size >= THREADED_MIN_SIZE else _gelu_forward_serial)(x, y)


def gelu_backward(x, dy, dx):
    """dx = dy (Phi(x) + x phi(x)) over flat arrays of one dtype, x the forward input."""
    (_gelu_backward_threaded if x.size >= THREADED_MIN_SIZE else _gelu_backward_serial)(x, dy, dx)


@numba.njit(cache=True, inline="always")
def _gelu(v):
    return 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))


@numba.njit(cache=True, inline="always")
def _gelu_slope(v):
    return 0.5 * (1.0 + math.erf(v * 0.7071067811865476)) + v * 0.3989422804014327 * math.exp(-0.5 * v * v)


@numba.njit(cache=True)
def _gelu_forward_serial(x, y):
    for i in range(x.size):
        y[i] = _gelu(np.float64(x[i]))


@numba.njit(parallel=True, cache=True)
def _gelu_forward_threaded(x, y):
    for i in prange(x.size):
        y[i] = _gelu(np.float64(x[i]))


@numba.njit(cache=True)
def _gelu_backward_serial(x, dy, dx):
    for i in range(x.size):
        dx[i] = dy[i] * _gelu_slope(np.float64(x[i]))


@numba.njit(parallel=True, cache=True)
def _gelu_backward_threaded(x, dy, dx):
    for i in prange(x.size):
        dx[i] = dy[i] * _gelu_slope(np.float64(x[i]))


# Serial and threaded twins have separate source: Numba's cache keys a kernel by its
# source, not by its flags, so one function compiled both ways would share cache entries.

@numba.njit(cache=True)
def _relu_forward_serial(x, y):
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > zero else zero


@numba.njit(parallel=True, cache=True)
def _relu_forward_threaded(x, y):
    zero = x.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > zero else zero


@numba.njit(cache=True)
def _relu_backward_serial(y, dy, dx):
    zero = dy.dtype.type(0)
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > zero else zero


@numba.njit(parallel=True, cache=True)
def _relu_backward_threaded(y, dy, dx):
    zero = dy.dtype.type(0)
    for i in prange(y.size):
        dx[i] = dy[i] if y[i] > zero else zero


@numba.njit(cache=True)
def _tanh_backward_serial(y, dy, dx):
    one = y.dtype.type(1)
    for i in range(y.size):
        dx[i] = dy[i] * (one - y[i] * y[i])


@numba.njit(parallel=True, cache=True)
def _tanh_backward_threaded(y, dy, dx):
    one = y.dtype.type(1)
    for i in prange(y.size):
        dx[i] = dy[i] * (one - y[i] * y[i])


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def channel_mean_var(x):
    """Per-channel mean and (biased) variance of x (N, C, P), accumulated in float64 around a shift.

    ``reassoc`` lets the sums vectorise (5x faster than the sequential sums); the order is fixed by the
    compiled loop, so the same input gives the same bits."""
    n, c, p = x.shape
    mean = np.empty(c, np.float64)
    var = np.empty(c, np.float64)
    for j in prange(c):
        shift = np.float64(x[0, j, 0])
        s = 0.0
        s2 = 0.0
        for i in range(n):
            for k in range(p):
                d = np.float64(x[i, j, k]) - shift
                s += d
                s2 += d * d
        m = s / (n * p)
        mean[j] = shift + m
        var[j] = max(s2 / (n * p) - m * m, 0.0)
    return mean, var


@numba.njit(parallel=True, cache=True)
def channel_normalise(x, mean, scale, shift, y):
    """y[:, c] = (x[:, c] - mean[c]) * scale[c] + shift[c] for x, y (N, C, P), computed in float64."""
    n, c, p = x.shape
    for i in prange(n):
        for j in range(c):
            m, a, b = np.float64(mean[j]), np.float64(scale[j]), np.float64(shift[j])
            for k in range(p):
                y[i, j, k] = (np.float64(x[i, j, k]) - m) * a + b


@numba.njit(parallel=True, cache=True)
def batchnorm_backward(x, dy, mean, inv_std, gamma, dx, dgamma, dbeta):
    """Gradients of y = gamma * (x - mean) * inv_std + beta with batch statistics.

    x, dy, dx: (N, C, P); mean, inv_std, gamma, dgamma, dbeta: (C,).
    dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)), per channel.
    """
    n, c, p = x.shape
    for j in prange(c):
        sd = 0.0
        sdx = 0.0
        m, s = np.float64(mean[j]), np.float64(inv_std[j])
        for i in range(n):
            sd, sdx = batchnorm_plane_sums(x[i, j], dy[i, j], m, s, sd, sdx)
        a, b, scale = batchnorm_channel_grads(j, sd, sdx, n * p, gamma, s, dgamma, dbeta)
        for i in range(n):
            batchnorm_plane_dx(x[i, j], dy[i, j], m, s, scale, a, b, dx[i, j])


@numba.njit(nogil=True, cache=True)
def batchnorm_channel_grads(j, sd, sdx, count, gamma, s, dgamma, dbeta):
    """Writes dbeta[j] = sd and dgamma[j] = sdx; returns (a, b, scale) of ``batchnorm_plane_dx`` for channel j."""
    dbeta[j] = sd
    dgamma[j] = sdx
    return sd / count, sdx / count, np.float64(gamma[j]) * s


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def batchnorm_plane_sums(x, g, m, s, sd, sdx):
    """(sd + sum of g, sdx + sum of g * xhat) over one plane x, g (P,), xhat = (x - m) * s, in float64
    (the sums reassociated, so that they vectorise, as in ``channel_mean_var``)."""
    for k in range(x.shape[0]):
        gk = np.float64(g[k])
        sd += gk
        sdx += gk * (np.float64(x[k]) - m) * s
    return sd, sdx


@numba.njit(nogil=True, cache=True)
def batchnorm_plane_dx(x, g, m, s, scale, a, b, dx):
    """dx (P,) = scale * (g - a - xhat * b) over one plane x, g (P,), xhat = (x - m) * s, in float64."""
    for k in range(x.shape[0]):
        xh = (np.float64(x[k]) - m) * s
        dx[k] = scale * (np.float64(g[k]) - a - xh * b)


@numba.njit(parallel=True, cache=True)
def row_range_sums(x, shift, parts):
    """Column sums of d = x - shift and of d * d, float64 (parts, D) each, over ``parts`` consecutive row
    ranges of x (N, D): range p holds rows [p * step, (p + 1) * step) with step = ceil(N / parts) (the
    last ones may be empty), each summed in row order; shift (D,) float64."""
    n, d = x.shape
    step = -(-n // parts)
    s = np.zeros((parts, d), np.float64)
    s2 = np.zeros((parts, d), np.float64)
    for p in prange(parts):
        for r in range(p * step, min(n, (p + 1) * step)):
            for j in range(d):
                v = np.float64(x[r, j]) - shift[j]
                s[p, j] += v
                s2[p, j] += v * v
    return s, s2


@numba.njit(parallel=True, cache=True)
def centred_rows(x, step, mu, out):
    """out[i] = x[i * step] - mu, the difference taken in float64 and stored in out's dtype (what NumPy's
    ``(x[::step] - mu).astype(out.dtype)`` gives, without its float64 temporary): x (N, D) float32,
    mu (D,) float64, out (ceil(N / step), D)."""
    for i in prange(out.shape[0]):
        r = i * step
        for j in range(x.shape[1]):
            out[i, j] = np.float64(x[r, j]) - mu[j]
