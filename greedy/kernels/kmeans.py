"""Numba kernels for k-means; the Python API (threads, BLAS, validation) is in ``kmeans.py``.

Points ``x`` are (n, d) and centres (k, d), C-contiguous float32 or float64
(both the same dtype). Sums, weights and k-means++ distances are float64.
The kernels are serial and nogil: ``kmeans.py`` runs the assignment ones on chunks
in its own worker threads (see there why not ``prange``); the rest are cheap.
"""
import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def argmin_columns(gt, c_sq_norms, x, labels, min_sq_dist, best):
    """Nearest centre of each row of ``x`` given the products ``gt = centers @ x.T``.

    gt (k, m), c_sq_norms (k,), x (m, d), all of one float dtype. Writes
    labels (m,) int32 and min_sq_dist (m,) = ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2,
    clamped at 0 against rounding; best (m,) of x's dtype is scratch.
    Ties go to the lowest centre index. Single-threaded and nogil: the caller
    runs one chunk per thread. The loop over rows is innermost so it vectorises.
    """
    k, m = gt.shape
    d = x.shape[1]
    two = gt.dtype.type(2.0)
    for i in range(m):
        best[i] = c_sq_norms[0] - two * gt[0, i]
        labels[i] = 0
    for c in range(1, k):
        cc = c_sq_norms[c]
        for i in range(m):
            v = cc - two * gt[c, i]
            if v < best[i]:
                best[i] = v
                labels[i] = c
    for i in range(m):
        xx = best[i] * 0
        for j in range(d):
            xx += x[i, j] * x[i, j]
        min_sq_dist[i] = max(best[i] + xx, 0)


@njit(nogil=True, cache=True)
def accumulate_clusters(x, weights, labels, sums, counts):
    """Add each row's weighted point and weight to its cluster, in place.

    x (m, d), weights (m,) float64, labels (m,) int in [0, k); sums (k, d) float64
    and counts (k,) float64 are one worker thread's private partials (the caller
    adds the threads' partials afterwards, so no two threads write the same memory).
    """
    d = x.shape[1]
    for i in range(x.shape[0]):
        c = labels[i]
        w = weights[i]
        counts[c] += w
        for j in range(d):
            sums[c, j] += w * x[i, j]


@njit(nogil=True, cache=True)
def minibatch_step(x, weights, labels, centers, seen):
    """Sculley's mini-batch update, in place, one batch row after another.

    x (b, d), weights (b,) float64, labels (b,) int nearest centre of each row
    (found before the step), centers (k, d) float64, seen (k,) float64 total
    weight each centre has received. Row i moves centre c = labels[i] by
    eta = w_i / seen[c] towards x[i] after adding w_i to seen[c], so each centre is the
    weighted running mean of the rows it was given. Serial: a batch is small.
    """
    d = x.shape[1]
    for i in range(x.shape[0]):
        w = weights[i]
        if w > 0:
            c = labels[i]
            seen[c] += w
            eta = w / seen[c]
            for j in range(d):
                centers[c, j] += eta * (x[i, j] - centers[c, j])


@njit(nogil=True, cache=True)
def _draw(cum, u):
    """Index whose interval of the running sum cum (n,) contains u * cum[-1].

    The first i with cum[i] > u * cum[-1] (``np.searchsorted(..., side="right")``), at most n - 1.
    """
    v = u * cum[-1]
    lo, hi = 0, cum.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return min(lo, cum.shape[0] - 1)


@njit(nogil=True, cache=True)
def _running_sum(a, out):
    """out (n,) = np.cumsum(a (n,)), summed left to right."""
    acc = 0.0
    for i in range(a.shape[0]):
        acc += a[i]
        out[i] = acc


@njit(nogil=True, cache=True)
def _sq_dists_to(xt, idx, out):
    """out (p, n) = squared distances from columns idx (p,) of xt (d, n) to every column.

    Blocked over columns so each block of xt is read from cache once for all p.
    """
    d, n = xt.shape
    out[:] = 0.0
    for i0 in range(0, n, 1024):
        i1 = min(n, i0 + 1024)
        for q in range(idx.shape[0]):
            row = out[q, i0:i1]
            for j in range(d):
                xs = xt[j, i0:i1]
                xj = xt[j, idx[q]]
                for i in range(i1 - i0):
                    diff = xs[i] - xj
                    row[i] += diff * diff


@njit(nogil=True, cache=True)
def kmeanspp(xt, weights, first, draws):
    """Greedy k-means++: indices (k,) int64 of the points chosen as initial centres.

    xt (d, n) float64 points as columns, weights (n,) float64 with positive sum,
    first a uniform [0, 1) draw for the first centre (probability proportional to
    weight), draws (k - 1, trials) uniform [0, 1). Each later centre is the candidate,
    among ``trials`` drawn with probability proportional to weight times squared
    distance to the nearest chosen centre, that lowers the weighted total most.
    Serial (vectorised over points): it runs on a subsample.
    """
    n = xt.shape[1]
    k, trials = draws.shape[0] + 1, draws.shape[1]
    chosen = np.empty(k, np.int64)
    closest = np.empty((1, n))
    cand = np.empty((trials, n))
    idx = np.empty(trials, np.int64)
    cum = np.empty(n)
    _running_sum(weights, cum)
    chosen[0] = _draw(cum, first)
    _sq_dists_to(xt, chosen[:1], closest)
    for c in range(1, k):
        acc = 0.0
        for i in range(n):
            acc += weights[i] * closest[0, i]
            cum[i] = acc
        if acc <= 0:  # every point sits on a chosen centre
            _running_sum(weights, cum)
        for t in range(trials):
            idx[t] = _draw(cum, draws[c - 1, t])
        _sq_dists_to(xt, idx, cand)
        best, best_total = 0, np.inf
        for t in range(trials):
            total = 0.0
            for i in range(n):
                cand[t, i] = min(cand[t, i], closest[0, i])
                total += weights[i] * cand[t, i]
            if total < best_total:
                best, best_total = t, total
        chosen[c] = idx[best]
        for i in range(n):
            closest[0, i] = cand[best, i]
    return chosen
