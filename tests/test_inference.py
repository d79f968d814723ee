"""The fused inference pass equals the layers' own forward in evaluation mode."""
import numpy as np
import pytest

from greedy.kernels import conv as ck
from greedy.kernels import pool as pk
from greedy.nn import inference
from greedy.errors import ConfigError
from greedy.nn.model import Sequential


def trained_like(spec, in_shape, dtype=np.float32, seed=0):
    """A built model whose batch norms have non-trivial running statistics and scales (some negative)."""
    model = Sequential.from_spec(spec).build(in_shape, seed, dtype)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if layer.spec() == "bn":
            c = len(layer.params["gamma"])
            layer.params["gamma"][...] = rng.uniform(-2, 2, c)
            layer.params["beta"][...] = rng.standard_normal(c)
            layer.buffers["mean"][...] = rng.standard_normal(c)
            layer.buffers["var"][...] = rng.uniform(0.1, 3, c)
        elif "b" in layer.params:
            layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    return model


@pytest.mark.parametrize("spec,in_shape", [
    ("c8k3-bn-relu-max2-c16k3-bn-relu", (3, 12, 12)),
    ("c8k3-tanh-max2-c8k3-tanh-avg2", (2, 9, 9)),        # odd map: the pool floors
    ("c6k5-relu-max3-fc4", (1, 11, 11)),
    ("c4k3s2-bn-max2-c4k3-bn-gap-fc3", (3, 13, 13)),     # stride 2, batch norm without activation
    ("c4k3-max2-relu", (2, 8, 8)),                       # pool before activation: not fused past the pool
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_forward_equals_the_layers_in_eval_mode(spec, in_shape, dtype):
    model = trained_like(spec, in_shape, dtype)
    x = np.random.default_rng(2).standard_normal((7,) + in_shape).astype(dtype)
    expected = model.forward(x, train=False)
    got = inference.forward(model.layers, x)
    assert got.dtype == dtype and got.shape == expected.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert np.allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())
    assert np.allclose(model.predict_logits(x, batch_size=3), expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_conv_relu_pool_kernel_equals_its_composition():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y = ck.conv2d_forward(x, w, b, 1, 1)
    for relu in (False, True):
        for pool in (1, 2, 3):
            ref = np.maximum(y, 0) if relu else y
            ref = pk.maxpool2d_forward(ref, pool, pool, with_argmax=False)[0] if pool > 1 else ref
            assert np.allclose(ck.conv2d_forward(x, w, b, 1, 1, relu=relu, pool=pool), ref, atol=1e-5)
    with pytest.raises(ConfigError, match="pool"):
        ck.conv2d_forward(x, w, b, 1, 1, pool=11)
    with pytest.raises(ConfigError, match="pool"):
        ck.conv2d_forward(x, w, b, 1, 1, pool=0)


def test_fold_batchnorm_matches_conv_then_batchnorm():
    model = trained_like("c5k3-bn", (2, 6, 6), np.float64)
    conv, bn = model.layers
    w, b = inference.fold_batchnorm(conv, bn)
    x = np.random.default_rng(4).standard_normal((3, 2, 6, 6))
    assert np.allclose(ck.conv2d_forward(x, w, b, 1, 1), model.forward(x, train=False), atol=1e-12)


@pytest.mark.parametrize("spec", ["c6k3-relu-max2", "c6k3-tanh-max2", "c6k3-relu-max2-fc4"])
def test_forward_into_out_writes_the_same_values(spec):
    """With ``out`` the last conv run writes into it (or the result is copied there): the same values as
    without, the same array returned, and a memory-mapped cache slice takes the same path."""
    model = trained_like(spec, (3, 8, 8))
    x = np.random.default_rng(5).standard_normal((9, 3, 8, 8)).astype(np.float32)
    expected = model.predict_batch(x)
    out = np.full((12,) + expected.shape[1:], np.nan, np.float32)
    got = model.predict_batch(x, out=out[2:11])
    assert got.base is out or got is out or np.shares_memory(got, out)
    assert np.array_equal(out[2:11], expected)
    assert np.isnan(out[:2]).all() and np.isnan(out[11:]).all()


def test_conv_forward_refuses_an_out_of_the_wrong_shape_dtype_or_layout():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    expected = ck.conv2d_forward(x, w, b, 1, 1, relu=True, pool=2)
    out = np.empty((4, 3, 3, 3), np.float32)
    assert ck.conv2d_forward(x, w, b, 1, 1, relu=True, pool=2, out=out) is out
    assert np.array_equal(out, expected)
    for bad in (np.empty((4, 3, 6, 6), np.float32), np.empty((4, 3, 3, 3), np.float64),
                np.empty((4, 3, 3, 6), np.float32)[..., ::2]):
        with pytest.raises(ConfigError, match="out must be"):
            ck.conv2d_forward(x, w, b, 1, 1, relu=True, pool=2, out=bad)
