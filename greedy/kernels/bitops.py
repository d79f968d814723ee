"""Bit-packed codes, hamming distances and binary convolution.

Layout: a code of ``n_bits`` bits is stored along the last axis as
``ceil(n_bits / 64)`` uint64 words; bit ``i`` is bit ``i % 64`` of word
``i // 64`` (little-endian bit order) and the unused high bits of the last word
are zero. Every kernel relies on those zero bits: they agree between any two
codes, so they never add to a hamming distance.

Feature maps are ``(N, H, W, n_words)`` uint64: the bits of a pixel are its
channels; a sequence is a map one row high ``(N, 1, L, n_words)``. Binary
filters over a ``kh x kw`` window (odd sizes: 3x3 on images, 1xk on sequences)
are ``(F, kh*kw, n_words)`` uint64, the window's pixels in row-major order
``(dy, dx)``, dy in ``-(kh//2) .. kh//2`` and dx likewise.

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
def gather_patch(x, n, y, xc, kh, kw, patch):
    """Copies the kh x kw window of x (N, H, W, w) centred on (n, y, xc) into patch (kh*kw*w,); outside
    pixels are 0."""
    h, wd, nw = x.shape[1], x.shape[2], x.shape[3]
    o = 0
    for dy in range(-(kh // 2), kh // 2 + 1):
        yy = y + dy
        for dx in range(-(kw // 2), kw // 2 + 1):
            xx = xc + dx
            if yy >= 0 and yy < h and xx >= 0 and xx < wd:
                for k in range(nw):
                    patch[o + k] = x[n, yy, xx, k]
            else:
                for k in range(nw):
                    patch[o + k] = 0
            o += nw


@numba.njit(cache=True, parallel=True)
def _conv_activations_kernel(x, ft, kh, kw, total, out):
    """x (N, H, W, w), ft (kh*kw*w, F) -> out (N, H, W, F) int32 = total - hamming; prange over (n, y)."""
    n_img, h, wd = x.shape[0], x.shape[1], x.shape[2]
    for r in prange(n_img * h):
        n = r // h
        y = r - n * h
        patch = np.empty(ft.shape[0], np.uint64)
        for xc in range(wd):
            gather_patch(x, n, y, xc, kh, kw, patch)
            o = out[n, y, xc]
            hamming_row(patch, ft, o)
            for f in range(o.shape[0]):
                o[f] = total - o[f]


@numba.njit(cache=True, parallel=True)
def _conv_bits_kernel(x, ft, kh, kw, max_ham, out):
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
            gather_patch(x, n, y, xc, kh, kw, patch)
            hamming_row(patch, ft, ham)
            for f in range(n_filters):
                if ham[f] <= max_ham[f]:
                    out[n, y, xc, f >> 6] |= one << np.uint64(f & 63)


@numba.njit(cache=True, parallel=True)
def _pool_kernel(x, ph, pw, majority, out):
    """ph x pw stride-(ph, pw) pooling of x (N, H, W, w) into out (N, H//ph, W//pw, w); prange over
    (n, output row). ``majority`` (2x2 only): at least 2 of the 4 bits; else any of them."""
    ho, wo, nw = out.shape[1], out.shape[2], out.shape[3]
    for r in prange(out.shape[0] * ho):
        n = r // ho
        yo = r - n * ho
        y = ph * yo
        for xo in range(wo):
            xc = pw * xo
            for k in range(nw):
                if majority:
                    a = x[n, y, xc, k]
                    b = x[n, y, xc + 1, k]
                    c = x[n, y + 1, xc, k]
                    d = x[n, y + 1, xc + 1, k]
                    # at least 2 of 4: both of one pair, or one of each pair
                    out[n, yo, xo, k] = (a & b) | (c & d) | ((a | b) & (c | d))
                else:
                    v = np.uint64(0)
                    for dy in range(ph):
                        for dx in range(pw):
                            v |= x[n, y + dy, xc + dx, k]
                    out[n, yo, xo, k] = v


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


def check_window(window):
    """A binary window (kh, kw) of odd positive sizes, as a tuple of two ints; ConfigError otherwise."""
    try:
        kh, kw = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be two odd sizes (kh, kw), got {window!r}") from None
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ConfigError(f"window sizes must be odd and positive, got {kh}x{kw}")
    return kh, kw


def _conv_inputs(packed_map, filters, n_bits, window):
    x = _packed("packed_map", packed_map, 4)
    f = _packed("filters", filters, 3)
    kh, kw = check_window(window)
    n_bits = int(n_bits)
    nw = n_words(n_bits) if n_bits >= 1 else -1
    if x.shape[3] != nw:
        raise ConfigError(f"packed_map has {x.shape[3]} words per pixel, n_bits={n_bits} needs {max(nw, 1)}")
    if f.shape[1:] != (kh * kw, nw):
        raise ConfigError(f"filters must have shape (F, {kh * kw}, {nw}) for a {kh}x{kw} window of n_bits={n_bits}, "
                          f"got {f.shape}")
    if f.shape[0] == 0:
        raise ConfigError("filters must hold at least one filter")
    _check_high_bits("packed_map", x, n_bits)
    _check_high_bits("filters", f, n_bits)
    return x, np.ascontiguousarray(f.reshape(f.shape[0], -1).T), n_bits, kh, kw


def binary_conv2d_activations(packed_map, filters, n_bits, window=(3, 3)):
    """Integer activations of a kh x kw (``window``, odd sizes), same-padding, stride-1 binary convolution.

    packed_map (N, H, W, w) uint64 with n_bits channels per pixel; filters
    (F, kh*kw, w) uint64. Returns int32 (N, H, W, F): the number of the kh*kw*n_bits
    window bits that agree with the filter, i.e. ``kh*kw*n_bits - hamming``.
    Pixels outside the map count as all-zero bits (so they agree with the
    filter's zero bits).
    """
    x, ft, n_bits, kh, kw = _conv_inputs(packed_map, filters, n_bits, window)
    out = np.empty(x.shape[:3] + (ft.shape[1],), np.int32)
    _conv_activations_kernel(x, ft, kh, kw, kh * kw * n_bits, out)
    return out


def binary_conv2d(packed_map, filters, thresholds, n_bits, window=(3, 3)):
    """kh x kw (``window``, odd sizes), same-padding, stride-1 binary convolution with thresholds, output
    bit-packed.

    packed_map (N, H, W, w) uint64 with n_bits channels per pixel; filters
    (F, kh*kw, w) uint64; thresholds (F,) or a scalar, any real numbers. Output
    bit f of a pixel is set when its activation (see
    ``binary_conv2d_activations``: agreeing bits, kh*kw*n_bits - hamming) is
    ``>= thresholds[f]``. Returns uint64 (N, H, W, ceil(F / 64)) holding F
    bits per pixel, unused high bits zero.
    """
    x, ft, n_bits, kh, kw = _conv_inputs(packed_map, filters, n_bits, window)
    n_filters = ft.shape[1]
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim == 0:
        th = np.full(n_filters, th)
    if th.shape != (n_filters,) or not np.all(np.isfinite(th)):
        raise ConfigError(f"thresholds must be {n_filters} finite numbers (one per filter), got shape {th.shape}")
    out = np.zeros(x.shape[:3] + (n_words(n_filters),), np.uint64)
    _conv_bits_kernel(x, ft, kh, kw, max_hamming(th, kh * kw * n_bits), out)
    return out


def pool_bits(packed_map, mode="or", shape=(2, 2)):
    """Stride-``shape`` pooling of a bit-packed map in windows of ``shape`` (2x2 on images, 1x2 on
    sequences), word-wise (no unpacking).

    packed_map (N, H, W, w) uint64 -> uint64 (N, H//ph, W//pw, w); an odd last
    row or column is dropped. ``mode="or"``: a bit is set if set in any pixel of
    the window (max pooling). ``mode="majority"`` (2x2 windows only): set if set
    in at least 2 of the 4 (mean >= 1/2; ties set, the same ``>=`` rule as conv
    thresholds).
    """
    if mode not in ("or", "majority"):
        raise ConfigError(f"mode must be 'or' or 'majority', got {mode!r}")
    ph, pw = (int(v) for v in shape)
    if (ph, pw) not in ((2, 2), (1, 2)):
        raise ConfigError(f"pooling windows are 2x2 or 1x2, got {ph}x{pw}")
    if mode == "majority" and (ph, pw) != (2, 2):
        raise ConfigError("majority pooling needs 2x2 windows (of 2 bits, 'at least half' is 'or')")
    x = _packed("packed_map", packed_map, 4)
    n, h, w, nw = x.shape
    if h < ph or w < pw:
        raise ConfigError(f"packed_map must be at least {ph}x{pw} pixels to pool, got {h}x{w}")
    out = np.empty((n, h // ph, w // pw, nw), np.uint64)
    _pool_kernel(x, ph, pw, mode == "majority", out)
    return out
