"""Convolution and pooling kernels for NCHW arrays.

Convolution is im2col + one BLAS matrix multiply per chunk of samples:

- ``im2col`` turns x (N, C, H, W) into cols (N*Ho*Wo, C*KH*KW): one row per
  output position in (n, oh, ow) order, columns in (c, kh, kw) order, so
  ``cols @ w.reshape(F, -1).T`` is the convolution with output (N*Ho*Wo, F).
- ``col2im`` is its adjoint (overlapping patches are summed).

The convolution itself uses a transposed im2col buffer (C*KH*KW, n, Ho*Wo)
for a chunk of n samples, so that every matrix multiply is one large BLAS
call and the output lands in NCHW order with contiguous copies only:
y (F, n*P) = w (F, K) @ cols, dw = dy (F, n*P) @ cols.T,
dcols = w.T @ dy (F, n*P), then the transposed col2im.

The batch is processed in chunks of samples so that the im2col buffer of one
chunk stays under ``COL_BUFFER_BYTES`` (16 MiB, which keeps it in L3 cache
between im2col and the multiply; a single sample may exceed it when one sample
alone is larger), next to an (F, n*Ho*Wo) buffer for the output or its
gradient. Both live in a per-thread workspace that is reused across calls (so
repeated calls do not pay page faults) and grows to the largest size needed.

All functions accept float32 or float64 (all array arguments of one call in
the same dtype) and return that dtype. Pools use floor behaviour: windows that
do not fit are dropped, like PyTorch's default.
"""
import threading

import numba
import numpy as np
from numba import prange

from .errors import ConfigError

COL_BUFFER_BYTES = 16 * 2**20

_workspace = threading.local()


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


@numba.njit(cache=True)
def _valid_range(b, stride, pad, w, wo):
    """Output columns [lo, hi) whose input column ow*stride - pad + b lies inside [0, w)."""
    lo = min(wo, max(0, -((b - pad) // stride)))
    hi = max(lo, min(wo, (w + pad - b - 1) // stride + 1))
    return lo, hi


@numba.njit(parallel=True, cache=True)
def _im2colt_kernel(x, kh, kw, stride, pad, ho, wo, out):
    """x (n, C, H, W) -> out (C*kh*kw, n, ho*wo): patch rows by (c, kh, kw), then sample, then position.

    prange over (column, sample) pairs; each writes one contiguous run of ho*wo values.
    """
    n, c, h, w = x.shape
    for i in prange(c * kh * kw * n):
        j = i // n
        s = i - j * n
        ci = j // (kh * kw)
        a = (j // kw) % kh
        b = j % kw
        lo, hi = _valid_range(b, stride, pad, w, wo)
        orow = out[j, s]
        if stride == 1 and wo == w:
            # rows of out and x have the same length: the patch column is x shifted by d,
            # copied in one block, then the columns that fall into the padding are cleared
            oh0 = min(ho, max(0, pad - a))
            oh1 = max(oh0, min(ho, h + pad - a))
            d = (a - pad) * w + b - pad
            t0 = max(oh0 * w, -d)
            t1 = max(t0, min(oh1 * w, h * w - d))
            orow[:t0] = 0
            orow[t0:t1] = x[s, ci].reshape(h * w)[t0 + d:t1 + d]
            orow[t1:] = 0
            for oh in range(oh0, oh1):
                orow[oh * wo:oh * wo + lo] = 0
                orow[oh * wo + hi:(oh + 1) * wo] = 0
            continue
        for oh in range(ho):
            hh = oh * stride - pad + a
            dst = orow[oh * wo:(oh + 1) * wo]
            if hh < 0 or hh >= h:
                dst[:] = 0
                continue
            dst[:lo] = 0
            src = x[s, ci, hh, lo * stride + b - pad:]
            mid = dst[lo:hi]
            if stride == 1:
                mid[:] = src[:hi - lo]
            else:
                for q in range(hi - lo):
                    mid[q] = src[q * stride]
            dst[hi:] = 0


@numba.njit(parallel=True, cache=True)
def _col2imt_kernel(cols, kh, kw, stride, pad, ho, wo, dx):
    """Adds cols (C*kh*kw, n, ho*wo) into dx (n, C, H, W); prange over (sample, channel) planes."""
    n, c, h, w = dx.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for a in range(kh):
            for b in range(kw):
                j = (ci * kh + a) * kw + b
                lo, hi = _valid_range(b, stride, pad, w, wo)
                crow = cols[j, s]
                for oh in range(ho):
                    hh = oh * stride - pad + a
                    if hh < 0 or hh >= h:
                        continue
                    src = crow[oh * wo + lo:oh * wo + hi]
                    dst = dx[s, ci, hh, lo * stride + b - pad:]
                    if stride == 1:
                        for q in range(hi - lo):
                            dst[q] += src[q]
                    else:
                        for q in range(hi - lo):
                            dst[q * stride] += src[q]


@numba.njit(parallel=True, cache=True)
def _fnp_to_nfp(yt, bias, y):
    """yt (F, n, P) + bias (F,) -> y (n, F, P)."""
    f, n, p = yt.shape
    for i in prange(n * f):
        s = i // f
        k = i - s * f
        bk = bias[k]
        for q in range(p):
            y[s, k, q] = yt[k, s, q] + bk


@numba.njit(parallel=True, cache=True)
def _nfp_to_fnp(dy, dyt, dbpart):
    """dy (n, F, P) -> dyt (F, n, P); bias-gradient partials dbpart (n, F) = sum of dy over P."""
    n, f, p = dy.shape
    for i in prange(n * f):
        s = i // f
        k = i - s * f
        acc = 0.0
        for q in range(p):
            v = dy[s, k, q]
            dyt[k, s, q] = v
            acc += v
        dbpart[s, k] = acc


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


def _buffers(dtype, *sizes):
    """Flat scratch arrays of the given element counts from this thread's reusable workspace."""
    align = 64
    spans = [-(-n * dtype.itemsize // align) * align for n in sizes]
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.nbytes < sum(spans):
        buf = np.empty(sum(spans), np.uint8)
        _workspace.buf = buf
    out, start = [], 0
    for n, span in zip(sizes, spans):
        out.append(buf[start:start + n * dtype.itemsize].view(dtype))
        start += span
    return out


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
    wm = w.reshape(f, k)
    y = np.empty((n, f, ho, wo), x.dtype)
    nb = _chunk(n, p, k, x.dtype.itemsize)
    cbuf, ybuf = _buffers(x.dtype, k * nb * p, f * nb * p)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        cols = cbuf[:k * m * p].reshape(k, m * p)
        yt = ybuf[:f * m * p].reshape(f, m * p)
        _im2colt_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, cols.reshape(k, m, p))
        np.matmul(wm, cols, out=yt)
        _fnp_to_nfp(yt.reshape(f, m, p), b, y[n0:n0 + m].reshape(m, f, p))
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
    cbuf, ybuf = _buffers(x.dtype, k * nb * p, f * nb * p)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        cols = cbuf[:k * m * p].reshape(k, m * p)
        dyt = ybuf[:f * m * p].reshape(f, m * p)
        _nfp_to_fnp(dy[n0:n0 + m].reshape(m, f, p), dyt.reshape(f, m, p), dbpart[n0:n0 + m])
        _im2colt_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, cols.reshape(k, m, p))
        dw += dyt @ cols.T
        if need_dx:
            np.matmul(wm.T, dyt, out=cols)
            _col2imt_kernel(cols.reshape(k, m, p), kh, kw, stride, pad, ho, wo, dx[n0:n0 + m])
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
