"""Convolution and pooling kernels for sequences: (N, C, L) arrays.

Convolution follows the scheme of ``greedy.kernels.conv`` (its docstring gives the
reasons): for a chunk of n samples, a transposed im2col buffer cols (C*K, n, Lo),
rows in (c, k) order, then one BLAS multiply per chunk:
y (F, n*Lo) = w (F, C*K) @ cols; backward dw = dy (F, n*Lo) @ cols.T and
dcols = w.T @ dy (F, n*Lo), summed back into dx by the transposed col2im.
When each output sums few products (C*K small), reordering between (F, n*Lo)
and (n, F, Lo) costs as much as the multiplies, so both passes instead work on
each sample's (C*K + 1, Lo) slice of cols, whose last row is ones (one batched
``np.matmul`` per chunk): forward y_s = [w | b] @ cols_s straight into y;
backward [dw | db] = sum over s of dy_s @ cols_s.T and dcols_s = w.T @ dy_s
(``_per_sample``).
Chunks are shared among ``numba.get_num_threads()`` worker threads that run
serial ``nogil`` kernels and a single-threaded BLAS multiply (``conv._run_chunks``),
each holding at most ``conv.CHUNK_BYTES`` of scratch; dw partials are added in
chunk order, so results do not depend on thread timing.

Output position o of tap j reads x at o*stride - pad + j*dilation (zero outside
[0, L)), so Lo = (L + 2*pad - dilation*(K-1) - 1) // stride + 1.

Pools take a window ``size`` and a ``stride`` (default: the size), no padding,
floor behaviour (windows that do not fit are dropped); their kernels run prange
over (sample, channel) planes.

All functions accept float32 or float64 (all array arguments of one call in the
same dtype) and return that dtype.
"""
import numba
import numpy as np
from numba import prange

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels import conv as ck

# ---------------------------------------------------------------- kernels


@numba.njit(nogil=True, cache=True)
def _im2colt_kernel(x, k, stride, pad, dil, lo_len, out):
    """x (n, C, L) -> out (C*k, n, Lo): out[c*k + j, s, o] = x[s, c, o*stride - pad + j*dil], zero outside.

    Each row is copied once into the middle of a zero-padded scratch row; every tap then copies
    ``Lo`` values from it without bounds checks (as ``conv._im2colt_kernel``; 2-5x faster on rows of
    12-48 values than clearing each tap's padding, perf/README.md "im2col").
    """
    n, c, length = x.shape
    row = np.zeros(length + 2 * pad, out.dtype)
    mid = row[pad:]
    for i in range(n * c):
        s = i // c
        ci = i - s * c
        ck.copy_run(mid, x[s, ci], length, 1)
        for j in range(k):
            ck.copy_run(out[ci * k + j, s], row[j * dil:], lo_len, stride)


@numba.njit(nogil=True, cache=True)
def _col2imt_kernel(cols, k, stride, pad, dil, lo_len, dx):
    """Writes into dx (n, C, L) the sum of the tap rows cols (C*k, n, Lo): the adjoint of
    ``_im2colt_kernel``, through a zeroed padded scratch row."""
    n, c, length = dx.shape
    row = np.empty(length + 2 * pad, dx.dtype)
    mid = row[pad:]
    for i in range(n * c):
        s = i // c
        ci = i - s * c
        row[:] = 0
        for j in range(k):
            ck.add_run(row[j * dil:], cols[ci * k + j, s], lo_len, stride)
        ck.copy_run(dx[s, ci], mid, length, 1)


@numba.njit(nogil=True, cache=True)
def _fnp_to_nfp_relu_pool(yt, bias, size, relu, y):
    """yt (F, n, Lo) -> y (n, F, Lo // size): max over windows of ``size``, + bias, then ReLU if ``relu``.

    Equals bias, ReLU, then max pooling, since both commute with a per-channel max.
    """
    f, n = yt.shape[0], yt.shape[1]
    lp = y.shape[2]
    lo = yt.dtype.type(0) if relu else yt.dtype.type(-np.inf)
    for k in range(f):
        bk = bias[k]
        for s in range(n):
            src, dst = yt[k, s], y[s, k]
            for o in range(lp):
                p0 = o * size
                best = src[p0]
                for a in range(1, size):
                    best = max(best, src[p0 + a])
                dst[o] = max(best + bk, lo)


@numba.njit(parallel=True, cache=True)
def _maxpool_fwd_kernel(x, size, stride, lo_len, y, argmax, keep_argmax):
    """x (n, c, L) -> y (n, c, Lo); argmax = position in L of each maximum (if kept)."""
    n, c, _ = x.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        src = x[s, ci]
        for o in range(lo_len):
            p0 = o * stride
            best = src[p0]
            idx = p0
            for a in range(1, size):
                v = src[p0 + a]
                if v > best:
                    best = v
                    idx = p0 + a
            y[s, ci, o] = best
            if keep_argmax:
                argmax[s, ci, o] = idx


@numba.njit(parallel=True, cache=True)
def _maxpool_bwd_kernel(dy, argmax, dx):
    """Adds dy (n, c, Lo) into dx (n, c, L) at argmax; prange over planes (no write races)."""
    n, c, lo_len = dy.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for o in range(lo_len):
            dx[s, ci, argmax[s, ci, o]] += dy[s, ci, o]


@numba.njit(parallel=True, cache=True)
def _avgpool_fwd_kernel(x, size, stride, lo_len, y):
    n, c, _ = x.shape
    scale = 1.0 / size
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        src = x[s, ci]
        for o in range(lo_len):
            acc = 0.0
            for a in range(size):
                acc += src[o * stride + a]
            y[s, ci, o] = acc * scale


@numba.njit(parallel=True, cache=True)
def _avgpool_bwd_kernel(dy, size, stride, dx):
    n, c, lo_len = dy.shape
    scale = 1.0 / size
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        dst = dx[s, ci]
        for o in range(lo_len):
            g = dy[s, ci, o] * scale
            for a in range(size):
                dst[o * stride + a] += g


# ---------------------------------------------------------------- checks


def out_length(length, k, stride, pad, dilation, what):
    """Output length of a window k (dilated) over ``length`` positions with padding and stride."""
    lo = (length + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    if lo < 1:
        span = f"{k} (dilation {dilation})" if dilation != 1 else f"{k}"
        raise ConfigError(f"{what} window {span} (padding {pad}) does not fit a sequence of length {length}")
    return lo


def _conv_args(x, w, stride, pad, dilation):
    x = validate.float_array(x, "x", 3)
    w = validate.float_array(w, "w", 3)
    ck._same_dtype(x=x, w=w)
    if w.shape[1] != x.shape[1]:
        raise ConfigError(f"w has {w.shape[1]} input channels but x has {x.shape[1]}")
    stride = validate.integer(stride, "stride", 1)
    pad = validate.integer(pad, "pad", 0)
    dilation = validate.integer(dilation, "dilation", 1)
    lo = out_length(x.shape[2], w.shape[2], stride, pad, dilation, "conv")
    return x, w, stride, pad, dilation, lo


def _pool_args(x, size, stride, what):
    x = validate.float_array(x, "x", 3)
    size = validate.integer(size, "size", 1)
    stride = size if stride is None else validate.integer(stride, "stride", 1)
    return x, size, stride, out_length(x.shape[2], size, stride, 0, 1, what)


def _check_x_shape(x_shape, dy, size, stride, what):
    if len(x_shape) != 3 or tuple(x_shape[:2]) != dy.shape[:2]:
        raise ConfigError(f"x_shape {tuple(x_shape)} does not match dy of shape {dy.shape}")
    n, c, length = (int(v) for v in x_shape)
    if out_length(length, size, stride, 0, 1, what) != dy.shape[2]:
        raise ConfigError(f"dy of shape {dy.shape} does not match x_shape {tuple(x_shape)}")
    return n, c, length


# ---------------------------------------------------------------- public API


def _per_sample(k, lo):
    """Whether per-sample products beat one product per chunk plus a reordering pass, for C*K = k.

    Measured on the 2-core machine: 2-3x faster at C*K <= 32, 1.3-1.5x at C*K = 56 with Lo >= 96,
    equal or slower at C*K >= 100 or on short sequences.
    """
    return k <= 32 or (k <= 64 and lo >= 64)


def conv1d_forward(x, w, b, stride=1, pad=0, dilation=1, relu=False, pool=1):
    """Cross-correlation y = conv(x, w) + b with zero padding; optionally ReLU and max pooling fused in.

    x (N, C, L), w (F, C, K), b (F,), one float dtype. Returns y (N, F, Lo),
    Lo = (L + 2*pad - dilation*(K-1) - 1) // stride + 1. With ``relu`` and/or
    ``pool`` > 1 it returns maxpool(relu(y)) (window and stride ``pool``) of shape
    (N, F, Lo // pool), computed from each chunk's GEMM output without writing the
    full-size y (an inference pass; nothing is kept for backward).
    """
    x, w, stride, pad, dilation, lo = _conv_args(x, w, stride, pad, dilation)
    b = validate.float_array(b, "b", 1)
    ck._same_dtype(x=x, w=w, b=b)
    f, c, kk = w.shape
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    pool = validate.integer(pool, "pool", 1)
    if pool > lo:
        raise ConfigError(f"pool {pool} does not fit a conv output of length {lo}")
    n, dt = x.shape[0], x.dtype
    k = c * kk
    wm = w.reshape(f, k)
    fused = relu or pool > 1
    per_sample = not fused and _per_sample(k, lo)
    wb = np.concatenate([wm, b[:, None]], axis=1) if per_sample else None
    y = np.empty((n, f, lo // pool), dt)
    nb = ck._chunk(n, lo, k + 1, f, dt.itemsize, numba.get_num_threads())

    def task(n0, m, buf):
        cols, yt = ck._split(buf, dt, (k + 1) * m * lo, f * m * lo)
        cols = cols.reshape(k + 1, m, lo)
        _im2colt_kernel(x[n0:n0 + m], kk, stride, pad, dilation, lo, cols[:k])
        if per_sample:
            cols[k] = 1
            np.matmul(wb, cols.transpose(1, 0, 2), out=y[n0:n0 + m])
            return
        np.matmul(wm, cols[:k].reshape(k, m * lo), out=yt.reshape(f, m * lo))
        if fused:
            _fnp_to_nfp_relu_pool(yt.reshape(f, m, lo), b, pool, bool(relu), y[n0:n0 + m])
        else:
            ck._fnp_to_nfp(yt.reshape(f, m, lo), b, y[n0:n0 + m])

    ck._run_chunks(task, n, nb, ck._scratch_bytes(dt, (k + 1) * nb * lo, f * nb * lo))
    return y


def conv1d_backward(x, w, dy, stride=1, pad=0, dilation=1, input_grad=True):
    """Gradients of ``conv1d_forward`` given dy = dL/dy.

    x (N, C, L), w (F, C, K), dy (N, F, Lo), one float dtype.
    Returns (dx (N, C, L) or None when ``input_grad`` is false, dw (F, C, K), db (F,)).
    """
    x, w, stride, pad, dilation, lo = _conv_args(x, w, stride, pad, dilation)
    dy = validate.float_array(dy, "dy", 3)
    ck._same_dtype(x=x, w=w, dy=dy)
    f, c, kk = w.shape
    n, dt = x.shape[0], x.dtype
    if dy.shape != (n, f, lo):
        raise ConfigError(f"dy has shape {dy.shape}, expected {(n, f, lo)}")
    k = c * kk
    wm = w.reshape(f, k)
    dbpart = np.empty((n, f), np.float64)
    dx = np.empty(x.shape, dt) if input_grad else None
    per_sample = _per_sample(k, lo)
    nb = ck._chunk(n, lo, k + 1, max(f, k), dt.itemsize, numba.get_num_threads())

    def task_per_sample(n0, m, buf):
        cols, dcols = ck._split(buf, dt, (k + 1) * m * lo, max(f, k) * m * lo)
        cols, dyc = cols.reshape(k + 1, m, lo), dy[n0:n0 + m]
        _im2colt_kernel(x[n0:n0 + m], kk, stride, pad, dilation, lo, cols[:k])
        cols[k] = 1
        if input_grad:
            dcols = dcols[:k * m * lo].reshape(k, m, lo)
            np.matmul(wm.T, dyc, out=dcols.transpose(1, 0, 2))
            _col2imt_kernel(dcols, kk, stride, pad, dilation, lo, dx[n0:n0 + m])
        return np.matmul(cols.transpose(1, 0, 2), dyc.transpose(0, 2, 1)).sum(axis=0)  # [dw | db].T

    def task(n0, m, buf):
        cols, dyt = ck._split(buf, dt, k * m * lo, max(f, k) * m * lo)
        cols, dyt = cols.reshape(k, m * lo), dyt[:f * m * lo].reshape(f, m * lo)
        ck._nfp_to_fnp(dy[n0:n0 + m], dyt.reshape(f, m, lo), dbpart[n0:n0 + m])
        _im2colt_kernel(x[n0:n0 + m], kk, stride, pad, dilation, lo, cols.reshape(k, m, lo))
        dw_chunk = dyt @ cols.T
        if input_grad:
            np.matmul(wm.T, dyt, out=cols)
            _col2imt_kernel(cols.reshape(k, m, lo), kk, stride, pad, dilation, lo, dx[n0:n0 + m])
        return dw_chunk

    nbytes = ck._scratch_bytes(dt, (k + 1) * nb * lo, max(f, k) * nb * lo)
    if per_sample:
        dwb = np.zeros((k + 1, f), dt)
        for part in ck._run_chunks(task_per_sample, n, nb, nbytes):
            dwb += part
        return dx, np.ascontiguousarray(dwb[:k].T).reshape(w.shape), dwb[k].copy()
    dw = np.zeros((f, k), dt)
    for part in ck._run_chunks(task, n, nb, nbytes):
        dw += part
    db = dbpart.sum(axis=0).astype(dt)
    return dx, dw.reshape(w.shape), db


def maxpool1d_forward(x, size=2, stride=None, with_argmax=True):
    """Max pooling without padding. x (N, C, L) float32/float64; ``stride`` defaults to ``size``.

    Returns y (N, C, Lo) with Lo = (L - size) // stride + 1, and argmax (N, C, Lo)
    int32, the position in L of each maximum (None when not ``with_argmax``).
    """
    x, size, stride, lo = _pool_args(x, size, stride, "max pool")
    n, c, _ = x.shape
    y = np.empty((n, c, lo), x.dtype)
    argmax = np.empty((n, c, lo) if with_argmax else (1, 1, 1), np.int32)
    _maxpool_fwd_kernel(x, size, stride, lo, y, argmax, with_argmax)
    return y, (argmax if with_argmax else None)


def maxpool1d_backward(dy, argmax, x_shape):
    """Gradient of ``maxpool1d_forward``: dy (N, C, Lo) -> dx of shape x_shape (N, C, L)."""
    dy = validate.float_array(dy, "dy", 3)
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu" or argmax.shape != dy.shape:
        raise ConfigError(f"argmax must be an integer array of dy's shape {dy.shape}")
    if len(x_shape) != 3 or tuple(x_shape[:2]) != dy.shape[:2]:
        raise ConfigError(f"x_shape {tuple(x_shape)} does not match dy of shape {dy.shape}")
    n, c, length = (int(v) for v in x_shape)
    if argmax.size and (argmax.min() < 0 or argmax.max() >= length):
        raise ConfigError(f"argmax holds positions outside a sequence of length {length}")
    dx = np.zeros((n, c, length), dy.dtype)
    _maxpool_bwd_kernel(dy, np.ascontiguousarray(argmax), dx)
    return dx


def avgpool1d_forward(x, size=2, stride=None):
    """Average pooling without padding: x (N, C, L) -> y (N, C, Lo), Lo = (L - size) // stride + 1."""
    x, size, stride, lo = _pool_args(x, size, stride, "average pool")
    y = np.empty(x.shape[:2] + (lo,), x.dtype)
    _avgpool_fwd_kernel(x, size, stride, lo, y)
    return y


def avgpool1d_backward(dy, x_shape, size=2, stride=None):
    """Gradient of ``avgpool1d_forward``: dy (N, C, Lo) -> dx of shape x_shape (N, C, L)."""
    dy = validate.float_array(dy, "dy", 3)
    size = validate.integer(size, "size", 1)
    stride = size if stride is None else validate.integer(stride, "stride", 1)
    shape = _check_x_shape(x_shape, dy, size, stride, "average pool")
    dx = np.zeros(shape, dy.dtype)
    _avgpool_bwd_kernel(dy, size, stride, dx)
    return dx
