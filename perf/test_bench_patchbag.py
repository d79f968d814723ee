"""Patch-bag costs: one epoch on codes against one epoch of explicit conv + pool + head, per layer shape; the patch
projection of `encode` on its two paths."""
import time

import numpy as np
import pytest

from greedy.nn.activations import ReLU, Tanh
from greedy.nn.layers import Conv2d, Dense
from greedy.nn.pooling import AvgPool2d
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import Sequential
from greedy.nn.optim import Adam
from greedy.methods.patchbag import CodeLayer, encode
from greedy.cluster.patches import PatchPreprocessor, extract_patches
from greedy.cluster.kmeans import KMeans
from greedy.kernels.conv import conv2d_forward
from greedy.kernels.taps import conv_taps

from conftest import best_seconds, record

# (channels, size) of the default CIFAR-10 patch-bag layers' inputs
SHAPES = [(3, 32), (256, 16), (256, 8)]


def epoch_time(model, x, y, batch=256):
    opt = Adam(1e-3)
    params, grads = model.parameters(), model.gradients()
    t = time.perf_counter()
    for i in range(0, len(y), batch):
        out = model.forward(x[i:i + batch], train=True)
        _, d = softmax_cross_entropy(out, y[i:i + batch])
        model.backward(d, input_grad=False)
        opt.step(params, grads)
    return time.perf_counter() - t


def bench_code_epoch_against(benchmark, layer, codes, model, x, y, name, ratio="speedup"):
    """Benchmark one epoch of ``layer`` on ``codes``; time the best of two epochs of ``model`` on the
    real inputs x (after a warm-up on 256 of them) and record both and their ratio in extra_info."""
    def code_epoch():
        return epoch_time(layer, codes, y)

    code_epoch()
    benchmark.pedantic(code_epoch, rounds=3, warmup_rounds=1)
    epoch_time(model, x[:256], y[:256])
    seconds = min(epoch_time(model, x, y) for _ in range(2))
    benchmark.extra_info[f"{name}_epoch_seconds"] = round(seconds, 4)
    benchmark.extra_info["code_epoch_seconds"] = round(benchmark.stats.stats.min, 4)
    benchmark.extra_info[ratio] = round(seconds / benchmark.stats.stats.min, 1)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("channels,size", SHAPES)
def test_code_epoch_vs_image_epoch(benchmark, rng, channels, size, activation):
    n, filters, k = 1024, 256, 512
    x = rng.standard_normal((n, channels, size, size), dtype=np.float32)
    y = rng.integers(0, 10, n)
    sample = extract_patches(x[:64])
    pre = PatchPreprocessor(channels, remove_mean=False, whiten="pca", n_components=64).fit(sample)
    km = KMeans(k, max_iter=3, random_state=0).fit(pre.transform(sample))
    codes, _ = encode(x, pre, km.cluster_centers_, side=2)
    layer = CodeLayer(km.cluster_centers_, filters, 10, 4, activation, rng)
    act = ReLU() if activation == "relu" else Tanh()
    image_model = Sequential([Conv2d(filters, 3), act, AvgPool2d(size // 2), Dense(10)]) \
        .build((channels, size, size), 0)

    bench_code_epoch_against(benchmark, layer, codes, image_model, x, y, "image")


@pytest.mark.parametrize("channels, size, d", [(32, 14, 16), (64, 7, 16), (128, 16, 32), (256, 8, 32)])
@pytest.mark.parametrize("path", ["taps", "im2col"])
def test_patch_projection(benchmark, channels, size, d, path):
    """Projecting every 3x3 patch of 256 float16-cached maps onto d components, as ``encode`` does: the
    channels-last tap convolution (``greedy.kernels.taps``, the path of inputs with at least 2d channels)
    against the im2col convolution it replaced there. Both are 2*N*H*W*9C*d flops."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, channels, size, size), dtype=np.float32).astype(np.float16)
    w = rng.standard_normal((d, channels, 3, 3), dtype=np.float32)
    b = rng.standard_normal(d).astype(np.float32)

    def taps():
        return conv_taps(x, w, b).reshape(-1, d)

    def im2col():
        y = conv2d_forward(np.ascontiguousarray(x, dtype=np.float32), w, b, 1, 1)
        return y.transpose(0, 2, 3, 1).reshape(-1, d)

    fn = taps if path == "taps" else im2col
    np.testing.assert_allclose(fn(), (im2col if path == "taps" else taps)(), rtol=1e-3, atol=1e-3)
    benchmark.pedantic(fn, rounds=10, warmup_rounds=2)
    pixels = 256 * size * size
    record(benchmark, 2.0 * pixels * 9 * channels * d, pixels, 9 * channels, d)


@pytest.mark.parametrize("size, side", [(32, 4), (16, 4), (8, 4)])
def test_region_histograms(benchmark, size, side):
    """The codes of one ``encode`` chunk's labels (1,024 images, k = 512, the CIFAR-10 default's 4x4 regions)
    as one CSR matrix (``greedy.cluster.codes.region_histograms``), against the NumPy and SciPy path it
    replaced: a dense (n, R, k) count (``count_codes``), divided by the regions' sizes, then one CSR matrix
    per region and their ``hstack``."""
    from greedy.cluster.codes import region_histograms, region_of_positions, region_sizes
    from greedy.kernels.codes import count_codes
    import scipy.sparse as sp
    n, k = 1024, 512
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n * size * size)
    region_of = region_of_positions(size, size, side)
    sizes = region_sizes(size, size, side).astype(np.float32)

    def fused():
        return region_histograms(labels, region_of, side * side, k)[0]

    def dense_then_csr():
        counts = np.zeros((n, side * side, k), np.float32)
        count_codes(labels, region_of, counts)
        counts /= sizes[None, :, None]
        return sp.hstack([sp.csr_matrix(counts[:, r]) for r in range(side * side)], format="csr")

    assert (fused() != dense_then_csr()).nnz == 0
    benchmark.pedantic(fused, rounds=10, warmup_rounds=2)
    benchmark.extra_info["dense_then_csr_seconds"] = round(best_seconds(dense_then_csr), 5)
    benchmark.extra_info["speedup"] = round(benchmark.extra_info["dense_then_csr_seconds"] / benchmark.stats.stats.min, 1)
