import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.nn.optim import SGD, Adam, cosine, make_optimizer, make_schedule, one_cycle, step_decay


def quadratic_descent(opt, steps=200):
    """Minimise 0.5 * ||A p - b||^2 from p = 0; returns the final distance to the optimum."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 4)) + 3 * np.eye(6, 4)
    b = rng.standard_normal(6)
    p = np.zeros(4)
    g = np.zeros(4)
    for _ in range(steps):
        g[:] = a.T @ (a @ p - b)
        opt.step([p], [g])
    return np.linalg.norm(p - np.linalg.lstsq(a, b, rcond=None)[0])


@pytest.mark.parametrize("opt", [SGD(0.01, momentum=0.0), SGD(0.01, momentum=0.9),
                                 SGD(0.01, momentum=0.9, nesterov=True), Adam(0.05)])
def test_optimizers_converge_on_a_quadratic(opt):
    assert quadratic_descent(opt, 500) < 1e-3


def test_sgd_momentum_and_nesterov_follow_their_formulas():
    p = np.array([1.0, -2.0])
    g = np.array([0.5, 0.25])
    opt = SGD(0.1, momentum=0.9, nesterov=True)
    opt.step([p], [g])          # v = g; p -= lr * (g + 0.9 v)
    assert np.allclose(p, [1.0 - 0.1 * 0.95, -2.0 - 0.1 * 0.475])
    opt.step([p], [g])          # v = 0.9 g + g
    assert np.allclose(p, [1.0 - 0.1 * 0.95 - 0.1 * (0.5 + 0.9 * 0.95),
                           -2.0 - 0.1 * 0.475 - 0.1 * (0.25 + 0.9 * 0.475)])


def test_adam_first_step_is_lr_times_sign():
    p = np.array([1.0, 1.0, 1.0])
    Adam(0.01).step([p], [np.array([3.0, -0.2, 1e-3])])
    assert np.allclose(p, [0.99, 1.01, 0.99], atol=1e-6)


def test_weight_decay_shrinks_parameters_without_gradient():
    p = np.array([2.0])
    SGD(0.1, momentum=0.0, weight_decay=0.5).step([p], [np.zeros(1)])
    assert p[0] == pytest.approx(2.0 - 0.1 * 0.5 * 2.0)
    q = np.array([2.0])
    Adam(0.1, weight_decay=0.5).step([q], [np.zeros(1)])
    assert q[0] == pytest.approx(2.0 - 0.1 * 0.5 * 2.0)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, weight_decay=0.1), Adam(0.1, weight_decay=0.1)])
def test_masked_entries_never_move(opt):
    rng = np.random.default_rng(0)
    p = rng.standard_normal((4, 3))
    mask = rng.random((4, 3)) < 0.5
    frozen = p[~mask].copy()
    opt.masks = [mask]
    for _ in range(5):
        opt.step([p], [rng.standard_normal((4, 3))])
    assert np.array_equal(p[~mask], frozen)
    assert np.all(p[mask] != 0)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9), Adam(0.1)])
def test_entries_frozen_after_training_do_not_drift_on_momentum(opt):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(6)
    for _ in range(3):
        opt.step([p], [rng.standard_normal(6)])
    mask = np.array([True, False] * 3)
    opt.masks = [mask]
    frozen = p[~mask].copy()
    for _ in range(3):
        opt.step([p], [rng.standard_normal(6)])
    assert np.array_equal(p[~mask], frozen)


def test_schedules():
    assert step_decay(0.25, 0.5)(0.6) == pytest.approx(0.25)
    c = cosine(warmup=0.1)
    assert c(0) == 0.0 and c(0.05) == pytest.approx(0.5) and c(0.1) == pytest.approx(1.0)
    assert c(1.0) == pytest.approx(0.0) and c(0.55) == pytest.approx(0.5)
    o = one_cycle(0.25, start=0.1)
    assert o(0) == pytest.approx(0.1) and o(0.25) == pytest.approx(1.0) and o(1.0) == pytest.approx(0.0)
    assert make_schedule("constant")(0.7) == 1.0


def test_optimizer_follows_progress():
    opt = SGD(1.0, momentum=0.0, schedule=one_cycle(0.5, start=0.0))
    p = np.zeros(1)
    opt.progress = 0.25
    opt.step([p], [np.ones(1)])
    assert p[0] == pytest.approx(-0.5)


def test_bad_optimizer_options_are_clear_errors():
    with pytest.raises(ConfigError, match="learning rate"):
        SGD(-1.0)
    with pytest.raises(ConfigError, match="momentum"):
        SGD(0.1, momentum=1.5)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        make_optimizer("rmsprop", 0.1)
    with pytest.raises(ConfigError, match="unknown schedule"):
        make_schedule("linear")


@pytest.mark.parametrize("size", [7, 70_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_kernel_equals_the_numpy_formulation_bit_for_bit(size, dtype):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(size).astype(dtype)
    q = p.copy()
    fast, slow = Adam(0.01, weight_decay=0.1), Adam(0.01, weight_decay=0.1)
    slow.masks = [np.ones(size, bool)]  # a mask sends the update through the NumPy lines
    for _ in range(3):
        g = rng.standard_normal(size).astype(dtype)
        fast.step([p], [g])
        slow.step([q], [g])
    assert np.array_equal(p, q)
    assert all(np.array_equal(a, b) for a, b in zip(fast.state[0], slow.state[0]))
