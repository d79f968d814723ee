"""Bit-packed codes, hamming distances and binary convolution.

Layout: a code of ``n_bits`` bits is stored along the last axis as
``ceil(n_bits / 64)`` uint64 words; bit ``i`` is bit ``i % 64`` of word
``i // 64`` (little-endian bit order) and the unused high bits of the last word
are zero. Every kernel relies on those zero bits: they agree between any two
codes, so they never add to a hamming distance.

Feature maps are ``(N, H, W, n_words)`` uint64: the bits of a pixel are its
channels. Binary filters over a 3x3 patch are ``(F, 9, n_words)`` uint64, the
9 pixels in row-major order ``(dy, dx)`` for ``dy, dx`` in ``(-1, 0, 1)``.

``popcount64`` is the LLVM ``ctpop`` intrinsic; it can be called from any
``numba.njit(cache=True)`` kernel (caching works, the intrinsic is pickled by
reference to this module).
"""
import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from greedy.errors import ConfigError

_TILE = 1024  # filters per tile in hamming_row; keeps the output tile in L1


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a 64-bit integer, as int64 (numba only)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(x), codegen


# ---------------------------------------------------------------- kernels


@numba.njit(cache=True)
def hamming_row(a_row, bt, out_row):
    """out_row[j] = popcount(a_row ^ bt[:, j]); a_row (w,), bt (w, m) uint64, out_row (m,) int32."""
    w, m = bt.shape
    for j0 in range(0, m, _TILE):
        j1 = min(j0 + _TILE, m)
        o = out_row[j0:j1]
        ak = a_row[0]
        bk = bt[0, j0:j1]
        for j in range(j1 - j0):
            o[j] = popcount64(ak ^ bk[j])
        for k in range(1, w):
            ak = a_row[k]
            bk = bt[k, j0:j1]
            for j in range(j1 - j0):
                o[j] += popcount64(ak ^ bk[j])


@numba.njit(cache=True, parallel=True)
def _hamming_pairwise_kernel(a, bt, out):
    """a (n, w), bt (w, m) uint64 -> out (n, m) int32; prange over rows of a."""
    for i in prange(a.shape[0]):
        hamming_row(a[i], bt, out[i])


@numba.njit(cache=True)
def gather_patch(x, n, y, xc, patch):
    """Copies the 3x3 patch of x (N, H, W, w) around (n, y, xc) into patch (9*w,); outside pixels are 0."""
    h, wd, nw = x.shape[1], x.shape[2], x.shape[3]
    o = 0
    for dy in range(-1, 2):
        yy = y + dy
        for dx in range(-1, 2):
            xx = xc + dx
            if yy >= 0 and yy < h and xx >= 0 and xx < wd:
                for k in range(nw):
                    patch[o + k] = x[n, yy, xx, k]
            else:
                for k in range(nw):
                    patch[o + k] = 0
            o += nw


@numba.njit(cache=True, parallel=True)
def _conv_activations_kernel(x, ft, total, out):
    """x (N, H, W, w), ft (9*w, F) -> out (N, H, W, F) int32 = total - hamming; prange over (n, y)."""
    n_img, h, wd = x.shape[0], x.shape[1], x.shape[2]
    for r in prange(n_img * h):
        n = r // h
        y = r - n * h
        patch = np.empty(ft.shape[0], np.uint64)
        for xc in range(wd):
            gather_patch(x, n, y, xc, patch)
            o = out[n, y, xc]
            hamming_row(patch, ft, o)
            for f in range(o.shape[0]):
                o[f] = total - o[f]


@numba.njit(cache=True, parallel=True)
def _conv_bits_kernel(x, ft, max_ham, out):
    """Sets bit f of out (N, H, W, ceil(F/64)) where hamming <= max_ham[f]; out starts zeroed."""
    n_img, h, wd = x.shape[0], x.shape[1], x.shape[2]
    n_filters = ft.shape[1]
    one = np.uint64(1)
    for r in prange(n_img * h):
        n = r // h
        y = r - n * h
        patch = np.empty(ft.shape[0], np.uint64)
        ham = np.empty(n_filters, np.int32)
        for xc in range(wd):
            gather_patch(x, n, y, xc, patch)
            hamming_row(patch, ft, ham)
            for f in range(n_filters):
                if ham[f] <= max_ham[f]:
                    out[n, y, xc, f >> 6] |= one << np.uint64(f & 63)


@numba.njit(cache=True, parallel=True)
def _pool2x2_kernel(x, majority, out):
    """2x2 stride-2 pooling of x (N, H, W, w) into out (N, H//2, W//2, w); prange over (n, output row)."""
    ho, wo, nw = out.shape[1], out.shape[2], out.shape[3]
    for r in prange(out.shape[0] * ho):
        n = r // ho
        y = 2 * (r - n * ho)
        for xo in range(wo):
            xc = 2 * xo
            for k in range(nw):
                a = x[n, y, xc, k]
                b = x[n, y, xc + 1, k]
                c = x[n, y + 1, xc, k]
                d = x[n, y + 1, xc + 1, k]
                if majority:
                    # at least 2 of 4: both of one pair, or one of each pair
                    out[n, y // 2, xo, k] = (a & b) | (c & d) | ((a | b) & (c | d))
                else:
                    out[n, y // 2, xo, k] = a | b | c | d


# ---------------------------------------------------------------- API


def n_words(n_bits):
    """Number of uint64 words holding ``n_bits`` bits: ceil(n_bits / 64)."""
    return (int(n_bits) + 63) // 64


def max_hamming(thresholds, total):
    """Per-filter largest hamming distance whose activation (total - hamming) is >= threshold, int64 (F,).

    activation >= t  <=>  activation >= ceil(t)  <=>  hamming <= total - ceil(t); thresholds (F,) real.
    """
    th = np.asarray(thresholds, np.float64)
    return (total - np.ceil(np.clip(th, -1, total + 1))).astype(np.int64)


def _packed(name, arr, ndim):
    arr = np.asarray(arr)
    if arr.dtype != np.uint64:
        raise ConfigError(f"{name} must be a uint64 array of packed bits (see pack_bits), got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.shape[-1] == 0:
        raise ConfigError(f"{name} has no words along its last axis (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def _check_high_bits(name, arr, n_bits):
    """Raises if a bit at position >= n_bits is set in the last word of arr (..., n_words)."""
    rest = n_bits % 64
    if rest and np.any(arr[..., -1] >> np.uint64(rest)):
        raise ConfigError(f"{name} has bits set beyond n_bits={n_bits}; unused high bits must be zero")


def pack_bits(bits):
    """Packs bits (..., n_bits) bool or 0/1 integers along the last axis.

    Returns ``(packed, n_bits)`` with packed uint64 (..., ceil(n_bits / 64)),
    C-contiguous, bit ``i`` in bit ``i % 64`` of word ``i // 64``, unused high
    bits zero.
    """
    bits = np.asarray(bits)
    if bits.dtype != np.bool_ and not np.issubdtype(bits.dtype, np.integer):
        raise ConfigError(f"bits must be a bool or integer array, got dtype {bits.dtype}")
    if bits.ndim == 0 or bits.shape[-1] == 0:
        raise ConfigError(f"bits must have at least one bit along the last axis, got shape {bits.shape}")
    if bits.dtype != np.bool_ and bits.size and (bits.min() < 0 or bits.max() > 1):
        raise ConfigError("bits must contain only 0 and 1")
    n_bits = bits.shape[-1]
    by = np.packbits(bits, axis=-1, bitorder="little")
    buf = np.zeros(bits.shape[:-1] + (n_words(n_bits) * 8,), np.uint8)
    buf[..., : by.shape[-1]] = by
    return buf.view("<u8").astype(np.uint64, copy=False), n_bits


def unpack_bits(packed, n_bits):
    """Inverse of pack_bits: packed uint64 (..., ceil(n_bits / 64)) -> uint8 0/1 (..., n_bits)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint64:
        raise ConfigError(f"packed must be a uint64 array, got dtype {packed.dtype}")
    n_bits = int(n_bits)
    if n_bits < 1 or packed.ndim == 0 or packed.shape[-1] != n_words(n_bits):
        raise ConfigError(
            f"packed last axis must hold ceil(n_bits/64) words for n_bits={n_bits}, got shape {packed.shape}"
        )
    by = np.ascontiguousarray(packed, dtype="<u8").view(np.uint8)
    return np.unpackbits(by, axis=-1, count=n_bits, bitorder="little")


def hamming_pairwise(a, b, out=None):
    """All-pairs hamming distances between packed codes.

    a (n, w) and b (m, w) uint64 as from ``pack_bits`` (same number of words,
    unused high bits zero). Returns int32 (n, m); ``out`` (n, m) int32
    C-contiguous may be given to reuse a buffer (allocating a large output is a
    large share of the cost). Parallel over rows of ``a``; ``b`` is tiled in
    blocks of 1024 codes.
    """
    a = _packed("a", a, 2)
    b = _packed("b", b, 2)
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"a and b must have the same number of words, got {a.shape[1]} and {b.shape[1]}")
    shape = (a.shape[0], b.shape[0])
    if out is None:
        out = np.empty(shape, np.int32)
    elif (
        not isinstance(out, np.ndarray) or out.dtype != np.int32 or out.shape != shape or not out.flags.c_contiguous
    ):
        raise ConfigError(f"out must be a C-contiguous int32 array of shape {shape}")
    _hamming_pairwise_kernel(a, np.ascontiguousarray(b.T), out)
    return out


hamming_to_filters = hamming_pairwise
"""Hamming distance of codes (n, w) to a filter bank (F, w) -> int32 (n, F); same as hamming_pairwise."""


def _conv_inputs(packed_map, filters, n_bits):
    x = _packed("packed_map", packed_map, 4)
    f = _packed("filters", filters, 3)
    n_bits = int(n_bits)
    nw = n_words(n_bits) if n_bits >= 1 else -1
    if x.shape[3] != nw:
        raise ConfigError(f"packed_map has {x.shape[3]} words per pixel, n_bits={n_bits} needs {max(nw, 1)}")
    if f.shape[1:] != (9, nw):
        raise ConfigError(f"filters must have shape (F, 9, {nw}) for n_bits={n_bits}, got {f.shape}")
    if f.shape[0] == 0:
        raise ConfigError("filters must hold at least one filter")
    _check_high_bits("packed_map", x, n_bits)
    _check_high_bits("filters", f, n_bits)
    return x, np.ascontiguousarray(f.reshape(f.shape[0], -1).T), n_bits


def binary_conv2d_activations(packed_map, filters, n_bits):
    """Integer activations of a 3x3, padding-1, stride-1 binary convolution.

    packed_map (N, H, W, w) uint64 with n_bits channels per pixel; filters
    (F, 9, w) uint64. Returns int32 (N, H, W, F): the number of the 9*n_bits
    patch bits that agree with the filter, i.e. ``9*n_bits - hamming``.
    Pixels outside the map count as all-zero bits (so they agree with the
    filter's zero bits).
    """
    x, ft, n_bits = _conv_inputs(packed_map, filters, n_bits)
    out = np.empty(x.shape[:3] + (ft.shape[1],), np.int32)
    _conv_activations_kernel(x, ft, 9 * n_bits, out)
    return out


def binary_conv2d(packed_map, filters, thresholds, n_bits):
    """3x3, padding-1, stride-1 binary convolution with thresholds, output bit-packed.

    packed_map (N, H, W, w) uint64 with n_bits channels per pixel; filters
    (F, 9, w) uint64; thresholds (F,) or a scalar, any real numbers. Output
    bit f of a pixel is set when its activation (see
    ``binary_conv2d_activations``: agreeing bits, 9*n_bits - hamming) is
    ``>= thresholds[f]``. Returns uint64 (N, H, W, ceil(F / 64)) holding F
    bits per pixel, unused high bits zero.
    """
    x, ft, n_bits = _conv_inputs(packed_map, filters, n_bits)
    n_filters = ft.shape[1]
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim == 0:
        th = np.full(n_filters, th)
    if th.shape != (n_filters,) or not np.all(np.isfinite(th)):
        raise ConfigError(f"thresholds must be {n_filters} finite numbers (one per filter), got shape {th.shape}")
    out = np.zeros(x.shape[:3] + (n_words(n_filters),), np.uint64)
    _conv_bits_kernel(x, ft, max_hamming(th, 9 * n_bits), out)
    return out


def pool2x2_bits(packed_map, mode="or"):
    """2x2 stride-2 pooling of a bit-packed map, word-wise (no unpacking).

    packed_map (N, H, W, w) uint64 -> uint64 (N, H//2, W//2, w); an odd last
    row or column is dropped. ``mode="or"``: a bit is set if set in any of the
    4 pixels (max pooling). ``mode="majority"``: set if set in at least 2 of
    the 4 (mean >= 1/2; ties set, the same ``>=`` rule as conv thresholds).
    """
    if mode not in ("or", "majority"):
        raise ConfigError(f"mode must be 'or' or 'majority', got {mode!r}")
    x = _packed("packed_map", packed_map, 4)
    n, h, w, nw = x.shape
    if h < 2 or w < 2:
        raise ConfigError(f"packed_map must be at least 2x2 pixels to pool, got {h}x{w}")
    out = np.empty((n, h // 2, w // 2, nw), np.uint64)
    _pool2x2_kernel(x, mode == "majority", out)
    return out
