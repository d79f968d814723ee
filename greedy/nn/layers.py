"""The layer protocol, the weight initialisers, and the layers with weights: ``Conv2d`` and ``Dense``.

Every layer subclasses :class:`Layer` and follows one small protocol:

- ``build(in_shape, rng, dtype) -> out_shape`` creates parameters for a
  per-sample input shape (C, H, W) or (D,), drawing from a seeded generator.
- ``forward(x, train=False) -> y`` caches what ``backward`` needs.
- ``backward(dy, input_grad=True) -> dx`` writes parameter gradients into ``self.grads``
  (same keys as ``self.params``) and returns the gradient of the input.
- ``spec()`` is the layer's token in the architecture string (see ``model.py``).

Arrays are NCHW for images and (N, D) for vectors; float32 by default,
float64 works everywhere (gradient checks). The other layers live in
``activations`` (ReLU, Tanh, Dropout), ``batchnorm``, ``pooling`` (pools, Tap,
Concat) and ``layers1d`` (sequences).
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.kernels import lowrank
from greedy.kernels import winograd
from greedy.kernels.im2col import col2im


class Layer:
    """Base class: a layer without parameters that passes shapes through."""

    fused_run = None  # the greedy.nn.fused run that holds this layer's training state, if any

    def __init__(self):
        self.params = {}
        self.grads = {}

    def release_state(self, run):
        """``run`` (``greedy.nn.fused``) computed this layer inside itself: drop the state of the last forward."""
        self.fused_run = run

    def _unfuse(self):
        """Recompute the forward state that a fused run kept from this layer (before backward or R-ops)."""
        run, self.fused_run = self.fused_run, None
        if run is not None:
            run.materialise()

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

    # R-operator (Pearlmutter 1994), used by greedy.nn.hessian.hvp. R{f} is the
    # directional derivative of f along a direction v of the parameters.
    # ``r_forward(rx, rparams) -> ry`` maps R{x} (None: the input does not depend
    # on the parameters) to R{y}, given the parameter direction ``rparams`` (a dict
    # like ``params``; None for layers without parameters), after ``forward``.
    # ``r_backward(dy, rdy, input_grad=True) -> (dx, rdx)`` takes dL/dy and R{dL/dy},
    # writes R{dL/dparams} = (H v) into ``self.r_grads`` (same keys as ``params``;
    # ``grads`` is left alone) and returns dL/dx and R{dL/dx} ((None, None) when
    # not ``input_grad``).

    def r_forward(self, rx, rparams=None):
        raise ConfigError(f"layer {self.spec()} has no R-operator (Hessian-vector products)")

    def r_backward(self, dy, rdy, input_grad=True):
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
    3x3, stride-1 convs of 32 or more input channels run forward by Winograd's algorithm, and their input
    gradient too when they have no more output channels than input channels (``greedy.kernels.winograd``);
    both equal the im2col convolution's up to rounding.
    """

    def __init__(self, filters, kernel_size=3, stride=1, padding=None, init="he"):
        super().__init__()
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = self.kernel_size // 2 if padding is None else int(padding)
        self.init = init
        self._low_rank = None  # set_low_rank's factors, and the weights and bias they made

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
            raise ConfigError(f"conv {self.spec()} does not fit an input of {h}x{w} pixels")
        return (self.filters, ho, wo)

    def set_low_rank(self, basis, basis_bias, mix, mix_bias):
        """Set the weights to mix @ basis and the bias to mix @ basis_bias + mix_bias (made in float64), for
        basis (d, C, K, K), basis_bias (d,), mix (F, d), mix_bias (F,), and keep those factors (float64):
        inference applies the conv as the two (``greedy.kernels.lowrank``) for as long as the weights and
        bias are the ones made here and that takes fewer multiplies."""
        factors = tuple(np.array(a, np.float64) for a in (basis, basis_bias, mix, mix_bias))
        w, b = lowrank.compose(*factors)
        if w.shape != self.params["w"].shape:
            raise ConfigError(f"conv {self.spec()}: a factorisation of weights {w.shape} for weights "
                              f"{self.params['w'].shape}")
        self.params["w"][...] = w
        self.params["b"][...] = b
        self._low_rank = factors + (self.params["w"].copy(), self.params["b"].copy())

    def low_rank(self, dtype=np.float64, cheaper_only=True):
        """(basis, basis_bias, mix, mix_bias) of ``set_low_rank`` in ``dtype`` if the weights and bias are still
        the ones they made and (with ``cheaper_only``) a stride-1 conv of that rank takes fewer multiplies as
        the two (``lowrank.cheaper``); else None."""
        saved = self._low_rank
        if saved is None or self.stride != 1:
            return None
        basis, basis_bias, mix, mix_bias, w, b = saved
        if cheaper_only and not lowrank.cheaper(basis.shape[1], self.kernel_size, len(basis), len(mix)):
            return None
        if not (np.array_equal(w, self.params["w"]) and np.array_equal(b, self.params["b"])):
            return None
        return tuple(np.ascontiguousarray(a, dtype) for a in (basis, basis_bias, mix, mix_bias))

    def forward(self, x, train=False):
        self.x = x
        return winograd.convolve(x, self.params["w"], self.params["b"], self.stride, self.padding)

    def backward(self, dy, input_grad=True):
        w = self.params["w"]
        by_winograd = input_grad and winograd.input_grad_applies(w, self.stride, self.padding)
        dx, dw, db = ck.conv2d_backward(self.x, w, dy, self.stride, self.padding,
                                        input_grad=input_grad and not by_winograd)
        if by_winograd:
            dx = winograd.input_grad(dy, w, self.padding)
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
