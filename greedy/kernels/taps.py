"""A "same" convolution with few filters on channels-last maps: one GEMM against every tap, then shifted sums.

``conv_taps`` computes y = conv(x, w) + b, stride 1, zero padding KH // 2 and KW // 2, for
x (N, C, H, W), channels-last: y (N, H, W, F). The pixels (N*H*W, C) are multiplied once by the filters of all KH*KW taps side by
side (C, KH*KW*F), and each output pixel adds the KH*KW tap values of its neighbours
(``shift_sum``). An im2col convolution writes KH*KW*C values per pixel before its GEMM; this writes
KH*KW*F, so it pays when the filters are few against the channels: the d principal components a
patch-bag dictionary projects a deep layer's 3x3 patches onto (``PatchPreprocessor.transform_images``).
"""
import numba
import numpy as np
from numba import prange

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels.cast import to_channels_last

# The tap values of this many bytes are made by one GEMM and summed before the next.
TAPS_CHUNK_BYTES = 16 * 1024**2


def conv_taps(x, w, b):
    """y = conv(x, w) + b with "same" zero padding, channels-last: x (N, C, H, W) float16, float32 or
    float64, w (F, C, KH, KW) float32 with odd KH and KW, b (F,) float32. Returns y (N, H, W, F) float32.

    Memory besides y: for a chunk of at most ``TAPS_CHUNK_BYTES`` of tap values (or one image), the
    chunk's images channels-last in float32 and their (images, H, W, KH*KW*F) tap values; the two
    buffers are reused from chunk to chunk.
    """
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float16, np.float32, np.float64) or x.ndim != 4:
        raise ConfigError(f"x must be a float (N, C, H, W) array, got {getattr(x, 'dtype', type(x).__name__)} "
                          f"of shape {getattr(x, 'shape', None)}")
    w = validate.float_array(w, "w", 4)
    b = validate.float_array(b, "b", 1)
    if not w.dtype == b.dtype == np.float32:
        raise ConfigError(f"w and b must be float32, got {w.dtype} and {b.dtype}")
    n, c, h, wd = x.shape
    f, cw, kh, kw = w.shape
    if cw != c:
        raise ConfigError(f"w has {cw} input channels but x (N, C, H, W) has {c}")
    if kh % 2 != 1 or kw % 2 != 1:
        raise ConfigError(f"a same convolution needs odd kernel sides, got {kh}x{kw}")
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    taps_per_pixel = kh * kw * f
    wcat = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(c, taps_per_pixel))
    m = min(n, max(1, TAPS_CHUNK_BYTES // (h * wd * taps_per_pixel * 4)))
    pixels = np.empty((m, h, wd, c), np.float32)
    taps = np.empty((m * h * wd, taps_per_pixel), np.float32)
    y = np.empty((n, h, wd, f), np.float32)
    for s in range(0, n, m):
        e = min(n, s + m)
        to_channels_last(x[s:e], pixels[:e - s])
        block = taps[:(e - s) * h * wd]
        np.matmul(pixels[:e - s].reshape(-1, c), wcat, out=block)
        shift_sum(block.reshape(e - s, h, wd, taps_per_pixel), kh, kw, b, y[s:e])
    return y


@numba.njit(parallel=True, cache=True)
def shift_sum(taps, kh, kw, b, y):
    """y[i, r, c] = b + sum over taps (a, t) inside the map of taps[i, r + a - kh//2, c + t - kw//2, (a*kw + t)*F : +F].

    taps (N, H, W, KH*KW*F), b (F,), y (N, H, W, F), float32; prange over images.
    """
    n, h, w, f = y.shape
    ph, pw = kh // 2, kw // 2
    for i in prange(n):
        for r in range(h):
            for c in range(w):
                for j in range(f):
                    y[i, r, c, j] = b[j]
                for a in range(max(0, ph - r), min(kh, h + ph - r)):
                    rr = r + a - ph
                    for t in range(max(0, pw - c), min(kw, w + pw - c)):
                        cc = c + t - pw
                        o = (a * kw + t) * f
                        for j in range(f):
                            y[i, r, c, j] += taps[i, rr, cc, o + j]
