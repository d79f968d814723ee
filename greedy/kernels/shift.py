"""Numba kernel of the sequence augmentation: each sequence shifted along its length, zero filled."""
import numba


@numba.njit(parallel=True, cache=True)
def shift_sequences(x, shifts, out):
    """out[i, c, l] = x[i, c, l - shifts[i]], zero where l - shifts[i] falls outside [0, L).

    x, out (N, C, L) of one dtype (out written); shifts (N,) int64. prange over sequences.
    """
    n, channels, length = x.shape
    for i in numba.prange(n):
        d = shifts[i]
        lo, hi = max(0, d), min(length, length + d)
        for c in range(channels):
            for p in range(lo):
                out[i, c, p] = 0
            for p in range(lo, hi):
                out[i, c, p] = x[i, c, p - d]
            for p in range(hi, length):
                out[i, c, p] = 0
