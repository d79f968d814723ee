"""Layers for sequences: arrays (N, C, L), per-sample shape (C, L).

Same protocol as ``greedy.nn.layers`` (``build``, ``forward``, ``backward``,
``spec``, R-operators for Hessian-vector products). ReLU, Tanh, Dropout,
Dense, Concat and BatchNorm2d (which normalises per channel over (N, L))
work on sequences unchanged; this module adds the layers whose work depends
on the layout. Float32 by default, float64 works everywhere (gradient checks).
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import conv1d as k1
from greedy.kernels import embedding as ek
from greedy.nn.layers import Layer, glorot_uniform, he_normal
from greedy.nn.pooling import Tap


def _sequence_shape(layer, in_shape):
    if len(in_shape) != 2:
        raise ConfigError(f"layer {layer.spec()} needs a sequence input (C, L), got shape {tuple(in_shape)}")
    return int(in_shape[0]), int(in_shape[1])


class Conv1d(Layer):
    """1-D convolution: x (N, C, L) -> y (N, F, Lo), weights w (F, C, K), bias b (F,).

    Lo = (L + 2*padding - dilation*(K-1) - 1) // stride + 1. ``padding`` defaults
    to dilation*(K-1) // 2 ("same" for odd K and stride 1). ``init`` is "he"
    (ReLU follows) or "glorot" (tanh or linear follows).
    """

    def __init__(self, filters, kernel_size=3, stride=1, padding=None, dilation=1, init="he"):
        super().__init__()
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.dilation = int(dilation)
        self.padding = self._same_padding() if padding is None else int(padding)
        self.init = init

    def _same_padding(self):
        return self.dilation * (self.kernel_size - 1) // 2

    def build(self, in_shape, rng, dtype=np.float32):
        c, length = _sequence_shape(self, in_shape)
        k = self.kernel_size
        shape = (self.filters, c, k)
        if self.init == "he":
            weights = he_normal(rng, shape, c * k, dtype)
        else:
            weights = glorot_uniform(rng, shape, c * k, self.filters * k, dtype)
        self.params = {"w": weights, "b": np.zeros(self.filters, dtype)}
        self.grads = {key: np.zeros_like(v) for key, v in self.params.items()}
        self.in_shape = (c, length)
        lo = k1.out_length(length, k, self.stride, self.padding, self.dilation, f"conv {self.spec()}")
        return (self.filters, lo)

    def _conv(self, x, w, b):
        return k1.conv1d_forward(x, w, b, self.stride, self.padding, self.dilation)

    def _grads(self, x, dy, input_grad, w=None):
        w = self.params["w"] if w is None else w
        return k1.conv1d_backward(x, w, dy, self.stride, self.padding, self.dilation, input_grad=input_grad)

    def forward(self, x, train=False):
        self.x = x
        return self._conv(x, self.params["w"], self.params["b"])

    def backward(self, dy, input_grad=True):
        dx, dw, db = self._grads(self.x, dy, input_grad)
        self.grads["w"][...] = dw
        self.grads["b"][...] = db
        return dx

    def r_forward(self, rx, rparams=None):
        """R{y} = conv(Rx, w) + conv(x, Rw) + Rb, as one convolution over stacked channels."""
        w, rw, rb = self.params["w"], rparams["w"], rparams["b"]
        self.rx, self.r_params = rx, rparams
        if rx is None:
            return self._conv(self.x, rw, rb)
        return self._conv(np.concatenate([self.x, rx], axis=1), np.concatenate([rw, w], axis=1), rb)

    def r_backward(self, dy, rdy, input_grad=True):
        """R{dw} = dw(x, R dy) + dw(Rx, dy); R{dx} = dx(w, R dy) + dx(Rw, dy).

        Both R{dw} terms and dx(w, R dy), dx(w, dy) come from one backward over the
        batch stacked as [x; Rx] with output gradients [R dy; dy].
        """
        x, rx = self.x, self.rx
        self.r_grads = {"b": rdy.sum(axis=(0, 2))}
        if rx is None:
            _, self.r_grads["w"], _ = self._grads(x, rdy, False)
            return None, None
        n = len(x)
        dx2, self.r_grads["w"], _ = self._grads(np.concatenate([x, rx]), np.concatenate([rdy, dy]), input_grad)
        if not input_grad:
            return None, None
        rdx = dx2[:n]
        rdx += self._grads(x, dy, True, w=self.r_params["w"])[0]
        return dx2[n:], rdx

    def spec(self):
        s = f"c{self.filters}k{self.kernel_size}"
        if self.stride != 1:
            s += f"s{self.stride}"
        if self.padding != self._same_padding():
            s += f"p{self.padding}"
        if self.dilation != 1:
            s += f"d{self.dilation}"
        return s


class MaxPool1d(Layer):
    """Max pooling over windows of ``size`` positions with ``stride`` (default ``size``; floor on the rest)."""

    def __init__(self, size=2, stride=None):
        super().__init__()
        self.size = int(size)
        self.stride = self.size if stride is None else int(stride)

    def build(self, in_shape, rng, dtype=np.float32):
        c, length = _sequence_shape(self, in_shape)
        self.in_shape = (c, length)
        return (c, k1.out_length(length, self.size, self.stride, 0, 1, f"pool {self.spec()}"))

    def forward(self, x, train=False):
        # inference skips the argmax; backward or an R-op after it recomputes it from x
        self.x = x
        self.fused_run = None
        y, self._argmax = k1.maxpool1d_forward(x, self.size, self.stride, with_argmax=train)
        return y

    def release_state(self, run):
        self.x = self._argmax = None
        super().release_state(run)

    @property
    def argmax(self):
        self._unfuse()
        if self._argmax is None:
            self._argmax = k1.maxpool1d_forward(self.x, self.size, self.stride)[1]
        return self._argmax

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return k1.maxpool1d_backward(dy, self.argmax, self.x.shape)

    def r_forward(self, rx, rparams=None):
        """R{y} picks Rx at the positions of the maxima."""
        return None if rx is None else np.take_along_axis(rx, self.argmax, axis=2)

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def _suffix(self):
        return "" if self.stride == self.size else f"s{self.stride}"

    def spec(self):
        return f"max{self.size}{self._suffix()}"


class AvgPool1d(MaxPool1d):
    """Average pooling over windows of ``size`` positions with ``stride`` (default ``size``)."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return k1.avgpool1d_forward(x, self.size, self.stride)

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return k1.avgpool1d_backward(dy, self.x_shape, self.size, self.stride)

    def r_forward(self, rx, rparams=None):
        return None if rx is None else k1.avgpool1d_forward(rx, self.size, self.stride)

    def spec(self):
        return f"avg{self.size}{self._suffix()}"


class GlobalAvgPool1d(Layer):
    """Global average pooling: x (N, C, L) -> y (N, C)."""

    def build(self, in_shape, rng, dtype=np.float32):
        self.in_shape = _sequence_shape(self, in_shape)
        return (self.in_shape[0],)

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return x.mean(axis=2)

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return np.broadcast_to((dy / self.x_shape[2])[:, :, None], self.x_shape).copy()

    def r_forward(self, rx, rparams=None):
        return None if rx is None else rx.mean(axis=2)

    def r_backward(self, dy, rdy, input_grad=True):
        return self._r_linear_backward(dy, rdy, input_grad)

    def spec(self):
        return "gap"


class GlobalMaxPool1d(GlobalAvgPool1d):
    """Global max pooling: x (N, C, L) -> y (N, C), the largest value of each channel (first one on ties)."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        self.argmax = x.argmax(axis=2)[:, :, None]
        return np.take_along_axis(x, self.argmax, axis=2)[:, :, 0]

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        dx = np.zeros(self.x_shape, dy.dtype)
        np.put_along_axis(dx, self.argmax, dy[:, :, None], axis=2)
        return dx

    def r_forward(self, rx, rparams=None):
        return None if rx is None else np.take_along_axis(rx, self.argmax, axis=2)[:, :, 0]

    def spec(self):
        return "gmp"


class GlobalAvgMaxPool1d(GlobalMaxPool1d):
    """Global average and global max pooling side by side: x (N, C, L) -> y (N, 2C), the C channel means
    then the C channel maxima (first one on ties)."""

    def build(self, in_shape, rng, dtype=np.float32):
        self.in_shape = _sequence_shape(self, in_shape)
        return (2 * self.in_shape[0],)

    def forward(self, x, train=False):
        return np.concatenate([x.mean(axis=2), super().forward(x, train)], axis=1)

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        c = self.x_shape[1]
        dx = super().backward(np.ascontiguousarray(dy[:, c:]))
        dx += (dy[:, :c] / self.x_shape[2])[:, :, None]
        return dx

    def r_forward(self, rx, rparams=None):
        return None if rx is None else np.concatenate([rx.mean(axis=2), super().r_forward(rx)], axis=1)

    def spec(self):
        return "gapmax"


class Tap1d(Tap):
    """``Tap`` for sequences: keeps the map x (N, C, L), or its max pool with window and stride ``size``
    (``tap<size>``), or with ``global_pool`` its channel means and maxima (``GlobalAvgMaxPool1d``,
    ``tapgapmax``)."""

    def __init__(self, size=1, global_pool=False):
        super().__init__(1)
        self.size = int(size)
        self.global_pool = bool(global_pool)
        if self.global_pool:
            self.pool = GlobalAvgMaxPool1d()
        else:
            self.pool = MaxPool1d(self.size) if self.size > 1 else None

    def spec(self):
        return "tapgapmax" if self.global_pool else super().spec()


class ByteEmbedding(Layer):
    """Byte codes x (N, 1, L) -> vectors y (N, E, L): y[n, :, l] = w[x[n, 0, l]], table w (V, E), V = 256.

    x is uint8 (or any integer dtype, or floats holding whole numbers) with codes
    in [0, V); the layer must come first. Codes are not differentiable:
    ``backward`` fills the table's gradient and returns None.
    """

    def __init__(self, dim, vocab=256):
        super().__init__()
        self.dim = int(dim)
        self.vocab = int(vocab)

    def build(self, in_shape, rng, dtype=np.float32):
        c, length = _sequence_shape(self, in_shape)
        if c != 1:
            raise ConfigError(f"layer {self.spec()} needs byte input of shape (1, L), got {tuple(in_shape)}")
        self.params = {"w": rng.standard_normal((self.vocab, self.dim)).astype(dtype)}
        self.grads = {"w": np.zeros_like(self.params["w"])}
        self.in_shape = (1, length)
        return (self.dim, length)

    def forward(self, x, train=False):
        self.x = x
        return ek.embedding_forward(x, self.params["w"])

    def backward(self, dy, input_grad=True):
        self.grads["w"][...] = ek.embedding_backward(self.x, dy, self.vocab)
        return None

    def r_forward(self, rx, rparams=None):
        """R{y} = Rw looked up at the codes (the input does not depend on the parameters)."""
        return ek.embedding_forward(self.x, rparams["w"].astype(self.params["w"].dtype, copy=False))

    def r_backward(self, dy, rdy, input_grad=True):
        self.r_grads = {"w": ek.embedding_backward(self.x, rdy, self.vocab)}
        return None, None

    def spec(self):
        return f"emb{self.dim}" + ("" if self.vocab == 256 else f"v{self.vocab}")


# layers whose input must be a sequence (C, L)
SEQUENCE_LAYERS = (Conv1d, MaxPool1d, GlobalAvgPool1d, Tap1d, ByteEmbedding)
