"""The fused training runs conv, ReLU, max pool and conv, max pool (greedy.nn.fused, greedy.kernels.convpool)."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.nn.fused import ConvReluPool, training_runs
from greedy.nn.hessian import hvp
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import Sequential

from gradcheck import numeric_grad, rel_error

# the pooled conv's backward: im2col and a multiply, or a visit of the window maxima only
# (greedy.kernels.pooledgrad), whatever the patch-row length
BACKWARDS = {"im2col": 10**9, "maxima": 1}


@pytest.fixture(params=sorted(BACKWARDS))
def pooled_backward(request, monkeypatch):
    monkeypatch.setattr(ck, "POOLED_MIN_RUN", BACKWARDS[request.param])
    return request.param


def layer_by_layer(model, x, dy):
    """Output and parameter gradients of the model's layers run one by one (no fusion)."""
    h = x
    for layer in model.layers:
        h = layer.forward(h, train=True)
    for i in range(len(model.layers) - 1, -1, -1):
        dy = model.layers[i].backward(dy, input_grad=True)
    return h, dy, [g.copy() for g in model.gradients()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec,in_shape", [
    ("c5k3-relu-max2-c4k5-relu-max2", (2, 12, 12)),
    ("c3k3s2p1-relu-max3", (3, 11, 10)),   # stride 2; a pool of 3 that drops the last row
    ("c4k5p0-relu-max2", (1, 9, 9)),       # 5x5 output: the pool drops a row and a column
    ("c5k3-max2-c4k5p0-relu-max2", (2, 13, 13)),   # conv, pool without a ReLU (negative maxima kept)
    ("c3k3s2p1-max3", (3, 11, 10)),
    ("c6k3-max2-c5k3-relu-max2", (32, 8, 8)),   # Winograd forwards (32 input channels), 4x4 output tiles
    ("c6k3-relu-max2", (32, 6, 6)),              # Winograd, 2x2 output tiles
])
def test_fused_run_equals_the_layers_one_by_one(spec, in_shape, dtype, pooled_backward):
    model = Sequential.from_spec(spec).build(in_shape, 0, dtype)
    assert sum(run.length for run in training_runs(model.layers).values()) == len(model.layers)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.params:
            layer.params["b"][:] = rng.standard_normal(layer.params["b"].shape) * 0.3
    x = rng.standard_normal((5,) + in_shape).astype(dtype)
    y = model.forward(x, train=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = model.backward(dy, input_grad=True)
    fused = [g.copy() for g in model.gradients()]
    y1, dx1, plain = layer_by_layer(model, x, dy)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.array_equal(y, y1)
    if pooled_backward == "im2col":   # the same products in the same order
        assert np.array_equal(dx, dx1)
    else:
        assert np.allclose(dx, dx1, rtol=tol, atol=tol * np.abs(dx1).max())
    for g, g1 in zip(fused, plain):
        assert np.allclose(g, g1, rtol=tol, atol=0 if pooled_backward == "im2col" else tol * np.abs(g1).max())


@pytest.mark.parametrize("spec,in_shape", [
    ("c4k3-relu-max2-c3k3-relu-max2-fc3", (2, 8, 8)),
    ("c4k3-max2-bn-relu-c3k3-max2-fc3", (2, 8, 8)),   # conv, pool runs without a ReLU
    ("c3k3-bn-relu-max2-fc3", (2, 6, 6)),        # batch norm runs (greedy.nn.fused.BnReluPool)
    ("c3k3-bn-relu-max2-fc3", (2, 9)),
    ("c3k3-bn-relu-max3s2-fc3", (2, 11)),
    ("c3k3-relu-max2-fc3", (32, 4, 4)),          # the Winograd forward keeps the argmax
    ("c4k3-max2-bn-relu-c3k3-max2-fc3", (2, 9, 9)),   # odd maps: each pool drops a row and a column
    ("c4k2p0-gelu-c4k3-max2-bn-gelu-c3k3-bn-gelu-max3-fc3", (3, 8, 8)),   # airbench's shape: 7, 3, 1
])
def test_fused_run_gradients_match_finite_differences(spec, in_shape, pooled_backward):
    model = Sequential.from_spec(spec).build(in_shape, 0, np.float64)
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if "gamma" in layer.params:
            layer.params["gamma"][:] = rng.uniform(-1.5, 1.5, layer.params["gamma"].shape)
            layer.params["beta"][:] = rng.standard_normal(layer.params["beta"].shape) * 0.3
    assert training_runs(model.layers)
    x = rng.standard_normal((3,) + in_shape)
    labels = np.array([0, 2, 1])

    def loss():
        return softmax_cross_entropy(model.forward(x, train=True), labels)[0]

    _, d = softmax_cross_entropy(model.forward(x, train=True), labels)
    dx = model.backward(d, input_grad=True)
    analytic = [g.copy() for g in model.gradients()]
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-6
    for p, g in zip(model.parameters(), analytic):
        numeric = numeric_grad(loss, p)
        if np.abs(numeric).max() < 1e-8:   # a conv bias before batch norm: no effect on the loss
            assert np.abs(g).max() < 1e-8
        else:
            assert rel_error(g, numeric) < 1e-6


def test_relu_and_pool_recompute_their_state_after_a_fused_forward():
    model = Sequential.from_spec("c4k3-relu-max2-fc3").build((2, 6, 6), 0, np.float64)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 6))
    labels = np.array([1, 2])
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    expected = hvp(model, x, labels, v, train=False)
    assert all(np.allclose(a, b, rtol=1e-12) for a, b in zip(hvp(model, x, labels, v, train=True), expected))
    out = model.forward(x, train=True)
    assert model.layers[1].y is None and model.layers[1].fused_run is not None
    dy = rng.standard_normal(out.shape)
    d = model.layers[3].backward(dy)
    d = model.layers[2].backward(d)        # the pool and the ReLU recompute their maps first
    d = model.layers[1].backward(d)
    model.layers[0].backward(d)
    one_by_one = [g.copy() for g in model.gradients()]
    model.backward(dy)
    assert all(np.allclose(a, b, rtol=1e-12) for a, b in zip(one_by_one, model.gradients()))


def test_only_conv_relu_maxpool_and_conv_maxpool_runs_fuse():
    layers = Sequential.from_spec("c4k3-relu-avg2-c4k3-tanh-max2-c4k3-relu-max2-c4k3-avg2-c4k3-max2"
                                  ).build((1, 32, 32), 0).layers
    runs = training_runs(layers)
    assert sorted(runs) == [6, 11]
    assert all(isinstance(run, ConvReluPool) for run in runs.values())
    assert [runs[6].length, runs[11].length] == [3, 2] and runs[11].relu is None


def test_pool_recomputes_its_state_after_a_fused_conv_pool_forward():
    model = Sequential.from_spec("c4k3-max2-fc3").build((2, 6, 6), 0, np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 6, 6))
    out = model.forward(x, train=True)
    assert model.layers[1].x is None and model.layers[1].fused_run is not None
    dy = rng.standard_normal(out.shape)
    d = model.layers[2].backward(dy)
    d = model.layers[1].backward(d)        # the pool recomputes its input and argmax first
    model.layers[0].backward(d)
    one_by_one = [g.copy() for g in model.gradients()]
    model.forward(x, train=True)
    model.backward(dy)
    assert all(np.allclose(a, b, rtol=1e-12) for a, b in zip(one_by_one, model.gradients()))


def test_pooled_backward_checks_its_argmax():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    y, argmax = ck.conv2d_forward(x, w, np.zeros(3, np.float32), 1, 1, relu=True, pool=2, keep_argmax=True)
    assert y.shape == argmax.shape == (2, 3, 3, 3) and argmax.dtype == np.int32
    with pytest.raises(ConfigError, match="int32"):
        ck.conv2d_backward(x, w, y, 1, 1, argmax=argmax.astype(np.int64))
    with pytest.raises(ConfigError, match="outside"):
        ck.conv2d_backward(x, w, y, 1, 1, argmax=argmax + 36)
    with pytest.raises(ConfigError, match="shape"):
        ck.conv2d_backward(x, w, y[:, :2], 1, 1, argmax=np.ascontiguousarray(argmax[:, :2]))


@pytest.mark.parametrize("spec", ["c3k3-relu-max2", "c3k3-max2"])
def test_fused_run_breaks_ties_like_the_pool_layer(spec, pooled_backward):
    model = Sequential.from_spec(spec).build((1, 8, 8), 0)
    model.layers[0].params["w"][:] = np.round(model.layers[0].params["w"] * 2)
    x = np.ones((2, 1, 8, 8), np.float32)   # equal conv outputs inside the map: ties in every window
    x[1, 0, ::3] = -1
    y = model.forward(x, train=True)
    dy = np.arange(y.size, dtype=np.float32).reshape(y.shape)
    dx = model.backward(dy)
    fused = [g.copy() for g in model.gradients()]
    y1, dx1, plain = layer_by_layer(model, x, dy)
    assert np.array_equal(y, y1)
    if pooled_backward == "im2col":
        assert np.array_equal(dx, dx1)
    else:   # the same maxima take the gradient; only the order of the sums differs
        assert np.allclose(dx, dx1, rtol=1e-6, atol=1e-6 * np.abs(dx1).max())
    assert all(np.allclose(g, g1, rtol=1e-6) for g, g1 in zip(fused, plain))
