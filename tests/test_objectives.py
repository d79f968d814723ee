"""Per-layer objectives: finite-difference gradients, separation, invariances, bad input."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.nn.objectives import class_centroids, cosine_loss, cosine_predict, gaussian_kl_loss

from gradcheck import numeric_grad as _numeric_grad, rel_error


def numeric_grad(loss, f):
    """Central differences of loss(f) -> float at f (float64)."""
    return _numeric_grad(lambda: loss(f), f)


def batch(seed, labels, d=5, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    centres = rng.standard_normal((labels.max() + 1, d)) * spread
    return centres[labels] + rng.standard_normal((len(labels), d)), labels


LABEL_SETS = {
    "all classes": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3],
    "class 2 absent": [0, 1, 3, 0, 1, 3, 0, 1, 3, 3],
    "one-sample classes": [0, 0, 0, 1, 2, 3, 3, 3, 3],
}

LOSSES = {
    "cosine": lambda f, y: cosine_loss(f, y, 4, temperature=0.2),
    "cosine fixed centroids": lambda f, y: cosine_loss(
        f, y, 4, centroids=np.random.default_rng(1).standard_normal((4, f.shape[1]))),
    "gaussian kl": lambda f, y: gaussian_kl_loss(f, y, 4),
    "gaussian kl small eps": lambda f, y: gaussian_kl_loss(f, y, 4, eps=0.05, std_eps=1e-3),
    "gaussian kl shared variance": lambda f, y: gaussian_kl_loss(f, y, 4, variance="shared"),
    "gaussian kl full covariance": lambda f, y: gaussian_kl_loss(f, y, 4, variance="full"),
    "gaussian kl full covariance large eps": lambda f, y: gaussian_kl_loss(f, y, 4, eps=0.5, variance="full"),
}


@pytest.mark.parametrize("labels", LABEL_SETS.values(), ids=LABEL_SETS.keys())
@pytest.mark.parametrize("name", LOSSES)
def test_gradient_matches_finite_differences(name, labels):
    f, y = batch(2, labels)
    loss = LOSSES[name]
    value, grad = loss(f, y)
    assert isinstance(value, float) and grad.shape == f.shape and grad.dtype == np.float64
    assert np.abs(grad).max() > 0
    assert rel_error(grad, numeric_grad(lambda x: loss(x, y)[0], f)) < 1e-6


@pytest.mark.parametrize("loss", [cosine_loss, gaussian_kl_loss])
def test_moving_classes_apart_lowers_the_loss(loss):
    f, y = batch(3, np.arange(60) % 3, d=6, spread=0.3)
    directions = np.random.default_rng(4).standard_normal((3, 6))
    values = [loss(f + t * directions[y], y, 3)[0] for t in (0.0, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("loss", [cosine_loss, gaussian_kl_loss])
def test_gradient_step_lowers_the_loss(loss):
    f, y = batch(5, np.arange(40) % 4, d=8, spread=0.2)
    value, grad = loss(f, y, 4)
    assert loss(f - 0.5 * grad / np.abs(grad).max(), y, 4)[0] < value


def test_cosine_loss_ignores_the_scale_of_each_sample():
    f, y = batch(6, np.arange(30) % 3)
    scales = np.random.default_rng(7).uniform(0.1, 100, (30, 1))
    value, grad = cosine_loss(f, y, 3)
    scaled_value, scaled_grad = cosine_loss(f * scales, y, 3)
    assert np.isclose(scaled_value, value, rtol=1e-9)
    assert np.allclose(scaled_grad * scales, grad, rtol=1e-6, atol=1e-12)
    assert np.abs(np.einsum("ij,ij->i", f, grad)).max() < 1e-9 * np.abs(grad).max()


def test_cosine_loss_is_bounded_by_temperature():
    f, y = batch(8, np.arange(30) % 3, spread=10.0)
    n_present = 3
    for t in (0.05, 0.5):
        value, _ = cosine_loss(f, y, 5, temperature=t)
        assert 0 < value <= 2 / t + np.log(n_present)


def test_full_covariance_kl_is_invariant_to_mixing_features_and_the_diagonal_is_not():
    """The Mahalanobis form sees the same separation after any invertible linear map of the
    features; the per-feature forms score mixed (correlated, redundant) features differently."""
    f, y = batch(11, np.arange(40) % 4, d=5)
    mix = np.random.default_rng(12).standard_normal((5, 5)) + 3 * np.eye(5)
    full = gaussian_kl_loss(f, y, 4, eps=1e-9, variance="full")[0]
    assert np.isclose(gaussian_kl_loss(f @ mix, y, 4, eps=1e-9, variance="full")[0], full, rtol=1e-6)
    shared = gaussian_kl_loss(f, y, 4, variance="shared")[0]
    assert not np.isclose(gaussian_kl_loss(f @ mix, y, 4, variance="shared")[0], shared, rtol=1e-2)


def test_gaussian_kl_loss_rejects_an_unknown_variance_model():
    f, y = batch(1, np.arange(12) % 3)
    with pytest.raises(ConfigError, match="variance"):
        gaussian_kl_loss(f, y, 3, variance="diagonal")


def test_gaussian_kl_loss_is_invariant_to_per_feature_affine_maps():
    f, y = batch(9, np.arange(30) % 3)
    a = np.array([0.01, 3.0, -2.0, 100.0, 0.5])
    b = np.array([5.0, -1.0, 0.0, 1e3, 2.0])
    value, grad = gaussian_kl_loss(f, y, 3)
    moved_value, moved_grad = gaussian_kl_loss(f * a + b, y, 3)
    assert np.isclose(moved_value, value, rtol=1e-4)
    assert np.allclose(moved_grad * a, grad, rtol=1e-3, atol=1e-9 * np.abs(grad).max())
    assert value < 0


@pytest.mark.parametrize("loss", [cosine_loss, gaussian_kl_loss])
@pytest.mark.parametrize("constant", [0.0, 3.5])
def test_constant_features_give_finite_values(loss, constant):
    y = np.arange(12) % 3
    for dtype in (np.float32, np.float64):
        value, grad = loss(np.full((12, 4), constant, dtype=dtype), y, 3)
        assert np.isfinite(value) and np.isfinite(grad).all() and grad.dtype == dtype



@pytest.mark.parametrize("loss", [cosine_loss, gaussian_kl_loss])
def test_a_batch_with_one_class_has_nothing_to_separate(loss):
    value, grad = loss(np.random.default_rng(0).standard_normal((5, 3)), np.zeros(5, int), 3)
    assert value == 0.0 and not grad.any()


@pytest.mark.parametrize("loss", [cosine_loss, gaussian_kl_loss])
def test_float32_matches_float64(loss):
    f, y = batch(10, np.arange(24) % 4)
    v64, g64 = loss(f, y, 4)
    v32, g32 = loss(f.astype(np.float32), y, 4)
    assert g32.dtype == np.float32
    assert np.isclose(v32, v64, rtol=1e-4)
    assert rel_error(g32.astype(np.float64), g64) < 1e-3


def test_nearest_centroid_predictions():
    f, y = batch(11, np.arange(90) % 3, spread=5.0)
    centroids = class_centroids(f, y, 5)
    assert centroids.shape == (5, 5)
    assert np.allclose(np.linalg.norm(centroids[:3], axis=1), 1) and not centroids[3:].any()
    pred = cosine_predict(f, centroids)
    assert pred.dtype == np.int64 and pred.max() < 3
    assert (pred == y).mean() > 0.9
    assert (cosine_predict(-f, centroids) == y).mean() < 0.5


def test_bad_input_raises_config_error():
    f, y = batch(12, [0, 1, 2, 0])
    for loss in (cosine_loss, gaussian_kl_loss):
        with pytest.raises(ConfigError, match="float32 or float64"):
            loss(f.astype(int), y, 3)
        with pytest.raises(ConfigError, match=r"shape \(N, D\)"):
            loss(f[0], y, 3)
        with pytest.raises(ConfigError, match="labels must be integers"):
            loss(f, y[:3], 3)
        with pytest.raises(ConfigError, match="labels must be integers"):
            loss(f, y.astype(float), 3)
        with pytest.raises(ConfigError, match="lie in"):
            loss(f, y, 2)
        with pytest.raises(ConfigError, match="n_classes"):
            loss(f, y, 1)
        bad = f.copy()
        bad[1, 1] = np.nan
        with pytest.raises(ConfigError, match="NaN"):
            loss(bad, y, 3)
    with pytest.raises(ConfigError, match="temperature"):
        cosine_loss(f, y, 3, temperature=0)
    with pytest.raises(ConfigError, match="centroids must have shape"):
        cosine_loss(f, y, 3, centroids=np.ones((2, 5)))
    with pytest.raises(ConfigError, match="eps"):
        gaussian_kl_loss(f, y, 3, eps=0)
    with pytest.raises(ConfigError, match="all centroids are zero"):
        cosine_predict(f, np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="must be"):
        cosine_predict(f, np.ones((3, 4)))
