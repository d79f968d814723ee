"""The fused training run batch norm, ReLU, max pool (greedy.nn.fused.BnReluPool, greedy.kernels.bnpool);
its gradients against finite differences are in test_fused.py."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.kernels import bnpool
from greedy.nn.fused import BnReluPool, ConvReluPool, training_runs
from greedy.nn.model import Sequential

from test_fused import layer_by_layer

SPECS = [
    ("c5k3-bn-relu-max2-c4k3-bn-relu", (2, 12, 12)),    # a run, then batch norm and ReLU one by one
    ("c3k3-bn-relu-max3", (2, 11, 10)),                 # a pool of 3 that drops the last row
    ("c5k5-bn-relu-max4-c4k3-bn-relu-max2", (3, 37)),    # sequences: the pool drops the last position
    ("c4k3-bn-relu-max3s2", (2, 16)),                   # overlapping windows: stride 2, window 3
    ("c3k3-bn-relu-max2", (2, 13, 11)),                 # the unrolled 2x2 path, dropping a row and a column
]


def randomised(spec, in_shape, dtype, seed=1):
    model = Sequential.from_spec(spec).build(in_shape, 0, dtype)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for key in ("b", "beta"):
            if key in layer.params:
                layer.params[key][:] = rng.standard_normal(layer.params[key].shape) * 0.3
        if "gamma" in layer.params:
            layer.params["gamma"][:] = rng.uniform(-1.5, 1.5, layer.params["gamma"].shape)
    return model, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec,in_shape", SPECS)
def test_fused_bn_run_equals_the_layers_one_by_one(spec, in_shape, dtype):
    model, rng = randomised(spec, in_shape, dtype)
    assert any(isinstance(run, BnReluPool) for run in training_runs(model.layers).values())
    x = rng.standard_normal((5,) + in_shape).astype(dtype)
    y = model.forward(x, train=True)
    buffers = [b.copy() for layer in model.layers for b in getattr(layer, "buffers", {}).values()]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = model.backward(dy, input_grad=True)
    fused = [g.copy() for g in model.gradients()]
    for layer in model.layers:  # the one-by-one pass starts from the same running averages
        for key, value in getattr(layer, "buffers", {}).items():
            value[...] = {"mean": 0, "var": 1}[key]
    y1, dx1, plain = layer_by_layer(model, x, dy)
    assert np.array_equal(y, y1)
    assert np.array_equal(dx, dx1)
    assert all(np.array_equal(g, g1) for g, g1 in zip(fused, plain))
    after = [b for layer in model.layers for b in getattr(layer, "buffers", {}).values()]
    assert all(np.array_equal(b, b1) for b, b1 in zip(buffers, after))


@pytest.mark.parametrize("beta", [0.5, -0.5])
def test_fused_bn_run_breaks_ties_like_the_pool_layer(beta):
    model = Sequential.from_spec("c3k3-bn-relu-max2").build((1, 8, 8), 0)
    model.layers[1].params["beta"][:] = beta  # constant conv output: every normalised value is beta
    x = np.zeros((2, 1, 8, 8), np.float32)
    y = model.forward(x, train=True)
    assert np.all(y == max(beta, 0))
    dy = np.arange(y.size, dtype=np.float32).reshape(y.shape)
    dx = model.backward(dy)
    fused = [g.copy() for g in model.gradients()]
    y1, dx1, plain = layer_by_layer(model, x, dy)
    assert np.array_equal(y, y1) and np.array_equal(dx, dx1)
    assert all(np.array_equal(g, g1) for g, g1 in zip(fused, plain))


def test_relu_and_pool_recompute_their_state_after_a_fused_bn_run():
    model, rng = randomised("c4k3-bn-relu-max2", (2, 10), np.float64, seed=3)
    x = rng.standard_normal((3, 2, 10))
    out = model.forward(x, train=True)
    mean = model.layers[1].buffers["mean"].copy()
    assert model.layers[2].y is None and model.layers[3].x is None
    dy = rng.standard_normal(out.shape)
    d = model.layers[3].backward(dy)   # the pool and the ReLU recompute their maps first
    d = model.layers[2].backward(d)
    model.layers[0].backward(model.layers[1].backward(d))
    one_by_one = [g.copy() for g in model.gradients()]
    assert np.array_equal(model.layers[1].buffers["mean"], mean)  # recomputing leaves the running mean alone
    model.backward(dy)
    assert all(np.allclose(a, b, rtol=1e-12) for a, b in zip(one_by_one, model.gradients()))


def test_which_runs_fuse():
    layers = Sequential.from_spec("c4k3-bn-relu-max2-c4k3-bn-tanh-c4k3-bn-relu-avg2-c4k3-relu-max2").build(
        (1, 32, 32), 0).layers
    runs = training_runs(layers)
    assert sorted(runs) == [1, 11]   # batch norm and ReLU without a max pool run one by one
    assert isinstance(runs[1], BnReluPool) and runs[1].length == 3
    assert isinstance(runs[11], ConvReluPool)


def test_the_kernels_check_their_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    mean, scale, shift = np.zeros(3), np.ones(3), np.zeros(3, np.float32)
    y, argmax = bnpool.bn_relu_maxpool_forward(x, mean, scale, shift, (2, 2), (2, 2))
    assert y.shape == argmax.shape == (2, 3, 2, 2)
    with pytest.raises(ConfigError, match="does not fit"):
        bnpool.bn_relu_maxpool_forward(x, mean, scale, shift, (5, 1), (1, 1))
    with pytest.raises(ConfigError, match=r"expected \(3,\)"):
        bnpool.bn_relu_maxpool_forward(x, mean[:2], scale, shift, (2, 2), (2, 2))
    inv_std, gamma = np.ones(3), np.ones(3, np.float32)
    with pytest.raises(ConfigError, match="positions"):
        bnpool.bn_relu_maxpool_backward(x, y, y, argmax + 16, mean, inv_std, gamma)
    with pytest.raises(ConfigError, match="positions in 0..15; 1 are not"):
        bnpool.bn_relu_maxpool_backward(x, y, y, np.where(np.arange(argmax.size).reshape(argmax.shape) == 5, -1,
                                                           argmax).astype(np.int32), mean, inv_std, gamma)
    with pytest.raises(ConfigError, match="int32"):
        bnpool.bn_relu_maxpool_backward(x, y, y, argmax.astype(np.int64), mean, inv_std, gamma)
    with pytest.raises(ConfigError, match="must be equal"):
        bnpool.bn_relu_maxpool_backward(x, y[:, :2], y, argmax, mean, inv_std, gamma)
