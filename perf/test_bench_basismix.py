"""One training step of ``greedy.nn.basismix.BasisMix`` at the CIFAR-10 default's shape (a batch of 256,
8 x 8 maps, a (256, 32) mix, quadrant means): the fused kernels against the unfused NumPy step of the
same mathematics in the same run (a BLAS multiply for the mixed map, ReLU and region means, the
gradient's two multiplies), and as a ratio to a same-run matmul of the two multiplies' work."""
import numpy as np

from conftest import best_seconds, record
from greedy.nn.basismix import BasisMix

N, TAPS, F, D, SIDE, POOL = 256, 1536, 256, 32, 8, 4


def numpy_step(z, mix, bias, dpooled, positive=None):
    """The same forward and backward, unfused: (pooled, grad of the mix, grad of the bias); ``positive``
    (N, H*W, F) replaces pre > 0 (values within rounding of 0 may fall either side)."""
    n, p, _ = z.shape
    pre = (z.reshape(-1, D) @ mix.T + bias).reshape(n, SIDE // POOL, POOL, SIDE // POOL, POOL, F)
    pooled = np.maximum(pre, 0).mean(axis=(2, 4))                       # (n, 2, 2, F)
    positive = pre > 0 if positive is None else positive.reshape(pre.shape)
    dpre = np.broadcast_to(dpooled[:, :, None, :, None, :] / POOL ** 2, pre.shape) * positive
    dpre = dpre.reshape(-1, F)
    return pooled, dpre.T @ z.reshape(-1, D), dpre.sum(axis=0)


def test_basismix_step(benchmark, rng):
    layer = BasisMix(rng.standard_normal((F, D)) * 0.1, rng.standard_normal(F) * 0.1, TAPS, SIDE, SIDE, POOL)
    layer.build((TAPS + SIDE * SIDE * D,), rng)
    x = rng.standard_normal((N, TAPS + SIDE * SIDE * D), dtype=np.float32)
    dpooled = rng.standard_normal((N, F * 4), dtype=np.float32)

    def step():
        layer.forward(x, train=True)
        layer.backward_pooled(dpooled)

    step()
    z = np.ascontiguousarray(x[:, TAPS:]).reshape(N, SIDE * SIDE, D)
    # the unfused step's gradient for the pooled gradient in the kernels' region-major layout
    d_regions = dpooled.reshape(N, F, 2, 2).transpose(0, 2, 3, 1)
    pooled, gw, gb = numpy_step(z, layer.params["w"], layer.params["b"], d_regions, layer.mask.astype(bool))
    np.testing.assert_allclose(layer.pooled(x), pooled.transpose(0, 3, 1, 2).reshape(N, -1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grads["w"], gw, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(layer.grads["b"], gb, rtol=1e-3, atol=1e-3)
    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
    reference = best_seconds(lambda: numpy_step(z, layer.params["w"], layer.params["b"], d_regions), 10)
    benchmark.extra_info["numpy_ms"] = round(reference * 1e3, 3)
    benchmark.extra_info["ratio_to_numpy"] = round(reference / benchmark.stats.stats.min, 2)
    record(benchmark, 2 * 2 * N * SIDE * SIDE * D * F, N * SIDE * SIDE, D, 2 * F)
