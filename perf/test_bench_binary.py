"""Inference throughput of a binary network (popcounts up to the head) against the same architecture in float32.

The float32 network computes the same thing with float arithmetic: the thermometer-coded
image as C*T float channels, 3x3 convolutions (``greedy.kernels.conv.conv2d_forward``)
with the same filters as +-1 weights (agreement = const + sum((2f - 1) * p)), the same
thresholds, 2x2 max pooling, the pooled colour code appended as extra channels, region
means and the same linear head. It is timed in the same run (best of 3) because the
machine is shared and noisy. ``record`` counts one multiply-add per filter bit.
"""

import numpy as np
from conftest import best_seconds, record

from greedy.kernels.bitops import pack_bits, unpack_bits
from greedy.kernels.conv import conv2d_forward
from greedy.kernels.pool import maxpool2d_forward
from greedy.methods.binary import BinaryNetwork, ConvLayer, ImageLayer
from greedy.methods.binary.stats import avg_pool_image

N, C, SIZE, LEVELS, COLOUR_LEVELS = 500, 3, 32, 4, 8
F1, F2, REGIONS = 128, 256, 4


def random_network(rng):
    levels = np.sort(rng.uniform(-40, 40, (C, LEVELS)), axis=1)
    image = ImageLayer(levels, colour_norm=False, pool="or",
                       filters=pack_bits(rng.random((F1, 9 * C * LEVELS)) < 0.5)[0],
                       thresholds=np.full(F1, 9 * C * LEVELS * 0.55))
    c_levels = np.sort(rng.uniform(0, 255, (C, COLOUR_LEVELS)), axis=1)
    n_bits = F1 + C * COLOUR_LEVELS
    conv = ConvLayer(n_bits, pack_bits(rng.random((F2, 9, n_bits)) < 0.5)[0], np.full(F2, 9 * n_bits * 0.52),
                     "or", c_levels, 1)
    net = BinaryNetwork(image, [conv], (C, SIZE, SIZE), 10, REGIONS)
    d = REGIONS * REGIONS * F2
    net.head_w = rng.standard_normal((d, 10)).astype(np.float32)
    net.head_b = np.zeros(10, np.float32)
    return net


def float_weights(filters, n_bits, in_channels):
    """Bit filters (F, 9, w) or (F, w) -> +-1 float32 conv weights (F, in_channels, 3, 3) over the same bits."""
    bits = unpack_bits(filters.reshape(len(filters), 9, -1), n_bits) if filters.ndim == 3 else \
        unpack_bits(filters, 9 * n_bits).reshape(len(filters), 9, n_bits)
    w = 2.0 * bits.astype(np.float32) - 1.0  # (F, 9, n_bits)
    return np.ascontiguousarray(w.transpose(0, 2, 1).reshape(len(filters), in_channels, 3, 3))


def float_network(net):
    """Closure computing the binary network's logits with float32 convolutions (no colour normalisation)."""
    image, conv = net.image_layer, net.layers[0]
    w1 = float_weights(image.filters, C * LEVELS, C * LEVELS)
    w2 = float_weights(conv.filters, conv.n_bits, conv.n_bits)
    # with p, f in {0, 1}: agreement = sum(1 - f) + sum((2f - 1) p); bit = agreement >= threshold
    base1 = (w1 < 0).sum(axis=(1, 2, 3)).astype(np.float32)
    base2 = (w2 < 0).sum(axis=(1, 2, 3)).astype(np.float32)
    b1 = (base1 - np.ceil(image.thresholds)).astype(np.float32) + 0.5
    b2 = (base2 - np.ceil(conv.thresholds)).astype(np.float32) + 0.5
    lv = image.levels.astype(np.float32)
    clv = conv.colour_levels.astype(np.float32)

    def forward(x):
        xf = x.astype(np.float32)
        therm = (xf[:, :, None] > lv[None, :, :, None, None]).astype(np.float32).reshape(len(x), -1, SIZE, SIZE)
        pad = np.pad(therm, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        a1 = conv2d_forward(pad, w1, b1, 1, 0)
        h1, _ = maxpool2d_forward((a1 > 0).astype(np.float32))
        pooled = avg_pool_image(x, 1).astype(np.float32)
        colour = (pooled[:, :, None] > clv[None, :, :, None, None]).astype(np.float32)
        h1 = np.concatenate([h1, colour.reshape(len(x), -1, SIZE // 2, SIZE // 2)], axis=1)
        a2 = conv2d_forward(h1, w2, b2, 1, 1)
        h2, _ = maxpool2d_forward((a2 > 0).astype(np.float32))
        side = SIZE // 4 // REGIONS
        r = h2.reshape(len(x), F2, REGIONS, side, REGIONS, side).mean(axis=(3, 5))
        return r.transpose(0, 2, 3, 1).reshape(len(x), -1) @ net.head_w + net.head_b

    return forward


def multiply_adds(net):
    return N * (SIZE * SIZE * F1 * net.image_layer.n_code_bits
                + (SIZE // 2) ** 2 * F2 * net.layers[0].n_code_bits)


def test_bench_binary_inference(benchmark):
    rng = np.random.default_rng(0)
    net = random_network(rng)
    x = rng.integers(0, 256, (N, C, SIZE, SIZE), dtype=np.uint8)
    float_forward = float_network(net)
    logits = net.forward(x)  # warm-up (JIT)
    float_logits = float_forward(x)
    # same bits, same head: the two implementations agree
    np.testing.assert_allclose(logits, float_logits, rtol=1e-4, atol=1e-3)
    benchmark(net.forward, x)
    work = multiply_adds(net)
    k = net.layers[0].n_code_bits
    record(benchmark, 2.0 * work, work // (k * F2), k, F2)
    ours = N / benchmark.stats.stats.min
    ref = N / best_seconds(lambda: float_forward(x), repeats=3)
    benchmark.extra_info["images_per_s"] = round(ours)
    benchmark.extra_info["float32_images_per_s"] = round(ref)
    benchmark.extra_info["ratio_to_float32"] = round(ours / ref, 2)
    packed, float32 = net.size_bytes()
    benchmark.extra_info["model_bytes"] = packed
    benchmark.extra_info["float32_model_bytes"] = float32
