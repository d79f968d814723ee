"""1-D convolution throughput next to a NumPy float32 matmul of the same multiply-add count.

Forward does 2*N*Lo*F*C*K flops, the same as an (N*Lo, C*K) @ (C*K, F) matmul;
backward (dx, dw and db) does twice that, and is compared with the per-flop
rate of that same matmul.

Shapes: a raw series (FordA, one channel of length 500) into 64 filters of width 7;
64 -> 128 channels on that length; ElectricDevices' length 96 at 128 channels;
a 16-dimensional byte embedding of 256-byte log lines into 64 filters.
"""
import numpy as np
import pytest
from conftest import record

from greedy.kernels import conv1d as k1

# (N, C, F, L, K)
SHAPES = [
    (256, 1, 64, 500, 7),
    (128, 64, 128, 500, 7),
    (256, 128, 128, 96, 5),
    (256, 16, 64, 256, 7),
]


def setup(shape):
    n, c, f, length, k = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, length), dtype=np.float32)
    w = rng.standard_normal((f, c, k), dtype=np.float32) * np.float32(1 / np.sqrt(c * k))
    b = rng.standard_normal(f, dtype=np.float32)
    pad = k // 2
    dy = rng.standard_normal((n, f, length), dtype=np.float32)
    m, kk = n * length, c * k
    return x, w, b, dy, pad, (m, kk, f), 2.0 * m * kk * f


def ids(s):
    return f"N{s[0]}-{s[1]}to{s[2]}-L{s[3]}-k{s[4]}"


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_conv1d_forward(benchmark, shape):
    x, w, b, _, pad, (m, k, n), flops = setup(shape)
    fn = lambda: k1.conv1d_forward(x, w, b, 1, pad)  # noqa: E731
    fn()
    y = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert y.shape == (x.shape[0], w.shape[0], x.shape[2])
    record(benchmark, flops, m, k, n)


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_conv1d_backward(benchmark, shape):
    x, w, b, dy, pad, (m, k, n), flops = setup(shape)
    fn = lambda: k1.conv1d_backward(x, w, dy, 1, pad, input_grad=True)  # noqa: E731
    fn()
    dx, dw, db = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    record(benchmark, 2 * flops, m, k, n)
