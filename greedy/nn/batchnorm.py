"""Batch normalisation per channel (``BatchNorm2d``), for images (N, C, H, W) and sequences (N, C, L)."""
import numpy as np

from greedy.kernels import pointwise as pk
from greedy.nn.layers import Layer


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
        self.statistics(x, train)
        return self.normalised().reshape(x.shape)

    def normalised(self):
        """The kept input (N, C, P) normalised with the kept statistics: gamma * (x - mean) * inv_std + beta,
        (N, C, P) of x's dtype."""
        y = np.empty_like(self.x)
        pk.channel_normalise(self.x, self.mean, self.params["gamma"] * self.inv_std, self.params["beta"], y)
        return y

    def statistics(self, x, train):
        """Keep x (N, C, ...) as (N, C, P) and the mean and inv_std (C,) float64 that normalise it: the batch's
        in training (which also move the running averages), else the running averages. Returns the float64
        scale gamma * inv_std (C,)."""
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
        return self.params["gamma"] * self.inv_std

    def backward(self, dy, input_grad=True):
        dy = np.ascontiguousarray(dy, dtype=self.x.dtype)
        dx = np.empty_like(dy)
        pk.batchnorm_backward(self.x, dy.reshape(self.x.shape), self.mean, self.inv_std, self.params["gamma"],
                              dx.reshape(self.x.shape), self.grads["gamma"], self.grads["beta"])
        return dx

    def spec(self):
        return "bn"
