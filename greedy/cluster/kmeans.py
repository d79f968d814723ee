"""k-means clustering shaped like scikit-learn's ``KMeans``: Lloyd or mini-batch, weighted.

Used to cluster millions of small patches (d ~ 27) into ~1024 centres, and image codes
with sample weights. Points are float32 unless given as float64.

Nearest-centre search (``assign``) uses the GEMM form
||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 on chunks of rows: one single-threaded BLAS
product ``centers @ X_chunk.T`` (k, m), then the numba kernel ``argmin_columns``;
``n_threads`` Python worker threads each take whole chunks (BLAS and the nogil
kernels release the GIL). A Lloyd iteration also adds each chunk's points into its
worker's private cluster sums in the same pass, and the partials are added afterwards.

Why threads and not a numba ``prange`` (measured on the shared 2-core development
machine, 1e6 x 27 points, k = 1024): this runs at about a single-threaded BLAS
matmul's rate per core; a fully fused numba kernel (FMA loop over centres, then an
argmin) reached about a third of that; alternating multithreaded OpenBLAS with
numba's OpenMP pool once per chunk was about 50x slower, as each pool's idle
threads spin while the other works. On a busy machine every numba parallel launch
also waited ~20 ms for its second thread, which made a prange centre update 50x
slower than doing it inside the assignment workers. BLAS is limited to one thread
(process wide, through threadpoolctl) during ``assign`` and ``fit``.
"""
import concurrent.futures
import sys

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from greedy import validate
from greedy.kernels import kmeans as kk
from greedy.errors import ConfigError

ASSIGN_CHUNK = 512  # rows per assign chunk: the fastest measured for k from 64 to 1024
ASSIGN_MAX_BLOCK_BYTES = 2 ** 23  # fewer rows when a thread's (k, chunk) block would pass this
KMEANSPP_MIN_SAMPLES = 10_000  # k-means++ subsample: max(10_000, 32 * k) rows of positive weight
KMEANSPP_SAMPLES_PER_CENTER = 32
MAX_NO_IMPROVEMENT = 10  # mini-batch steps without a lower smoothed batch inertia before stopping

_blas_controller = None


def _single_threaded_blas():
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def _as_weights(sample_weight, n):
    """(n,) float64 weights, all ones for None; ConfigError unless finite, >= 0 and of positive sum."""
    if sample_weight is None:
        return np.ones(n)
    try:
        w = np.asarray(sample_weight, np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sample_weight must be numeric: {e}") from None
    if w.shape != (n,):
        raise ConfigError(f"sample_weight must have shape ({n},), got {w.shape}")
    if not np.isfinite(w).all():
        raise ConfigError("sample_weight contains NaN or infinite values")
    if (w < 0).any():
        raise ConfigError("sample_weight must be non-negative")
    if w.sum() <= 0:
        raise ConfigError("sample_weight must have a positive sum")
    return np.ascontiguousarray(w)


def default_chunk(k, itemsize):
    """Rows per ``assign`` chunk: ASSIGN_CHUNK, fewer (at least 16) if the (k, chunk) block is too big."""
    return max(16, min(ASSIGN_CHUNK, ASSIGN_MAX_BLOCK_BYTES // (k * itemsize)))


def assign(X, centers, centers_sq_norms=None, chunk=None, n_threads=None):
    """Nearest centre of every row of X.

    X (n, d) float32 or float64 (other numeric types become float32); centers (k, d)
    are cast to X's dtype; centers_sq_norms (k,) optional precomputed ||c||^2.
    Returns labels (n,) int32 and min_sq_dist (n,) of X's dtype, the squared
    distance to that centre (clamped at 0; ties go to the lowest index).

    Memory: besides the outputs, each of the ``n_threads`` worker threads (default
    ``numba.get_num_threads()``) holds one (k, chunk) block of X's dtype, so at most
    n_threads * k * chunk * itemsize bytes: 2 MiB per thread for k = 1024 in float32
    with the default chunk of 512 rows (fewer rows when a block would pass 8 MiB).
    """
    X = validate.finite_matrix(X, "X")
    centers = validate.finite_matrix(centers, "centers").astype(X.dtype, copy=False)
    if centers.shape[1] != X.shape[1]:
        raise ConfigError(f"centers have {centers.shape[1]} features but X has {X.shape[1]}")
    k = len(centers)
    if centers_sq_norms is None:
        sq = np.einsum("ij,ij->i", centers, centers)
    else:
        sq = np.ascontiguousarray(centers_sq_norms, X.dtype)
        if sq.shape != (k,):
            raise ConfigError(f"centers_sq_norms must have shape ({k},), got {sq.shape}")
    chunk = default_chunk(k, X.itemsize) if chunk is None else validate.positive_int(chunk, "chunk")
    n_threads = validate.positive_int(n_threads, "n_threads", allow_none=True)
    return _assign(X, centers, sq, chunk, n_threads)


def _assign(X, centers, sq, chunk=None, n_threads=None, weights=None):
    """``assign`` on validated arrays of one dtype.

    With weights (n,) float64 also returns the clusters' weighted sums (k, d) and
    weights (k,), float64: each worker accumulates its own contiguous range of
    chunks, so the result depends on ``n_threads`` but not on thread timing.
    """
    n, d = X.shape
    k = len(centers)
    chunk = default_chunk(k, X.itemsize) if chunk is None else chunk
    labels = np.empty(n, np.int32)
    min_sq_dist = np.empty(n, X.dtype)
    n_chunks = -(-n // chunk)
    n_workers = min(n_threads or numba.get_num_threads(), n_chunks)
    per_worker = -(-n_chunks // n_workers)
    sums = np.zeros((n_workers, k, d)) if weights is not None else None
    counts = np.zeros((n_workers, k)) if weights is not None else None

    def work(t):
        block = np.empty(k * min(chunk, n), X.dtype)
        best = np.empty(min(chunk, n), X.dtype)
        for q in range(t * per_worker, min(n_chunks, (t + 1) * per_worker)):
            s, e = q * chunk, min(n, (q + 1) * chunk)
            gt = block[:k * (e - s)].reshape(k, e - s)
            np.matmul(centers, X[s:e].T, out=gt)
            kk.argmin_columns(gt, sq, X[s:e], labels[s:e], min_sq_dist[s:e], best)
            if weights is not None:
                kk.accumulate_clusters(X[s:e], weights[s:e], labels[s:e], sums[t], counts[t])

    with _single_threaded_blas():
        if n_workers == 1:
            work(0)
        else:
            with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
                for f in [pool.submit(work, t) for t in range(n_workers)]:
                    f.result()
    if weights is None:
        return labels, min_sq_dist
    return labels, min_sq_dist, sums.sum(axis=0), counts.sum(axis=0)


def _mean_variance(X, w):
    """Weighted variance of each feature of X, averaged over features (float)."""
    total = w.sum()
    s1 = np.zeros(X.shape[1])
    s2 = np.zeros(X.shape[1])
    for s in range(0, len(X), 65536):
        xb = X[s:s + 65536].astype(np.float64)
        wb = w[s:s + 65536]
        s1 += wb @ xb
        s2 += wb @ (xb * xb)
    mean = s1 / total
    return float(np.maximum(s2 / total - mean * mean, 0).mean())


def kmeans_plusplus(X, w, k, rng):
    """Greedy k-means++ seeds (k, d) of X's dtype from X (n, d) with weights w (n,) float64.

    Runs on a uniform subsample of max(KMEANSPP_MIN_SAMPLES, KMEANSPP_SAMPLES_PER_CENTER * k)
    rows with positive weight when there are more (the kernel is serial and costs
    k * (2 + log k) passes over it). Each step draws 2 + log(k) candidates with
    probability proportional to weight * squared distance to the chosen centres and
    keeps the one that lowers the weighted total most.
    """
    pos = np.flatnonzero(w > 0)
    n_sub = max(KMEANSPP_MIN_SAMPLES, KMEANSPP_SAMPLES_PER_CENTER * k)
    if len(pos) > n_sub:
        pos = np.sort(rng.choice(pos, n_sub, replace=False))
    xt = np.ascontiguousarray(X[pos].T, np.float64)
    first = rng.random()
    draws = rng.random((k - 1, 2 + int(np.log(k))))
    return X[pos[kk.kmeanspp(xt, w[pos], first, draws)]]


class KMeans:
    """k-means clustering with a scikit-learn-like interface.

    ``batch_size=None`` runs full Lloyd iterations; an integer runs Sculley's
    mini-batch k-means (each centre moves towards the mean of its batch points with
    learning rate batch weight / total weight it has received). ``init`` is
    "k-means++" (greedy, on a subsample, see ``kmeans_plusplus``), "random"
    (k distinct rows drawn with probability proportional to weight) or a (k, d) array.
    ``random_state`` is None, an int or a ``np.random.Generator``; the same int gives
    identical results for the same ``n_threads`` (default ``numba.get_num_threads()``),
    the number of worker threads of the assignment passes.

    Lloyd stops after ``max_iter`` iterations, when no label changes, or when the
    squared centre shift summed over centres is at most ``tol`` times the mean
    weighted per-feature variance of X. Mini-batch takes at most
    ceil(max_iter * n / batch_size) steps (``max_iter`` epochs) and also stops on that
    shift criterion or after MAX_NO_IMPROVEMENT steps without a lower smoothed
    batch inertia; the final labels and inertia come from one full assignment pass.

    Fitted attributes: ``cluster_centers_`` (k, d) float32 (float64 if X is float64),
    ``labels_`` (n,) int32, ``inertia_`` (weighted sum of squared distances),
    ``n_iter_`` (Lloyd iterations or mini-batch steps), ``inertia_history_`` (list:
    for Lloyd the inertia after each assignment, non-increasing, first entry for the
    initial centres; for mini-batch the mean inertia of each batch).
    """

    def __init__(self, n_clusters=8, *, init="k-means++", n_init=1, max_iter=100, tol=1e-4,
                 batch_size=None, random_state=None, n_threads=None, verbose=False):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose

    def _check_params(self, X, w):
        k = validate.positive_int(self.n_clusters, "n_clusters")
        validate.positive_int(self.n_init, "n_init")
        validate.positive_int(self.max_iter, "max_iter")
        validate.positive_int(self.batch_size, "batch_size", allow_none=True)
        validate.positive_int(self.n_threads, "n_threads", allow_none=True)
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) \
                or not np.isfinite(self.tol) or self.tol < 0:
            raise ConfigError(f"tol must be a finite number >= 0, got {self.tol!r}")
        n = len(X)
        if k > n:
            raise ConfigError(f"n_clusters={k} exceeds the number of samples ({n})")
        n_pos = int(np.count_nonzero(w))
        if k > n_pos:
            raise ConfigError(f"n_clusters={k} exceeds the number of samples with positive weight ({n_pos})")
        if isinstance(self.init, str):
            if self.init not in ("k-means++", "random"):
                raise ConfigError(f"init must be 'k-means++', 'random' or a (k, d) array, got {self.init!r}")
        else:
            init = validate.finite_matrix(self.init, "init")
            if init.shape != (k, X.shape[1]):
                raise ConfigError(f"init array must have shape ({k}, {X.shape[1]}), got {init.shape}")
        rs = self.random_state
        if rs is None or isinstance(rs, np.random.Generator):
            return k, np.random.default_rng(rs) if rs is None else rs
        if isinstance(rs, (int, np.integer)) and not isinstance(rs, bool) and rs >= 0:
            return k, np.random.default_rng(int(rs))
        raise ConfigError(f"random_state must be None, a non-negative int or a numpy Generator, got {rs!r}")

    def _initial_centers(self, X, w, k, rng):
        if isinstance(self.init, str) and self.init == "k-means++":
            return kmeans_plusplus(X, w, k, rng)
        if isinstance(self.init, str):
            return X[np.sort(rng.choice(len(X), k, replace=False, p=w / w.sum()))].copy()
        return np.array(self.init, X.dtype)

    def fit(self, X, sample_weight=None):
        """Cluster X (n, d); sample_weight (n,) non-negative, default ones. Returns self."""
        X = validate.finite_matrix(X, "X")
        w = _as_weights(sample_weight, len(X))
        k, rng = self._check_params(X, w)
        n_init = 1 if not isinstance(self.init, str) else self.n_init
        best = None
        nt = self.n_threads or numba.get_num_threads()
        with _single_threaded_blas():
            tol = self.tol * _mean_variance(X, w)
            for _ in range(n_init):
                centers = self._initial_centers(X, w, k, rng)
                if self.batch_size is None:
                    run = self._lloyd(X, w, centers, tol, nt)
                else:
                    run = self._minibatch(X, w, centers, tol, rng, nt)
                if best is None or run[2] < best[2]:
                    best = run
        self.cluster_centers_, self.labels_, self.inertia_, self.n_iter_, self.inertia_history_ = best
        return self

    def _report(self, it, inertia, shift):
        if self.verbose:
            print(f"kmeans iteration {it}: inertia {inertia:.6g}, centre shift {shift:.3g}", file=sys.stderr)

    def _lloyd(self, X, w, centers, tol, nt):
        labels, d2, sums, counts = _assign(X, centers, _sq_norms(centers), n_threads=nt, weights=w)
        history = [float(w @ d2)]
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            new = _update_centers(X, w, labels, d2, sums, counts, centers)
            shift = float(((new - centers).astype(np.float64) ** 2).sum())
            centers = new
            new_labels, d2, sums, counts = _assign(X, centers, _sq_norms(centers), n_threads=nt, weights=w)
            history.append(float(w @ d2))
            self._report(n_iter, history[-1], shift)
            converged = shift <= tol or np.array_equal(new_labels, labels)
            labels = new_labels
            if converged:
                break
        return centers, labels, history[-1], n_iter, history

    def _minibatch(self, X, w, centers, tol, rng, nt):
        n = len(X)
        b = self.batch_size
        work = centers.astype(np.float64)
        seen = np.zeros(len(centers))
        history = []
        alpha = min(1.0, 2.0 * b / (n + 1))
        smooth, best, stale = None, np.inf, 0
        step = 0
        for step in range(1, -(-self.max_iter * n // b) + 1):
            idx = rng.integers(0, n, b)
            xb, wb = X[idx], w[idx]
            if wb.sum() <= 0:
                continue
            labels, d2 = _assign(xb, centers, _sq_norms(centers), n_threads=nt)
            history.append(float(wb @ d2) / wb.sum())
            old = work.copy()
            kk.minibatch_step(xb, wb, labels, work, seen)
            shift = float(((work - old) ** 2).sum())
            centers = work.astype(X.dtype)
            self._report(step, history[-1], shift)
            smooth = history[-1] if smooth is None else (1 - alpha) * smooth + alpha * history[-1]
            if smooth < best:
                best, stale = smooth, 0
            else:
                stale += 1
            if shift <= tol or stale >= MAX_NO_IMPROVEMENT:
                break
        labels, d2 = _assign(X, centers, _sq_norms(centers), n_threads=nt)
        return centers, labels, float(w @ d2), step, history

    def _check_fitted(self, X):
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this KMeans is not fitted yet; call fit first")
        X = validate.finite_matrix(X, "X")
        d = self.cluster_centers_.shape[1]
        if X.shape[1] != d:
            raise ConfigError(f"X has {X.shape[1]} features but the model was fitted on {d}")
        return X, self.cluster_centers_.astype(X.dtype, copy=False)

    def predict(self, X):
        """Index (n,) int32 of the nearest centre of each row of X (n, d)."""
        X, centers = self._check_fitted(X)
        return _assign(X, centers, _sq_norms(centers), n_threads=self.n_threads)[0]

    def transform(self, X):
        """Euclidean distances (n, k) of X's dtype from each row of X (n, d) to each centre."""
        X, centers = self._check_fitted(X)
        d2 = np.einsum("ij,ij->i", X, X)[:, None] - 2 * (X @ centers.T) + _sq_norms(centers)[None, :]
        return np.sqrt(np.maximum(d2, 0, out=d2), out=d2)

    def fit_predict(self, X, sample_weight=None):
        """Fit on X and return labels_ (n,) int32."""
        return self.fit(X, sample_weight).labels_

    def score(self, X, sample_weight=None):
        """Minus the weighted sum of squared distances of X's rows to their nearest centres (float)."""
        X, centers = self._check_fitted(X)
        w = _as_weights(sample_weight, len(X))
        d2 = _assign(X, centers, _sq_norms(centers), n_threads=self.n_threads)[1]
        return -float(w @ d2)


def _sq_norms(centers):
    return np.einsum("ij,ij->i", centers, centers)


def _update_centers(X, w, labels, d2, sums, counts, centers):
    """Weighted means (k, d) of X's dtype of the clusters with sums (k, d) and weights (k,).

    A cluster left empty takes over one of the points farthest from their centre
    (the point leaves its old cluster; labels, d2, sums and counts are updated in
    place). A cluster that still has no weight keeps its old centre.
    """
    k = len(centers)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        score = np.where(w > 0, d2, -1.0)
        far = np.argpartition(score, -len(empty))[-len(empty):]
        far = far[np.argsort(-score[far], kind="stable")]
        moved = w[far, None] * X[far]
        np.subtract.at(sums, labels[far], moved)
        np.subtract.at(counts, labels[far], w[far])
        sums[empty] = moved
        counts[empty] = w[far]
        labels[far] = empty
        d2[far] = 0
        counts[np.bincount(labels[w > 0], minlength=k) == 0] = 0  # clusters emptied by the moves
    new = centers.copy()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    return new
