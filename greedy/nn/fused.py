"""Training runs of ``Conv2d``, an optional ``ReLU`` and ``MaxPool2d``, and of ``BatchNorm2d``, ``ReLU`` and a
max pool (``MaxPool2d`` or ``MaxPool1d``), each computed as one layer.

``Sequential.forward(x, train=True)`` computes each conv run with one
``winograd.convolve(..., relu, pool, keep_argmax=True)`` call (Winograd where it
applies, else im2col): bias, ReLU and pooling are applied to every chunk's GEMM
output while it is in cache, so the full-size conv and ReLU maps are never
written. The backward builds the conv output's gradient straight from the
pooled gradient and the argmax (``greedy.kernels.convpool``), or, for convs of
long patch rows (``conv.POOLED_MIN_RUN``), takes the conv's gradients from the
window maxima alone (``greedy.kernels.pooledgrad``). Outputs equal those of the
three layers run one by one (to rounding where a Winograd conv's output has an
odd side: the two passes then multiply matrices of other widths), gradients too,
to rounding where the maxima alone are visited. A run of batch norm, ReLU and max pool likewise writes only
the pooled map and its argmax (``greedy.kernels.bnpool``).

The ReLU and the pool keep no state of their own during a fused run; they hold
a reference to it (``Layer.fused_run``) and, if their own ``backward`` or
R-operator is called (the freezing experiment, Hessian-vector products with
``train=True``), ``materialise`` recomputes their state from the conv's input.
"""
import numpy as np

from greedy.kernels import bnpool
from greedy.kernels import conv as ck
from greedy.kernels import winograd
from greedy.nn.activations import ReLU
from greedy.nn.batchnorm import BatchNorm2d
from greedy.nn.layers import Conv2d
from greedy.nn.layers1d import MaxPool1d
from greedy.nn.pooling import MaxPool2d


class ConvReluPool:
    """The run conv, relu, pool, or conv, pool (``relu`` None), built layers of one ``Sequential``, as one
    training layer."""

    def __init__(self, conv, relu, pool):
        self.conv, self.relu, self.pool = conv, relu, pool
        self.followers = (pool,) if relu is None else (relu, pool)
        self.length = 1 + len(self.followers)
        self.argmax = None

    def forward(self, x):
        """x (N, C, H, W) -> maxpool(relu(conv(x))) (N, F, Ho // size, Wo // size), without the ReLU when there
        is none."""
        conv = self.conv
        conv.x = x
        y, self.argmax = winograd.convolve(x, conv.params["w"], conv.params["b"], conv.stride, conv.padding,
                                           relu=self.relu is not None, pool=self.pool.size, keep_argmax=True)
        for layer in self.followers:
            layer.release_state(self)
        return y

    def backward(self, dy, input_grad=True):
        """Writes the conv's weight and bias gradients from dy (the pooled map's); returns dL/dx or None."""
        conv = self.conv
        dx, dw, db = ck.conv2d_backward(conv.x, conv.params["w"], dy, conv.stride, conv.padding,
                                        input_grad=input_grad, argmax=self.argmax)
        conv.grads["w"][...] = dw
        conv.grads["b"][...] = db
        return dx

    def materialise(self):
        """Run the ReLU (if any) and the pool on their own over the conv's output, so that they hold their
        state."""
        conv = self.conv
        y = winograd.convolve(conv.x, conv.params["w"], conv.params["b"], conv.stride, conv.padding)
        for layer in self.followers:
            y = layer.forward(y, train=True)


class BnReluPool:
    """The run batch norm, relu, max pool (``MaxPool2d`` on maps, ``MaxPool1d`` on sequences) as one training
    layer."""
    length = 3

    def __init__(self, bn, relu, pool):
        self.bn, self.relu, self.pool = bn, relu, pool
        self.x_shape = self.y = self.argmax = None

    def _window(self, x_ndim):
        """(window, stride) of the pool over the (H, W) plane; a sequence is a plane of height 1."""
        pool = self.pool
        if x_ndim == 3:
            return (1, pool.size), (1, pool.stride)
        return (pool.size, pool.size), (pool.size, pool.size)

    def forward(self, x):
        """x (N, C, H, W) or (N, C, L) -> maxpool(relu(bn(x))) of the pool's output shape."""
        x = np.ascontiguousarray(x)
        self.x_shape = x.shape
        scale = self.bn.statistics(x, train=True)
        plane = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])
        window, stride = self._window(x.ndim)
        self.y, self.argmax = bnpool.bn_relu_maxpool_forward(plane, self.bn.mean, scale, self.bn.params["beta"],
                                                             window, stride)
        for layer in (self.relu, self.pool):
            layer.release_state(self)
        out_shape = x.shape[:2] + self.y.shape[2:] if x.ndim == 4 else x.shape[:2] + self.y.shape[3:]
        return self.y.reshape(out_shape)

    def backward(self, dy, input_grad=True):
        """Writes gamma's and beta's gradients from dy (the run's output gradient); returns dL/dx (always
        computed: the batch norm's parameter gradients need the same pass)."""
        bn = self.bn
        dx, dgamma, dbeta = bnpool.bn_relu_maxpool_backward(
            bn.x.reshape(self.y.shape[:2] + (-1, self.x_shape[-1])), np.asarray(dy).reshape(self.y.shape),
            self.y, self.argmax, bn.mean, bn.inv_std, bn.params["gamma"])
        bn.grads["gamma"][...] = dgamma
        bn.grads["beta"][...] = dbeta
        return dx.reshape(self.x_shape) if input_grad else None

    def materialise(self):
        """Run the ReLU and the pool on their own over the batch norm's output (its statistics unchanged)."""
        z = self.bn.normalised().reshape(self.x_shape)
        self.pool.forward(self.relu.forward(z, train=True), train=True)


def training_runs(layers):
    """{index of the run's first layer: run} for every run Conv2d, ReLU, MaxPool2d or Conv2d, MaxPool2d
    (``ConvReluPool``) and BatchNorm2d, ReLU, MaxPool2d or MaxPool1d (``BnReluPool``) in ``layers``; runs have
    ``length`` layers."""
    runs, i = {}, 0
    while i < len(layers) - 1:
        first, relu = layers[i:i + 2]
        pool = layers[i + 2] if i + 2 < len(layers) else None
        run = None
        if type(first) is Conv2d and type(relu) is ReLU and type(pool) is MaxPool2d:
            run = ConvReluPool(first, relu, pool)
        elif type(first) is Conv2d and type(relu) is MaxPool2d:
            run = ConvReluPool(first, None, relu)
        elif type(first) is BatchNorm2d and type(relu) is ReLU and type(pool) in (MaxPool2d, MaxPool1d):
            # without a pool, the layers one by one are faster: nothing is left to skip writing
            run = BnReluPool(first, relu, pool)
        if run is None:
            i += 1
            continue
        runs[i] = run
        i += run.length
    return runs
