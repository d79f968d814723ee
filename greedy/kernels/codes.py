"""Numba kernel for patch-bag codes: per-image, per-region histograms of centroid labels.

The Python API (``encode``, ``region_sizes``) is in ``greedy.methods.patchbag``.
"""
import numba


@numba.njit(cache=True)
def count_codes(labels, n_images, h, w, side, k, counts):
    """counts (n_images, side*side, k) += region-wise histograms of labels (n_images*h*w,) int64.

    Position (r, c) of an h x w map falls in region (r*side // h, c*side // w), so the
    regions split the rows and the columns as evenly as integers allow. Serial: one
    increment per position saves less with threads than a threaded loop takes to compile.
    """
    for i in range(n_images):
        base = i * h * w
        for r in range(h):
            rr = min(r * side // h, side - 1)
            for c in range(w):
                region = rr * side + min(c * side // w, side - 1)
                counts[i, region, labels[base + r * w + c]] += 1


@numba.njit(cache=True)
def count_codes_1d(labels, n_sequences, length, regions, k, counts):
    """counts (n_sequences, regions, k) += segment-wise histograms of labels (n_sequences*length,) int64.

    Position p of a sequence falls in segment p*regions // length, so the segments split the
    length as evenly as integers allow. Serial, like ``count_codes``.
    """
    for i in range(n_sequences):
        base = i * length
        for p in range(length):
            counts[i, p * regions // length, labels[base + p]] += 1
