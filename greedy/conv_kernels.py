"""Convolution and pooling kernels for NCHW arrays.

Convolution is im2col + one BLAS matrix multiply per chunk of samples:

- ``im2col`` turns x (N, C, H, W) into cols (N*Ho*Wo, C*KH*KW): one row per
  output position in (n, oh, ow) order, columns in (c, kh, kw) order, so
  ``cols @ w.reshape(F, -1).T`` is the convolution with output (N*Ho*Wo, F).
- ``col2im`` is its adjoint (overlapping patches are summed).

The batch is processed in chunks of samples so that the im2col buffer of one
chunk stays under ``COL_BUFFER_BYTES`` (64 MiB; a single sample may exceed it
when one sample alone is larger). The buffer is reused for the column
gradient in the backward pass, so one call holds at most one such buffer plus
two (chunk rows, F) buffers.

All functions accept float32 or float64 (all array arguments of one call in
the same dtype) and return that dtype. Pools use floor behaviour: windows that
do not fit are dropped, like PyTorch's default.
"""
import numba
import numpy as np
from numba import prange

from .errors import ConfigError

COL_BUFFER_BYTES = 64 * 2**20


# ---------------------------------------------------------------- kernels


@numba.njit(parallel=True, cache=True)
def _im2col_kernel(x, kh, kw, stride, pad, ho, wo, out):
    """x (n, C, H, W) -> out (n*ho*wo, C*kh*kw); prange over (sample, output row)."""
    n, c, h, w = x.shape
    zero = out.dtype.type(0)
    for i in prange(n * ho):
        s = i // ho
        oh = i - s * ho
        h0 = oh * stride - pad
        for ow in range(wo):
            r = i * wo + ow
            w0 = ow * stride - pad
            for ci in range(c):
                for a in range(kh):
                    hh = h0 + a
                    j = (ci * kh + a) * kw
                    if hh < 0 or hh >= h:
                        for b in range(kw):
                            out[r, j + b] = zero
                    else:
                        for b in range(kw):
                            ww = w0 + b
                            if ww >= 0 and ww < w:
                                out[r, j + b] = x[s, ci, hh, ww]
                            else:
                                out[r, j + b] = zero


@numba.njit(parallel=True, cache=True)
def _col2im_kernel(cols, kh, kw, stride, pad, ho, wo, dx):
    """Adds cols (n*ho*wo, C*kh*kw) into dx (n, C, H, W); prange over samples (no write races)."""
    n, c, h, w = dx.shape
    for s in prange(n):
        for oh in range(ho):
            h0 = oh * stride - pad
            for ow in range(wo):
                r = (s * ho + oh) * wo + ow
                w0 = ow * stride - pad
                for ci in range(c):
                    for a in range(kh):
                        hh = h0 + a
                        if hh < 0 or hh >= h:
                            continue
                        j = (ci * kh + a) * kw
                        for b in range(kw):
                            ww = w0 + b
                            if ww >= 0 and ww < w:
                                dx[s, ci, hh, ww] += cols[r, j + b]


@numba.njit(parallel=True, cache=True)
def _rows_to_nchw(rows, bias, y):
    """rows (n*P, F) + bias (F,) -> y (n, F, P)."""
    n, f, p = y.shape
    for s in prange(n):
        for q in range(p):
            r = s * p + q
            for k in range(f):
                y[s, k, q] = rows[r, k] + bias[k]


@numba.njit(parallel=True, cache=True)
def _nchw_to_rows(dy, rows, dbpart):
    """dy (n, F, P) -> rows (n*P, F); per-sample bias-gradient partials into dbpart (n, F)."""
    n, f, p = dy.shape
    for s in prange(n):
        for k in range(f):
            dbpart[s, k] = 0.0
        for q in range(p):
            r = s * p + q
            for k in range(f):
                v = dy[s, k, q]
                rows[r, k] = v
                dbpart[s, k] += v


@numba.njit(parallel=True, cache=True)
def _maxpool_fwd_kernel(x, size, stride, ho, wo, y, argmax):
    """x (n, c, H, W) -> y (n, c, ho, wo), argmax = flat index h*W + w of the maximum in its plane."""
    n, c, h, w = x.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                h0 = oh * stride
                w0 = ow * stride
                best = x[s, ci, h0, w0]
                idx = h0 * w + w0
                for a in range(size):
                    for b in range(size):
                        v = x[s, ci, h0 + a, w0 + b]
                        if v > best:
                            best = v
                            idx = (h0 + a) * w + w0 + b
                y[s, ci, oh, ow] = best
                argmax[s, ci, oh, ow] = idx


@numba.njit(parallel=True, cache=True)
def _maxpool_bwd_kernel(dy, argmax, dx):
    """Routes dy (n, c, ho, wo) to dx (n, c, H*W) at argmax; prange over planes."""
    n, c, ho, wo = dy.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                dx[s, ci, argmax[s, ci, oh, ow]] += dy[s, ci, oh, ow]


@numba.njit(parallel=True, cache=True)
def _avgpool_fwd_kernel(x, size, stride, ho, wo, y):
    n, c, h, w = x.shape
    scale = 1.0 / (size * size)
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                acc = 0.0
                for a in range(size):
                    for b in range(size):
                        acc += x[s, ci, oh * stride + a, ow * stride + b]
                y[s, ci, oh, ow] = acc * scale


@numba.njit(parallel=True, cache=True)
def _avgpool_bwd_kernel(dy, size, stride, dx):
    n, c, ho, wo = dy.shape
    scale = 1.0 / (size * size)
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                g = dy[s, ci, oh, ow] * scale
                for a in range(size):
                    for b in range(size):
                        dx[s, ci, oh * stride + a, ow * stride + b] += g


# ---------------------------------------------------------------- checks


def _float_array(name, a, ndim):
    if not isinstance(a, np.ndarray):
        raise ConfigError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise ConfigError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _same_dtype(**arrays):
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in dtypes.items())
        raise ConfigError(f"arrays must share one dtype, got {listed}")


def _int_at_least(name, v, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _out_size(h, w, kh, kw, stride, pad, what):
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"{what} window {kh}x{kw} (padding {pad}) does not fit a {h}x{w} input")
    return ho, wo


def _conv_args(x, w, stride, pad):
    x = _float_array("x", x, 4)
    w = _float_array("w", w, 4)
    _same_dtype(x=x, w=w)
    if w.shape[1] != x.shape[1]:
        raise ConfigError(f"w has {w.shape[1]} input channels but x has {x.shape[1]}")
    stride = _int_at_least("stride", stride, 1)
    pad = _int_at_least("pad", pad, 0)
    ho, wo = _out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, pad, "conv")
    return x, w, stride, pad, ho, wo


def _chunk(n, rows_per_sample, k, itemsize):
    """Samples per chunk so that the (chunk*rows_per_sample, k) buffer fits COL_BUFFER_BYTES."""
    per_sample = rows_per_sample * k * itemsize
    return max(1, min(n, COL_BUFFER_BYTES // max(per_sample, 1)))


# ---------------------------------------------------------------- public API


def im2col(x, kh, kw, stride=1, pad=0):
    """Patches of x (N, C, H, W) as cols (N*Ho*Wo, C*kh*kw), same dtype.

    Rows are output positions in (n, oh, ow) order, columns are (c, kh, kw)
    order; padded pixels are zero.
    """
    x = _float_array("x", x, 4)
    kh = _int_at_least("kh", kh, 1)
    kw = _int_at_least("kw", kw, 1)
    stride = _int_at_least("stride", stride, 1)
    pad = _int_at_least("pad", pad, 0)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, kh, kw, stride, pad, "im2col")
    cols = np.empty((n * ho * wo, c * kh * kw), x.dtype)
    _im2col_kernel(x, kh, kw, stride, pad, ho, wo, cols)
    return cols


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of ``im2col``: sums cols (N*Ho*Wo, C*kh*kw) back into an (N, C, H, W) array."""
    cols = _float_array("cols", cols, 2)
    if len(x_shape) != 4:
        raise ConfigError(f"x_shape must be (N, C, H, W), got {tuple(x_shape)}")
    n, c, h, w = (int(v) for v in x_shape)
    kh = _int_at_least("kh", kh, 1)
    kw = _int_at_least("kw", kw, 1)
    stride = _int_at_least("stride", stride, 1)
    pad = _int_at_least("pad", pad, 0)
    ho, wo = _out_size(h, w, kh, kw, stride, pad, "col2im")
    if cols.shape != (n * ho * wo, c * kh * kw):
        raise ConfigError(f"cols has shape {cols.shape}, expected {(n * ho * wo, c * kh * kw)}")
    dx = np.zeros((n, c, h, w), cols.dtype)
    _col2im_kernel(cols, kh, kw, stride, pad, ho, wo, dx)
    return dx


def conv2d_forward(x, w, b, stride=1, pad=0):
    """Cross-correlation y = conv(x, w) + b with zero padding.

    x (N, C, H, W), w (F, C, KH, KW), b (F,), one float dtype.
    Returns y (N, F, Ho, Wo) with Ho = (H + 2*pad - KH) // stride + 1 (same for Wo).
    """
    x, w, stride, pad, ho, wo = _conv_args(x, w, stride, pad)
    b = _float_array("b", b, 1)
    _same_dtype(x=x, w=w, b=b)
    f, c, kh, kw = w.shape
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    n = x.shape[0]
    p, k = ho * wo, c * kh * kw
    wt = np.ascontiguousarray(w.reshape(f, k).T)
    y = np.empty((n, f, ho, wo), x.dtype)
    nb = _chunk(n, p, k, x.dtype.itemsize)
    cols = np.empty((nb * p, k), x.dtype)
    rows = np.empty((nb * p, f), x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        _im2col_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, cols[:m * p])
        np.matmul(cols[:m * p], wt, out=rows[:m * p])
        _rows_to_nchw(rows[:m * p], b, y[n0:n0 + m].reshape(m, f, p))
    return y


def conv2d_backward(x, w, dy, stride=1, pad=0, need_dx=True):
    """Gradients of ``conv2d_forward`` given dy = dL/dy.

    x (N, C, H, W), w (F, C, KH, KW), dy (N, F, Ho, Wo), one float dtype.
    Returns (dx (N, C, H, W) or None when ``need_dx`` is false, dw (F, C, KH, KW), db (F,)).
    """
    x, w, stride, pad, ho, wo = _conv_args(x, w, stride, pad)
    dy = _float_array("dy", dy, 4)
    _same_dtype(x=x, w=w, dy=dy)
    f, c, kh, kw = w.shape
    n = x.shape[0]
    if dy.shape != (n, f, ho, wo):
        raise ConfigError(f"dy has shape {dy.shape}, expected {(n, f, ho, wo)}")
    p, k = ho * wo, c * kh * kw
    wm = w.reshape(f, k)
    dw = np.zeros((f, k), x.dtype)
    dbpart = np.empty((n, f), np.float64)
    dx = np.zeros(x.shape, x.dtype) if need_dx else None
    nb = _chunk(n, p, k, x.dtype.itemsize)
    cols = np.empty((nb * p, k), x.dtype)
    rows = np.empty((nb * p, f), x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        c_m, r_m = cols[:m * p], rows[:m * p]
        _nchw_to_rows(dy[n0:n0 + m].reshape(m, f, p), r_m, dbpart[n0:n0 + m])
        _im2col_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, c_m)
        dw += r_m.T @ c_m
        if need_dx:
            np.matmul(r_m, wm, out=c_m)
            _col2im_kernel(c_m, kh, kw, stride, pad, ho, wo, dx[n0:n0 + m])
    db = dbpart.sum(axis=0).astype(x.dtype)
    return dx, dw.reshape(w.shape), db


def maxpool2d_forward(x, size=2, stride=2):
    """Max pooling without padding. x (N, C, H, W) float32/float64.

    Returns y (N, C, Ho, Wo) with Ho = (H - size) // stride + 1, and argmax
    (N, C, Ho, Wo) int64: flat index h*W + w of each maximum inside its (H, W) plane.
    """
    x = _float_array("x", x, 4)
    size = _int_at_least("size", size, 1)
    stride = _int_at_least("stride", stride, 1)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, size, size, stride, 0, "max pool")
    y = np.empty((n, c, ho, wo), x.dtype)
    argmax = np.empty((n, c, ho, wo), np.int64)
    _maxpool_fwd_kernel(x, size, stride, ho, wo, y, argmax)
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape):
    """Gradient of ``maxpool2d_forward``: dy (N, C, Ho, Wo) -> dx of shape x_shape (N, C, H, W)."""
    dy = _float_array("dy", dy, 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu" or argmax.shape != dy.shape:
        raise ConfigError(f"argmax must be an integer array of dy's shape {dy.shape}")
    if len(x_shape) != 4 or tuple(x_shape[:2]) != dy.shape[:2]:
        raise ConfigError(f"x_shape {tuple(x_shape)} does not match dy of shape {dy.shape}")
    n, c, h, w = (int(v) for v in x_shape)
    if argmax.size and (argmax.min() < 0 or argmax.max() >= h * w):
        raise ConfigError(f"argmax holds indices outside an {h}x{w} plane")
    dx = np.zeros((n, c, h * w), dy.dtype)
    _maxpool_bwd_kernel(dy, np.ascontiguousarray(argmax), dx)
    return dx.reshape(n, c, h, w)


def avgpool2d_forward(x, size=2, stride=2):
    """Average pooling without padding: x (N, C, H, W) -> y (N, C, Ho, Wo), Ho = (H - size) // stride + 1."""
    x = _float_array("x", x, 4)
    size = _int_at_least("size", size, 1)
    stride = _int_at_least("stride", stride, 1)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, size, size, stride, 0, "average pool")
    y = np.empty((n, c, ho, wo), x.dtype)
    _avgpool_fwd_kernel(x, size, stride, ho, wo, y)
    return y


def avgpool2d_backward(dy, x_shape, size=2, stride=2):
    """Gradient of ``avgpool2d_forward``: dy (N, C, Ho, Wo) -> dx of shape x_shape (N, C, H, W)."""
    dy = _float_array("dy", dy, 4)
    size = _int_at_least("size", size, 1)
    stride = _int_at_least("stride", stride, 1)
    if len(x_shape) != 4 or tuple(x_shape[:2]) != dy.shape[:2]:
        raise ConfigError(f"x_shape {tuple(x_shape)} does not match dy of shape {dy.shape}")
    n, c, h, w = (int(v) for v in x_shape)
    if _out_size(h, w, size, size, stride, 0, "average pool") != dy.shape[2:]:
        raise ConfigError(f"dy of shape {dy.shape} does not match x_shape {tuple(x_shape)}")
    dx = np.zeros((n, c, h, w), dy.dtype)
    _avgpool_bwd_kernel(dy, size, stride, dx)
    return dx
