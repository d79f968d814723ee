"""Copies between arrays of one shape, converting float16 to float32 and back, over all cores.

``cast_into(dst, src)`` is ``np.copyto(dst, src, casting="unsafe")`` for the feature caches:
NumPy's float16 casts run one element at a time (0.9-2.2 ns an element on one core of an AVX-512
Xeon) and its copies on one thread. Numba has no float16 type, so the kernels read and write
float16 arrays as their uint16 bit patterns. They give what NumPy's casts give, bit for bit:
float16 to float32 is exact (a table of the 65,536 values), float32 to float16 rounds to nearest,
ties to even, with overflow to infinity and NaN kept NaN.
"""
import numba
import numpy as np
from numba import prange

from greedy.errors import ConfigError

HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# Elements a prange iteration converts: large enough to amortise the scheduling, small enough to share.
CAST_BLOCK = 1 << 16
# Fewer elements than this are copied by NumPy on the calling thread: starting the threads costs more.
PARALLEL_MIN_SIZE = 1 << 18


def cast_into(dst, src):
    """dst[...] = src, converted to dst's dtype; returns dst. dst and src have one shape.

    C-contiguous float16 to float32, float32 to float16 and same-dtype copies of at least
    ``PARALLEL_MIN_SIZE`` elements run on all cores; anything else is ``np.copyto``.
    """
    if not isinstance(dst, np.ndarray) or not isinstance(src, np.ndarray) or dst.shape != src.shape:
        raise ConfigError(f"cast_into needs two arrays of one shape, got {getattr(dst, 'shape', type(dst).__name__)} "
                          f"and {getattr(src, 'shape', type(src).__name__)}")
    pair = (src.dtype, dst.dtype)
    fast = (src.flags.c_contiguous and dst.flags.c_contiguous and dst.flags.writeable
            and src.size >= PARALLEL_MIN_SIZE and not np.may_share_memory(dst, src))
    if fast and pair == (np.float16, np.float32):
        half_to_float(src.reshape(-1).view(np.uint16), HALF_TO_FLOAT, dst.reshape(-1))
    elif fast and pair == (np.float32, np.float16):
        flat = src.reshape(-1)
        float_to_half(flat, flat.view(np.uint32), dst.reshape(-1).view(np.uint16))
    elif fast and src.dtype == dst.dtype and src.dtype.kind in "fiu":
        bits = np.dtype(f"u{src.dtype.itemsize}")  # as bit patterns: Numba has no float16
        copy_same(src.reshape(-1).view(bits), dst.reshape(-1).view(bits))
    else:
        np.copyto(dst, src, casting="unsafe")
    return dst


def to_channels_last(src, dst):
    """dst (N, H, W, C) float32 = src (N, C, H, W) float16, float32 or float64 moved channels-last (and
    converted); returns dst. Images run in parallel."""
    if not isinstance(src, np.ndarray) or src.ndim != 4 or src.dtype not in (np.float16, np.float32, np.float64):
        raise ConfigError(f"src must be a float16, float32 or float64 (N, C, H, W) array, got "
                          f"{getattr(src, 'dtype', type(src).__name__)} of shape {getattr(src, 'shape', None)}")
    n, c, h, w = src.shape
    if not isinstance(dst, np.ndarray) or dst.dtype != np.float32 or dst.shape != (n, h, w, c) \
            or not dst.flags.c_contiguous or not dst.flags.writeable:
        raise ConfigError(f"dst must be a writable C-contiguous float32 array of shape {(n, h, w, c)}, got "
                          f"{getattr(dst, 'dtype', None)} of shape {getattr(dst, 'shape', None)}")
    src = np.ascontiguousarray(src).reshape(n, c, h * w)
    if src.dtype == np.float16:
        _to_channels_last(src.view(np.uint16), HALF_TO_FLOAT, dst.reshape(n, h * w, c))
    else:
        _to_channels_last(src, None, dst.reshape(n, h * w, c))
    return dst


def as_float32(x):
    """x as float32: x itself when it is float32, else a new array (float16 converted on all cores)."""
    if x.dtype == np.float32:
        return x
    return cast_into(np.empty(x.shape, np.float32), np.ascontiguousarray(x))


@numba.njit(parallel=True, cache=True)
def half_to_float(bits, table, out):
    """out (n,) float32 = the float16 values whose bit patterns are bits (n,) uint16; table (65536,) float32."""
    n = bits.shape[0]
    for blk in prange((n + CAST_BLOCK - 1) // CAST_BLOCK):
        s, e = blk * CAST_BLOCK, min(n, (blk + 1) * CAST_BLOCK)
        _half_to_float_run(bits[s:e], table, out[s:e])


@numba.njit(parallel=True, cache=True)
def float_to_half(values, bits, out):
    """out (n,) uint16 = bit patterns of float32 values (n,) (whose uint32 bit patterns are ``bits``,
    the same memory) rounded to float16, to nearest with ties to even."""
    n = values.shape[0]
    for blk in prange((n + CAST_BLOCK - 1) // CAST_BLOCK):
        s, e = blk * CAST_BLOCK, min(n, (blk + 1) * CAST_BLOCK)
        _float_to_half_run(values[s:e], bits[s:e], out[s:e])


@numba.njit(cache=True)
def _half_to_float_run(bits, table, out):
    for i in range(bits.shape[0]):
        out[i] = table[bits[i]]


@numba.njit(cache=True)
def _float_to_half_run(values, bits, out):
    for i in range(values.shape[0]):
        f = bits[i]
        sign = (f >> 16) & 0x8000
        a = f & 0x7FFFFFFF
        # normal halves: drop 13 mantissa bits, rounding to nearest even; a carry into the
        # exponent is the right result, up to infinity (0x7c00) for 65520 and above
        normal = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
        # below 2**-14: multiples of 2**-24; adding 0.5 (whose ulp is 2**-24) rounds to one,
        # half to even, and subtracting it again is exact
        small = np.uint32((np.abs(values[i]) + np.float32(0.5) - np.float32(0.5)) * np.float32(16777216.0))
        h = normal if a >= 0x38800000 else small
        h = 0x7C00 if a >= 0x47800000 else h
        h = 0x7E00 if a > 0x7F800000 else h
        out[i] = np.uint16(h | sign)


@numba.njit(parallel=True, cache=True)
def copy_same(src, out):
    """out (n,) = src (n,), one dtype."""
    n = src.shape[0]
    for blk in prange((n + CAST_BLOCK - 1) // CAST_BLOCK):
        s, e = blk * CAST_BLOCK, min(n, (blk + 1) * CAST_BLOCK)
        out[s:e] = src[s:e]


# Side of the square tiles the channels-last transposes move at a time (both fit L1).
TILE = 16


@numba.njit(parallel=True, cache=True)
def _to_channels_last(src, table, out):
    """out (N, P, C) float32 = src (N, C, P) transposed per image in tiles; src holds float16 bit patterns
    (uint16) read through ``table`` (65536,), or values when ``table`` is None (a branch Numba prunes)."""
    n, c, p = src.shape
    for i in prange(n):
        for p0 in range(0, p, TILE):
            for c0 in range(0, c, TILE):
                for q in range(p0, min(p, p0 + TILE)):
                    for ch in range(c0, min(c, c0 + TILE)):
                        if table is None:
                            out[i, q, ch] = src[i, ch, q]
                        else:
                            out[i, q, ch] = table[src[i, ch, q]]
