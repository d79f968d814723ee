"""The mini-batch loop's step budget, batch order and hooks (greedy.nn.fit.fit)."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.nn.fit import fit
from greedy.nn.model import Sequential
from greedy.nn.optim import SGD, Adam, cosine


def problem(n=22, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    return x, rng.integers(0, 3, n)


def model(seed=0):
    return Sequential.from_spec("fc6-relu-fc3").build((5,), seed)


def test_steps_with_drop_last_visit_full_batches_in_the_order_of_the_rng():
    x, y = problem()
    x[:, 0] = np.arange(len(x))                                    # feature 0 names the sample
    seen = []
    history = fit(model(), x, y, SGD(0.05), steps=9, batch_size=4, drop_last=True, rng=np.random.default_rng(3),
                  prepare=lambda xb: seen.append(xb[:, 0].astype(int)) or xb)
    rng = np.random.default_rng(3)
    expected = [order[i:i + 4] for order in (rng.permutation(22) for _ in range(2)) for i in range(0, 19, 4)][:9]
    assert len(seen) == 9 and all(len(b) == 4 for b in seen)
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected))
    assert [h["epoch"] for h in history] == [1, 2]                # 5 full batches per epoch, then 4


def test_hooks_see_every_step_in_order_and_a_plain_backward_hook_changes_nothing():
    x, y = problem()
    plain, hooked = model(), model()
    fit(plain, x, y, SGD(0.05, momentum=0.9), epochs=2, batch_size=8, rng=np.random.default_rng(1))
    calls = []
    opt = SGD(0.05, momentum=0.9)

    def backward(dy, step):
        calls.append(("backward", step))
        hooked.backward(dy, input_grad=False)

    def after_backward(step):
        calls.append(("after_backward", step, opt.progress))

    def on_step(step, loss):
        calls.append(("on_step", step, np.isfinite(loss)))

    fit(hooked, x, y, opt, epochs=2, batch_size=8, rng=np.random.default_rng(1), backward=backward,
        after_backward=after_backward, on_step=on_step)
    steps = 6                                                     # ceil(22 / 8) batches per epoch, 2 epochs
    assert calls == [c for s in range(steps)
                     for c in (("backward", s), ("after_backward", s, s / steps), ("on_step", s, True))]
    assert all(np.array_equal(p, q) for p, q in zip(plain.parameters(), hooked.parameters()))


def test_after_backward_can_replace_the_gradients_before_the_step():
    x, y = problem()
    m = model()
    before = [p.copy() for p in m.parameters()]
    grads = m.gradients()

    def zero(step):
        for g in grads:
            g[...] = 0

    fit(m, x, y, SGD(0.5, momentum=0.0), steps=4, batch_size=8, after_backward=zero)
    assert all(np.array_equal(p, q) for p, q in zip(m.parameters(), before))
    fit(m, x, y, SGD(0.5, momentum=0.0), steps=4, batch_size=8)
    assert any(not np.array_equal(p, q) for p, q in zip(m.parameters(), before))


@pytest.mark.parametrize("kwargs,message", [
    ({}, "either epochs or steps"), ({"epochs": 1, "steps": 2}, "either epochs or steps"),
    ({"steps": -1}, "steps"), ({"steps": 1.5}, "steps"), ({"epochs": -0.5}, "epochs"),
    ({"epochs": 1, "batch_size": 0}, "batch size"),
])
def test_bad_budgets_are_refused(kwargs, message):
    x, y = problem()
    with pytest.raises(ConfigError, match=message):
        fit(model(), x, y, SGD(0.1), **kwargs)


def test_stopping_after_an_epoch_and_going_on_from_it_is_one_training():
    x, y = problem()
    whole, split = model(), model()
    fit(whole, x, y, Adam(0.01, schedule=cosine()), epochs=3, batch_size=8, rng=np.random.default_rng(4))
    opt, rng = Adam(0.01, schedule=cosine()), np.random.default_rng(4)
    first = fit(split, x, y, opt, epochs=3, batch_size=8, rng=rng, stop_epoch=1)
    rest = fit(split, x, y, opt, epochs=3, batch_size=8, rng=rng, start_epoch=1)
    assert [h["epoch"] for h in first] == [1] and [h["epoch"] for h in rest] == [2, 3]
    for a, b in zip(whole.parameters(), split.parameters()):
        np.testing.assert_array_equal(a, b)


def test_an_optimiser_that_drops_its_leading_parameters_steps_the_rest_as_before():
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(3), rng.standard_normal(4)]
    kept = [params[1].copy()]
    full, short = Adam(0.1), Adam(0.1)
    for _ in range(2):
        grads = [rng.standard_normal(3), rng.standard_normal(4)]
        full.step(params, grads)
        short.step([params[0].copy(), kept[0]], grads)
    short.drop_leading(1)
    grad = rng.standard_normal(4)
    full.step(params, [np.zeros(3), grad])
    short.step(kept, [grad])
    np.testing.assert_array_equal(params[1], kept[0])
    assert len(short.state) == 1


def test_rate_multipliers_scale_each_parameters_step():
    rng = np.random.default_rng(6)
    params, grads = [rng.standard_normal(3), rng.standard_normal(4)], [rng.standard_normal(3), rng.standard_normal(4)]
    plain, scaled = [p.copy() for p in params], [p.copy() for p in params]
    SGD(0.1, momentum=0.0).step(plain, grads)
    opt = SGD(0.1, momentum=0.0)
    opt.lr_scales = [3.0, 1.0]
    opt.step(scaled, grads)
    np.testing.assert_allclose(scaled[0] - params[0], 3 * (plain[0] - params[0]))
    np.testing.assert_array_equal(scaled[1], plain[1])


def test_whiten_first_conv_fixes_plus_and_minus_whitened_directions_that_training_keeps():
    from greedy.methods.e2e import whiten_first_conv
    from greedy.nn.network import Normalizer
    rng = np.random.default_rng(0)
    smooth = rng.uniform(0, 255, (200, 3, 4, 4)).repeat(2, axis=2).repeat(2, axis=3)  # correlated pixels
    x = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    y = rng.integers(0, 3, len(x))
    net = Sequential.from_spec("c8k3-relu-max2-fc3").build((3, 8, 8), 0)
    normalizer = Normalizer().fit(x)
    masks = whiten_first_conv(net, x, normalizer, np.random.default_rng(1))
    w, b = net.layers[0].params["w"].copy(), net.layers[0].params["b"].copy()
    np.testing.assert_array_equal(w[:4], -w[4:])
    np.testing.assert_array_equal(b[:4], -b[4:])
    xn = np.pad(normalizer(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([xn[:, :, i:i + 3, j:j + 3].reshape(len(x), -1) for i in range(8) for j in range(8)])
    z = patches.reshape(-1, 27).astype(np.float64) @ w[:4].reshape(4, 27).T.astype(np.float64) + b[:4]
    cov = np.cov(z, rowvar=False)
    assert np.abs(z.mean(axis=0)).max() < 0.1                       # centred
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.1          # decorrelated
    assert 0.5 < np.diag(cov).min() and np.diag(cov).max() < 1.1   # unit variance (less the eps of small ones)
    opt = SGD(0.1)
    opt.masks = masks + [None] * (len(net.parameters()) - len(masks))
    head = net.layers[-1].params["w"].copy()
    fit(net, normalizer(x), y, opt, epochs=1, batch_size=32, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(net.layers[0].params["w"], w)
    np.testing.assert_array_equal(net.layers[0].params["b"], b)
    assert not np.array_equal(net.layers[-1].params["w"], head)
    for spec, message in (("c9k3-relu-max2-fc3", "even number of filters up to 54"),
                          ("c60k3-relu-max2-fc3", "even number of filters up to 54"),
                          ("max2-c8k3-relu-fc3", "starts with a conv")):
        with pytest.raises(ConfigError, match=message):
            whiten_first_conv(Sequential.from_spec(spec).build((3, 8, 8), 0), x, normalizer, rng)
