"""Convolution of NCHW arrays: im2col + one BLAS matrix multiply per chunk of samples.

Each chunk of n samples is copied into a transposed im2col buffer (C*KH*KW, n, Ho*Wo)
so that every matrix multiply is one large BLAS call and the output lands in
NCHW order with contiguous copies only:
y (F, n*P) = w (F, K) @ cols, dw = dy (F, n*P) @ cols.T,
dcols = w.T @ dy (F, n*P), then the transposed col2im. The row-major im2col and
col2im of whole arrays are in ``greedy.kernels.im2col``, pooling in ``greedy.kernels.pool``.
The backward of a conv followed by max pooling (``argmax``) visits the window
maxima only, without im2col, where patch rows are long (``greedy.kernels.pooledgrad``).

Threads: ``numba.get_num_threads()`` workers (the calling thread and helper
threads kept between calls) each take whole chunks (next free chunk first)
and run serial ``nogil`` kernels and a single-threaded BLAS multiply on them;
BLAS is limited to one thread, process wide through threadpoolctl, while they
run. This replaces prange on purpose:
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
the same dtype) and return that dtype.
"""
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels import pooledgrad
from greedy.kernels.convpool import fnp_to_nfp_relu_pool, fnp_to_nfp_relu_pool_argmax, pooled_to_fnp

CHUNK_BYTES = 4 * 2**20
# the backward of a pooled conv visits the window maxima only (``greedy.kernels.pooledgrad``) when its
# patch rows, KW*C values, are at least this long; shorter rows keep im2col and the multiply
POOLED_MIN_RUN = 96

_scratch = []  # byte buffers free for reuse, one is taken per worker and call
_scratch_lock = threading.Lock()
_threadpools = None
_pool, _pool_size = None, 0  # helper threads of _run_chunks, started on first use
_pool_lock = threading.Lock()
_in_helper = threading.local()


# ---------------------------------------------------------------- kernels


@numba.njit(nogil=True, cache=True, inline="always")
def copy_run(dst, src, count, stride):
    """dst[q] = src[q * stride] for q < count (the patch copies of im2col).

    Inlined into its callers: called per run, the 2-D conv kernels took twice as long.
    """
    if stride == 1:
        for q in range(count):
            dst[q] = src[q]
    else:
        for q in range(count):
            dst[q] = src[q * stride]


@numba.njit(nogil=True, cache=True, inline="always")
def add_run(dst, src, count, stride):
    """dst[q * stride] += src[q] for q < count (the patch sums of col2im)."""
    if stride == 1:
        for q in range(count):
            dst[q] += src[q]
    else:
        for q in range(count):
            dst[q * stride] += src[q]


@numba.njit(nogil=True, cache=True)
def _im2colt_kernel(x, kh, kw, stride, pad, ho, wo, out):
    """x (n, C, H, W) -> out (C*kh*kw, n, ho*wo): patch rows by (c, kh, kw), then sample, then position.

    Each input plane is first copied into the middle of a zero-padded plane, so every tap then copies
    runs of ``wo`` values without bounds checks or zeroing (on 7 x 7 maps 1.9x faster than clearing
    the padding of every tap row; perf/README.md, "im2col").
    """
    n, c, h, w = x.shape
    wp = w + 2 * pad
    plane = np.zeros((h + 2 * pad) * wp, out.dtype)
    for i in range(n * c):
        s = i // c
        ci = i - s * c
        for r in range(h):
            copy_run(plane[(r + pad) * wp + pad:], x[s, ci, r], w, 1)
        for a in range(kh):
            for b in range(kw):
                orow = out[(ci * kh + a) * kw + b, s]
                for oh in range(ho):
                    copy_run(orow[oh * wo:], plane[(oh * stride + a) * wp + b:], wo, stride)


@numba.njit(nogil=True, cache=True)
def _col2imt_kernel(cols, kh, kw, stride, pad, ho, wo, dx):
    """Writes into dx (n, C, H, W) the sum of the patch columns cols (C*kh*kw, n, ho*wo): the adjoint of
    ``_im2colt_kernel``.

    Each plane's taps are added into a zero-padded scratch plane by runs of ``wo`` values, without
    bounds checks, and its middle is copied out (7-30 % faster than adding into dx tap by tap with
    the padding cut off; perf/README.md, "im2col").
    """
    n, c, h, w = dx.shape
    wp = w + 2 * pad
    plane = np.empty((h + 2 * pad) * wp, dx.dtype)
    for i in range(n * c):
        s = i // c
        ci = i - s * c
        plane[:] = 0
        for a in range(kh):
            for b in range(kw):
                crow = cols[(ci * kh + a) * kw + b, s]
                for oh in range(ho):
                    add_run(plane[(oh * stride + a) * wp + b:], crow[oh * wo:], wo, stride)
        for r in range(h):
            copy_run(dx[s, ci, r], plane[(r + pad) * wp + pad:], w, 1)


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


# ---------------------------------------------------------------- checks


def _same_dtype(**arrays):
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in dtypes.items())
        raise ConfigError(f"arrays must share one dtype, got {listed}")


def _out_size(h, w, kh, kw, stride, pad, what):
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"{what} window {kh}x{kw} (padding {pad}) does not fit a {h}x{w} input")
    return ho, wo


def _output(out, shape, dtype):
    """``out`` checked to be a C-contiguous ``dtype`` array of ``shape`` (as a plain ndarray view), or a
    new array when it is None: kernels write into it without bounds checks."""
    if out is None:
        return np.empty(shape, dtype)
    out = np.asarray(out)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ConfigError(f"out must be a C-contiguous {np.dtype(dtype)} array of shape {shape}, got "
                          f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}")
    return out


def _conv_args(x, w, stride, pad):
    x = validate.float_array(x, "x", 4)
    w = validate.float_array(w, "w", 4)
    _same_dtype(x=x, w=w)
    if w.shape[1] != x.shape[1]:
        raise ConfigError(f"w has {w.shape[1]} input channels but x has {x.shape[1]}")
    stride = validate.integer(stride, "stride", 1)
    pad = validate.integer(pad, "pad", 0)
    ho, wo = _out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, pad, "conv")
    return x, w, stride, pad, ho, wo


def chunk_samples(n, per_sample, limit, workers, split_above):
    """Samples per chunk of n samples of ``per_sample`` scratch bytes each, the chunk at most ``limit`` bytes.

    Work of at most ``split_above`` bytes stays one chunk (no worker threads); larger work has a multiple
    of ``workers`` chunks of near-equal size, so that no worker waits long on another's last chunk.
    """
    if n * per_sample <= min(split_above, limit):
        return max(1, n)
    chunks = -(-n * per_sample // limit)
    chunks = -(-chunks // workers) * workers
    return max(1, min(limit // per_sample, -(-n // chunks)))


def _chunk(n, p, k, f, itemsize, workers):
    """Samples per chunk so that its (k, chunk*p) and (f, chunk*p) buffers fit CHUNK_BYTES; work that fits
    one chunk stays one chunk (``chunk_samples``)."""
    return chunk_samples(n, (k + f) * p * itemsize, CHUNK_BYTES, workers, CHUNK_BYTES)


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


def _helpers(count):
    """The process's pool of at least ``count`` helper threads, kept between calls (starting threads took
    0.17 ms a call, about 1 % of an MNIST training step of four convs)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(count, thread_name_prefix="greedy-chunks"), count
        return _pool


def _forget_pool():
    """A forked child has none of its parent's threads: it starts its own pool when it needs one."""
    global _pool, _pool_size
    _pool, _pool_size = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _run_chunks(task, n, nb, nbytes):
    """Runs task(n0, m, buf) over the chunks [n0, n0 + m) of n samples; returns their results in order.

    Workers (the calling thread and helper threads) take the next free chunk; each owns one scratch
    byte buffer of nbytes. A call from inside a helper runs all its chunks in that thread.
    """
    global _threadpools
    if n == 0:
        return []
    n_chunks = -(-n // nb)
    workers = 1 if getattr(_in_helper, "flag", False) else min(numba.get_num_threads(), n_chunks)
    bufs = _take_scratch(workers, nbytes)
    results = [None] * n_chunks
    counter = itertools.count()

    def work(buf):
        while (q := next(counter)) < n_chunks:
            results[q] = task(q * nb, min(nb, n - q * nb), buf)

    def helper(buf):
        _in_helper.flag = True
        try:
            work(buf)
        finally:
            _in_helper.flag = False

    try:
        if workers == 1:
            work(bufs[0])
        else:
            if _threadpools is None:
                _threadpools = ThreadpoolController()
            with _threadpools.limit(limits=1, user_api="blas"):
                pool = _helpers(workers - 1)
                futures = [pool.submit(helper, buf) for buf in bufs[1:]]
                try:
                    work(bufs[0])
                finally:
                    wait(futures)
                for fut in futures:
                    fut.result()
    finally:
        _give_scratch(bufs)
    return results


# ---------------------------------------------------------------- public API


def conv2d_forward(x, w, b, stride=1, pad=0, relu=False, pool=1, keep_argmax=False, out=None):
    """Cross-correlation y = conv(x, w) + b with zero padding; optionally ReLU and max pooling fused in.

    x (N, C, H, W), w (F, C, KH, KW), b (F,), one float dtype.
    Returns y (N, F, Ho, Wo) with Ho = (H + 2*pad - KH) // stride + 1 (same for Wo).
    With ``relu`` and/or ``pool`` > 1 it returns maxpool(relu(y)) of shape
    (N, F, Ho // pool, Wo // pool), computed from each chunk's GEMM output
    without writing the full-size y. With ``keep_argmax`` it returns (that map,
    argmax) instead, argmax int32 of the same shape (``greedy.kernels.convpool``):
    what ``conv2d_backward(..., argmax=argmax)`` needs to take the pooled map's gradient.
    ``out``, a C-contiguous array of the returned map's shape and dtype (a slice of a feature cache,
    say), receives the map instead of a new array.
    """
    x, w, stride, pad, ho, wo = _conv_args(x, w, stride, pad)
    b = validate.float_array(b, "b", 1)
    _same_dtype(x=x, w=w, b=b)
    f, c, kh, kw = w.shape
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    pool = validate.integer(pool, "pool", 1)
    if pool > min(ho, wo):
        raise ConfigError(f"pool {pool} does not fit a {ho}x{wo} conv output")
    n, dt = x.shape[0], x.dtype
    p, k = ho * wo, c * kh * kw
    wm = w.reshape(f, k)
    fused = relu or pool > 1
    y = _output(out, (n, f, ho // pool, wo // pool), dt)
    argmax = np.empty(y.shape, np.int32) if keep_argmax else None
    nb = _chunk(n, p, k, f, dt.itemsize, numba.get_num_threads())

    def task(n0, m, buf):
        cols, yt = _split(buf, dt, k * m * p, f * m * p)
        _im2colt_kernel(x[n0:n0 + m], kh, kw, stride, pad, ho, wo, cols.reshape(k, m, p))
        np.matmul(wm, cols.reshape(k, m * p), out=yt.reshape(f, m * p))
        if keep_argmax:
            fnp_to_nfp_relu_pool_argmax(yt.reshape(f, m, p), b, wo, pool, bool(relu), y[n0:n0 + m],
                                        argmax[n0:n0 + m])
        elif fused:
            fnp_to_nfp_relu_pool(yt.reshape(f, m, p), b, wo, pool, bool(relu), y[n0:n0 + m])
        else:
            _fnp_to_nfp(yt.reshape(f, m, p), b, y[n0:n0 + m].reshape(m, f, p))

    _run_chunks(task, n, nb, _scratch_bytes(dt, k * nb * p, f * nb * p))
    return (y, argmax) if keep_argmax else y


def conv2d_backward(x, w, dy, stride=1, pad=0, input_grad=True, argmax=None):
    """Gradients of ``conv2d_forward`` given dy = dL/dy.

    x (N, C, H, W), w (F, C, KH, KW), dy (N, F, Ho, Wo), one float dtype.
    With ``argmax`` (from ``conv2d_forward(..., keep_argmax=True)``), dy is the gradient of
    that call's pooled map instead, (N, F, Ho // pool, Wo // pool) like argmax.
    Returns (dx (N, C, H, W) or None when ``input_grad`` is false, dw (F, C, KH, KW), db (F,)).
    """
    x, w, stride, pad, ho, wo = _conv_args(x, w, stride, pad)
    dy = validate.float_array(dy, "dy", 4)
    _same_dtype(x=x, w=w, dy=dy)
    f, c, kh, kw = w.shape
    n, dt = x.shape[0], x.dtype
    p, k = ho * wo, c * kh * kw
    if argmax is None and dy.shape != (n, f, ho, wo):
        raise ConfigError(f"dy has shape {dy.shape}, expected {(n, f, ho, wo)}")
    if argmax is not None:
        _check_argmax(argmax, dy, n, f, p)
        if kw * c >= POOLED_MIN_RUN:
            return _pooled_backward(x, w, dy, argmax, stride, pad, wo, input_grad)
    wm = w.reshape(f, k)
    dbpart = np.empty((n, f), np.float64)
    dx = np.empty(x.shape, dt) if input_grad else None
    nb = _chunk(n, p, k, f, dt.itemsize, numba.get_num_threads())

    def task(n0, m, buf):
        cols, dyt = _split(buf, dt, k * m * p, f * m * p)
        cols, dyt = cols.reshape(k, m * p), dyt.reshape(f, m * p)
        if argmax is None:
            _nfp_to_fnp(dy[n0:n0 + m].reshape(m, f, p), dyt.reshape(f, m, p), dbpart[n0:n0 + m])
        else:
            pooled_to_fnp(dy[n0:n0 + m], argmax[n0:n0 + m], dyt.reshape(f, m, p), dbpart[n0:n0 + m])
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


def _pooled_backward(x, w, dy, argmax, stride, pad, wo, input_grad):
    """``conv2d_backward`` with an argmax, by ``greedy.kernels.pooledgrad``: per chunk of samples, the
    input and its gradient held channels last and zero padded, (C + C) * (H + 2 pad) * (W + 2 pad)
    values a sample, at most ``CHUNK_BYTES``."""
    f, c, kh, kw = w.shape
    n, dt = x.shape[0], x.dtype
    hpad, wpad = x.shape[2] + 2 * pad, x.shape[3] + 2 * pad
    plane = hpad * wpad * c
    planes = 2 if input_grad else 1
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(f, kh, kw * c)
    dbpart = np.empty((n, f), np.float64)
    dx = np.empty(x.shape, dt) if input_grad else None
    nb = chunk_samples(n, planes * plane * dt.itemsize, CHUNK_BYTES, numba.get_num_threads(), CHUNK_BYTES)

    def task(n0, m, buf):
        xp, dxp = _split(buf, dt, m * plane, (planes - 1) * m * plane)
        xp = xp.reshape(m, hpad, wpad, c)
        pooledgrad.to_padded_channels_last(x[n0:n0 + m], pad, xp)
        dwt = np.zeros(wt.shape, dt)
        pooledgrad.weight_grad(xp, dy[n0:n0 + m], argmax[n0:n0 + m], kh, wo, stride, dwt, dbpart[n0:n0 + m])
        if input_grad:
            dxp = dxp.reshape(m, hpad, wpad, c)
            dxp[...] = 0
            pooledgrad.input_grad(dy[n0:n0 + m], argmax[n0:n0 + m], wt, wo, stride, dxp)
            pooledgrad.from_padded_channels_last(dxp, pad, dx[n0:n0 + m])
        return dwt

    dwt = np.zeros(wt.shape, dt)
    for part in _run_chunks(task, n, nb, _scratch_bytes(dt, nb * plane, (planes - 1) * nb * plane)):
        dwt += part
    dw = np.ascontiguousarray(dwt.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))
    return dx, dw, dbpart.sum(axis=0).astype(dt)


def _check_argmax(argmax, dy, n, f, p):
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32 or not argmax.flags.c_contiguous:
        raise ConfigError("argmax must be the C-contiguous int32 array of conv2d_forward(..., keep_argmax=True)")
    if argmax.shape != dy.shape or dy.shape[:2] != (n, f):
        raise ConfigError(f"argmax has shape {argmax.shape}, dy {dy.shape}; both must be ({n}, {f}, ...)")
    if argmax.size and (argmax.min() < -1 or argmax.max() >= p):
        raise ConfigError(f"argmax holds indices outside a conv output plane of {p} pixels")
