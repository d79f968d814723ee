"""Applying a frozen block: the fused inference pass next to the layers' own forward.

Each block is a CIFAR-10 layer of the defaults (aux: c128k3-bn-relu-max2 on the
image and on 128 x 16 x 16 maps; patchbag: c256k3-tanh-max2 on 128 x 16 x 16). The
benchmark times the fused pass (``greedy.inference.forward``); ``speedup`` is
the best time of ``Sequential.forward(x, train=False)`` over the fused pass's
best, both in this run, and ``ratio_to_matmul`` compares the conv's flop rate
with a same-work NumPy matmul.
"""

import numpy as np
import pytest
from conftest import best_seconds, record

from greedy.nn import inference
from greedy.nn.model import Sequential

BLOCKS = [("c128k3-bn-relu-max2", (3, 32, 32)), ("c128k3-bn-relu-max2", (128, 16, 16)),
          ("c256k3-tanh-max2", (128, 16, 16))]
N = 256


@pytest.mark.parametrize("spec,in_shape", BLOCKS, ids=[f"{s}-on-{c}x{h}x{w}" for s, (c, h, w) in BLOCKS])
def test_fused_block_inference(benchmark, spec, in_shape):
    rng = np.random.default_rng(0)
    block = Sequential.from_spec(spec).build(in_shape, 0)
    for layer in block.layers:
        if layer.spec() == "bn":
            layer.buffers["var"][...] = rng.uniform(0.5, 2, layer.buffers["var"].shape)
    x = rng.standard_normal((N,) + in_shape, dtype=np.float32)
    fused = lambda: inference.forward(block.layers, x)  # noqa: E731
    plain = lambda: block.forward(x, train=False)  # noqa: E731
    assert np.allclose(fused(), plain(), atol=1e-4)
    y = benchmark.pedantic(fused, rounds=5, warmup_rounds=1)
    assert y.shape == (N,) + block.out_shape
    c, h, w = in_shape
    f = block.layers[0].filters
    m, k = N * h * w, c * 9
    record(benchmark, 2.0 * m * k * f, m, k, f)
    benchmark.extra_info["unfused_seconds"] = round(best_seconds(plain), 4)
    benchmark.extra_info["speedup"] = round(benchmark.extra_info["unfused_seconds"] / benchmark.stats.stats.min, 2)
