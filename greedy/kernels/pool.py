"""Max and average pooling of NCHW arrays, without padding.

Windows that do not fit are dropped (floor behaviour, like PyTorch's default).
Arrays are float32 or float64; results keep the input's dtype. The pooling fused
into a convolution's output is in ``greedy.kernels.conv``.
"""
import numba
import numpy as np
from numba import prange

from greedy.errors import ConfigError
from greedy import validate
from greedy.kernels.conv import _out_size

# ---------------------------------------------------------------- kernels


@numba.njit(parallel=True, cache=True)
def _maxpool_fwd_kernel(x, size, stride, ho, wo, y, argmax, keep_argmax):
    """x (n, c, H, W) -> y (n, c, ho, wo), argmax = flat index h*W + w of the maximum in its plane (if kept)."""
    n, c, h, w = x.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                h0 = oh * stride
                w0 = ow * stride
                best = x[s, ci, h0, w0]
                idx = h0 * w + w0
                for a in range(size):
                    for b in range(size):
                        v = x[s, ci, h0 + a, w0 + b]
                        if v > best:
                            best = v
                            idx = (h0 + a) * w + w0 + b
                y[s, ci, oh, ow] = best
                if keep_argmax:
                    argmax[s, ci, oh, ow] = idx


@numba.njit(parallel=True, cache=True)
def _maxpool_bwd_kernel(dy, argmax, dx):
    """Routes dy (n, c, ho, wo) to dx (n, c, H*W) at argmax; prange over planes."""
    n, c, ho, wo = dy.shape
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                dx[s, ci, argmax[s, ci, oh, ow]] += dy[s, ci, oh, ow]


@numba.njit(parallel=True, cache=True)
def _avgpool_fwd_kernel(x, size, stride, ho, wo, y):
    n, c, h, w = x.shape
    scale = 1.0 / (size * size)
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                acc = 0.0
                for a in range(size):
                    for b in range(size):
                        acc += x[s, ci, oh * stride + a, ow * stride + b]
                y[s, ci, oh, ow] = acc * scale


@numba.njit(parallel=True, cache=True)
def _avgpool_bwd_kernel(dy, size, stride, dx):
    n, c, ho, wo = dy.shape
    scale = 1.0 / (size * size)
    for i in prange(n * c):
        s = i // c
        ci = i - s * c
        for oh in range(ho):
            for ow in range(wo):
                g = dy[s, ci, oh, ow] * scale
                for a in range(size):
                    for b in range(size):
                        dx[s, ci, oh * stride + a, ow * stride + b] += g


# ---------------------------------------------------------------- public API


def maxpool2d_forward(x, size=2, stride=2, with_argmax=True):
    """Max pooling without padding. x (N, C, H, W) float32/float64.

    Returns y (N, C, Ho, Wo) with Ho = (H - size) // stride + 1, and argmax
    (N, C, Ho, Wo) int32: flat index h*W + w of each maximum inside its (H, W) plane
    (None when not ``with_argmax``: inference needs no backward).
    """
    x = validate.float_array(x, "x", 4)
    size = validate.integer(size, "size", 1)
    stride = validate.integer(stride, "stride", 1)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, size, size, stride, 0, "max pool")
    y = np.empty((n, c, ho, wo), x.dtype)
    argmax = np.empty((n, c, ho, wo) if with_argmax else (1, 1, 1, 1), np.int32)
    _maxpool_fwd_kernel(x, size, stride, ho, wo, y, argmax, with_argmax)
    return y, (argmax if with_argmax else None)


def maxpool2d_backward(dy, argmax, x_shape):
    """Gradient of ``maxpool2d_forward``: dy (N, C, Ho, Wo) -> dx of shape x_shape (N, C, H, W)."""
    dy = validate.float_array(dy, "dy", 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu" or argmax.shape != dy.shape:
        raise ConfigError(f"argmax must be an integer array of dy's shape {dy.shape}")
    if len(x_shape) != 4 or tuple(x_shape[:2]) != dy.shape[:2]:
        raise ConfigError(f"x_shape {tuple(x_shape)} does not match dy of shape {dy.shape}")
    n, c, h, w = (int(v) for v in x_shape)
    if argmax.size and (argmax.min() < 0 or argmax.max() >= h * w):
        raise ConfigError(f"argmax holds indices outside an {h}x{w} plane")
    dx = np.zeros((n, c, h * w), dy.dtype)
    _maxpool_bwd_kernel(dy, np.ascontiguousarray(argmax), dx)
    return dx.reshape(n, c, h, w)


def avgpool2d_forward(x, size=2, stride=2):
    """Average pooling without padding: x (N, C, H, W) -> y (N, C, Ho, Wo), Ho = (H - size) // stride + 1."""
    x = validate.float_array(x, "x", 4)
    size = validate.integer(size, "size", 1)
    stride = validate.integer(stride, "stride", 1)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, size, size, stride, 0, "average pool")
    y = np.empty((n, c, ho, wo), x.dtype)
    _avgpool_fwd_kernel(x, size, stride, ho, wo, y)
    return y


def avgpool2d_backward(dy, x_shape, size=2, stride=2):
    """Gradient of ``avgpool2d_forward``: dy (N, C, Ho, Wo) -> dx of shape x_shape (N, C, H, W)."""
    dy = validate.float_array(dy, "dy", 4)
    size = validate.integer(size, "size", 1)
    stride = validate.integer(stride, "stride", 1)
    if len(x_shape) != 4 or tuple(x_shape[:2]) != dy.shape[:2]:
        raise ConfigError(f"x_shape {tuple(x_shape)} does not match dy of shape {dy.shape}")
    n, c, h, w = (int(v) for v in x_shape)
    if _out_size(h, w, size, size, stride, 0, "average pool") != dy.shape[2:]:
        raise ConfigError(f"dy of shape {dy.shape} does not match x_shape {tuple(x_shape)}")
    dx = np.zeros((n, c, h, w), dy.dtype)
    _avgpool_bwd_kernel(dy, size, stride, dx)
    return dx
