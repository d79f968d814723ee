"""Convolution and pooling kernels against plain NumPy references and finite differences."""
import os
import select
import threading
import time

import numba
import numpy as np
import pytest

from greedy.kernels import conv as ck
from greedy.kernels import im2col as ik
from greedy.kernels import pooledgrad
from greedy.kernels import pool as pk
from greedy.errors import ConfigError

from gradcheck import numeric_grad

# (N, C, H, W, F, KH, KW, stride, pad)
CONV_CASES = [
    (2, 2, 7, 9, 3, 3, 3, 1, 1),
    (1, 2, 7, 9, 5, 3, 3, 2, 0),
    (2, 2, 8, 8, 3, 5, 5, 1, 2),
    (3, 2, 6, 5, 3, 1, 1, 1, 0),
    (2, 2, 9, 7, 3, 5, 5, 2, 1),
    (2, 2, 5, 5, 3, 3, 3, 2, 2),
    (1, 3, 7, 6, 2, 1, 1, 2, 1),
    (2, 2, 6, 7, 3, 3, 2, 1, 1),
    (2, 2, 6, 7, 3, 3, 1, 1, 0),
    (1, 1, 1, 2, 2, 3, 3, 1, 1),
    (2, 2, 5, 4, 3, 1, 1, 1, 2),
]
# (N, C, H, W, size, stride)
POOL_CASES = [
    (2, 2, 7, 9, 2, 2),
    (1, 2, 6, 6, 3, 3),
    (2, 2, 7, 7, 3, 2),
    (2, 1, 5, 8, 2, 1),
]


def conv_reference(x, w, b, stride, pad):
    """Cross-correlation by summing one einsum per kernel offset over strided slices."""
    f, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], f, ho, wo))
    for a in range(kh):
        for c in range(kw):
            patch = xp[:, :, a:a + stride * (ho - 1) + 1:stride, c:c + stride * (wo - 1) + 1:stride]
            y += np.einsum("nchw,fc->nfhw", patch, w[:, :, a, c].astype(np.float64))
    return y + b.astype(np.float64)[None, :, None, None]


def pool_windows(x, size, stride):
    """All size*size strided views of x, one per window offset."""
    ho = (x.shape[2] - size) // stride + 1
    wo = (x.shape[3] - size) // stride + 1
    return [x[:, :, a:a + stride * (ho - 1) + 1:stride, c:c + stride * (wo - 1) + 1:stride]
            for a in range(size) for c in range(size)]


def rel_error(analytic, numeric):
    return np.max(np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8))


def random_conv(case, dtype, seed=0):
    n, c, h, wd, f, kh, kw, stride, pad = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, w, b, stride, pad


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_conv_forward_matches_reference(case, dtype, tol):
    x, w, b, stride, pad = random_conv(case, dtype)
    y = ck.conv2d_forward(x, w, b, stride, pad)
    ref = conv_reference(x, w, b, stride, pad)
    assert y.dtype == dtype
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_backward_matches_finite_differences(case):
    x, w, b, stride, pad = random_conv(case, np.float64, seed=1)
    r = np.random.default_rng(2).standard_normal(ck.conv2d_forward(x, w, b, stride, pad).shape)

    def loss():
        return np.sum(ck.conv2d_forward(x, w, b, stride, pad) * r)

    dx, dw, db = ck.conv2d_backward(x, w, r, stride, pad)
    assert rel_error(dx, numeric_grad(loss, x, 1e-3)) < 1e-6
    assert rel_error(dw, numeric_grad(loss, w, 1e-3)) < 1e-6
    assert rel_error(db, numeric_grad(loss, b, 1e-3)) < 1e-6


def test_conv_backward_without_dx_and_float32():
    x, w, b, stride, pad = random_conv(CONV_CASES[0], np.float64)
    dy = np.random.default_rng(3).standard_normal(ck.conv2d_forward(x, w, b, stride, pad).shape)
    dx64, dw64, db64 = ck.conv2d_backward(x, w, dy, stride, pad)
    none, dw, db = ck.conv2d_backward(x, w, dy, stride, pad, input_grad=False)
    assert none is None
    np.testing.assert_allclose(dw, dw64, rtol=1e-12)
    np.testing.assert_allclose(db, db64, rtol=1e-12)
    f32 = [a.astype(np.float32) for a in (x, w, dy)]
    dx32, dw32, db32 = ck.conv2d_backward(*f32, stride, pad)
    assert dx32.dtype == dw32.dtype == db32.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4 * np.abs(dx64).max())
    np.testing.assert_allclose(dw32, dw64, rtol=1e-4, atol=1e-4 * np.abs(dw64).max())


def test_conv_of_empty_batch():
    x, w, b, stride, pad = random_conv(CONV_CASES[0], np.float32)
    y = ck.conv2d_forward(x[:0], w, b, stride, pad)
    dx, dw, db = ck.conv2d_backward(x[:0], w, y, stride, pad)
    assert y.shape == (0, 3, 7, 9) and dx.shape == (0, 2, 7, 9)
    assert not dw.any() and not db.any()


def test_conv_accepts_non_contiguous_inputs():
    x, w, b, stride, pad = random_conv(CONV_CASES[0], np.float64)
    dy = np.random.default_rng(3).standard_normal(ck.conv2d_forward(x, w, b, stride, pad).shape)
    w_view = w[:, :, ::-1, ::-1].copy()[:, :, ::-1, ::-1]
    np.testing.assert_array_equal(ck.conv2d_forward(np.asfortranarray(x), w_view, b, stride, pad),
                                  ck.conv2d_forward(x, w, b, stride, pad))
    for got, want in zip(ck.conv2d_backward(x, w_view, np.asfortranarray(dy), stride, pad),
                         ck.conv2d_backward(x, w, dy, stride, pad)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}))
def test_conv_chunking_gives_same_result(monkeypatch, threads):
    x, w, b, stride, pad = random_conv((7, 3, 9, 8, 4, 3, 3, 1, 1), np.float64)
    dy = np.random.default_rng(4).standard_normal((7, 4, 9, 8))
    y_one = ck.conv2d_forward(x, w, b, stride, pad)
    grads_one = ck.conv2d_backward(x, w, dy, stride, pad)
    # room for 3 samples per chunk: chunks of 3, 3 and 1 for one worker, of 2, 2, 2 and 1 (a multiple of
    # two chunks) for two; one chunk when everything fits
    assert ck._chunk(7, 9 * 8, 27, 4, 8, threads) == 7
    monkeypatch.setattr(ck, "CHUNK_BYTES", 3 * 9 * 8 * (27 + 4) * 8)
    assert ck._chunk(7, 9 * 8, 27, 4, 8, threads) == {1: 3, 2: 2}[threads]
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        y = ck.conv2d_forward(x, w, b, stride, pad)
        grads = ck.conv2d_backward(x, w, dy, stride, pad)
        grads_again = ck.conv2d_backward(x, w, dy, stride, pad)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_allclose(y, y_one, rtol=1e-12)
    for got, want, again in zip(grads, grads_one, grads_again):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(got, again)


# (N, C, H, W, F, K, stride, pad, pool, relu): the pooled backward of the window maxima against im2col's
POOLED_CASES = [
    (3, 8, 8, 8, 6, 3, 1, 1, 2, True),
    (2, 5, 9, 7, 7, 3, 2, 1, 3, False),    # stride 2, a pool of 3 that drops a row
    (2, 4, 10, 10, 9, 5, 1, 2, 2, True),
    (2, 3, 9, 9, 5, 5, 1, 0, 2, False),    # 5x5 output: the pool drops a row and a column
    (1, 6, 7, 8, 13, 3, 1, 1, 2, False),   # F not a multiple of 4
    (5, 2, 6, 6, 3, 1, 1, 0, 2, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOLED_CASES)
def test_pooled_backward_of_the_maxima_equals_im2col(monkeypatch, case, dtype):
    n, c, h, wd, f, k, stride, pad, pool, relu = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    w[f // 2:] = w[0]   # filters with equal maxima: several share a position in each window
    b = rng.standard_normal(f).astype(dtype)
    y, argmax = ck.conv2d_forward(x, w, b, stride, pad, relu=relu, pool=pool, keep_argmax=True)
    assert not relu or (argmax == -1).any()
    dy = np.asfortranarray(rng.standard_normal(y.shape).astype(dtype))
    results = {}
    for path, min_run in (("im2col", 10**9), ("maxima", 1)):
        monkeypatch.setattr(ck, "POOLED_MIN_RUN", min_run)
        results[path] = (ck.conv2d_backward(x, w, dy, stride, pad, argmax=argmax),
                         ck.conv2d_backward(x, w, dy, stride, pad, input_grad=False, argmax=argmax))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    (dx, dw, db), (none, dw_only, db_only) = results["maxima"]
    (dx1, dw1, db1), _ = results["im2col"]
    assert none is None and np.array_equal(dw, dw_only) and np.array_equal(db, db_only)
    for got, want in ((dx, dx1), (dw, dw1), (db, db1)):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_padded_channels_last_round_trip_over_a_dirty_buffer(pad):
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 4))
    xp = np.full((2, 5 + 2 * pad, 4 + 2 * pad, 3), np.nan)   # scratch memory holds what the last call left
    pooledgrad.to_padded_channels_last(x, pad, xp)
    np.testing.assert_array_equal(xp, np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0))))
    back = np.empty_like(x)
    pooledgrad.from_padded_channels_last(xp, pad, back)
    np.testing.assert_array_equal(back, x)


def test_pooled_backward_of_the_maxima_checks_its_argmax(monkeypatch):
    monkeypatch.setattr(ck, "POOLED_MIN_RUN", 1)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    y, argmax = ck.conv2d_forward(x, w, np.zeros(3, np.float32), 1, 1, pool=2, keep_argmax=True)
    with pytest.raises(ConfigError, match="outside"):
        ck.conv2d_backward(x, w, y, 1, 1, argmax=argmax + 36)


def _two_workers():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    return old


def test_chunk_workers_are_kept_and_pass_errors_on():
    old = _two_workers()
    try:
        seen = set()

        def task(n0, m, buf):
            seen.add(threading.get_ident())
            return n0
        assert ck._run_chunks(task, 8, 2, 64) == [0, 2, 4, 6]
        helpers = {t for t in threading.enumerate() if t.name.startswith("greedy-chunks")}
        for _ in range(5):
            ck._run_chunks(task, 8, 2, 64)
        assert {t for t in threading.enumerate() if t.name.startswith("greedy-chunks")} == helpers
        assert threading.get_ident() in seen and len(helpers) == 1

        def failing(n0, m, buf):
            if threading.current_thread().name.startswith("greedy-chunks"):
                raise ValueError("chunk failed")
            time.sleep(0.01)
        with pytest.raises(ValueError, match="chunk failed"):
            ck._run_chunks(failing, 8, 1, 64)

        def nested(n0, m, buf):  # a helper's own chunk work runs in that helper, not queued behind it
            inner = ck._run_chunks(lambda a, b, c: threading.current_thread().name, 4, 1, 64)
            return threading.current_thread().name, inner
        for name, inner in ck._run_chunks(nested, 4, 1, 64):
            assert inner == [name] * 4 or not name.startswith("greedy-chunks")
    finally:
        numba.set_num_threads(old)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_chunk_workers():
    old = _two_workers()
    try:
        x, w, b, stride, pad = random_conv((7, 3, 9, 8, 4, 3, 3, 1, 1), np.float64)
        ck.CHUNK_BYTES, saved = 2 * 9 * 8 * (27 + 4) * 8, ck.CHUNK_BYTES  # four chunks: the helpers run
        try:
            want = ck.conv2d_forward(x, w, b, stride, pad)
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child has no helper threads, only the parent's record of them
                ok = np.array_equal(ck.conv2d_forward(x, w, b, stride, pad), want)
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
            os.close(write)
            ready = select.select([read], [], [], 60)[0]  # a child waiting on threads it lacks never answers
            if not ready:
                os.kill(pid, 9)
            os.waitpid(pid, 0)
            assert ready and os.read(read, 1) == b"1"
        finally:
            ck.CHUNK_BYTES = saved
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("n,per_sample,limit,workers,split_above,want", [
    (256, 36864, 8 * 2**20, 2, 2**20, 128),  # was 227 and 29: one worker did nearly all
    (512, 36864, 8 * 2**20, 2, 2**20, 128),  # three chunks' worth of work: four chunks, two a worker
    (512, 36864, 8 * 2**20, 1, 2**20, 171),
    (20, 1000, 8 * 2**20, 2, 2**20, 20),  # small work stays one chunk
    (20, 1000, 8 * 2**20, 2, 0, 10),
    (1, 10**9, 8 * 2**20, 2, 0, 1),  # a sample larger than the limit is still a chunk
    (0, 1000, 8 * 2**20, 2, 0, 1)])
def test_chunks_fit_the_limit_and_come_in_multiples_of_the_workers(n, per_sample, limit, workers, split_above,
                                                                    want):
    nb = ck.chunk_samples(n, per_sample, limit, workers, split_above)
    assert nb == want
    chunks = -(-n // nb)
    assert nb * per_sample <= limit or nb == 1
    if n * per_sample > split_above and n >= workers:
        assert chunks % workers == 0 or nb == 1


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_layout(case):
    x, w, _, stride, pad = random_conv(case, np.float64)
    n, c, _, _ = x.shape
    kh, kw = w.shape[2:]
    cols = ik.im2col(x, kh, kw, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    assert cols.shape == (n * ho * wo, c * kh * kw)
    patches = cols.reshape(n, ho, wo, c, kh, kw)
    for a in range(kh):
        for e in range(kw):
            want = xp[:, :, a:a + stride * (ho - 1) + 1:stride, e:e + stride * (wo - 1) + 1:stride]
            np.testing.assert_array_equal(patches[:, :, :, :, a, e], want.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("case", CONV_CASES)
def test_col2im_is_adjoint_of_im2col(case):
    x, w, _, stride, pad = random_conv(case, np.float64)
    kh, kw = w.shape[2:]
    cols = np.random.default_rng(5).standard_normal(ik.im2col(x, kh, kw, stride, pad).shape)
    lhs = np.sum(ik.col2im(cols, x.shape, kh, kw, stride, pad) * x)
    rhs = np.sum(cols * ik.im2col(x, kh, kw, stride, pad))
    assert abs(lhs - rhs) <= 1e-12 * np.sum(np.abs(cols))


def distinct_input(case, dtype=np.float64, seed=0):
    """Pool input whose values are pairwise at least 0.01 apart, so maxima have no ties."""
    n, c, h, w = case[:4]
    rng = np.random.default_rng(seed)
    return (rng.permutation(n * c * h * w) * 0.01).reshape(n, c, h, w).astype(dtype)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_forward_matches_reference(case, dtype):
    size, stride = case[4:]
    x = np.random.default_rng(0).standard_normal(case[:4]).astype(dtype)
    y, argmax = pk.maxpool2d_forward(x, size, stride)
    ref = np.max(np.stack(pool_windows(x, size, stride)), axis=0)
    assert y.dtype == dtype and argmax.dtype.kind == "i"
    np.testing.assert_array_equal(y, ref)
    plane = x.reshape(x.shape[0], x.shape[1], -1)
    np.testing.assert_array_equal(np.take_along_axis(plane, argmax.reshape(*y.shape[:2], -1), 2),
                                  y.reshape(*y.shape[:2], -1))


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_backward_matches_finite_differences(case):
    size, stride = case[4:]
    x = distinct_input(case)
    y, argmax = pk.maxpool2d_forward(x, size, stride)
    r = np.random.default_rng(1).standard_normal(y.shape)
    dx = pk.maxpool2d_backward(r, argmax, x.shape)
    num = numeric_grad(lambda: np.sum(pk.maxpool2d_forward(x, size, stride)[0] * r), x, 1e-3)
    assert np.count_nonzero(dx) > 0
    assert rel_error(dx, num) < 1e-6


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_avgpool_forward_matches_reference(case, dtype, tol):
    size, stride = case[4:]
    x = np.random.default_rng(0).standard_normal(case[:4]).astype(dtype)
    y = pk.avgpool2d_forward(x, size, stride)
    ref = np.mean(np.stack(pool_windows(x.astype(np.float64), size, stride)), axis=0)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool_backward_matches_finite_differences(case):
    size, stride = case[4:]
    x = np.random.default_rng(0).standard_normal(case[:4])
    r = np.random.default_rng(1).standard_normal(pk.avgpool2d_forward(x, size, stride).shape)
    dx = pk.avgpool2d_backward(r, x.shape, size, stride)
    num = numeric_grad(lambda: np.sum(pk.avgpool2d_forward(x, size, stride) * r), x, 1e-3)
    assert rel_error(dx, num) < 1e-6


def test_bad_inputs_raise_config_error():
    x = np.zeros((2, 3, 5, 5), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    b = np.zeros(4, np.float32)
    with pytest.raises(ConfigError, match="input channels"):
        ck.conv2d_forward(x, np.zeros((4, 2, 3, 3), np.float32), b)
    with pytest.raises(ConfigError, match="dtype"):
        ck.conv2d_forward(x, w.astype(np.float64), b)
    with pytest.raises(ConfigError, match="does not fit"):
        ck.conv2d_forward(x, np.zeros((4, 3, 7, 7), np.float32), b)
    with pytest.raises(ConfigError, match="stride"):
        ck.conv2d_forward(x, w, b, stride=0)
    with pytest.raises(ConfigError, match="float32 or float64"):
        ck.conv2d_forward(x.astype(np.int32), w, b)
    with pytest.raises(ConfigError, match="dy has shape"):
        ck.conv2d_backward(x, w, np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ConfigError, match="does not fit"):
        pk.maxpool2d_forward(x, size=6)
    with pytest.raises(ConfigError, match="argmax"):
        pk.maxpool2d_backward(np.zeros((2, 3, 2, 2), np.float32), np.full((2, 3, 2, 2), 99), x.shape)
    with pytest.raises(ConfigError, match="4 dimensions"):
        pk.avgpool2d_forward(x[0])


def test_gather_patches_equals_the_matching_im2col_rows():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 5, 6)).astype(np.float32)
    cols = ik.im2col(x, 3, 3, 1, 1)
    img, row, col = rng.integers(0, 3, 40), rng.integers(0, 5, 40), rng.integers(0, 6, 40)
    row[:2], col[:2] = 0, [0, 5]  # corners: padded windows
    got = ik.gather_patches(x, img, row, col, 3, 3, 1)
    assert np.array_equal(got, cols[(img * 5 + row) * 6 + col])
    half = ik.gather_patches(x.astype(np.float16), img, row, col, 3, 3, 1)  # a half-precision cache
    assert half.dtype == np.float16 and np.array_equal(half, got.astype(np.float16))
    with pytest.raises(ConfigError, match="outside the 3 images"):
        ik.gather_patches(x, np.array([0, 3]), row[:2], col[:2], 3, 3, 1)
    with pytest.raises(ConfigError, match="one length"):
        ik.gather_patches(x, img, row[:3], col, 3, 3, 1)
