"""Batch norm, ReLU and max pool in training (one fused layer, ``greedy.kernels.bnpool``) at N = 128,
against a NumPy copy of the same input in the same run: these passes are memory-bound, so the
reference is a copy, not a matrix multiply."""
import numpy as np
import pytest

from conftest import best_seconds
from greedy.nn.model import Sequential

SHAPES = [(128, 32, 32), (128, 16, 16), (256, 8, 8), (64, 256)]


@pytest.mark.parametrize("shape", SHAPES, ids=["128x32x32", "128x16x16", "256x8x8", "64x256-seq"])
def test_bn_relu_pool_forward_backward(benchmark, rng, shape):
    n = 128
    model = Sequential.from_spec("bn-relu-max2", ndim=len(shape) - 1).build(shape, rng)
    x = rng.standard_normal((n,) + shape, dtype=np.float32)
    dy = rng.standard_normal((n,) + model.out_shape, dtype=np.float32)

    def step():
        model.forward(x, train=True)
        return model.backward(dy)

    step()
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    copy = np.empty_like(x)
    reference = best_seconds(lambda: np.copyto(copy, x), 10)
    benchmark.extra_info["input_gb_per_second"] = round(x.nbytes / benchmark.stats.stats.min / 1e9, 2)
    benchmark.extra_info["copy_of_input_ms"] = round(reference * 1e3, 3)
    benchmark.extra_info["ratio_to_copy"] = round(reference / benchmark.stats.stats.min, 3)
