"""Layers with hand-written forward and backward passes.

Every layer follows one small protocol:

- ``build(in_shape, rng, dtype) -> out_shape`` creates parameters for a
  per-sample input shape (C, H, W) or (D,), drawing from a seeded generator.
- ``forward(x, train=False) -> y`` caches what ``backward`` needs.
- ``backward(dy) -> dx`` writes parameter gradients into ``self.grads``
  (same keys as ``self.params``) and returns the gradient of the input.
- ``spec()`` is the layer's token in the architecture string (see ``model.py``).

Arrays are NCHW for images and (N, D) for vectors; float32 by default,
float64 works everywhere (gradient checks).
"""
import numpy as np

from greedy.kernels import conv as ck
from greedy.kernels import pool
from greedy.kernels.im2col import col2im
from greedy.kernels import pointwise as pk


class Layer:
    """Base class: a layer without parameters that passes shapes through."""

    def __init__(self):
        self.params = {}
        self.grads = {}

    def build(self, in_shape, rng, dtype=np.float32):
        self.in_shape = tuple(in_shape)
        return self.in_shape

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dy, input_grad=True):
        """Write parameter gradients into ``self.grads`` from dL/dy; return dL/dx, or None when not
        ``input_grad`` (the first layer of a trained stack: nothing upstream needs it)."""
        raise NotImplementedError

    def spec(self):
        raise NotImplementedError

    # R-operator (Pearlmutter 1994), used by greedy.hessian.hvp. R{f} is the
    # directional derivative of f along a direction v of the parameters.
    # ``r_forward(rx, rparams) -> ry`` maps R{x} (None: the input does not depend
    # on the parameters) to R{y}, given the parameter direction ``rparams`` (a dict
    # like ``params``; None for layers without parameters), after ``forward``.
    # ``r_backward(dy, rdy, input_grad=True) -> (dx, rdx)`` takes dL/dy and R{dL/dy},
    # writes R{dL/dparams} = (H v) into ``self.r_grads`` (same keys as ``params``;
    # ``grads`` is left alone) and returns dL/dx and R{dL/dx} ((None, None) when
    # not ``input_grad``).

    def r_forward(self, rx, rparams=None):
        from greedy.errors import ConfigError
        raise ConfigError(f"layer {self.spec()} has no R-operator (Hessian-vector products)")

    def r_backward(self, dy, rdy, input_grad=True):
        from greedy.errors import ConfigError
        raise ConfigError(f"layer {self.spec()} has no R-operator (Hessian-vector products)")

    def _r_linear_backward(self, dy, rdy, input_grad):
        """R-backward of a layer whose backward is linear in dy and parameter-free."""
        if not input_grad:
            return None, None
        return self.backward(dy), self.backward(rdy)

    def __repr__(self):
        return f"{type(self).__name__}({self.spec()})"


def he_normal(rng, shape, fan_in, dtype):
    """He (Kaiming) normal initialisation, std = sqrt(2 / fan_in), for ReLU layers."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    """Glorot (Xavier) uniform initialisation, limit sqrt(6 / (fan_in + fan_out)), for tanh/linear."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


class Conv2d(Layer):
    """2-D convolution: x (N, C, H, W) -> y (N, F, Ho, Wo), weights w (F, C, K, K), bias b (F,).

    ``padding`` defaults to K // 2 ("same" for odd K and stride 1).
    ``init`` is "he" (ReLU follows) or "glorot" (tanh or linear follows).
    """

    def __init__(self, filters, kernel_size=3, stride=1, padding=None, init="he"):
        super().__init__()
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = self.kernel_size // 2 if padding is None else int(padding)
        self.init = init

    def build(self, in_shape, rng, dtype=np.float32):
        c, h, w = in_shape
        k = self.kernel_size
        fan_in, fan_out = c * k * k, self.filters * k * k
        shape = (self.filters, c, k, k)
        if self.init == "he":
            weights = he_normal(rng, shape, fan_in, dtype)
        else:
            weights = glorot_uniform(rng, shape, fan_in, fan_out, dtype)
        self.params = {"w": weights, "b": np.zeros(self.filters, dtype)}
        self.grads = {key: np.zeros_like(v) for key, v in self.params.items()}
        self.in_shape = tuple(in_shape)
        ho = (h + 2 * self.padding - k) // self.stride + 1
        wo = (w + 2 * self.padding - k) // self.stride + 1
        if ho < 1 or wo < 1:
            from greedy.errors import ConfigError
            raise ConfigError(f"conv {self.spec()} does not fit an input of {h}x{w} pixels")
        return (self.filters, ho, wo)

    def forward(self, x, train=False):
        self.x = x
        return ck.conv2d_forward(x, self.params["w"], self.params["b"], self.stride, self.padding)

    def backward(self, dy, input_grad=True):
        dx, dw, db = ck.conv2d_backward(self.x, self.params["w"], dy, self.stride, self.padding,
                                        input_grad=input_grad)
        self.grads["w"][...] = dw
        self.grads["b"][...] = db
        return dx

    def r_forward(self, rx, rparams=None):
        """R{y} = conv(Rx, w) + conv(x, Rw) + Rb, as one convolution over stacked channels."""
        w, rw, rb = self.params["w"], rparams["w"], rparams["b"]
        self.rx, self.r_params = rx, rparams
        if rx is None:
            return ck.conv2d_forward(self.x, rw, rb, self.stride, self.padding)
        return ck.conv2d_forward(np.concatenate([self.x, rx], axis=1), np.concatenate([rw, w], axis=1),
                                 rb, self.stride, self.padding)

    def r_backward(self, dy, rdy, input_grad=True):
        """R{dw} = dw(x, R dy) + dw(Rx, dy); R{dx} = dx(w, R dy) + dx(Rw, dy).

        The two R{dw} terms and dx(w, R dy), dx(w, dy) come from one backward call
        over the batch stacked as [x; Rx] with output gradients [R dy; dy].
        """
        w, x, rx = self.params["w"], self.x, self.rx
        self.r_grads = {"b": rdy.sum(axis=(0, 2, 3))}
        if rx is None:
            _, self.r_grads["w"], _ = ck.conv2d_backward(x, w, rdy, self.stride, self.padding, input_grad=False)
            return None, None
        n = len(x)
        dx2, self.r_grads["w"], _ = ck.conv2d_backward(
            np.concatenate([x, rx]), w, np.concatenate([rdy, dy]), self.stride, self.padding, input_grad=input_grad)
        if not input_grad:
            return None, None
        rdx = dx2[:n]
        rdx += _conv_input_grad(dy, self.r_params["w"], x.shape, self.stride, self.padding)
        return dx2[n:], rdx

    def spec(self):
        s = f"c{self.filters}k{self.kernel_size}"
        if self.stride != 1:
            s += f"s{self.stride}"
        if self.padding != self.kernel_size // 2:
            s += f"p{self.padding}"
        return s


class Dense(Layer):
    """Fully connected layer: x (N, D) -> y (N, units); inputs of higher rank are flattened."""

    def __init__(self, units, init="he"):
        super().__init__()
        self.units = int(units)
        self.init = init

    def build(self, in_shape, rng, dtype=np.float32):
        d = int(np.prod(in_shape))
        shape = (d, self.units)
        if self.init == "he":
            weights = he_normal(rng, shape, d, dtype)
        else:
            weights = glorot_uniform(rng, shape, d, self.units, dtype)
        self.params = {"w": weights, "b": np.zeros(self.units, dtype)}
        self.grads = {key: np.zeros_like(v) for key, v in self.params.items()}
        self.in_shape = tuple(in_shape)
        return (self.units,)

    def forward(self, x, train=False):
        self.x_shape = x.shape
        self.x = x.reshape(len(x), -1)
        return self.x @ self.params["w"] + self.params["b"]

    def backward(self, dy, input_grad=True):
        np.matmul(self.x.T, dy, out=self.grads["w"])
        np.sum(dy, axis=0, out=self.grads["b"])
        if not input_grad:
            return None
        return (dy @ self.params["w"].T).reshape(self.x_shape)

    def r_forward(self, rx, rparams=None):
        """R{y} = Rx W + x RW + Rb."""
        self.rx = None if rx is None else rx.reshape(len(rx), -1)
        self.r_params = rparams
        ry = self.x @ rparams["w"] + rparams["b"]
        if rx is not None:
            ry += self.rx @ self.params["w"]
        return ry

    def r_backward(self, dy, rdy, input_grad=True):
        """R{dW} = x^T R dy + Rx^T dy; R{dx} = R dy W^T + dy RW^T."""
        rw_grad = self.x.T @ rdy
        if self.rx is not None:
            rw_grad += self.rx.T @ dy
        self.r_grads = {"w": rw_grad, "b": rdy.sum(axis=0)}
        if not input_grad:
            return None, None
        w = self.params["w"]
        rdx = rdy @ w.T + dy @ self.r_params["w"].T
        return (dy @ w.T).reshape(self.x_shape), rdx.reshape(self.x_shape)

    def spec(self):
        return f"fc{self.units}"


class ReLU(Layer):
    def forward(self, x, train=False):
        x = np.ascontiguousarray(x)
        self.y = np.empty_like(x)
        pk.relu_forward(x.reshape(-1), self.y.reshape(-1))
        return self.y

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        dy = np.ascontiguousarray(dy, dtype=self.y.dtype)
        dx = np.empty_like(dy)
        pk.relu_backward(self.y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
        return dx

    def r_forward(self, rx, rparams=None):
        return None if rx is None else self.backward(rx)

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def spec(self):
        return "relu"


class Tanh(Layer):
    def forward(self, x, train=False):
        self.y = np.tanh(x)  # NumPy's SIMD tanh is ~20x faster than Numba's scalar libm call
        return self.y

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        dy = np.ascontiguousarray(dy, dtype=self.y.dtype)
        dx = np.empty_like(dy)
        pk.tanh_backward(self.y.reshape(-1), dy.reshape(-1), dx.reshape(-1))
        return dx

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


class MaxPool2d(Layer):
    """Max pooling with a square window ``size`` and stride ``size`` (floor on odd sizes)."""

    def __init__(self, size=2):
        super().__init__()
        self.size = int(size)

    def build(self, in_shape, rng, dtype=np.float32):
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        if h < self.size or w < self.size:
            from greedy.errors import ConfigError
            raise ConfigError(f"pool {self.spec()} does not fit an input of {h}x{w} pixels")
        return (c, h // self.size, w // self.size)

    def forward(self, x, train=False):
        # inference skips the argmax; backward or an R-op after it recomputes it from x
        self.x = x
        y, self._argmax = pool.maxpool2d_forward(x, self.size, self.size, with_argmax=train)
        return y

    @property
    def argmax(self):
        if self._argmax is None:
            self._argmax = pool.maxpool2d_forward(self.x, self.size, self.size)[1]
        return self._argmax

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return pool.maxpool2d_backward(dy, self.argmax, self.x.shape)

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


class Dropout(Layer):
    """Inverted dropout with drop probability ``rate``; identity at inference."""

    def __init__(self, rate=0.5, seed=0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            from greedy.errors import ConfigError
            raise ConfigError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.rng = np.random.default_rng(seed)

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


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel of x (N, C, H, W).

    Training uses batch statistics and updates running averages with
    ``momentum``; inference uses the running averages. Parameters: scale
    ``gamma`` (C,), shift ``beta`` (C,). Running statistics are stored as
    buffers (saved with the model, not trained).
    """

    def __init__(self, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps

    def build(self, in_shape, rng, dtype=np.float32):
        c = in_shape[0]
        self.params = {"gamma": np.ones(c, dtype), "beta": np.zeros(c, dtype)}
        self.grads = {key: np.zeros_like(v) for key, v in self.params.items()}
        self.buffers = {"mean": np.zeros(c, dtype), "var": np.ones(c, dtype)}
        self.in_shape = tuple(in_shape)
        return self.in_shape

    def forward(self, x, train=False):
        x = np.ascontiguousarray(x)
        self.x = x.reshape(x.shape[0], x.shape[1], -1)
        if train:
            mean, var = pk.channel_mean_var(self.x)
            m = self.momentum
            n = x.size / x.shape[1]
            self.buffers["mean"] *= 1 - m
            self.buffers["mean"] += m * mean.astype(x.dtype)
            self.buffers["var"] *= 1 - m
            self.buffers["var"] += m * var.astype(x.dtype) * n / max(n - 1, 1)
        else:
            mean, var = self.buffers["mean"].astype(np.float64), self.buffers["var"].astype(np.float64)
        self.mean = mean
        self.inv_std = 1.0 / np.sqrt(var + self.eps)
        scale = self.params["gamma"] * self.inv_std
        y = np.empty_like(x)
        pk.channel_normalise(self.x, mean, scale, self.params["beta"], y.reshape(self.x.shape))
        return y

    def backward(self, dy, input_grad=True):
        dy = np.ascontiguousarray(dy, dtype=self.x.dtype)
        dx = np.empty_like(dy)
        pk.batchnorm_backward(self.x, dy.reshape(self.x.shape), self.mean, self.inv_std, self.params["gamma"],
                              dx.reshape(self.x.shape), self.grads["gamma"], self.grads["beta"])
        return dx

    def spec(self):
        return "bn"


def _conv_input_grad(dy, w, x_shape, stride, pad):
    """dL/dx of a convolution with weights w (F, C, K, K) given dy (N, F, Ho, Wo), without dL/dw.

    Returns an array of x_shape (N, C, H, W) in dy's dtype; works in sample chunks
    that keep the column buffer under 16 MiB.
    """
    n, f, ho, wo = dy.shape
    k = w.shape[2]
    wm = w.reshape(f, -1)
    p = ho * wo
    nb = max(1, min(n, 16 * 2**20 // max(p * wm.shape[1] * dy.itemsize, 1)))
    dx = np.empty(x_shape, dy.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        rows = dy[n0:n0 + m].transpose(0, 2, 3, 1).reshape(m * p, f)
        dx[n0:n0 + m] = col2im(rows @ wm, (m,) + tuple(x_shape[1:]), k, k, stride, pad)
    return dx


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
        if not input_grad:
            return None
        """dy plus the gradient that the ``Concat`` layer sent back to this tap (``grad_out``)."""
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
            from greedy.errors import ConfigError
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
