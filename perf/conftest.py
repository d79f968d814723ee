"""Shared helpers for the benchmarks in perf/.

Every benchmark reports its throughput next to a NumPy float32 matrix multiply
of the same multiply-add count, timed in the same run, because these machines
are noisy and absolute numbers drift.
"""
import os
import time

import greedy  # noqa: F401  (before NumPy starts OpenBLAS: its thread settings, greedy/__init__.py)
import numpy as np
import pytest

os.environ.setdefault("GREEDY_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def best_seconds(fn, repeats=5):
    """Best wall time of ``repeats`` calls of fn() in seconds."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(m, k, n, repeats=5):
    """Best GFLOP/s of a float32 (m, k) @ (k, n) NumPy matrix multiply (2*m*k*n flops)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    return 2.0 * m * k * n / best_seconds(lambda: a @ b, repeats) / 1e9


def record(benchmark, flops, m, k, n):
    """Store GFLOP/s of the benchmarked call and its ratio to an equal-work matmul in extra_info.

    ``flops`` is the work of one benchmarked call; (m, k, n) is the shape of the
    reference matrix multiply with the same multiply-add count.
    """
    gflops = flops / benchmark.stats.stats.min / 1e9
    ref = matmul_gflops(m, k, n)
    benchmark.extra_info["gflops"] = round(gflops, 2)
    benchmark.extra_info["matmul_gflops"] = round(ref, 2)
    benchmark.extra_info["ratio_to_matmul"] = round(gflops / ref, 3)
    return gflops, ref


@pytest.fixture
def rng():
    return np.random.default_rng(0)
