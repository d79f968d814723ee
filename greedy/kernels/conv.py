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

Threads: ``numba.get_num_threads()`` Python worker threads each take whole
chunks (next free chunk first) and run serial ``nogil`` kernels and a
single-threaded BLAS multiply on them; BLAS is limited to one thread, process
wide through threadpoolctl, while they run. This replaces prange on purpose:
alternating numba's OpenMP pool with OpenBLAS's threads once per chunk lets
each pool's idle threads spin while the other works; on the shared 2-core
machine (busy at the time) that version reached 0.1-0.4 of an equal-work
matmul's throughput, this one 0.7-0.9 (perf/test_bench_conv.py).
The dw partial of every chunk is added in chunk order, so
results do not depend on thread timing.

Memory: each worker holds the scratch memory of one chunk of n samples, the
im2col buffer plus an (F, n*Ho*Wo) buffer for the output or its gradient, i.e.
(C*KH*KW + F) * n*Ho*Wo values, at most ``CHUNK_BYTES`` (4 MiB, so that the
chunks of the workers stay in L3 cache between im2col and the multiply; one
sample may exceed it when one sample alone is larger). Scratch buffers are
kept for reuse by later calls (so repeated calls do not pay page faults).

All functions accept float32 or float64 (all array arguments of one call in
the same dtype) and return that dtype. Pools use floor behaviour: windows that
do not fit are dropped, like PyTorch's default.
"""
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import prange
from threadpoolctl import ThreadpoolController

from greedy.errors import ConfigError

CHUNK_BYTES = 4 * 2**20

_scratch = []  # byte buffers free for reuse, one is taken per worker and call
_scratch_lock = threading.Lock()
_threadpools = None


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
def _gather_patches_kernel(x, img, row, col, kh, kw, pad, out):
    """out[j] = the (C, kh, kw) window of image img[j] at output pixel (row[j], col[j]), stride 1, zero padding."""
    n, c, h, w = x.shape
    for j in prange(len(img)):
        s = img[j]
        for ci in range(c):
            for a in range(kh):
                hh = row[j] - pad + a
                for b in range(kw):
                    ww = col[j] - pad + b
                    inside = hh >= 0 and hh < h and ww >= 0 and ww < w
                    out[j, (ci * kh + a) * kw + b] = x[s, ci, hh, ww] if inside else 0


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


@numba.njit(nogil=True, cache=True)
def _im2colt_kernel(x, kh, kw, stride, pad, ho, wo, out):
    """x (n, C, H, W) -> out (C*kh*kw, n, ho*wo): patch rows by (c, kh, kw), then sample, then position."""
    n, c, h, w = x.shape
    for i in range(c * kh * kw * n):
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


@numba.njit(nogil=True, cache=True)
def _col2imt_kernel(cols, kh, kw, stride, pad, ho, wo, dx):
    """Adds cols (C*kh*kw, n, ho*wo) into dx (n, C, H, W)."""
    n, c, h, w = dx.shape
    for i in range(n * c):
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


@numba.njit(nogil=True, cache=True)
def _fnp_to_nfp(yt, bias, y):
    """yt (F, n, P) + bias (F,) -> y (n, F, P)."""
    f, n, p = yt.shape
    for k in range(f):
        bk = bias[k]
        for s in range(n):
            src, dst = yt[k, s], y[s, k]
            for q in range(p):
                dst[q] = src[q] + bk


@numba.njit(nogil=True, cache=True)
def _fnp_to_nfp_relu_pool(yt, bias, wo, size, relu, y):
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


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _nfp_to_fnp(dy, dyt, dbpart):
    """dy (n, F, P) -> dyt (F, n, P); bias-gradient partials dbpart (n, F) = sum of dy over P.

    ``reassoc`` lets the sum vectorise (7x faster than the sequential float64 sum).
    """
    n, f, p = dy.shape
    for i in range(n * f):
        s = i // f
        k = i - s * f
        acc = 0.0
        for q in range(p):
            v = dy[s, k, q]
            dyt[k, s, q] = v
            acc += v
        dbpart[s, k] = acc


@numba.njit(parallel=True, cache=True)
def _maxpool_fwd_kernel(x, size, stride, ho, wo, y, argmax, keep_argmax):
    """x (n, c, H, W) -> y (n, c, ho, wo), argmax = flat index h*W + w of the maximum in its plane (if kept)."""
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
                if keep_argmax:
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


def _chunk(n, p, k, f, itemsize, workers):
    """Samples per chunk so that its (k, chunk*p) and (f, chunk*p) buffers fit CHUNK_BYTES.

    Work that fits one chunk stays one chunk (no worker threads); otherwise
    there are at least ``workers`` chunks of near-equal size.
    """
    per_sample = (k + f) * p * itemsize
    if n * per_sample <= CHUNK_BYTES:
        return n
    chunks = max(workers, -(-n * per_sample // CHUNK_BYTES))
    return max(1, min(CHUNK_BYTES // per_sample, -(-n // chunks)))


def _take_scratch(count, nbytes):
    with _scratch_lock:
        bufs = [_scratch.pop() for _ in range(min(count, len(_scratch)))]
    bufs += [np.empty(0, np.uint8)] * (count - len(bufs))
    return [b if b.nbytes >= nbytes else np.empty(nbytes, np.uint8) for b in bufs]


def _give_scratch(bufs):
    with _scratch_lock:
        _scratch.extend(bufs)


def _split(buf, dtype, *sizes):
    """Flat arrays of the given element counts carved from one byte buffer (64-byte aligned offsets)."""
    out, start = [], 0
    for n in sizes:
        out.append(buf[start:start + n * dtype.itemsize].view(dtype))
        start += -(-n * dtype.itemsize // 64) * 64
    return out


def _scratch_bytes(dtype, *sizes):
    return sum(-(-n * dtype.itemsize // 64) * 64 for n in sizes)


def _run_chunks(task, n, nb, nbytes):
    """Runs task(n0, m, buf) over the chunks [n0, n0 + m) of n samples; returns their results in order.

    Workers take the next free chunk; each owns one scratch byte buffer of nbytes.
    """
    global _threadpools
    if n == 0:
        return []
    n_chunks = -(-n // nb)
    workers = min(numba.get_num_threads(), n_chunks)
    bufs = _take_scratch(workers, nbytes)
    results = [None] * n_chunks
    counter = itertools.count()

    def work(buf):
        while (q := next(counter)) < n_chunks:
            results[q] = task(q * nb, min(nb, n - q * nb), buf)

    try:
        if workers == 1:
            work(bufs[0])
        else:
            if _threadpools is None:
                _threadpools = ThreadpoolController()
            with _threadpools.limit(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
                for fut in [pool.submit(work, buf) for buf in bufs]:
                    fut.result()
    finally:
        _give_scratch(bufs)
    return results


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


def gather_patches(x, img, row, col, kh, kw, pad):
    """Rows of ``im2col(x, kh, kw, 1, pad)`` for the given (image, output row, output column) triples only.

    x (N, C, H, W) float; img, row, col (M,) int. Returns (M, C*kh*kw) in x's dtype.
    """
    x = _float_array("x", x, 4)
    img, row, col = (np.ascontiguousarray(a, dtype=np.int64) for a in (img, row, col))
    out = np.empty((len(img), x.shape[1] * kh * kw), x.dtype)
    _gather_patches_kernel(x, img, row, col, kh, kw, pad, out)
    return out


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


def conv2d_forward(x, w, b, stride=1, pad=0, relu=False, pool=1):
    """Cross-correlation y = conv(x, w) + b with zero padding; optionally ReLU and max pooling fused in.

    x (N, C, H, W), w (F, C, KH, KW), b (F,), one float dtype.
    Returns y (N, F, Ho, Wo) with Ho = (H + 2*pad - KH) // stride + 1 (same for Wo).
    With ``relu`` and/or ``pool`` > 1 it returns maxpool(relu(y)) of shape
    (N, F, Ho // pool, Wo // pool), computed from each chunk's GEMM output
    without writing the full-size y (an inference pass; nothing is kept for backward).
    """
    x, w, stride, pad, ho, wo = _conv_args(x, w, stride, pad)
    b = _float_array("b", b, 1)
    _same_dtype(x=x, w=w, b=b)
    f, c, kh, kw = w.shape
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    pool = _int_at_least("pool", pool, 1)
    if pool > min(ho, wo):
        raise ConfigError(f"pool {pool} does not fit a {ho}x{wo} conv output")
    n, dt = x.shape[0], x.dtype
    p, k = ho * wo, c * kh * kw
    wm = w.reshape(f, k)
    fused = relu or pool > 1
    y = np.empty((n, f, ho // pool, wo // pool), dt)
    nb = _chunk(n, p, k, f, dt.itemsize, numba.get_num_threads())

    def task(n0, m, buf):
        cols, yt = _split(buf, dt, k * m * p, f * m * p)
        _im2colt_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, cols.reshape(k, m, p))
        np.matmul(wm, cols.reshape(k, m * p), out=yt.reshape(f, m * p))
        if fused:
            _fnp_to_nfp_relu_pool(yt.reshape(f, m, p), b, wo, pool, bool(relu), y[n0:n0 + m])
        else:
            _fnp_to_nfp(yt.reshape(f, m, p), b, y[n0:n0 + m].reshape(m, f, p))

    _run_chunks(task, n, nb, _scratch_bytes(dt, k * nb * p, f * nb * p))
    return y


def conv2d_backward(x, w, dy, stride=1, pad=0, input_grad=True):
    """Gradients of ``conv2d_forward`` given dy = dL/dy.

    x (N, C, H, W), w (F, C, KH, KW), dy (N, F, Ho, Wo), one float dtype.
    Returns (dx (N, C, H, W) or None when ``input_grad`` is false, dw (F, C, KH, KW), db (F,)).
    """
    x, w, stride, pad, ho, wo = _conv_args(x, w, stride, pad)
    dy = _float_array("dy", dy, 4)
    _same_dtype(x=x, w=w, dy=dy)
    f, c, kh, kw = w.shape
    n, dt = x.shape[0], x.dtype
    if dy.shape != (n, f, ho, wo):
        raise ConfigError(f"dy has shape {dy.shape}, expected {(n, f, ho, wo)}")
    p, k = ho * wo, c * kh * kw
    wm = w.reshape(f, k)
    dbpart = np.empty((n, f), np.float64)
    dx = np.zeros(x.shape, dt) if input_grad else None
    nb = _chunk(n, p, k, f, dt.itemsize, numba.get_num_threads())

    def task(n0, m, buf):
        cols, dyt = _split(buf, dt, k * m * p, f * m * p)
        cols, dyt = cols.reshape(k, m * p), dyt.reshape(f, m * p)
        _nfp_to_fnp(dy[n0:n0 + m].reshape(m, f, p), dyt.reshape(f, m, p), dbpart[n0:n0 + m])
        _im2colt_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, cols.reshape(k, m, p))
        dw_chunk = dyt @ cols.T
        if input_grad:
            np.matmul(wm.T, dyt, out=cols)
            _col2imt_kernel(cols.reshape(k, m, p), kh, kw, stride, pad, ho, wo, dx[n0:n0 + m])
        return dw_chunk

    dw = np.zeros((f, k), dt)
    for part in _run_chunks(task, n, nb, _scratch_bytes(dt, k * nb * p, f * nb * p)):
        dw += part
    db = dbpart.sum(axis=0).astype(dt)
    return dx, dw.reshape(w.shape), db


def maxpool2d_forward(x, size=2, stride=2, with_argmax=True):
    """Max pooling without padding. x (N, C, H, W) float32/float64.

    Returns y (N, C, Ho, Wo) with Ho = (H - size) // stride + 1, and argmax
    (N, C, Ho, Wo) int32: flat index h*W + w of each maximum inside its (H, W) plane
    (None when not ``with_argmax``: inference needs no backward).
    """
    x = _float_array("x", x, 4)
    size = _int_at_least("size", size, 1)
    stride = _int_at_least("stride", stride, 1)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, size, size, stride, 0, "max pool")
    y = np.empty((n, c, ho, wo), x.dtype)
    argmax = np.empty((n, c, ho, wo) if with_argmax else (1, 1, 1, 1), np.int32)
    _maxpool_fwd_kernel(x, size, stride, ho, wo, y, argmax, with_argmax)
    return y, (argmax if with_argmax else None)


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
