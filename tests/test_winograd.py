"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (inference, and the training layer's forward and input
gradient) against the im2col convolution, float64 NumPy and finite differences."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.kernels import pool as pk
from greedy.kernels import winograd as wg
from greedy.nn import inference
from greedy.nn.layers import Conv2d
from greedy.nn.model import Sequential

from gradcheck import numeric_grad, rel_error


def direct(x, w, b, pad):
    """The cross-correlation in float64 with NumPy alone."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - 2, wd + 2 * pad - 2
    y = np.zeros((n, w.shape[0], ho, wo)) + b.astype(np.float64)[:, None, None]
    for a in range(3):
        for c2 in range(3):
            y += np.einsum("nchw,fc->nfhw", xp[:, :, a:a + ho, c2:c2 + wo], w[:, :, a, c2].astype(np.float64))
    return y


# outputs 8x8, 12x8, 16x16 and 4x4 take F(4x4, 3x3), the others F(2x2, 3x3)
@pytest.mark.parametrize("shape,pad", [((3, 4, 8, 8), 1), ((2, 3, 7, 9), 1), ((2, 5, 6, 5), 0), ((2, 2, 5, 6), 2),
                                       ((1, 2, 3, 3), 1), ((3, 2, 1, 1), 1), ((2, 3, 4, 3), 0), ((2, 3, 14, 10), 0),
                                       ((2, 3, 16, 16), 1), ((2, 2, 2, 2), 2)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_equals_the_direct_convolution(shape, pad, relu, pool, dtype):
    rng = np.random.default_rng(sum(shape) + pad)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((6, shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    ref = direct(x, w, b, pad)
    if min(ref.shape[2:]) < pool:
        with pytest.raises(ConfigError, match="Winograd"):
            wg.conv_forward(x, w, b, pad, relu, pool)
        return
    ref = np.maximum(ref, 0) if relu else ref
    ref = pk.maxpool2d_forward(ref, pool, pool, with_argmax=False)[0] if pool > 1 else ref
    got = wg.conv_forward(x, w, b, pad, relu, pool)
    assert got.dtype == dtype and got.shape == ref.shape
    tol = 5e-6 if dtype == np.float32 else 1e-13
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("pool", [1, 2])
def test_both_tile_sizes_agree_where_both_apply(monkeypatch, pool):
    """Outputs whose sides are multiples of 4 take the 4x4 tiles; forced to 2x2 tiles they give the same map."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 48, 8, 12)).astype(np.float32)
    w = rng.standard_normal((16, 48, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    tiles = []
    monkeypatch.setattr(wg, "weight_tiles", lambda w_, tile=2, f=wg.weight_tiles: tiles.append(tile) or f(w_, tile))
    four = wg.conv_forward(x, w, b, 1, True, pool)
    monkeypatch.setattr(wg, "output_tile", lambda ho, wo: 2)
    two = wg.conv_forward(x, w, b, 1, True, pool)
    assert tiles == [4, 2]
    # each within 5e-6 of the largest output of the exact map (test above), so within twice that of each other
    assert np.abs(four - two).max() <= 1e-5 * np.abs(two).max()


def test_winograd_chunks_write_every_sample_into_out(monkeypatch):
    """Small chunks (many per worker) and an ``out`` slice: every sample lands in its place, nothing beyond."""
    monkeypatch.setattr(wg, "CHUNK_BYTES", 4096)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 32, 6, 6)).astype(np.float32)
    w = rng.standard_normal((8, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    for side in (6, 8):  # 2x2 and 4x4 tiles
        out = np.full((40, 8, side // 2, side // 2), np.nan, np.float32)
        xs = x if side == 6 else rng.standard_normal((37, 32, 8, 8)).astype(np.float32)
        assert wg.conv_forward(xs, w, b, 1, True, 2, out=out[1:38]).base is not None
        expected = ck.conv2d_forward(xs, w, b, 1, 1, relu=True, pool=2)
        assert np.allclose(out[1:38], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert np.isnan(out[0]).all() and np.isnan(out[38:]).all()


# 8x8 and 16x12 outputs take F(4x4, 3x3); 6x6 and 7x9 (odd sides: the pool drops a row or column) F(2x2, 3x3)
@pytest.mark.parametrize("shape,pad", [((3, 32, 8, 8), 1), ((2, 33, 16, 12), 1), ((3, 32, 6, 6), 1),
                                       ((2, 32, 9, 11), 0)])
@pytest.mark.parametrize("relu", [False, True])
def test_pooled_winograd_keeps_the_argmax_of_the_im2col_pass(shape, pad, relu):
    """Float64: the same maxima and argmax as ``conv2d_forward(..., keep_argmax=True)``; float32: each pooled
    value is the unpooled Winograd map's value at its argmax (to rounding: with odd sides the two passes
    multiply matrices of other widths), inside its window, and -1 exactly where the ReLU clipped the window
    to 0."""
    rng = np.random.default_rng(shape[2] + pad)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((6, shape[1], 3, 3))
    b = rng.standard_normal(6) * 3
    got, at = wg.conv_forward(x, w, b, pad, relu, 2, keep_argmax=True)
    ref, ref_at = ck.conv2d_forward(x, w, b, 1, pad, relu=relu, pool=2, keep_argmax=True)
    assert at.dtype == np.int32 and at.shape == got.shape == ref.shape
    assert np.array_equal(at, ref_at) and np.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert (at == -1).any() == relu
    x, w, b = x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
    got, at = wg.conv_forward(x, w, b, pad, relu, 2, keep_argmax=True)
    full = wg.conv_forward(x, w, b, pad, False, 1)
    planes = full.reshape(full.shape[:2] + (-1,))
    kept = at >= 0
    picked = np.take_along_axis(planes, np.where(kept, at, 0).reshape(at.shape[:2] + (-1,)), 2).reshape(at.shape)
    assert np.allclose(got[kept], picked[kept], rtol=0, atol=1e-5 * np.abs(full).max()) and np.all(got[~kept] == 0)
    rows, cols = np.divmod(np.where(kept, at, 0), full.shape[3])
    a, c = np.indices(at.shape[2:])
    assert np.all(~kept | ((rows // 2 == a) & (cols // 2 == c)))
    if relu:
        assert np.array_equal(~kept, got == 0)


def test_winograd_refuses_what_it_cannot_compute():
    x = np.zeros((2, 32, 8, 8), np.float32)
    b = np.zeros(4, np.float32)
    for w, pad, pool in [(np.zeros((4, 32, 5, 5), np.float32), 1, 1), (np.zeros((4, 32, 3, 3), np.float32), 3, 1),
                         (np.zeros((4, 32, 3, 3), np.float32), 1, 3)]:
        with pytest.raises(ConfigError, match="Winograd"):
            wg.conv_forward(x, w, b, pad, False, pool)
    with pytest.raises(ConfigError, match="b has 3 entries"):
        wg.conv_forward(x, np.zeros((4, 32, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match="share one dtype"):
        wg.conv_forward(x, np.zeros((4, 32, 3, 3)), b)
    with pytest.raises(ConfigError, match="2 or 4 pixels wide"):
        wg.weight_tiles(np.zeros((4, 32, 3, 3), np.float32), 3)
    with pytest.raises(ConfigError, match="argmax of a 2x2 max pool only"):
        wg.conv_forward(x, np.zeros((4, 32, 3, 3), np.float32), b, 1, False, 1, keep_argmax=True)


def test_inference_takes_winograd_only_where_it_pays(monkeypatch):
    """Wide enough 3x3 stride-1 convs go through Winograd, and the fused pass still equals the layers."""
    calls = []
    forward = wg.conv_forward
    monkeypatch.setattr(wg, "conv_forward", lambda *a, **k: calls.append(a[1].shape) or forward(*a, **k))
    model = Sequential.from_spec("c32k3-relu-max2-c40k3-relu-c8k3s2-relu-c8k5").build((3, 16, 16), 0)
    x = np.random.default_rng(2).standard_normal((5, 3, 16, 16)).astype(np.float32)
    expected = model.forward(x, train=False)
    calls.clear()   # the layer by layer forward takes Winograd for the same conv
    got = inference.forward(model.layers, x)
    assert calls == [(40, 32, 3, 3)]
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


G2 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile,g", [(2, G2), (4, G4)])
def test_weight_tiles_are_g_g_gt(dtype, tile, g):
    w = np.random.default_rng(7).standard_normal((5, 3, 3, 3)).astype(dtype)
    u = wg.weight_tiles(w, tile)
    e = len(g) ** 2
    assert u.dtype == dtype and u.shape == (e, 5, 3)
    expected = np.einsum("ik,fckl,jl->ijfc", g, w.astype(np.float64), g).reshape(e, 5, 3)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert np.abs(u - expected).max() <= tol * np.abs(expected).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,pad", [((3, 5, 8, 8), 1), ((2, 4, 7, 9), 0), ((2, 3, 5, 6), 2), ((2, 3, 4, 4), 1)])
def test_input_gradient_equals_the_im2col_backward(shape, pad, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((6, shape[1], 3, 3)).astype(dtype)
    ho, wo = shape[2] + 2 * pad - 2, shape[3] + 2 * pad - 2
    dy = rng.standard_normal((shape[0], 6, ho, wo)).astype(dtype)
    expected = ck.conv2d_backward(x, w, dy, 1, pad)[0]
    dx = wg.input_grad(dy, w, pad)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert rel_error(dx, expected) < (1e-5 if dtype == np.float32 else 1e-12)


def test_input_gradient_refuses_other_filters():
    with pytest.raises(ConfigError, match="3x3 filters"):
        wg.input_grad(np.zeros((1, 2, 4, 4)), np.zeros((2, 3, 5, 5)), 2)
    with pytest.raises(ConfigError, match="padding 0-2"):
        wg.input_grad(np.zeros((1, 2, 4, 4)), np.zeros((2, 3, 3, 3)), 3)


def test_the_conv_layer_takes_winograd_where_it_pays(monkeypatch):
    calls = []
    for name in ("conv_forward", "input_grad"):
        monkeypatch.setattr(wg, name, lambda *a, _f=getattr(wg, name), _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(6)
    for (c, f, stride), expected in [((32, 32, 1), ["conv_forward", "input_grad", "conv_forward"]),
                                     ((32, 64, 1), ["conv_forward"]), ((3, 32, 1), []),
                                     ((32, 8, 1), ["conv_forward"]), ((32, 32, 2), [])]:
        conv = Conv2d(f, 3, stride)
        conv.build((c, 8, 8), rng)
        y = conv.forward(rng.standard_normal((2, c, 8, 8)).astype(np.float32), train=True)
        calls.clear()
        conv.forward(rng.standard_normal((2, c, 8, 8)).astype(np.float32), train=True)
        conv.backward(np.ones_like(y))
        assert calls == expected, (c, f, stride)


def test_conv_layer_gradients_by_winograd_match_finite_differences():
    rng = np.random.default_rng(7)
    conv = Conv2d(32, 3)
    conv.build((32, 4, 4), rng, np.float64)
    assert wg.applies(conv.params["w"], 1, 1, 1, 4, 4) and wg.input_grad_applies(conv.params["w"], 1, 1)
    x = rng.standard_normal((2, 32, 4, 4))
    target = rng.standard_normal((2, 32, 4, 4))

    def loss():
        return 0.5 * np.sum((conv.forward(x, train=True) - target) ** 2)

    dx = conv.backward(conv.forward(x, train=True) - target)
    dw = conv.grads["w"].copy()
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7
    w = conv.params["w"]
    for _ in range(3):   # directional derivatives of the loss along random weight directions
        v = rng.standard_normal(w.shape)
        w += 1e-6 * v
        up = loss()
        w -= 2e-6 * v
        down = loss()
        w += 1e-6 * v
        assert abs((up - down) / 2e-6 - np.sum(dw * v)) < 1e-7 * np.abs(dw * v).sum()
