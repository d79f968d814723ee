"""Every layer's backward pass against central finite differences in float64."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.nn.activations import GELU, Dropout, ReLU, Tanh
from greedy.nn.batchnorm import BatchNorm2d
from greedy.nn.layers import Conv2d, Dense
from greedy.nn.pooling import AvgPool2d, GlobalAvgPool, MaxPool2d
from greedy.nn.losses import is_cross_entropy, log_softmax, smoothed_cross_entropy, softmax_cross_entropy
from greedy.nn.model import Sequential

from gradcheck import numeric_grad, rel_error

def check_layer(layer, in_shape, n=2, seed=0, train=False):
    rng = np.random.default_rng(seed)
    layer.build(in_shape, rng, np.float64)
    x = rng.standard_normal((n,) + tuple(in_shape))
    out = layer.forward(x, train)
    r = rng.standard_normal(out.shape)

    def loss():
        return float((layer.forward(x, train) * r).sum())

    layer.forward(x, train)
    dx = layer.backward(r)
    assert dx.shape == x.shape and dx.dtype == np.float64
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-6
    analytic = {k: g.copy() for k, g in layer.grads.items()}
    for k, p in layer.params.items():
        assert rel_error(analytic[k], numeric_grad(loss, p)) < 1e-6, k


@pytest.mark.parametrize("filters,k,stride,pad,shape,n", [
    (4, 3, 1, 1, (3, 7, 9), 2),
    (3, 3, 2, 0, (2, 9, 7), 1),
    (2, 5, 1, 2, (1, 8, 8), 2),
    (5, 1, 1, 0, (3, 5, 5), 1),
    (3, 3, 2, 2, (2, 6, 5), 2),
])
def test_conv2d_gradients(filters, k, stride, pad, shape, n):
    layer = Conv2d(filters, k, stride, pad)
    rng = np.random.default_rng(1)
    layer.build(shape, rng, np.float64)
    layer.params["b"][:] = rng.standard_normal(filters)
    check_layer(layer, shape, n)


def test_dense_gradients():
    check_layer(Dense(5), (3, 2, 2), n=3)
    check_layer(Dense(4), (6,), n=1)


@pytest.mark.parametrize("layer", [ReLU(), GELU(), Tanh(), GlobalAvgPool(), AvgPool2d(2), MaxPool2d(2)])
def test_parameterless_gradients(layer):
    # odd sizes: the floor behaviour drops the last row/column of the pools
    check_layer(layer, (3, 5, 7), n=2)


def test_gelu_is_x_times_the_normal_distribution_function_in_both_precisions_and_threaded():
    from scipy.special import ndtr
    rng = np.random.default_rng(5)
    for shape in ((3, 5, 7), (4, 64, 32, 32)):  # the second is past the threaded kernels' size
        x = (3 * rng.standard_normal(shape)).astype(np.float32)
        want = x.astype(np.float64) * ndtr(x.astype(np.float64))
        layer = GELU()
        y = layer.forward(x)
        assert y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
        dy = rng.standard_normal(shape).astype(np.float32)
        slope = ndtr(x.astype(np.float64)) + x * np.exp(-0.5 * x.astype(np.float64) ** 2) / np.sqrt(2 * np.pi)
        np.testing.assert_allclose(layer.backward(dy), dy * slope, rtol=1e-5, atol=1e-6)
    model = Sequential.from_spec("c4k3-bn-gelu-max2-c4k3-gelu-fc3").build((3, 8, 8), 0)
    assert model.spec() == "c4k3-bn-gelu-max2-c4k3-gelu-fc3"
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    model.forward(x, train=True)  # batch statistics into the running averages
    np.testing.assert_allclose(model.predict_batch(x), model.forward(x), rtol=1e-5, atol=1e-5)  # fused inference


def test_batchnorm_gradients_in_training_mode():
    layer = BatchNorm2d()
    rng = np.random.default_rng(3)
    layer.build((3, 4, 5), rng, np.float64)
    layer.params["gamma"][:] = rng.uniform(0.5, 2, 3)
    layer.params["beta"][:] = rng.standard_normal(3)
    check_layer(layer, (3, 4, 5), n=3, train=True)


def test_batchnorm_matches_numpy_reference_with_large_offset_and_in_eval_mode():
    rng = np.random.default_rng(4)
    x = (1000 + 0.01 * rng.standard_normal((8, 3, 6, 5))).astype(np.float32)
    layer = BatchNorm2d(momentum=1.0)
    layer.build((3, 6, 5), rng)
    y = layer.forward(x, train=True)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    want = (x64 - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    assert np.allclose(y, want, atol=2e-3)
    n = x.size / 3
    assert np.allclose(layer.buffers["var"], var * n / (n - 1), rtol=1e-3)
    y_eval = layer.forward(x, train=False)
    assert np.allclose(y_eval, want * np.sqrt((var + 1e-5) / (var * n / (n - 1) + 1e-5))[None, :, None, None],
                       atol=2e-3)


def test_relu_keeps_positive_values_and_routes_gradient():
    x = np.array([[-1.0, 0.0, 2.5, -3.0]], np.float32)
    layer = ReLU()
    assert np.array_equal(layer.forward(x), [[0, 0, 2.5, 0]])
    assert np.array_equal(layer.backward(np.full_like(x, 7.0)), [[0, 0, 7, 0]])


def test_dropout_scales_kept_units_and_is_identity_at_inference():
    layer = Dropout(0.4)
    layer.build((1000,), np.random.default_rng(0), np.float32)
    x = np.ones((4, 1000), np.float32)
    assert np.array_equal(layer.forward(x, train=False), x)
    y = layer.forward(x, train=True)
    kept = y != 0
    assert np.allclose(y[kept], 1 / 0.6)
    assert 0.55 < kept.mean() < 0.65
    dx = layer.backward(np.ones_like(x))
    assert np.array_equal(dx, y)


def test_softmax_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    weights = rng.uniform(0.5, 2, 5)
    for w in (None, weights):
        loss, grad = softmax_cross_entropy(logits, labels, w)
        num = numeric_grad(lambda: softmax_cross_entropy(logits, labels, w)[0], logits)
        assert rel_error(grad, num) < 1e-6
    huge = np.array([[1e4, 0.0, -1e4]])
    loss, grad = softmax_cross_entropy(huge, np.array([1]))
    assert np.isfinite(loss) and loss == pytest.approx(1e4)
    assert np.all(np.isfinite(grad))
    assert np.allclose(np.exp(log_softmax(huge)).sum(), 1.0)


def test_label_smoothing_loss_is_the_cross_entropy_with_soft_targets_and_its_gradient_matches():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, 6)
    weights = rng.uniform(0.5, 2, 6)
    eps = 0.2
    target = np.full((6, 5), eps / 5)
    target[np.arange(6), labels] += 1 - eps
    for w in (None, weights):
        wn = np.full(6, 1 / 6) if w is None else w / w.sum()
        loss, grad = softmax_cross_entropy(logits, labels, w, label_smoothing=eps)
        assert loss == pytest.approx(-(wn[:, None] * target * log_softmax(logits)).sum(), rel=1e-12)
        num = numeric_grad(lambda: softmax_cross_entropy(logits, labels, w, label_smoothing=eps)[0], logits)
        assert rel_error(grad, num) < 1e-6
        np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-12)  # soft targets sum to one, like p
    smoothed = smoothed_cross_entropy(eps)
    assert smoothed(logits, labels)[0] == softmax_cross_entropy(logits, labels, label_smoothing=eps)[0]
    assert smoothed_cross_entropy(0.0) is softmax_cross_entropy
    assert is_cross_entropy(smoothed) and is_cross_entropy(softmax_cross_entropy) and not is_cross_entropy(len)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="label smoothing must be in"):
            smoothed_cross_entropy(bad)


def test_a_confident_softmax_gradient_holds_no_subnormal_floats():
    """exp(-90) / 256 is below float32's smallest normal: flushed to 0, while normal entries are unchanged."""
    logits = np.zeros((256, 10), np.float32)
    logits[:, 0] = 90.0
    logits[:, 1] = 70.0  # exp(-20) / 256: small but normal
    labels = np.zeros(256, np.int64)
    _, grad = softmax_cross_entropy(logits, labels)
    tiny = np.finfo(np.float32).tiny
    assert grad.dtype == np.float32 and not ((grad != 0) & (np.abs(grad) < tiny)).any()
    assert (grad[:, 2:] == 0).all() and (grad[:, 1] > tiny).all()
    p = np.exp(log_softmax(logits.astype(np.float64)))
    np.testing.assert_allclose(grad[:, 1], p[:, 1] / 256, rtol=1e-5)
    assert ((p[:, 2:] / 256) < tiny).all()  # what was flushed: exp(-90) / 256 in float64


@pytest.mark.parametrize("spec,in_shape", [
    ("c4k3-relu-max2-c3k3s2p1-tanh-gap-fc3", (2, 9, 9)),
    ("c3k3-relu-tap2-max2-c4k3-tanh-tap1-max2-cat-fc3", (2, 8, 8)),  # taps: gradients reach block 1 twice
])
def test_sequential_model_gradient_matches_finite_differences(spec, in_shape):
    model = Sequential.from_spec(spec).build(in_shape, 0, np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + in_shape)
    y = np.array([0, 2])

    def loss():
        return softmax_cross_entropy(model.forward(x), y)[0]

    _, d = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(d)
    analytic = [g.copy() for g in model.gradients()]
    for p, g in zip(model.parameters(), analytic):
        assert rel_error(g, numeric_grad(loss, p)) < 1e-6


def test_concat_width_is_the_taps_plus_the_map():
    model = Sequential.from_spec("c3k3-relu-tap2-max2-c4k3-tanh-tap1-max2-cat-fc3").build((2, 8, 8), 0)
    assert model.out_shape == (3,)
    assert model.layers[-1].in_shape == (3 * 4 * 4 + 4 * 4 * 4 + 4 * 2 * 2,)


def test_concat_puts_the_taps_first_and_needs_them():
    model = Sequential.from_spec("tap2-max2-tap1-cat").build((1, 4, 4), 0)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = model.forward(x)
    pooled = np.array([[5, 7, 13, 15]], np.float32)
    np.testing.assert_array_equal(out, np.hstack([pooled, pooled, pooled]))
    for bad, match in (("c2k3-cat-fc2", "tap"), ("c2k3-tap1-fc2", "cat"), ("fc4-tap1-cat", "image input")):
        with pytest.raises(ConfigError, match=match):
            Sequential.from_spec(bad).build((1, 4, 4), 0)


def test_float32_is_the_default_dtype():
    model = Sequential.from_spec("c4k3-relu-max2-fc10").build((1, 8, 8), 0)
    assert all(p.dtype == np.float32 for p in model.parameters())
    out = model.forward(np.zeros((2, 1, 8, 8), np.float32))
    assert out.dtype == np.float32


def test_initialisation_is_seeded():
    a = Sequential.from_spec("c4k3-relu-fc10").build((1, 8, 8), 7)
    b = Sequential.from_spec("c4k3-relu-fc10").build((1, 8, 8), 7)
    c = Sequential.from_spec("c4k3-relu-fc10").build((1, 8, 8), 8)
    assert all(np.array_equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not np.array_equal(a.layers[0].params["w"], c.layers[0].params["w"])
    w = a.layers[0].params["w"]
    assert abs(w.std() - np.sqrt(2 / 9)) < 0.25 * np.sqrt(2 / 9)
