"""Numba kernels for patch-bag codes: per-image, per-region histograms of centroid labels.

Every image (or sequence) has P positions, and ``region_of`` (P,) int64 gives the region of each;
labels (n*P,) are the positions' centroids, image by image. The Python API (``encode``,
``region_histograms``, ``region_of_positions``) is in ``greedy.cluster.codes``.
"""
import numba
import numpy as np


@numba.njit(cache=True)
def count_codes(labels, region_of, counts):
    """counts (n, R, k) += each image's histogram of labels (n*P,) int64 in each region.

    Serial: one increment per position saves less with threads than a threaded loop takes to compile.
    """
    positions = len(region_of)
    for i in range(counts.shape[0]):
        base = i * positions
        for p in range(positions):
            counts[i, region_of[p], labels[base + p]] += 1


# above this many columns per position a row's columns are found by sorting the ones it touched, not by
# scanning all of them
SCAN_COLUMNS_PER_POSITION = 16


@numba.njit(parallel=True, cache=True)
def region_rows(labels, region_of, sizes, k, n_blocks, cols, vals, runs, distinct):
    """Each image's non-zero region frequencies, in ascending column ``region * k + label``.

    labels (n*P,) int64 in [0, k); region_of (P,) int64 in [0, R); sizes (R,) float, the positions in each
    region. Writes row i of cols (n, P) int64 and vals (n, P) float with image i's runs[i] non-zero
    columns and their counts over their region's size, and distinct[i], its number of distinct labels.
    Each of the n_blocks runs of images (one a thread) is counted into its own (R*k,) histogram.
    """
    n, positions = cols.shape
    width = len(sizes) * k
    scan = width <= SCAN_COLUMNS_PER_POSITION * positions
    for t in numba.prange(n_blocks):
        hist = np.zeros(width, np.int32)
        seen = np.zeros(k, np.bool_)
        touched = np.empty(positions, np.int64)
        for i in range(t * n // n_blocks, (t + 1) * n // n_blocks):
            base = i * positions
            r, d = 0, 0
            for p in range(positions):
                label = labels[base + p]
                c = region_of[p] * k + label
                if hist[c] == 0:
                    touched[r] = c
                    r += 1
                hist[c] += 1
                if not seen[label]:
                    seen[label] = True
                    d += 1
            if scan:
                o = 0
                for c in range(width):
                    if hist[c]:
                        touched[o] = c
                        o += 1
            else:
                touched[:r].sort()
            for j in range(r):
                c = touched[j]
                cols[i, j] = c
                vals[i, j] = hist[c]
                vals[i, j] /= sizes[c // k]
                hist[c] = 0
                seen[c % k] = False
            runs[i], distinct[i] = r, d


@numba.njit(parallel=True, cache=True)
def gather_rows(cols, vals, indptr, indices, data):
    """CSR arrays from the rows of ``region_rows``: row i's first ``indptr[i + 1] - indptr[i]`` entries of
    cols and vals (n, P) go to ``indices`` and ``data`` from ``indptr[i]``."""
    for i in numba.prange(cols.shape[0]):
        o = indptr[i]
        for j in range(indptr[i + 1] - o):
            indices[o + j] = cols[i, j]
            data[o + j] = vals[i, j]
