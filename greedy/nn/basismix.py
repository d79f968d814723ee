"""A rank-d conv's 1x1 mix, trained on fixed basis maps together with the classifier that reads it.

A patch-bag block's conv is ``mix @ basis`` (``Conv2d.set_low_rank``): the basis is the whitening of its
input patches and stays fixed, the (F, d) mix is what the codes trained. ``BasisMix`` lets the final
classifier train the last block's mix on the real basis maps of every training image, at the cost of
a 1x1 conv a pixel, where the codes only approximate them.
"""
import numba
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels.basismix import mix_relu_region_means, mix_relu_region_means_grad
from greedy.nn.layers import Layer


class BasisMix(Layer):
    """Taps, then the average-pooled ReLU of a 1x1 mix of basis maps.

    Input (N, T + P*d) float32: T tap features, then d basis maps over P = h*w positions, channels last
    (position-major, each position's d values together). Output (N, T + F*R): the taps unchanged, then
    ``relu(z @ w.T + b)`` averaged over ``pool`` x ``pool`` regions (R of them), flattened as (F, h //
    pool, w // pool) like ``AvgPool2d(pool)`` on the (F, h, w) map, minus ``shift`` and divided by
    ``scale`` (fixed, (F*R,), see ``set_scale``). Parameters ``w`` (F, d) and ``b`` (F,).
    """

    def __init__(self, mix, bias, taps, h, w, pool):
        super().__init__()
        mix = np.asarray(mix)
        if mix.ndim != 2 or np.shape(bias) != (len(mix),):
            raise ConfigError(f"BasisMix takes a mix (F, d) and a bias (F,), got {mix.shape} and {np.shape(bias)}")
        if h % pool or w % pool:
            raise ConfigError(f"BasisMix pools {pool} x {pool} regions, which do not tile a {h}x{w} map")
        self.mix0, self.bias0 = mix, np.asarray(bias)
        self.taps, self.h, self.w, self.pool = int(taps), int(h), int(w), int(pool)
        self.filters, self.rank = mix.shape
        self.shift = self.scale = self.z = self.mask = None

    def build(self, in_shape, rng, dtype=np.float32):
        want = self.taps + self.h * self.w * self.rank
        if tuple(in_shape) != (want,):
            raise ConfigError(f"BasisMix reads {self.taps} taps and {self.h}x{self.w}x{self.rank} basis values "
                              f"({want},), got {tuple(in_shape)}")
        self.params = {"w": self.mix0.astype(dtype), "b": self.bias0.astype(dtype)}
        self.grads = {key: np.zeros_like(v) for key, v in self.params.items()}
        self.n_regions = (self.h // self.pool) * (self.w // self.pool)
        n_out = self.filters * self.n_regions
        self.shift, self.scale = np.zeros(n_out, dtype), np.ones(n_out, dtype)
        self.in_shape = tuple(in_shape)
        return (self.taps + n_out,)

    def set_scale(self, shift, scale):
        """Fix the standardisation of the pooled outputs: (pooled - shift) / scale, each (F*R,)."""
        self.shift[...], self.scale[...] = shift, scale

    def pooled(self, x, train=False):
        """The pooled mixed maps (N, F*R) before standardisation, for x (N, T + P*d); with ``train``,
        which mixed values are positive is kept for ``backward``."""
        n, p, dtype = len(x), self.h * self.w, self.params["w"].dtype
        z = np.ascontiguousarray(x[:, self.taps:], dtype=dtype).reshape(n, p, self.rank)
        mask = np.empty((n, p, self.filters) if train else (0, 0, 0), np.uint8)
        out = np.empty((n, self.n_regions, self.filters), dtype)
        mix_relu_region_means(z, np.ascontiguousarray(self.params["w"].T), self.params["b"], self.h, self.w,
                              self.pool, mask, out)
        if train:
            self.z, self.mask = z, mask
        return out.transpose(0, 2, 1).reshape(n, -1)

    def forward(self, x, train=False):
        if x.ndim != 2 or x.shape[1:] != self.in_shape:
            raise ConfigError(f"BasisMix input must be (N, {self.in_shape[0]}), got {x.shape}")
        out = np.empty((len(x), self.taps + len(self.shift)), x.dtype)
        out[:, :self.taps] = x[:, :self.taps]
        out[:, self.taps:] = (self.pooled(x, train) - self.shift) / self.scale
        return out

    def backward(self, dy, input_grad=True):
        if input_grad:
            raise ConfigError("BasisMix reads fixed basis maps: it is the first layer and passes no input gradient")
        return self.backward_pooled(dy[:, self.taps:])

    def backward_pooled(self, dpooled):
        """``backward`` from the gradient of the pooled columns alone (N, F*R): what the layer after it
        need not compute for the taps."""
        if self.mask is None or len(dpooled) != len(self.mask):
            raise ConfigError("BasisMix.backward needs the forward pass of the same batch with train=True")
        n, dtype = len(dpooled), self.params["w"].dtype
        dout = np.ascontiguousarray((dpooled / self.scale).reshape(n, self.filters, self.n_regions)
                                    .transpose(0, 2, 1), dtype=dtype)
        runs = max(1, min(numba.get_num_threads(), n))
        gwt = np.empty((runs, self.rank, self.filters), dtype)
        gb = np.empty((runs, self.filters), dtype)
        mix_relu_region_means_grad(self.z, self.mask, dout, self.h, self.w, self.pool, gwt, gb)
        self.grads["w"][...] = gwt.sum(axis=0).T
        gb.sum(axis=0, out=self.grads["b"])
        return None

    def spec(self):
        return f"basismix{self.filters}"
