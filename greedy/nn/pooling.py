"""Spatial pooling of images (N, C, H, W): ``MaxPool2d``, ``AvgPool2d``, ``GlobalAvgPool``, and the
``Tap``/``Concat`` pair that feeds every block's pooled map to a classifier (multi-scale features).

Same protocol as :class:`greedy.nn.layers.Layer`; float32 by default, float64 for gradient checks.
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import pool
from greedy.nn.layers import Layer


class MaxPool2d(Layer):
    """Max pooling with a square window ``size`` and stride ``size`` (floor on odd sizes)."""

    def __init__(self, size=2):
        super().__init__()
        self.size = int(size)

    def build(self, in_shape, rng, dtype=np.float32):
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        if h < self.size or w < self.size:
            raise ConfigError(f"pool {self.spec()} does not fit an input of {h}x{w} pixels")
        return (c, h // self.size, w // self.size)

    def forward(self, x, train=False):
        # inference skips the argmax; backward or an R-op after it recomputes it from x
        self.x = x
        self.fused_run = None
        y, self._argmax = pool.maxpool2d_forward(x, self.size, self.size, with_argmax=train)
        return y

    def release_state(self, run):
        self.x = self._argmax = None
        super().release_state(run)

    @property
    def argmax(self):
        self._unfuse()
        if self._argmax is None:
            self._argmax = pool.maxpool2d_forward(self.x, self.size, self.size)[1]
        return self._argmax

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        argmax = self.argmax
        return pool.maxpool2d_backward(dy, argmax, self.x.shape)

    def r_forward(self, rx, rparams=None):
        """R{y} picks Rx at the positions of the maxima."""
        if rx is None:
            return None
        argmax = self.argmax
        n, c = argmax.shape[:2]
        picked = np.take_along_axis(rx.reshape(n, c, -1), argmax.reshape(n, c, -1), axis=2)
        return picked.reshape(argmax.shape)

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def spec(self):
        return f"max{self.size}"


class AvgPool2d(MaxPool2d):
    """Average pooling with a square window ``size`` and stride ``size``."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return pool.avgpool2d_forward(x, self.size, self.size)

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return pool.avgpool2d_backward(dy, self.x_shape, self.size, self.size)

    def r_forward(self, rx, rparams=None):
        return None if rx is None else pool.avgpool2d_forward(rx, self.size, self.size)

    def spec(self):
        return f"avg{self.size}"


class GlobalAvgPool(Layer):
    """Global average pooling: x (N, C, H, W) -> y (N, C)."""

    def build(self, in_shape, rng, dtype=np.float32):
        self.in_shape = tuple(in_shape)
        return (in_shape[0],)

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        n, c, h, w = self.x_shape
        return np.broadcast_to((dy / (h * w))[:, :, None, None], self.x_shape).copy()

    def r_forward(self, rx, rparams=None):
        return None if rx is None else rx.mean(axis=(2, 3))

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def spec(self):
        return "gap"


class Tap(Layer):
    """Passes x (N, C, H, W) through unchanged and keeps its ``size`` x ``size`` max pool for a later ``Concat``.

    ``tap1`` keeps the map itself. Together with ``Concat`` this lets a classifier
    see every block's pooled output (multi-scale features) in a plain layer list.
    """

    def __init__(self, size=1):
        super().__init__()
        self.pool = MaxPool2d(size) if int(size) > 1 else None
        self.size = int(size)
        self.grad_out = None

    def build(self, in_shape, rng, dtype=np.float32):
        self.tap_shape = self.pool.build(in_shape, rng, dtype) if self.pool else tuple(in_shape)
        return super().build(in_shape, rng, dtype)

    def forward(self, x, train=False):
        self.out = self.pool.forward(x, train) if self.pool else x
        return x

    def backward(self, dy, input_grad=True):
        """dy plus the gradient that the ``Concat`` layer sent back to this tap (``grad_out``)."""
        if not input_grad:
            return None
        g = self.grad_out.reshape((len(dy),) + self.tap_shape)
        self.grad_out = None
        return dy + (self.pool.backward(g) if self.pool else g)

    def spec(self):
        return f"tap{self.size}"


class Concat(Layer):
    """Flattens x and appends it to the kept outputs of the ``Tap`` layers before it: (N, sum of sizes).

    ``Sequential.build`` links each ``Concat`` to the taps since the previous one (``taps``);
    the taps come first, in order, then x.
    """

    def __init__(self):
        super().__init__()
        self.taps = []

    def build(self, in_shape, rng, dtype=np.float32):
        if not self.taps:
            raise ConfigError("'cat' needs at least one 'tap<k>' layer before it")
        self.in_shape = tuple(in_shape)
        self.sizes = [int(np.prod(t.tap_shape)) for t in self.taps] + [int(np.prod(in_shape))]
        return (sum(self.sizes),)

    def forward(self, x, train=False):
        n = len(x)
        return np.concatenate([t.out.reshape(n, -1) for t in self.taps] + [x.reshape(n, -1)], axis=1)

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        parts = np.split(dy, np.cumsum(self.sizes)[:-1], axis=1)
        for tap, part in zip(self.taps, parts):
            tap.grad_out = part
        return parts[-1].reshape((len(dy),) + self.in_shape)

    def spec(self):
        return "cat"
