"""Hessian-vector products against finite differences of the project's gradient, in float64."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.nn.hessian import flatten, gradient, hessian_matrix, hvp, unflatten
from greedy.nn.model import Sequential

EPS = 1e-5

MODELS = [
    ("c3k3-tanh-avg2-c4k3-tanh-fc3", (2, 6, 6)),                 # conv, tanh, avg pool, dense
    ("c3k3-relu-max2-c4k3s2p0-relu-fc3", (2, 8, 8)),             # relu, max pool, strided conv
    ("fc7-tanh-fc5-relu-fc3", (6,)),                              # dense, tanh, relu
    ("c3k3-gelu-max2-fc4-gelu-fc3", (2, 6, 6)),                  # gelu
    ("c4k3-tanh-gap-drop0.3-fc3", (3, 5, 5)),                     # global pool, dropout (eval)
    ("avg2-c3k3p0-tanh-max2-fc3", (1, 8, 8)),                     # parameter-free first layer
]


def build(spec, shape, seed=0, n=5):
    model = Sequential.from_spec(spec).build(shape, seed, np.float64)
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((n,) + shape)
    y = rng.integers(0, 3, n)
    return model, x, y, rng


def grad_difference(model, x, y, v, eps=EPS):
    """Central difference of the gradient along v: (g(theta + eps v) - g(theta - eps v)) / (2 eps)."""
    params = model.parameters()
    for p, d in zip(params, v):
        p += eps * d
    _, gp = gradient(model, x, y)
    for p, d in zip(params, v):
        p -= 2 * eps * d
    _, gm = gradient(model, x, y)
    for p, d in zip(params, v):
        p += eps * d
    return (flatten(gp) - flatten(gm)) / (2 * eps)


def rel_error(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-12)


@pytest.mark.parametrize("spec,shape", MODELS)
def test_hvp_matches_finite_differences_of_the_gradient(spec, shape):
    model, x, y, rng = build(spec, shape)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    hv = hvp(model, x, y, v)
    assert [h.shape for h in hv] == [p.shape for p in model.parameters()]
    assert all(h.dtype == np.float64 for h in hv)
    assert rel_error(flatten(hv), grad_difference(model, x, y, v)) < 1e-5


def test_hvp_is_symmetric():
    model, x, y, rng = build("c3k3-relu-max2-c4k3-tanh-fc6-relu-fc3", (2, 8, 8))
    v1 = [rng.standard_normal(p.shape) for p in model.parameters()]
    v2 = [rng.standard_normal(p.shape) for p in model.parameters()]
    a = flatten(v1) @ flatten(hvp(model, x, y, v2))
    b = flatten(v2) @ flatten(hvp(model, x, y, v1))
    assert abs(a) > 1e-6
    assert abs(a - b) < 1e-10 * max(abs(a), abs(b))


def test_hvp_does_not_touch_the_model():
    model, x, y, rng = build("c3k3-tanh-fc3", (1, 5, 5))
    before = [p.copy() for p in model.parameters()]
    _, g = gradient(model, x, y)
    hvp(model, x, y, [rng.standard_normal(p.shape) for p in model.parameters()])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(np.array_equal(a, b) for a, b in zip(g, model.gradients()))


def test_explicit_hessian_of_a_tiny_model():
    model, x, y, _ = build("c2k2p0-tanh-max2-fc3", (1, 3, 3), n=4)
    params = model.parameters()
    n = sum(p.size for p in params)
    h = hessian_matrix(model, x, y)
    assert h.shape == (n, n)
    fd = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        fd[:, j] = grad_difference(model, x, y, unflatten(e, params))
    assert rel_error(h, fd) < 1e-6
    assert np.allclose(h, h.T, rtol=0, atol=1e-12 * np.abs(h).max())


def test_softmax_regression_hessian_has_its_closed_form():
    """For logits x W + b: H = mean_n [x_n; 1][x_n; 1]^T (kron) (diag p_n - p_n p_n^T)."""
    model, x, y, _ = build("fc4", (3,), n=6)
    h = hessian_matrix(model, x, y)
    logits = x @ model.parameters()[1] + model.parameters()[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # parameters() order is b (4,), then w (3, 4) row-major: index of w[i, k] is 4 + 4 i + k
    xa = np.concatenate([np.ones((len(x), 1)), x], axis=1)       # feature 0 is the bias
    expected = np.zeros_like(h)
    for n in range(len(x)):
        expected += np.kron(np.outer(xa[n], xa[n]), np.diag(p[n]) - np.outer(p[n], p[n]))
    expected /= len(x)
    assert rel_error(h, expected) < 1e-12


def test_float32_model_gives_float32_close_to_float64():
    spec, shape = MODELS[0]
    m64, x, y, rng = build(spec, shape)
    m32 = Sequential.from_spec(spec).build(shape, 0, np.float32)
    v = [rng.standard_normal(p.shape) for p in m64.parameters()]
    h64 = flatten(hvp(m64, x, y, v))
    h32 = hvp(m32, x.astype(np.float32), y, [a.astype(np.float32) for a in v])
    assert all(h.dtype == np.float32 for h in h32)
    assert rel_error(flatten(h32), h64) < 1e-4


def test_bad_inputs_raise_config_errors():
    model, x, y, rng = build("c3k3-tanh-fc3", (1, 5, 5))
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    with pytest.raises(ConfigError, match="list of 4 arrays"):
        hvp(model, x, y, v[:2])
    with pytest.raises(ConfigError, match="has shape"):
        hvp(model, x, y, [v[0], v[1].T] + v[2:])
    with pytest.raises(ConfigError, match="labels"):
        hvp(model, x, y[:2], v)
    bn = Sequential.from_spec("c3k3-bn-relu-fc3").build((1, 5, 5), 0, np.float64)
    with pytest.raises(ConfigError, match="no R-operator"):
        hvp(bn, x, y, [np.ones_like(p) for p in bn.parameters()])
