"""Patch matrices of NCHW arrays: im2col, its adjoint col2im, and selected im2col rows.

``im2col`` turns x (N, C, H, W) into cols (N*Ho*Wo, C*KH*KW): one row per output
position in (n, oh, ow) order, columns in (c, kh, kw) order, so
``cols @ w.reshape(F, -1).T`` is the convolution with output (N*Ho*Wo, F).
``col2im`` is its adjoint (overlapping patches are summed). Padded pixels are zero.
Arrays are float32 or float64; results keep the input's dtype.
"""
import numba
import numpy as np
from numba import prange

from greedy.errors import ConfigError
from greedy import validate
from greedy.kernels.conv import _out_size

# ---------------------------------------------------------------- kernels


@numba.njit(parallel=True, cache=True)
def _im2col_kernel(x, kh, kw, stride, pad, ho, wo, out):
    """x (n, C, H, W) -> out (n*ho*wo, C*kh*kw); prange over (sample, output row)."""
    n, c, h, w = x.shape
    zero = out.dtype.type(0)
    for i in prange(n * ho):
        s = i // ho
        oh = i - s * ho
        h0 = oh * stride - pad
        for ow in range(wo):
            r = i * wo + ow
            w0 = ow * stride - pad
            for ci in range(c):
                for a in range(kh):
                    hh = h0 + a
                    j = (ci * kh + a) * kw
                    if hh < 0 or hh >= h:
                        for b in range(kw):
                            out[r, j + b] = zero
                    else:
                        for b in range(kw):
                            ww = w0 + b
                            if ww >= 0 and ww < w:
                                out[r, j + b] = x[s, ci, hh, ww]
                            else:
                                out[r, j + b] = zero


@numba.njit(parallel=True, cache=True)
def _gather_patches_kernel(x, img, row, col, kh, kw, pad, out):
    """out[j] = the (C, kh, kw) window of image img[j] at output pixel (row[j], col[j]), stride 1, zero padding.

    prange over the patches; each writes its own row of out.
    """
    n, c, h, w = x.shape
    zero = out.dtype.type(0)
    for j in prange(len(img)):
        s = img[j]
        for a in range(kh):
            hh = row[j] - pad + a
            row_inside = hh >= 0 and hh < h
            for b in range(kw):
                ww = col[j] - pad + b
                if row_inside and ww >= 0 and ww < w:
                    for ci in range(c):
                        out[j, (ci * kh + a) * kw + b] = x[s, ci, hh, ww]
                else:
                    for ci in range(c):
                        out[j, (ci * kh + a) * kw + b] = zero


@numba.njit(parallel=True, cache=True)
def _col2im_kernel(cols, kh, kw, stride, pad, ho, wo, dx):
    """Adds cols (n*ho*wo, C*kh*kw) into dx (n, C, H, W); prange over samples (no write races)."""
    n, c, h, w = dx.shape
    for s in prange(n):
        for oh in range(ho):
            h0 = oh * stride - pad
            for ow in range(wo):
                r = (s * ho + oh) * wo + ow
                w0 = ow * stride - pad
                for ci in range(c):
                    for a in range(kh):
                        hh = h0 + a
                        if hh < 0 or hh >= h:
                            continue
                        j = (ci * kh + a) * kw
                        for b in range(kw):
                            ww = w0 + b
                            if ww >= 0 and ww < w:
                                dx[s, ci, hh, ww] += cols[r, j + b]


# ---------------------------------------------------------------- public API


def im2col(x, kh, kw, stride=1, pad=0):
    """Patches of x (N, C, H, W) as cols (N*Ho*Wo, C*kh*kw), same dtype.

    Rows are output positions in (n, oh, ow) order, columns are (c, kh, kw)
    order; padded pixels are zero.
    """
    x = validate.float_array(x, "x", 4)
    kh = validate.integer(kh, "kh", 1)
    kw = validate.integer(kw, "kw", 1)
    stride = validate.integer(stride, "stride", 1)
    pad = validate.integer(pad, "pad", 0)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, kh, kw, stride, pad, "im2col")
    cols = np.empty((n * ho * wo, c * kh * kw), x.dtype)
    _im2col_kernel(x, kh, kw, stride, pad, ho, wo, cols)
    return cols


def gather_patches(x, img, row, col, kh, kw, pad):
    """Rows of ``im2col(x, kh, kw, 1, pad)`` for the given (image, output row, output column) triples only.

    x (N, C, H, W) float16, float32 or float64; img, row, col (M,) int. Returns (M, C*kh*kw) in x's
    dtype. A float16 x (a half-precision layer cache) is copied as its bit patterns, so it is read
    without being converted whole.
    """
    half = isinstance(x, np.ndarray) and x.dtype == np.float16
    if half:
        if x.ndim != 4:
            raise ConfigError(f"x must have 4 dimensions, got shape {x.shape}")
        x = np.ascontiguousarray(x).view(np.uint16)
    else:
        x = validate.float_array(x, "x", 4)
    img, row, col = (np.ascontiguousarray(a, dtype=np.int64) for a in (img, row, col))
    if not len(img) == len(row) == len(col):
        raise ConfigError(f"img, row and col must have one length, got {len(img)}, {len(row)}, {len(col)}")
    if len(img) and (img.min() < 0 or img.max() >= len(x)):
        raise ConfigError(f"img holds indices outside the {len(x)} images of x")
    out = np.empty((len(img), x.shape[1] * kh * kw), x.dtype)
    _gather_patches_kernel(x, img, row, col, kh, kw, pad, out)
    return out.view(np.float16) if half else out


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of ``im2col``: sums cols (N*Ho*Wo, C*kh*kw) back into an (N, C, H, W) array."""
    cols = validate.float_array(cols, "cols", 2)
    if len(x_shape) != 4:
        raise ConfigError(f"x_shape must be (N, C, H, W), got {tuple(x_shape)}")
    n, c, h, w = (int(v) for v in x_shape)
    kh = validate.integer(kh, "kh", 1)
    kw = validate.integer(kw, "kw", 1)
    stride = validate.integer(stride, "stride", 1)
    pad = validate.integer(pad, "pad", 0)
    ho, wo = _out_size(h, w, kh, kw, stride, pad, "col2im")
    if cols.shape != (n * ho * wo, c * kh * kw):
        raise ConfigError(f"cols has shape {cols.shape}, expected {(n * ho * wo, c * kh * kw)}")
    dx = np.zeros((n, c, h, w), cols.dtype)
    _col2im_kernel(cols, kh, kw, stride, pad, ho, wo, dx)
    return dx
