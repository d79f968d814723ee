"""k-means over points that stay on their sites: local initialisation merged on the coordinator, then Lloyd
iterations on per-site sums and counts.

Each site clusters its own points (``ops.local_kmeans``); the coordinator clusters the sites'
centroids, weighted by their counts, into the k initial centres (``greedy.cluster.kmeans.KMeans``
with sample weights). A Lloyd iteration sends the k centres to every site and receives each
site's per-cluster sums (k, d) and counts (k,) (``ops.lloyd_partial``), so an iteration moves
k * d * 4 bytes to each site and about k * (d + 1) * 8 bytes back (``iteration_bound``), whatever
the number of points. The centres, the stopping rule (centre shift at most ``tol`` times the mean
per-feature variance, or no label changed) and the iterations are those of ``KMeans`` (Lloyd) on
all the points together, up to float rounding, except that a cluster left empty keeps its centre
(``KMeans`` moves it to a far point, which would have to leave its site).
"""
import numpy as np

from greedy.cluster.kmeans import KMeans
from greedy.distributed import ops

RESULT_OVERHEAD = 2048  # bytes of pickling around one site's result (dict keys, headers)


def iteration_bound(k, d, n_sites):
    """(bytes to the sites, bytes back to the coordinator) of one Lloyd iteration: an upper bound."""
    return n_sites * (k * d * 4 * 2 + RESULT_OVERHEAD), n_sites * (k * d * 8 + k * 8 + RESULT_OVERHEAD)


def init_on_sites(sites, src, pre, counts, k, iters, seed):
    """Initial centres (k, d) float32 and the points' mean per-feature variance (float).

    ``counts`` the number of points each site samples; ``seed`` (int) seeds the sites' local k-means
    (with the site's index) and the weighted merge."""
    per_site = [(n, i) for i, n in enumerate(counts)]
    local = sites.run("kmeans_init", ops.local_kmeans, (src, pre.A_, pre.c_, k, iters, seed), per_site)
    points = np.concatenate([r["centers"] for r in local])
    weights = np.concatenate([r["counts"] for r in local]).astype(np.float64)
    merged = KMeans(k, max_iter=iters, random_state=seed).fit(points, sample_weight=weights)
    n = sum(r["n"] for r in local)
    mean = sum(r["s1"] for r in local) / n
    variance = float(np.maximum(sum(r["s2"] for r in local) / n - mean * mean, 0).mean())
    return merged.cluster_centers_, variance


def lloyd_on_sites(sites, src, counts, centers, max_iter, tol, on_iteration=None):
    """Lloyd iterations from ``centers`` (k, d) float32 over the sites' points.

    ``tol`` is absolute (KMeans' tol times the variance). Returns (centres (k, d) float32, inertia,
    iterations, inertia after each pass). ``on_iteration(it, inertia, shift)`` follows each iteration."""
    per_site = [(n, i) for i, n in enumerate(counts)]
    centers = np.asarray(centers, np.float32)

    def one_pass(it, previous):
        parts = sites.run("kmeans_lloyd", ops.lloyd_partial, (src, centers, it, previous), per_site)
        return (sum(p["sums"] for p in parts), sum(p["counts"] for p in parts),
                sum(p["inertia"] for p in parts), sum(p["changed"] for p in parts))

    sums, weight, inertia, _ = one_pass(0, None)
    history, n_iter = [inertia], 0
    for n_iter in range(1, max_iter + 1):
        new = centers.copy()
        full = weight > 0
        new[full] = sums[full] / weight[full, None]
        shift = float(((new - centers).astype(np.float64) ** 2).sum())
        previous, centers = centers, new
        sums, weight, inertia, changed = one_pass(n_iter, previous)
        history.append(inertia)
        if on_iteration is not None:
            on_iteration(n_iter, inertia, shift)
        if shift <= tol or changed == 0:
            break
    return centers, history[-1], n_iter, history
