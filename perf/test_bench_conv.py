"""Convolution throughput next to a NumPy float32 matmul of the same multiply-add count.

Forward does 2*N*Ho*Wo*F*C*KH*KW flops, the same as an (N*Ho*Wo, C*KH*KW) @
(C*KH*KW, F) matmul; forward + backward (with dx) does three times that, and
is compared with the per-flop rate of that same matmul.
"""
import numpy as np
import pytest
from conftest import record

from greedy.kernels import conv as ck
from greedy.kernels import lowrank as lr
from greedy.kernels import winograd as wg

# (N, C, F, H=W, K, pad)
SHAPES = [
    (128, 3, 64, 32, 3, 1),
    (128, 64, 64, 32, 3, 1),
    (128, 128, 128, 16, 3, 1),
]


def setup(shape):
    n, c, f, h, k, pad = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    w = rng.standard_normal((f, c, k, k), dtype=np.float32) * np.float32(1 / np.sqrt(c * k * k))
    b = rng.standard_normal(f, dtype=np.float32)
    ho = h + 2 * pad - k + 1
    dy = rng.standard_normal((n, f, ho, ho), dtype=np.float32)
    m, kk = n * ho * ho, c * k * k
    return x, w, b, dy, pad, (m, kk, f), 2.0 * m * kk * f


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-{s[1]}to{s[2]}-{s[3]}px")
def test_conv_forward(benchmark, shape):
    x, w, b, _, pad, (m, k, n), flops = setup(shape)
    fn = lambda: ck.conv2d_forward(x, w, b, 1, pad)  # noqa: E731
    fn()
    y = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert y.shape == (x.shape[0], w.shape[0]) + x.shape[2:]
    record(benchmark, flops, m, k, n)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-{s[1]}to{s[2]}-{s[3]}px")
def test_conv_forward_backward(benchmark, shape):
    x, w, b, dy, pad, (m, k, n), flops = setup(shape)

    def fn():
        ck.conv2d_forward(x, w, b, 1, pad)
        return ck.conv2d_backward(x, w, dy, 1, pad, input_grad=True)

    fn()
    dx, dw, db = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    record(benchmark, 3 * flops, m, k, n)


# the frozen blocks' pass of patch bags (greedy.methods.blocks.propagate): MNIST's small maps with ReLU
# and 2x2 max pool applied to each chunk's GEMM output, and CIFAR-10's second and third blocks;
# (N, C, F, H=W, K, pad, pool)
PROPAGATION_SHAPES = [
    (1024, 32, 64, 14, 3, 1, 2),
    (1024, 64, 128, 7, 3, 1, 2),
    (256, 128, 256, 16, 3, 1, 2),
    (256, 256, 256, 8, 3, 1, 1),
]


def _propagation_id(s):
    return f"N{s[0]}-{s[1]}to{s[2]}-{s[3]}px-pool{s[6]}"


@pytest.mark.parametrize("shape", PROPAGATION_SHAPES, ids=_propagation_id)
@pytest.mark.parametrize("algorithm", ["im2col", "winograd", "winograd2x2", "lowrank32"])
def test_conv_relu_pool_forward(benchmark, shape, algorithm, monkeypatch):
    """The im2col convolution, Winograd (``greedy.kernels.winograd``: its own choice of tiles, and
    F(2x2, 3x3) forced) and, for weights of rank 32 (a patch-bag block's), the basis conv and its 1x1 mix
    (``greedy.kernels.lowrank``) on the same shape; GFLOP/s count the direct convolution's
    multiply-adds for all."""
    x, w, b, _, pad, (m, k, n), flops = setup(shape[:6])
    pool = shape[6]
    if algorithm == "winograd2x2":
        monkeypatch.setattr(wg, "output_tile", lambda ho, wo: 2)
    if algorithm == "lowrank32":
        rng = np.random.default_rng(1)
        basis = rng.standard_normal((32,) + w.shape[1:], dtype=np.float32) * np.float32(1 / np.sqrt(k))
        mix = rng.standard_normal((w.shape[0], 32), dtype=np.float32) * np.float32(1 / np.sqrt(32))
        basis_bias = np.zeros(32, np.float32)
        fn = lambda: lr.conv_forward(x, basis, basis_bias, mix, b, pad, relu=True, pool=pool)  # noqa: E731
    elif algorithm.startswith("winograd"):
        fn = lambda: wg.conv_forward(x, w, b, pad, relu=True, pool=pool)  # noqa: E731
    else:
        fn = lambda: ck.conv2d_forward(x, w, b, 1, pad, relu=True, pool=pool)  # noqa: E731
    fn()
    y = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert y.shape == (x.shape[0], w.shape[0], x.shape[2] // pool, x.shape[3] // pool)
    record(benchmark, flops, m, k, n)


# the CIFAR-10 e2e default's conv-pool runs in training (greedy.nn.fused.ConvReluPool): a conv that widens,
# then a 2x2 max pool whose argmax the backward needs; (N, C, F, H=W, K, pad)
TRAINING_POOL_SHAPES = [
    (512, 32, 64, 16, 3, 1),
    (512, 64, 128, 8, 3, 1),
]


@pytest.mark.parametrize("shape", TRAINING_POOL_SHAPES, ids=lambda s: f"N{s[0]}-{s[1]}to{s[2]}-{s[3]}px")
@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_conv_pool_training_forward(benchmark, shape, algorithm):
    """Conv, 2x2 max pool and its argmax in one pass, by im2col (``conv2d_forward``) or Winograd
    (``winograd.conv_forward``); GFLOP/s count the direct convolution's multiply-adds."""
    x, w, b, _, pad, (m, k, n), flops = setup(shape)
    if algorithm == "winograd":
        fn = lambda: wg.conv_forward(x, w, b, pad, pool=2, keep_argmax=True)  # noqa: E731
    else:
        fn = lambda: ck.conv2d_forward(x, w, b, 1, pad, pool=2, keep_argmax=True)  # noqa: E731
    fn()
    y, argmax = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert y.shape == argmax.shape == (x.shape[0], w.shape[0], x.shape[2] // 2, x.shape[3] // 2)
    record(benchmark, flops, m, k, n)


# conv-pool runs whose backward takes the pooled gradient: the CIFAR-10 e2e default's second and third (32 -> 64
# on 16 x 16 and 64 -> 128 on 8 x 8, patch rows of 96 and 192 values), the 64-128-256 network's last and the
# MNIST CNN's second (with its ReLU); (N, C, F, H=W, K, pad, relu)
POOLED_BACKWARD_SHAPES = [
    (256, 32, 64, 16, 3, 1, False),
    (512, 64, 128, 8, 3, 1, False),
    (512, 128, 256, 8, 3, 1, False),
    (128, 32, 64, 14, 5, 2, True),
]


@pytest.mark.parametrize("shape", POOLED_BACKWARD_SHAPES,
                         ids=lambda s: f"N{s[0]}-{s[1]}to{s[2]}-{s[3]}px-k{s[4]}{'-relu' if s[6] else ''}")
@pytest.mark.parametrize("path", ["im2col", "maxima"])
def test_conv_pool_backward(benchmark, shape, path, monkeypatch):
    """Weight and input gradients from a 2x2-pooled gradient and its argmax: im2col and multiplies of the
    mostly-zero conv output gradient, or the window maxima alone (``greedy.kernels.pooledgrad``). GFLOP/s
    count the im2col backward's multiply-adds (twice the forward's); the maxima path does a quarter of them
    where every window passes (no ReLU), fewer where a ReLU clipped windows (21 % of them here)."""
    *conv_shape, relu = shape
    x, w, b, _, pad, (m, k, n), flops = setup(conv_shape)
    y, argmax = ck.conv2d_forward(x, w, b, 1, pad, relu=relu, pool=2, keep_argmax=True)
    dy = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)
    monkeypatch.setattr(ck, "POOLED_MIN_RUN", 1 if path == "maxima" else 10**9)
    fn = lambda: ck.conv2d_backward(x, w, dy, 1, pad, argmax=argmax)  # noqa: E731
    fn()
    dx, dw, db = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    assert dx.shape == x.shape and dw.shape == w.shape
    benchmark.extra_info["windows_with_gradient"] = round(float((argmax >= 0).mean()), 3)
    record(benchmark, 2 * flops, m, k, n)
