"""kNN KL estimator against closed-form Gaussian KL; histogram KL; class KL matrix."""
import numpy as np
import pytest
import scipy.sparse as sp

from greedy.cluster.divergence import class_kl_matrix, discrete_kl, kl_divergence
from greedy.errors import ConfigError


def gaussian_kl(m0, s0, m1, s1):
    """Closed-form KL(N(m0, s0) || N(m1, s1)) in nats."""
    d = len(m0)
    s1_inv = np.linalg.inv(s1)
    dm = m1 - m0
    return 0.5 * (np.trace(s1_inv @ s0) + dm @ s1_inv @ dm - d
                  + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1])


def gaussian_pair(d, shift, var1, mix=0.0):
    """P = N(0, A A^T) with A = I + mix * noise, Q = N(shift along the diagonal, var1 * I)."""
    a = np.eye(d) + mix * np.random.default_rng(123).standard_normal((d, d))
    return np.zeros(d), a @ a.T, np.full(d, shift / np.sqrt(d)), var1 * np.eye(d)


def draw(pair, n, seed):
    m0, s0, m1, s1 = pair
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(m0, s0, n), rng.multivariate_normal(m1, s1, n)


@pytest.mark.parametrize("d, shift, var1, k", [(1, 3.0, 4.0, 5), (4, 3.0, 3.0, 1)])
def test_matches_gaussian_kl_within_five_percent(d, shift, var1, k):
    pair = gaussian_pair(d, shift, var1)
    truth = gaussian_kl(*pair)
    assert 1.0 < truth < 3.0
    # one n = 10,000 estimate has ~2% sampling noise; the mean of three is well inside 5%
    estimate = np.mean([kl_divergence(*draw(pair, 10_000, seed), k=k) for seed in range(3)])
    assert abs(estimate - truth) / truth < 0.05


def test_error_shrinks_with_sample_size_in_eight_dimensions():
    pair = gaussian_pair(8, 1.0, 1.5, mix=0.3)
    truth = gaussian_kl(*pair)
    small = np.mean([abs(kl_divergence(*draw(pair, 1000, s)) - truth) for s in range(4)])
    large = np.mean([abs(kl_divergence(*draw(pair, 20_000, s)) - truth) for s in range(2)])
    assert large < 0.8 * small


def test_kdtree_and_brute_force_agree():
    x, y = draw(gaussian_pair(6, 1.0, 2.0, mix=0.2), 1500, seed=3)
    x, y = x * 1e3 + 1e5, y * 1e3 + 1e5  # large offset: Gram screening must stay exact
    for k in (1, 4):
        assert np.isclose(kl_divergence(x, y, k, method="kdtree"),
                          kl_divergence(x, y, k, method="brute"), rtol=1e-9)


def test_same_distribution_gives_near_zero():
    rng = np.random.default_rng(4)
    for d in (2, 20):
        x, y = rng.standard_normal((3000, d)), rng.standard_normal((3000, d))
        assert abs(kl_divergence(x, y)) < 0.1
        assert kl_divergence(x, y + 1.0) > 0.3


def test_invariant_to_a_shared_shift_and_dtype():
    x, y = draw(gaussian_pair(3, 1.0, 2.0), 2000, seed=5)
    base = kl_divergence(x, y, k=3)
    shift = np.array([10.0, -4.0, 2.5])
    assert np.isclose(kl_divergence(x + shift, y + shift, k=3), base, rtol=1e-6)
    assert np.isclose(kl_divergence(x.astype(np.float32), y.astype(np.float32), k=3), base,
                      rtol=1e-3)


def test_one_dimensional_input_is_promoted():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal(500), rng.standard_normal(400) + 1
    assert kl_divergence(x, y) == kl_divergence(x[:, None], y[:, None])


@pytest.mark.parametrize("method", ["kdtree", "brute"])
def test_duplicates_give_finite_sensible_values(method):
    rng = np.random.default_rng(7)
    # discrete data: every point has many exact copies in both samples
    x = rng.integers(0, 4, (2000, 2)).astype(float)
    y = rng.integers(0, 4, (2000, 2)).astype(float)
    same = kl_divergence(x, y, method=method)
    assert np.isfinite(same) and abs(same) < 0.05
    # a sample that is one atom: KL(delta_a || Q) = -log Q(a) = log(1 / 0.9)
    atom = np.zeros((300, 2))
    q = np.vstack([np.zeros((900, 2)), rng.standard_normal((100, 2)) + 5])
    assert abs(kl_divergence(atom, q, method=method) - np.log(1 / 0.9)) < 0.02
    assert abs(kl_divergence(atom, np.zeros((50, 2)), method=method)) < 0.05
    # copies count as neighbours at distance 0: duplicating every point of x and y
    # moves each rank from 1 to 2 in x only, adding psi(2) - psi(1) = 1 (P is twice as
    # concentrated on each x_i as Q), up to the change of log(m / (n - 1))
    x, y = draw(gaussian_pair(2, 2.0, 2.0), 2000, seed=8)
    doubled = kl_divergence(np.repeat(x, 2, axis=0), np.repeat(y, 2, axis=0), method=method)
    expected = kl_divergence(x, y, method=method) + 1 + np.log(1999 / 1999.5)
    assert np.isclose(doubled, expected, rtol=1e-9)


def test_bad_input_raises_config_error():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))
    with pytest.raises(ConfigError, match="dimensions"):
        kl_divergence(x, y[:, :2])
    with pytest.raises(ConfigError, match="at least 4"):
        kl_divergence(x[:3], y, k=3)
    with pytest.raises(ConfigError, match="y has 2 samples"):
        kl_divergence(x, y[:2], k=3)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        kl_divergence(bad, y)
    with pytest.raises(ConfigError, match="infinite"):
        kl_divergence(x, np.where(y > 1, np.inf, y))
    with pytest.raises(ConfigError, match="2-D"):
        kl_divergence(x[None], y)
    with pytest.raises(ConfigError, match="k must"):
        kl_divergence(x, y, k=0)
    with pytest.raises(ConfigError, match="method"):
        kl_divergence(x, y, method="ball")
    with pytest.raises(ConfigError, match="numeric"):
        kl_divergence([["a", "b"]], y)


def test_discrete_kl_matches_direct_formula():
    rng = np.random.default_rng(10)
    p, q = rng.integers(0, 20, 12), rng.integers(0, 20, 12)
    for alpha in (0.5, 1.0):
        ps, qs = (p + alpha) / (p + alpha).sum(), (q + alpha) / (q + alpha).sum()
        direct = sum(a * np.log(a / b) for a, b in zip(ps, qs))
        assert np.isclose(discrete_kl(p, q, alpha), direct, rtol=1e-12)
    assert discrete_kl(p, p) == 0.0


def test_discrete_kl_sums_rows_and_accepts_sparse():
    rng = np.random.default_rng(11)
    codes_p, codes_q = rng.poisson(1.0, (30, 8)), rng.poisson(2.0, (40, 8))
    dense = discrete_kl(codes_p, codes_q, alpha=0.5)
    assert np.isclose(dense, discrete_kl(codes_p.sum(0), codes_q.sum(0), alpha=0.5))
    assert np.isclose(discrete_kl(sp.csr_matrix(codes_p), sp.csr_matrix(codes_q), alpha=0.5),
                      dense, rtol=1e-12)
    assert dense > 0


def test_discrete_kl_zero_smoothing_edge_cases():
    assert discrete_kl([1, 0, 3], [2, 0, 6], alpha=0) == pytest.approx(0.0, abs=1e-15)
    assert discrete_kl([1, 1, 0], [2, 0, 6], alpha=0) == np.inf
    assert np.isfinite(discrete_kl([0, 1, 0], [2, 0, 6], alpha=1e-3))


def test_discrete_kl_bad_input():
    with pytest.raises(ConfigError, match="non-negative"):
        discrete_kl([1, -1, 2], [1, 1, 1])
    with pytest.raises(ConfigError, match="non-negative"):
        discrete_kl(sp.csr_matrix(np.array([[1.0, -2.0]])), [1, 1])
    with pytest.raises(ConfigError, match="bins"):
        discrete_kl([1, 2, 3], [1, 2])
    with pytest.raises(ConfigError, match="alpha"):
        discrete_kl([1, 2], [1, 2], alpha=-1)
    with pytest.raises(ConfigError, match="empty"):
        discrete_kl([0, 0], [1, 2], alpha=0)
    with pytest.raises(ConfigError, match="1-D or 2-D"):
        discrete_kl(np.ones((2, 2, 2)), np.ones(2))


def test_class_kl_matrix_reflects_separation():
    rng = np.random.default_rng(12)
    centres = np.array([[0.0, 0, 0], [0.5, 0, 0], [6, 0, 0]])
    labels = np.repeat(np.arange(3), [500, 600, 700])
    feats = (centres[labels] + rng.standard_normal((len(labels), 3))).astype(np.float32)
    kl, mean_off = class_kl_matrix(feats, labels, max_per_class=400)
    assert kl.shape == (3, 3) and np.all(np.diag(kl) == 0)
    assert kl[0, 2] > 5 * kl[0, 1] and kl[1, 2] > 5 * kl[1, 0]
    assert np.isclose(mean_off, kl[~np.eye(3, dtype=bool)].mean())
    direct = kl_divergence(feats[labels == 0], feats[labels == 2])
    full, _ = class_kl_matrix(feats, labels, max_per_class=1000)
    assert np.isclose(full[0, 2], direct)


def test_class_kl_matrix_small_or_absent_classes_are_nan():
    rng = np.random.default_rng(13)
    labels = np.array([0] * 50 + [2] * 40 + [3])
    kl, mean_off = class_kl_matrix(rng.standard_normal((len(labels), 2)), labels, n_classes=5)
    assert np.isnan(kl[1]).all() and np.isnan(kl[:, 3]).all() and np.isnan(kl[4, 0])
    assert np.isfinite(kl[0, 2]) and np.isfinite(kl[2, 0])
    assert np.isclose(mean_off, (kl[0, 2] + kl[2, 0]) / 2)
    with pytest.raises(ConfigError, match="labels must lie"):
        class_kl_matrix(np.zeros((3, 2)), np.array([0, 1, 2]), n_classes=2)
    with pytest.raises(ConfigError, match="labels must have shape"):
        class_kl_matrix(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ConfigError, match="non-negative integers"):
        class_kl_matrix(np.zeros((3, 2)), np.array([0.0, 1, 1]))
