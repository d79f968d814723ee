"""Element-wise layers without weights: ``ReLU``, ``GELU``, ``Tanh`` and inverted ``Dropout``.

Same protocol as :class:`greedy.nn.layers.Layer`; x and y have the same shape
(any rank), float32 by default, float64 for gradient checks.
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import pointwise as pk
from greedy.nn.layers import Layer


def _elementwise_forward(kernel, x):
    """(x, y): x made C-contiguous and y of its shape and dtype from ``kernel(x, y)`` run over the flattened
    arrays."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    kernel(x.reshape(-1), y.reshape(-1))
    return x, y


def _elementwise_backward(kernel, y, dy):
    """dx of y's shape and dtype from ``kernel(y, dy, dx)`` run over the flattened arrays."""
    dy = np.ascontiguousarray(dy, dtype=y.dtype)
    dx = np.empty_like(dy)
    kernel(y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
    return dx


class ReLU(Layer):
    """y = max(x, 0)."""

    def forward(self, x, train=False):
        self.fused_run = None
        _, self.y = _elementwise_forward(pk.relu_forward, x)
        return self.y

    def release_state(self, run):
        self.y = None
        super().release_state(run)

    def backward(self, dy, input_grad=True):
        self._unfuse()
        return _elementwise_backward(pk.relu_backward, self.y, dy) if input_grad else None

    def r_forward(self, rx, rparams=None):
        return None if rx is None else self.backward(rx)

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def spec(self):
        return "relu"


class GELU(Layer):
    """y = x Phi(x), Phi the standard normal distribution function (exact, by erf; airbench's activation).
    Not part of the fused conv runs: it costs a pass over its map each way."""

    def forward(self, x, train=False):
        self.x, y = _elementwise_forward(pk.gelu_forward, x)
        return y

    def backward(self, dy, input_grad=True):
        return _elementwise_backward(pk.gelu_backward, self.x, dy) if input_grad else None

    def r_forward(self, rx, rparams=None):
        self.rx = rx
        return None if rx is None else self.backward(rx)  # R{y} = Rx g'(x), the same map as backward

    def r_backward(self, dy, rdy, input_grad=True):
        """R{dx} = R dy g'(x) + dy g''(x) Rx, with g''(x) = phi(x) (2 - x^2)."""
        if not input_grad:
            return None, None
        dx, rdx = self.backward(dy), self.backward(rdy)
        if self.rx is not None:
            x = self.x
            rdx += dy * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi) * (2 - x * x) * self.rx
        return dx, rdx

    def spec(self):
        return "gelu"


class Tanh(Layer):
    """y = tanh(x)."""

    def forward(self, x, train=False):
        self.y = np.tanh(x)  # NumPy's SIMD tanh is ~20x faster than Numba's scalar libm call
        return self.y

    def backward(self, dy, input_grad=True):
        return _elementwise_backward(pk.tanh_backward, self.y, dy) if input_grad else None

    def r_forward(self, rx, rparams=None):
        self.ry = None if rx is None else self.backward(rx)  # R{y} = Rx (1 - y^2), the same map as backward
        return self.ry

    def r_backward(self, dy, rdy, input_grad=True):
        """R{dx} = R dy (1 - y^2) - 2 dy y Ry."""
        if not input_grad:
            return None, None
        d = 1 - self.y * self.y
        return dy * d, rdy * d - 2 * dy * self.y * self.ry

    def spec(self):
        return "tanh"


class Dropout(Layer):
    """Inverted dropout with drop probability ``rate``; identity at inference.

    The masks come from ``self.rng``. ``build`` seeds it from the run's generator
    (``default_rng(rng.integers(2**63))``), so a built model's masks follow the run's
    seed. A layer used without ``build`` draws from ``default_rng(seed)``, that is
    the stream of ``np.random.SeedSequence(seed)``, ``seed`` 0 unless given.
    """

    def __init__(self, rate=0.5, seed=0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.rng = np.random.default_rng(np.random.SeedSequence(seed))

    def build(self, in_shape, rng, dtype=np.float32):
        self.rng = np.random.default_rng(rng.integers(2**63))
        return super().build(in_shape, rng, dtype)

    def forward(self, x, train=False):
        if not train or self.rate == 0.0:
            self.scale = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self.scale = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        return x * self.scale

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return dy if self.scale is None else dy * self.scale

    def r_forward(self, rx, rparams=None):
        """Linear with the mask drawn by the last ``forward``."""
        if rx is None or self.scale is None:
            return rx
        return rx * self.scale

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def spec(self):
        return f"drop{self.rate:g}"
