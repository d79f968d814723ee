"""Batch normalisation, ReLU and max pooling as one training pass over (N, C, H, W) maps.

The three layers run one by one write the normalised map, the ReLU map and the
pooled map, and read them back in the backward; here the forward writes only the
pooled map and its argmax, and the backward rebuilds each plane's gradient at
the batch norm's output in a scratch row, from the pooled gradient, the argmax and
the gate ``pooled > 0``. The arithmetic is that of ``pointwise.channel_normalise``,
``relu_forward``, ``pool._maxpool_fwd_kernel`` and ``pointwise.batchnorm_backward``,
operation for operation and in the same order, so results equal those of the layers
run one by one.

Sequences (N, C, L) are maps of height 1 (window 1 x size).
"""
import numba
import numpy as np
from numba import prange

from greedy.errors import ConfigError
from greedy import validate
from greedy.kernels.convpool import _window2_argmax
from greedy.kernels.pointwise import batchnorm_channel_grads, batchnorm_plane_dx, batchnorm_plane_sums


@numba.njit(parallel=True, cache=True)
def _forward_kernel(x, mean, scale, shift, ph, pw, sh, sw, y, argmax):
    """y[s, c, oh, ow] = max over the window of relu(float(x - mean) * scale + shift); argmax = h*W + w.

    Each plane is normalised and clipped once into a scratch plane, then pooled from it; 2x2 windows
    of stride 2 (the usual pool) take the conv's unrolled path (``convpool._window2_argmax``).
    """
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    zero = y.dtype.type(0)
    for t in prange(n * c):
        s = t // c
        ci = t - s * c
        m, a, b = np.float64(mean[ci]), np.float64(scale[ci]), np.float64(shift[ci])
        z = np.empty((h, w), y.dtype)
        for r in range(h):
            xr, zr = x[s, ci, r], z[r]
            for q in range(w):
                v = y.dtype.type((np.float64(xr[q]) - m) * a + b)
                zr[q] = v if v > zero else zero
        if ph == 2 and pw == 2 and sh == 2 and sw == 2:
            flat = z.reshape(h * w)
            for oh in range(ho):
                _window2_argmax(flat, zero, 2 * oh * w, w, wo, False, y[s, ci, oh], argmax[s, ci, oh])
            continue
        for oh in range(ho):
            for ow in range(wo):
                h0 = oh * sh
                w0 = ow * sw
                best = z[h0, w0]
                idx = h0 * w + w0
                for p in range(ph):
                    for q in range(pw):
                        if z[h0 + p, w0 + q] > best:
                            best = z[h0 + p, w0 + q]
                            idx = (h0 + p) * w + w0 + q
                y[s, ci, oh, ow] = best
                argmax[s, ci, oh, ow] = idx


@numba.njit(nogil=True, cache=True)
def _plane_gradient(dy, y, argmax, g):
    """g (P,) = the gradient at the batch norm's output of one plane: dy (Q,) routed to argmax (Q,) where
    y > 0. Returns how many argmax entries lie outside 0..P-1 (those are skipped)."""
    zero = g.dtype.type(0)
    g[:] = zero
    bad = 0
    for o in range(dy.shape[0]):
        at = argmax[o]
        if at < 0 or at >= g.shape[0]:
            bad += 1
        elif y[o] > zero:
            g[at] += dy[o]
    return bad


@numba.njit(parallel=True, cache=True)
def _backward_kernel(x, dy, y, argmax, mean, inv_std, gamma, dx, dgamma, dbeta, bad):
    """x, dx (n, C, P); dy, y, argmax (n, C, Q); mean, inv_std, gamma, dgamma, dbeta (C,): see the module.
    bad (C,) int64 gets the number of argmax entries of each channel outside 0..P-1."""
    n, c, p = x.shape
    for j in prange(c):
        g = np.empty(p, dx.dtype)
        sd = 0.0
        sdx = 0.0
        m, s = np.float64(mean[j]), np.float64(inv_std[j])
        wrong = 0
        for i in range(n):
            wrong += _plane_gradient(dy[i, j], y[i, j], argmax[i, j], g)
            sd, sdx = batchnorm_plane_sums(x[i, j], g, m, s, sd, sdx)
        bad[j] = wrong
        a, b, scale = batchnorm_channel_grads(j, sd, sdx, n * p, gamma, s, dgamma, dbeta)
        for i in range(n):
            _plane_gradient(dy[i, j], y[i, j], argmax[i, j], g)
            batchnorm_plane_dx(x[i, j], g, m, s, scale, a, b, dx[i, j])


def _window(x, window, stride):
    if len(window) != 2 or len(stride) != 2 or min(window) < 1 or min(stride) < 1:
        raise ConfigError(f"window {window} and stride {stride} must be two positive integers each")
    ho = (x.shape[2] - window[0]) // stride[0] + 1
    wo = (x.shape[3] - window[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"pool window {window} does not fit a map of {x.shape[2]}x{x.shape[3]}")
    return ho, wo


def _channel_vectors(c, **vectors):
    for name, v in vectors.items():
        if v.shape != (c,):
            raise ConfigError(f"{name} has shape {v.shape}, expected ({c},)")


def bn_relu_maxpool_forward(x, mean, scale, shift, window, stride):
    """Pooled map (N, C, Ho, Wo) of x's dtype and argmax (N, C, Ho, Wo) int32 (flat h*W + w in the plane).

    x (N, C, H, W) float32 or float64; mean, scale (C,) float64 (scale = gamma * inv_std); shift (C,) of
    x's dtype (beta). Ho = (H - window[0]) // stride[0] + 1, likewise Wo.
    """
    x = np.ascontiguousarray(validate.float_array(x, "x", 4))
    c = x.shape[1]
    mean, scale = (np.ascontiguousarray(v, np.float64) for v in (mean, scale))
    shift = np.ascontiguousarray(shift, x.dtype)
    _channel_vectors(c, mean=mean, scale=scale, shift=shift)
    ho, wo = _window(x, tuple(window), tuple(stride))
    y = np.empty(x.shape[:2] + (ho, wo), x.dtype)
    argmax = np.empty(y.shape, np.int32)
    _forward_kernel(x, mean, scale, shift, int(window[0]), int(window[1]), int(stride[0]), int(stride[1]),
                    y, argmax)
    return y, argmax


def bn_relu_maxpool_backward(x, dy, y, argmax, mean, inv_std, gamma):
    """(dx like x, dgamma (C,), dbeta (C,)) from dy, the gradient of the pooled map y (N, C, Ho, Wo).

    x: the batch norm's input (N, C, H, W); y, argmax: ``bn_relu_maxpool_forward``'s outputs; mean,
    inv_std (C,) float64, gamma (C,) of x's dtype.
    """
    x = validate.float_array(x, "x", 4)
    n, c = x.shape[:2]
    if dy.shape != y.shape or argmax.shape != y.shape or y.shape[:2] != (n, c) or y.ndim != 4:
        raise ConfigError(f"dy {dy.shape}, pooled map {y.shape} and argmax {argmax.shape} must be equal "
                          f"(N, C, Ho, Wo) with N, C = {n}, {c}")
    p = x.shape[2] * x.shape[3]
    if argmax.dtype != np.int32:
        raise ConfigError(f"argmax must be int32 positions in 0..{p - 1}")
    mean, inv_std = (np.ascontiguousarray(v, np.float64) for v in (mean, inv_std))
    gamma = np.ascontiguousarray(gamma, x.dtype)
    _channel_vectors(c, mean=mean, inv_std=inv_std, gamma=gamma)
    flat = (n, c, -1)
    x3 = np.ascontiguousarray(x).reshape(flat)
    dy3 = np.ascontiguousarray(dy, x.dtype).reshape(flat)
    dx = np.empty_like(x3)
    dgamma, dbeta = np.empty(c, x.dtype), np.empty(c, x.dtype)
    bad = np.zeros(c, np.int64)
    _backward_kernel(x3, dy3, np.ascontiguousarray(y).reshape(flat), np.ascontiguousarray(argmax).reshape(flat),
                     mean, inv_std, gamma, dx, dgamma, dbeta, bad)
    if bad.any():
        raise ConfigError(f"argmax must be int32 positions in 0..{p - 1}; {int(bad.sum())} are not")
    return dx.reshape(x.shape), dgamma, dbeta
