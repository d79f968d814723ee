"""Numba kernel for exact k-nearest-neighbour distances; the Python API is ``greedy.cluster.divergence``."""
import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def knn_positive_block(q, ref, gram, q_sq, ref_sq, k, out, zeros):
    """k smallest positive squared distances from each query row to the reference rows.

    q (b, d) and ref (m, d) float64; gram (b, m) float32 = q @ ref.T in float32;
    q_sq (b,), ref_sq (m,) float64 squared row norms. Writes out (b, k) float64,
    ascending, inf-padded when fewer than k reference points are at positive
    distance, and zeros (b,) int64, the number of exact copies of each query row
    in ref. The Gram expansion only
    screens candidates; every candidate that could enter the top k is measured
    exactly, so copies give exact zeros and distances carry no cancellation error.
    """
    b, d = q.shape
    m = ref.shape[0]
    shrink = 1.0 - 4.0 * (d + 4) * 5.960464477539063e-08  # bounds float32 Gram rounding
    ref_lo = shrink * ref_sq
    for i in numba.prange(b):
        best = out[i]
        best[:] = np.inf
        # skip j when even the lowest possible exact distance exceeds the current k-th
        bound = best[k - 1] - shrink * q_sq[i]
        nz = 0
        for j in range(m):
            if ref_lo[j] - 2.0 * np.float64(gram[i, j]) > bound:
                continue
            e = 0.0
            for t in range(d):
                diff = q[i, t] - ref[j, t]
                e += diff * diff
            if e == 0.0:
                nz += 1
            elif e < best[k - 1]:
                pos = k - 1
                while pos > 0 and best[pos - 1] > e:
                    best[pos] = best[pos - 1]
                    pos -= 1
                best[pos] = e
                bound = best[k - 1] - shrink * q_sq[i]
        zeros[i] = nz
