"""Kernels of the byte embedding: codes (N, L) -> vectors (N, E, L), and the table's gradient.

Codes may be any integer dtype, or floats that hold whole numbers (a batch of
bytes converted to float32 on its way through a pipeline); each must lie in
[0, V) for a table of V rows. The lookup checks every code as it reads it.
"""
import numba
import numpy as np
from numba import prange

from greedy.errors import ConfigError


@numba.njit(parallel=True, cache=True)
def _lookup_kernel(x, wt, y, bad):
    """y[s, :, p] = wt[:, x[s, p]] for x (n, L), wt (E, V), y (n, E, L); bad[s] = first invalid position or -1."""
    n, length = x.shape
    e, v = wt.shape
    for s in prange(n):
        bad[s] = -1
        codes = np.empty(length, np.int64)
        for p in range(length):
            c = x[s, p]
            ic = int(c) if c >= 0 and c < v else -1
            if ic < 0 or ic != c:
                bad[s] = p
                break
            codes[p] = ic
        if bad[s] >= 0:
            continue
        for j in range(e):
            row, dst = wt[j], y[s, j]
            for p in range(length):
                dst[p] = row[codes[p]]


@numba.njit(parallel=True, cache=True)
def _table_grad_kernel(x, dy, parts, dwt):
    """dwt[t, j, c] = sum of dy[s, j, p] over positions with x[s, p] == c, samples s of block t.

    x (n, L) valid codes, dy (n, E, L), dwt (parts, E, V) zeroed; one block of samples per part.
    """
    n, length = x.shape
    e = dy.shape[1]
    step = (n + parts - 1) // parts
    for t in prange(parts):
        acc = dwt[t]
        for s in range(t * step, min(n, (t + 1) * step)):
            for j in range(e):
                src, dst = dy[s, j], acc[j]
                for p in range(length):
                    dst[int(x[s, p])] += src[p]


def _codes(x):
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        raise ConfigError(f"byte input must be a NumPy integer or float array, got "
                          f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 3 or x.shape[1] != 1:
        raise ConfigError(f"byte input must have shape (N, 1, L), got {x.shape}")
    return np.ascontiguousarray(x.reshape(x.shape[0], x.shape[2]))


def _table(w):
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype not in (np.float32, np.float64):
        raise ConfigError(f"embedding table must be a float32/float64 array (V, E), got "
                          f"{getattr(w, 'dtype', type(w).__name__)} {getattr(w, 'shape', '')}")
    return w


def embedding_forward(x, w):
    """Vectors of the codes x (N, 1, L) in the table w (V, E): y (N, E, L) in w's dtype, y[n, :, l] = w[x[n, 0, l]]."""
    codes, w = _codes(x), _table(w)
    n, length = codes.shape
    y = np.empty((n, w.shape[1], length), w.dtype)
    bad = np.empty(n, np.int64)
    _lookup_kernel(codes, np.ascontiguousarray(w.T), y, bad)
    wrong = np.flatnonzero(bad >= 0)
    if len(wrong):
        s = int(wrong[0])
        raise ConfigError(f"byte input holds {codes[s, bad[s]].item()!r} at sample {s}, position {bad[s]}: "
                          f"codes must be whole numbers in [0, {w.shape[0]})")
    return y


def embedding_backward(x, dy, vocab):
    """Gradient of the table given dy (N, E, L) = dL/dy for codes x (N, 1, L) already checked by the forward.

    Returns dw (vocab, E) in dy's dtype. Partial sums per block of samples are added in block order.
    """
    codes = _codes(x)
    if not isinstance(dy, np.ndarray) or dy.dtype not in (np.float32, np.float64) or dy.ndim != 3 \
            or dy.shape[0] != codes.shape[0] or dy.shape[2] != codes.shape[1]:
        raise ConfigError(f"dy must be a float array (N, E, L) matching x of shape {x.shape}, "
                          f"got {getattr(dy, 'shape', type(dy).__name__)}")
    parts = max(1, min(numba.get_num_threads(), len(codes)))
    dwt = np.zeros((parts, dy.shape[1], int(vocab)), dy.dtype)
    _table_grad_kernel(codes, np.ascontiguousarray(dy), parts, dwt)
    return np.ascontiguousarray(dwt.sum(axis=0).T)
