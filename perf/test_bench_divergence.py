"""kNN KL estimate between two 10,000 x 64 samples (brute-force path: BLAS Gram + Numba selection)."""
import numpy as np
from conftest import record

from greedy.cluster.divergence import kl_divergence

N, M, D = 10_000, 10_000, 64


def test_bench_kl_divergence_10k_by_64(benchmark, rng):
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = (rng.standard_normal((M, D)) + 0.3).astype(np.float32)
    kl_divergence(x[:200], y[:200])  # warm-up: compile the kernel
    value = benchmark.pedantic(kl_divergence, args=(x, y), rounds=3, iterations=1)
    assert np.isfinite(value) and value > 0
    # work of the Gram screening: an (N, D) x (D, N + M) multiply-add
    record(benchmark, 2.0 * N * D * (N + M), N, D, N + M)
