"""Exact Hessian-vector products of the softmax cross-entropy loss of a Sequential model.

``hvp(model, x, y, v)`` returns H v, H the Hessian of the mean cross-entropy
of the model's logits on the batch (x, y) with respect to all parameters, in
the order of ``model.parameters()``. It is computed by forward-over-reverse
differentiation (Pearlmutter 1994, "Fast exact multiplication by the
Hessian"): a forward pass, an R-forward pass carrying the directional
derivatives R{a} of every activation along v, then a backward pass carrying
the gradient and its directional derivative R{dL/da} together. Each layer's
R-operator sits next to its forward and backward in ``greedy.layers``
(``r_forward``/``r_backward``). No finite differences are involved; the cost
is that of about three gradients.

Supported layers: Conv2d, Dense, ReLU, GELU, Tanh, MaxPool2d, AvgPool2d,
GlobalAvgPool, Dropout (at inference, or with the mask of the current
forward pass when ``train=True``). ReLU and max pooling are piecewise linear,
so H v is their Hessian almost everywhere (off the kinks).
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.nn.losses import softmax_cross_entropy, softmax_cross_entropy_r


def split_by_layer(model, arrays, what="v"):
    """Group a list of arrays shaped like ``model.parameters()`` into one dict (or None) per layer."""
    params = model.parameters()
    if not isinstance(arrays, (list, tuple)) or len(arrays) != len(params):
        raise ConfigError(f"{what} must be a list of {len(params)} arrays shaped like model.parameters(), "
                          f"got {type(arrays).__name__} of length {len(arrays) if hasattr(arrays, '__len__') else '?'}")
    out, i = [], 0
    for index, layer in enumerate(model.layers):
        if not layer.params:
            out.append(None)
            continue
        d = {}
        for k in sorted(layer.params):
            a = np.asarray(arrays[i])
            if a.shape != layer.params[k].shape:
                raise ConfigError(f"{what}[{i}] (layer {index} {layer.spec()} {k}) has shape {a.shape}, "
                                  f"expected {layer.params[k].shape}")
            d[k] = a.astype(layer.params[k].dtype, copy=False)
            i += 1
        out.append(d)
    return out


def _check_batch(model, x, y):
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ConfigError(f"x must be a float32 or float64 array, got {getattr(x, 'dtype', type(x).__name__)}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise ConfigError(f"y must be {len(x)} integer labels, got shape {y.shape} dtype {y.dtype}")
    if model.in_shape is not None and tuple(x.shape[1:]) != tuple(model.in_shape):
        raise ConfigError(f"x has per-sample shape {tuple(x.shape[1:])}, the model expects {tuple(model.in_shape)}")
    return y


def gradient(model, x, y, train=False, sample_weight=None):
    """Gradient of the mean cross-entropy on (x, y): (loss, list of arrays like ``model.parameters()``).

    x (N, ...) float32/float64 model input, y (N,) int labels. Copies of ``model.gradients()``.
    """
    y = _check_batch(model, x, y)
    out = model.forward(x, train)
    loss, dout = softmax_cross_entropy(out, y, sample_weight)
    model.backward(dout.astype(out.dtype, copy=False), input_grad=False)
    return loss, [g.copy() for g in model.gradients()]


def hvp(model, x, y, v, train=False, sample_weight=None):
    """Exact Hessian-vector product H v of the mean softmax cross-entropy on (x, y).

    model: a built ``Sequential`` of supported layers; x (N, ...) float input in
    the model's dtype; y (N,) int labels; v: list of arrays shaped like
    ``model.parameters()``. Returns a list of arrays shaped like the parameters
    (the model's dtype). Leaves ``model.grads`` untouched.
    """
    y = _check_batch(model, x, y)
    directions = split_by_layer(model, v)
    layers = model.layers
    first = next((i for i, layer in enumerate(layers) if layer.params), None)
    if first is None:
        raise ConfigError("the model has no parameters")
    out = model.forward(x, train)
    rx = None
    for layer, rparams in zip(layers, directions):
        rx = layer.r_forward(rx, rparams)
    _, dy = softmax_cross_entropy(out, y, sample_weight)
    dy = dy.astype(out.dtype, copy=False)
    rdy = softmax_cross_entropy_r(out, y, rx, sample_weight).astype(out.dtype, copy=False)
    for i in range(len(layers) - 1, first - 1, -1):
        dy, rdy = layers[i].r_backward(dy, rdy, input_grad=i > first)
    return [layer.r_grads[k].astype(layer.params[k].dtype, copy=False)
            for layer in layers for k in sorted(layer.params)]


def flatten(arrays):
    """Concatenate a list of arrays into one 1-D float64 vector."""
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def unflatten(vector, like):
    """Split a 1-D vector into arrays shaped (and typed) like the list ``like``."""
    out, i = [], 0
    for a in like:
        out.append(np.asarray(vector[i:i + a.size]).reshape(a.shape).astype(a.dtype))
        i += a.size
    if i != len(vector):
        raise ConfigError(f"vector has {len(vector)} entries, the arrays hold {i}")
    return out


def hessian_matrix(model, x, y, train=False):
    """The full Hessian (P, P) float64 of the mean cross-entropy, one HVP per column (tiny models only)."""
    params = model.parameters()
    n = int(sum(p.size for p in params))
    h = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        h[:, j] = flatten(hvp(model, x, y, unflatten(e, params), train))
    return h
