"""k-means costs: one nearest-centre pass at patch-bag scale, and a small full Lloyd fit.

The assignment pass does 2*n*d*k flops (the x.c products). Its equal-work matmul,
(1e6, 27) @ (27, 1024), would need a 4 GB float32 output, so the reference rate is
that of a (65536, 27) @ (27, 1024) matmul: the same inner shape, 1/15 of the rows.
"""
import numpy as np
from conftest import record

from greedy.cluster.kmeans import KMeans, assign


def test_assign_1m_points_1024_centres(benchmark, rng):
    n, d, k = 1_000_000, 27, 1024
    X = rng.standard_normal((n, d), dtype=np.float32)
    C = rng.standard_normal((k, d), dtype=np.float32)
    sq = (C * C).sum(axis=1)
    assign(X[:4096], C, sq)
    labels, d2 = benchmark.pedantic(assign, args=(X, C, sq), rounds=3, warmup_rounds=0)
    assert labels.shape == (n,) and d2.dtype == np.float32 and 0 <= labels.min() <= labels.max() < k
    record(benchmark, 2.0 * n * d * k, 65536, d, k)


def test_fit_200k_points_256_centres_10_iterations(benchmark, rng):
    n, d, k = 200_000, 27, 256
    X = rng.standard_normal((n, d), dtype=np.float32)
    KMeans(k, max_iter=1, random_state=0).fit(X[:5000])

    def fit():
        return KMeans(k, max_iter=10, tol=0.0, random_state=0).fit(X)

    km = benchmark.pedantic(fit, rounds=2, warmup_rounds=0)
    assert km.n_iter_ == 10
    # 11 assignment passes (initial + one per iteration) dominate the work
    record(benchmark, 11 * 2.0 * n * d * k, n, d, k)
