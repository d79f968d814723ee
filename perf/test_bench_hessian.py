"""One exact Hessian-vector product against one gradient on the MNIST CNN, batch 128 (float32).

Run: ``pytest perf/test_bench_hessian.py --benchmark-only``. The HVP benchmark
stores ``hvp_over_gradient`` (target at most 3) in ``extra_info``, from the
best-of-N time of each measured in the same process.
"""
import time

import numpy as np
import pytest

from conftest import record
from greedy.nn.hessian import gradient, hvp
from greedy.nn.model import Sequential

SPEC = "c32k5-relu-max2-c64k5-relu-max2-fc1024-relu-fc10"
BATCH = 128


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    model = Sequential.from_spec(SPEC).build((1, 28, 28), 0, np.float32)
    x = rng.standard_normal((BATCH, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    v = [rng.standard_normal(p.shape, dtype=np.float32) for p in model.parameters()]
    return model, x, y, v


def gradient_flops():
    """Multiply-adds x2 of forward + backward (dW for every layer, dx for all but the first)."""
    conv1 = 2 * BATCH * 28 * 28 * 25 * 32
    conv2 = 2 * BATCH * 14 * 14 * 800 * 64
    fc1 = 2 * BATCH * 3136 * 1024
    fc2 = 2 * BATCH * 1024 * 10
    return 2 * conv1 + 3 * (conv2 + fc1 + fc2)


def best_times(fs, repeats=5):
    """Best wall time of each function in fs, calls interleaved so both see the same machine load."""
    best = [np.inf] * len(fs)
    for _ in range(repeats):
        for i, f in enumerate(fs):
            t = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def test_bench_gradient(benchmark, setup):
    model, x, y, _ = setup
    gradient(model, x, y)
    benchmark(gradient, model, x, y)
    flops = gradient_flops()
    record(benchmark, flops, 1024, 1024, flops // (2 * 1024 * 1024))


def test_bench_hvp(benchmark, setup):
    model, x, y, v = setup
    hvp(model, x, y, v)
    gradient(model, x, y)
    benchmark(hvp, model, x, y, v)
    t_hvp, t_grad = best_times([lambda: hvp(model, x, y, v), lambda: gradient(model, x, y)])
    ratio = t_hvp / t_grad
    benchmark.extra_info["hvp_over_gradient"] = round(ratio, 2)
    # forward-over-reverse: forward, R-forward (~2 forwards), backward dx, R-backward (~2 backwards)
    flops = 8 * gradient_flops() // 3
    record(benchmark, flops, 1024, 1024, flops // (2 * 1024 * 1024))
    assert ratio < 6, f"HVP takes {ratio:.1f} gradients"
