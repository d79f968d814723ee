"""BasisMix: the last patch-bag block's mix trained on basis maps, against float64 finite differences and
against the conv it stands for."""
import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from greedy.errors import ConfigError
from greedy.methods.classifier import train_classifier
from greedy.nn.basismix import BasisMix
from greedy.nn.layers import Conv2d
from greedy.nn.model import Sequential
from greedy.nn.pooling import AvgPool2d


def mix_layer(rng, taps=3, h=4, w=4, d=3, f=5, pool=2):
    layer = BasisMix(rng.standard_normal((f, d)), rng.standard_normal(f), taps, h, w, pool)
    layer.build((taps + h * w * d,), rng, np.float64)
    layer.set_scale(rng.standard_normal(f * (h // pool) * (w // pool)), rng.uniform(0.5, 2, f * (h // pool) * (w // pool)))
    return layer


@pytest.mark.parametrize("h, w, pool", [(4, 4, 2), (6, 6, 3)])  # 16 positions, and 36: eight at a time and four
def test_gradients_match_float64_finite_differences(h, w, pool):
    rng = np.random.default_rng(0)
    layer = mix_layer(rng, h=h, w=w, pool=pool)
    x = rng.standard_normal((4, layer.in_shape[0]))
    target = rng.standard_normal((4, 3 + 5 * (h // pool) * (w // pool)))

    def loss():
        return float((layer.forward(x) * target).sum())

    layer.forward(x, train=True)
    layer.backward(target, input_grad=False)
    for key in ("w", "b"):
        assert rel_error(layer.grads[key], numeric_grad(loss, layer.params[key])) < 1e-7, key


def test_it_computes_the_pooled_relu_of_the_composed_conv_on_the_taps_side():
    rng = np.random.default_rng(1)
    c, h, w, d, f = 4, 8, 8, 3, 6
    basis, basis_bias = rng.standard_normal((d, c, 3, 3)), rng.standard_normal(d)
    mix, bias = rng.standard_normal((f, d)), rng.standard_normal(f)
    images = rng.standard_normal((2, c, h, w))
    conv = Conv2d(f, 3)
    block = Sequential([conv]).build((c, h, w), 0, np.float64)
    conv.set_low_rank(basis, basis_bias, mix, bias)
    want = AvgPool2d(4).forward(np.maximum(Sequential.forward(block, images), 0)).reshape(2, -1)
    zconv = Conv2d(d, 3)
    Sequential([zconv]).build((c, h, w), 0, np.float64)
    zconv.params["w"][...], zconv.params["b"][...] = basis, basis_bias
    z = zconv.forward(images).transpose(0, 2, 3, 1).reshape(2, -1)  # channels last
    taps = rng.standard_normal((2, 2))
    layer = BasisMix(mix, bias, 2, h, w, 4)
    layer.build((2 + h * w * d,), rng, np.float64)
    out = layer.forward(np.concatenate([taps, z], axis=1))
    assert np.array_equal(out[:, :2], taps) and np.allclose(out[:, 2:], want, rtol=1e-12, atol=1e-12)


def test_bad_shapes_are_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ConfigError, match="do not tile a 6x8 map"):
        BasisMix(np.zeros((2, 3)), np.zeros(2), 0, 6, 8, 4)
    with pytest.raises(ConfigError, match=r"mix \(F, d\) and a bias \(F,\)"):
        BasisMix(np.zeros((2, 3)), np.zeros(3), 0, 4, 4, 2)
    layer = BasisMix(np.zeros((2, 3)), np.zeros(2), 1, 4, 4, 2)
    with pytest.raises(ConfigError, match=r"reads 1 taps and 4x4x3 basis values \(49,\), got \(48,\)"):
        layer.build((48,), rng)
    layer.build((49,), rng)
    with pytest.raises(ConfigError, match=r"input must be \(N, 49\)"):
        layer.forward(np.zeros((2, 48), np.float32))
    layer.forward(np.zeros((2, 49), np.float32))
    with pytest.raises(ConfigError, match="passes no input gradient"):
        layer.backward(np.zeros((2, 9), np.float32))


def test_the_classifier_trains_the_mix_for_the_epochs_it_is_given_and_then_fixes_it():
    rng = np.random.default_rng(3)
    taps, h, w, d, f, n = 2, 4, 4, 3, 5, 64
    x = rng.standard_normal((n, taps)).astype(np.float32)
    maps = rng.standard_normal((n, h * w * d)).astype(np.float32)
    y = rng.integers(0, 3, n)
    mix, bias = rng.standard_normal((f, d)), rng.standard_normal(f)
    trained = {}
    for epochs in (0, 1, None):
        lead = BasisMix(mix, bias, taps, h, w, 2)
        layers, _ = train_classifier(x, y, None, None, 3, np.random.default_rng(0), epochs=3, min_steps=1,
                                     batch_size=16, lead=lead, lead_maps=(maps, None), lead_epochs=epochs)
        trained[epochs] = lead.params["w"]
        assert layers[0].params["w"].shape == (taps + f * 4, 3)
    np.testing.assert_array_equal(trained[0], mix.astype(np.float32))
    assert not np.allclose(trained[1], trained[0]) and not np.allclose(trained[1], trained[None])
