"""k-means: blob recovery, monotone inertia, reproducibility, weights, a float64 brute-force reference, errors."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.cluster.kmeans import KMeans, assign, kmeans_plusplus


def blobs(n=1200, k=6, d=4, spread=50.0, dtype=np.float32, seed=0):
    """Well-separated Gaussian clusters (unit noise, centres ~spread apart) and their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * spread
    y = rng.permutation(np.arange(n) % k)
    return (centres[y] + rng.standard_normal((n, d))).astype(dtype), y


def same_partition(a, b):
    """True if label vectors a and b define the same partition (equal up to renaming)."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def brute_sq_dists(X, C):
    """Float64 (n, k) squared distances by explicit differences."""
    diff = X.astype(np.float64)[:, None, :] - C.astype(np.float64)[None, :, :]
    return (diff ** 2).sum(-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [None, 128])
def test_separated_blobs_recovered(dtype, batch_size):
    X, y = blobs(dtype=dtype)
    km = KMeans(6, random_state=0, batch_size=batch_size).fit(X)
    assert same_partition(km.labels_, y)
    assert km.cluster_centers_.dtype == dtype and km.cluster_centers_.shape == (6, 4)
    assert km.labels_.shape == (1200,)
    assert np.array_equal(km.predict(X), km.labels_)


def test_random_init_with_restarts_recovers_blobs():
    X, y = blobs()
    km = KMeans(6, init="random", n_init=8, random_state=1).fit(X)
    assert same_partition(km.labels_, y)


def test_integer_input_becomes_float32():
    X, _ = blobs(dtype=np.float64)
    km = KMeans(3, random_state=0, max_iter=5).fit(np.round(X).astype(np.int32))
    assert km.cluster_centers_.dtype == np.float32


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_inertia_never_increases(dtype, rtol):
    X = np.random.default_rng(2).uniform(size=(2000, 3)).astype(dtype)
    km = KMeans(25, tol=0.0, max_iter=60, random_state=0, init="random").fit(X)
    h = np.array(km.inertia_history_)
    assert len(h) == km.n_iter_ + 1 and km.n_iter_ > 3
    assert np.all(np.diff(h) <= rtol * h[:-1])
    assert h[-1] < h[0]
    assert km.inertia_ == pytest.approx(h[-1])
    ref = brute_sq_dists(X, km.cluster_centers_).min(1).sum()
    assert km.inertia_ == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("batch_size", [None, 64])
def test_same_seed_gives_identical_result(batch_size):
    X = np.random.default_rng(3).standard_normal((800, 5)).astype(np.float32)
    runs = [KMeans(12, random_state=7, batch_size=batch_size, max_iter=20).fit(X) for _ in range(2)]
    assert np.array_equal(runs[0].cluster_centers_, runs[1].cluster_centers_)
    assert np.array_equal(runs[0].labels_, runs[1].labels_)
    gens = [KMeans(12, random_state=np.random.default_rng(5), batch_size=batch_size, max_iter=20).fit(X)
            for _ in range(2)]
    assert np.array_equal(gens[0].cluster_centers_, gens[1].cluster_centers_)


def test_thread_count_does_not_change_the_clustering():
    X, y = blobs(n=3000, k=5, d=3)
    one = KMeans(5, random_state=2, n_threads=1).fit(X)
    two = KMeans(5, random_state=2, n_threads=2).fit(X)
    assert np.array_equal(one.labels_, two.labels_) and same_partition(one.labels_, y)
    np.testing.assert_allclose(one.cluster_centers_, two.cluster_centers_, rtol=1e-6)


def test_kmeanspp_depends_on_seed_and_picks_data_rows():
    X = np.random.default_rng(4).standard_normal((3000, 6)).astype(np.float32)
    w = np.ones(len(X))
    a = kmeans_plusplus(X, w, 20, np.random.default_rng(0))
    b = kmeans_plusplus(X, w, 20, np.random.default_rng(0))
    c = kmeans_plusplus(X, w, 20, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a, axis=0)) == 20
    assert brute_sq_dists(a, X).min(1).max() == 0.0


def test_kmeanspp_never_picks_zero_weight_rows():
    X = np.random.default_rng(5).standard_normal((500, 3))
    w = np.zeros(len(X))
    w[::10] = 1.0
    centres = kmeans_plusplus(X, w, 30, np.random.default_rng(0))
    picked = brute_sq_dists(centres, X).argmin(1)
    assert np.all(w[picked] > 0)


def test_weighted_fit_equals_fit_on_repeated_rows():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((300, 3))
    w = rng.integers(0, 4, len(X))
    init = X[w > 0][:7].copy()
    weighted = KMeans(7, init=init, tol=0.0, max_iter=50).fit(X, sample_weight=w.astype(float))
    repeated = KMeans(7, init=init, tol=0.0, max_iter=50).fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-10, atol=1e-12)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-10)
    assert weighted.n_iter_ == repeated.n_iter_
    assert np.array_equal(np.repeat(weighted.labels_, w), repeated.labels_)


def test_sample_weight_pulls_centre():
    X = np.array([[0.0], [1.0], [10.0]])
    km = KMeans(1).fit(X, sample_weight=[1.0, 3.0, 0.0])
    assert km.cluster_centers_[0, 0] == pytest.approx(0.75)
    assert km.inertia_ == pytest.approx(1 * 0.75 ** 2 + 3 * 0.25 ** 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_matches_float64_brute_force(dtype):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((600, 7)).astype(dtype)
    km = KMeans(13, random_state=0, max_iter=10).fit(X)
    Xn = rng.standard_normal((500, 7)).astype(dtype)
    D = brute_sq_dists(Xn, km.cluster_centers_)
    labels = km.predict(Xn)
    assert labels.dtype == np.int32
    if dtype == np.float64:
        assert np.array_equal(labels, D.argmin(1))
    else:
        chosen = D[np.arange(len(Xn)), labels]
        assert np.all(chosen <= D.min(1) * (1 + 1e-5) + 1e-5)
        second = np.sort(D, axis=1)[:, 1]
        clear = second - D.min(1) > 1e-3
        assert clear.mean() > 0.95 and np.array_equal(labels[clear], D.argmin(1)[clear])
    np.testing.assert_allclose(km.transform(Xn), np.sqrt(D), rtol=1e-4, atol=1e-4)
    assert km.score(Xn) == pytest.approx(-D.min(1).sum(), rel=1e-5)


@pytest.mark.parametrize("chunk,n_threads", [(None, None), (7, 2), (64, 1)])
def test_assign_chunks_and_threads_agree_with_reference(chunk, n_threads):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((1000, 5))
    C = rng.standard_normal((40, 5))
    labels, d2 = assign(X, C, (C ** 2).sum(1), chunk=chunk, n_threads=n_threads)
    D = brute_sq_dists(X, C)
    assert labels.dtype == np.int32 and d2.dtype == np.float64
    assert np.array_equal(labels, D.argmin(1))
    np.testing.assert_allclose(d2, D.min(1), rtol=1e-10, atol=1e-12)
    l32, d32 = assign(X.astype(np.float32), C, chunk=chunk, n_threads=n_threads)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, D.min(1), rtol=1e-4, atol=1e-5)


def test_assign_exact_hits_and_ties():
    C = np.array([[0, 0], [3, 4], [0, 0], [3, 4]], np.float32)
    X = np.array([[0, 0], [3, 4], [3, 4], [1, 0]], np.float32)
    labels, d2 = assign(X, C)
    assert labels.tolist() == [0, 1, 1, 0]
    assert d2.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_minibatch_inertia_close_to_lloyd():
    X, _ = blobs(n=4000, k=10, d=6, spread=8.0, seed=3)
    lloyd = KMeans(10, random_state=0).fit(X)
    mini = KMeans(10, random_state=0, batch_size=256).fit(X)
    assert mini.inertia_ <= 1.03 * lloyd.inertia_
    assert mini.n_iter_ >= 1 and len(mini.inertia_history_) == mini.n_iter_


def test_empty_cluster_is_reseeded_from_farthest_point():
    X, _ = blobs(n=600, k=3, d=2, spread=20.0, seed=4)
    init = np.vstack([X[:3], [[1e4, 1e4]]])
    km = KMeans(4, init=init, max_iter=30).fit(X)
    assert len(np.unique(km.labels_)) == 4
    assert np.abs(km.cluster_centers_).max() <= np.abs(X).max()
    h = np.array(km.inertia_history_)
    assert np.all(np.diff(h) <= 1e-6 * h[:-1])


def test_single_cluster_is_weighted_mean():
    X = np.random.default_rng(10).standard_normal((50, 3))
    w = np.random.default_rng(11).uniform(0.5, 2.0, 50)
    km = KMeans(1).fit(X, sample_weight=w)
    np.testing.assert_allclose(km.cluster_centers_[0], (w @ X) / w.sum(), rtol=1e-12)


def test_fit_predict_returns_labels():
    X, y = blobs(n=300, k=3)
    km = KMeans(3, random_state=0)
    assert same_partition(km.fit_predict(X), y)


X_OK = np.random.default_rng(12).standard_normal((20, 3)).astype(np.float32)


@pytest.mark.parametrize("kwargs,X,weights,match", [
    ({"n_clusters": 0}, X_OK, None, "n_clusters must be a positive integer"),
    ({"n_clusters": 21}, X_OK, None, "exceeds the number of samples"),
    ({"n_clusters": 3}, X_OK, np.r_[np.ones(2), np.zeros(18)], "positive weight"),
    ({}, X_OK[:, 0], None, "must be 2-D"),
    ({}, X_OK[None], None, "must be 2-D"),
    ({}, np.zeros((0, 3)), None, "empty"),
    ({}, np.where(np.eye(20, 3) > 0, np.nan, X_OK), None, "NaN or infinite"),
    ({}, np.where(np.eye(20, 3) > 0, np.inf, X_OK), None, "NaN or infinite"),
    ({}, np.array([["a", "b"]] * 10), None, "numeric"),
    ({"n_clusters": 2}, X_OK, -np.ones(20), "non-negative"),
    ({"n_clusters": 2}, X_OK, np.zeros(20), "positive sum"),
    ({"n_clusters": 2}, X_OK, np.ones(19), "shape"),
    ({"n_clusters": 2}, X_OK, np.r_[np.nan, np.ones(19)], "NaN or infinite"),
    ({"n_clusters": 2, "init": "kmeans"}, X_OK, None, "init must be"),
    ({"n_clusters": 2, "init": np.zeros((3, 3))}, X_OK, None, "init array must have shape"),
    ({"n_clusters": 2, "max_iter": 0}, X_OK, None, "max_iter"),
    ({"n_clusters": 2, "tol": -1.0}, X_OK, None, "tol"),
    ({"n_clusters": 2, "batch_size": 0}, X_OK, None, "batch_size"),
    ({"n_clusters": 2, "random_state": "seed"}, X_OK, None, "random_state"),
])
def test_bad_input_raises_config_error(kwargs, X, weights, match):
    with pytest.raises(ConfigError, match=match):
        KMeans(**kwargs).fit(X, sample_weight=weights)


def test_predict_errors():
    with pytest.raises(ConfigError, match="not fitted"):
        KMeans(2).predict(X_OK)
    km = KMeans(2, random_state=0).fit(X_OK)
    with pytest.raises(ConfigError, match="features"):
        km.predict(X_OK[:, :2])
    with pytest.raises(ConfigError, match="features"):
        assign(X_OK, np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="centers_sq_norms"):
        assign(X_OK, np.zeros((4, 3)), np.zeros(3))
