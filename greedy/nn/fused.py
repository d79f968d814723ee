"""Training runs of ``Conv2d``, ``ReLU``, ``MaxPool2d`` computed as one layer.

``Sequential.forward(x, train=True)`` computes each such run with one
``conv2d_forward(..., relu=True, pool, keep_argmax=True)`` call: bias, ReLU and
pooling are applied to every chunk's GEMM output while it is in cache, so the
full-size conv and ReLU maps are never written, and the backward builds the conv
output's gradient straight from the pooled gradient and the argmax
(``greedy.kernels.convpool``). Outputs and gradients equal those of the three
layers run one by one.

The ReLU and the pool keep no state of their own during a fused run; they hold
a reference to it (``Layer.fused_run``) and, if their own ``backward`` or
R-operator is called (the freezing experiment, Hessian-vector products with
``train=True``), ``materialise`` recomputes their state from the conv's input.
"""
from greedy.kernels import conv as ck
from greedy.nn.activations import ReLU
from greedy.nn.layers import Conv2d
from greedy.nn.pooling import MaxPool2d


class ConvReluPool:
    """The run conv, relu, pool (three built layers of one ``Sequential``) as one training layer."""

    def __init__(self, conv, relu, pool):
        self.conv, self.relu, self.pool = conv, relu, pool
        self.argmax = None

    def forward(self, x):
        """x (N, C, H, W) -> maxpool(relu(conv(x))) (N, F, Ho // size, Wo // size)."""
        conv = self.conv
        conv.x = x
        y, self.argmax = ck.conv2d_forward(x, conv.params["w"], conv.params["b"], conv.stride, conv.padding,
                                           relu=True, pool=self.pool.size, keep_argmax=True)
        for layer in (self.relu, self.pool):
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
        """Run the ReLU and the pool on their own over the conv's output, so that they hold their state."""
        conv = self.conv
        y = ck.conv2d_forward(conv.x, conv.params["w"], conv.params["b"], conv.stride, conv.padding)
        self.pool.forward(self.relu.forward(y, train=True), train=True)


def training_runs(layers):
    """{index of the conv: ``ConvReluPool``} for every run Conv2d, ReLU, MaxPool2d in ``layers``."""
    runs = {}
    for i in range(len(layers) - 2):
        conv, relu, pool = layers[i:i + 3]
        if type(conv) is Conv2d and type(relu) is ReLU and type(pool) is MaxPool2d:
            runs[i] = ConvReluPool(conv, relu, pool)
    return runs
