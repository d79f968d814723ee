"""Elementwise kernels: serial and threaded twins agree bit for bit, and both match NumPy."""
import numpy as np
import pytest

from greedy.kernels import kmeans as kk
from greedy.kernels import pointwise as pk


@pytest.fixture(params=["serial", "threaded"])
def path(request, monkeypatch):
    monkeypatch.setattr(pk, "THREADED_MIN_SIZE", 1 << 40 if request.param == "serial" else 0)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_tanh_gradient_match_numpy(path, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(dtype)
    x[::7] = 0
    x[::11] = -0.0
    dy = rng.standard_normal(5000).astype(dtype)
    y, dx, dt = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    pk.relu_forward(x, y)
    pk.relu_backward(y, dy, dx)
    pk.tanh_backward(np.tanh(x), dy, dt)
    # +0.0 for every non-positive input, -0.0 included
    assert y.tobytes() == np.where(x > 0, x, dtype(0)).tobytes()
    assert dx.tobytes() == np.where(y > 0, dy, dtype(0)).tobytes()
    np.testing.assert_array_equal(dt, dy * (dtype(1) - np.tanh(x) * np.tanh(x)))


def test_threaded_and_serial_relu_agree_above_the_threshold():
    x = np.random.default_rng(1).standard_normal(pk.THREADED_MIN_SIZE + 3).astype(np.float32)
    a, b = np.empty_like(x), np.empty_like(x)
    pk.relu_forward(x, a)
    pk._relu_forward_serial(x, b)
    assert a.tobytes() == b.tobytes()


def test_kmeanspp_draw_is_searchsorted_right():
    rng = np.random.default_rng(3)
    cum = np.cumsum(rng.integers(0, 3, 50).astype(np.float64))  # zero steps give ties
    cum[-1] += 1.0
    for u in np.concatenate([rng.random(500), [0.0, 1.0 - 1e-16]]):
        want = min(np.searchsorted(cum, u * cum[-1], side="right"), len(cum) - 1)
        assert kk._draw(cum, u) == want
