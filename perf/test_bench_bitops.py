"""Bit-packed hamming distances and binary convolution.

Besides the matmul comparison from ``record`` (a hamming distance over b bits
counted as b multiply-adds, i.e. the float network of the same shape), the
hamming benchmarks report distances per second and the ratio to a NumPy
``np.bitwise_count`` implementation timed in the same run on a subset of rows.
"""

import numpy as np
from conftest import best_seconds, record

from greedy.kernels.bitops import binary_conv2d, hamming_pairwise, pack_bits

N_CODES, N_FILTERS, N_BITS = 100_000, 1_024, 256


def numpy_hamming(a, b, chunk=64):
    out = np.empty((a.shape[0], b.shape[0]), np.int32)
    for s in range(0, a.shape[0], chunk):
        out[s : s + chunk] = np.bitwise_count(a[s : s + chunk, None, :] ^ b[None, :, :]).sum(-1, dtype=np.int32)
    return out


def numpy_distances_per_second(a, b, rows=4_000, repeats=3):
    sub = a[:rows]
    return sub.shape[0] * b.shape[0] / best_seconds(lambda: numpy_hamming(sub, b), repeats)


def codes(rng):
    a, _ = pack_bits(rng.random((N_CODES, N_BITS)) < 0.5)
    b, _ = pack_bits(rng.random((N_FILTERS, N_BITS)) < 0.5)
    return a, b


def report_hamming(benchmark, a, b):
    n, m = a.shape[0], b.shape[0]
    record(benchmark, 2.0 * n * m * N_BITS, n, N_BITS, m)
    ours = n * m / benchmark.stats.stats.min
    ref = numpy_distances_per_second(a, b)
    benchmark.extra_info["distances_per_s"] = round(ours)
    benchmark.extra_info["numpy_bitwise_count_distances_per_s"] = round(ref)
    benchmark.extra_info["ratio_to_numpy_bitwise_count"] = round(ours / ref, 1)


def test_bench_hamming_pairwise(benchmark, rng):
    a, b = codes(rng)
    d = hamming_pairwise(a, b)  # warm-up (JIT)
    np.testing.assert_array_equal(d[:64], numpy_hamming(a[:64], b))
    benchmark(hamming_pairwise, a, b)
    report_hamming(benchmark, a, b)


def test_bench_hamming_pairwise_out(benchmark, rng):
    """Same with a reused output buffer: no page faults on a fresh 400 MB array."""
    a, b = codes(rng)
    out = np.empty((N_CODES, N_FILTERS), np.int32)
    hamming_pairwise(a, b, out=out)  # warm-up (JIT)
    benchmark(hamming_pairwise, a, b, out=out)
    report_hamming(benchmark, a, b)


def test_bench_binary_conv2d(benchmark, rng):
    n, h, w, c, f = 32, 32, 32, 128, 128
    x, _ = pack_bits(rng.random((n, h, w, c)) < 0.5)
    filters, _ = pack_bits(rng.random((f, 9, c)) < 0.5)
    thresholds = np.full(f, 9 * c / 2)
    binary_conv2d(x, filters, thresholds, c)  # warm-up (JIT)
    benchmark(binary_conv2d, x, filters, thresholds, c)
    record(benchmark, 2.0 * n * h * w * 9 * c * f, n * h * w, 9 * c, f)
    benchmark.extra_info["pixels_per_s"] = round(n * h * w / benchmark.stats.stats.min)
