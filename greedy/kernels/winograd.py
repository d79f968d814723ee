"""Winograd convolution: 3x3, stride-1 convs with bias, ReLU and 2x2 max pool fused (inference, and in
training with each pooling window's argmax), and the input gradient of such a conv as the convolution of dy
with the mirrored filters (training, ``input_grad``).

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). F(2x2, 3x3): each 2x2 output
tile of a filter is ``A^T [(G g G^T) * (B^T d B)] A`` for its 4x4 input tile d, 16 multiplies per tile
and input channel instead of 36. Over a chunk of samples with T tiles, the elementwise products summed
over channels are 16 BLAS multiplies ``M[e] (F, T) = U[e] (F, C) @ V[e] (C, T)``, one per position
e of the 4x4 transformed tile, with U = G g G^T (``weight_tiles``) and V = B^T d B (``_input_tiles``).
With a 2x2 max pool the output tiles are the pooling windows, so ``_output_tiles`` writes the pooled
map straight from M: bias, ReLU and the max in one pass, and no full-size map exists; for training it also
writes where each maximum lies (``max4_argmax``), the argmax ``conv2d_backward`` takes.

Outputs whose sides are multiples of 4 (the 16x16 and 8x8 maps of the CIFAR-10 networks) take F(4x4, 3x3)
instead (``output_tile``): 6x6 input tiles, 36 multiplies for 16 outputs, 36 BLAS multiplies a chunk;
a 4x4 tile holds four pooling windows. Its transforms have more terms, and are made a block of tiles at
a time so that V and M are written and read in runs. On the CIFAR-10 patch-bag layer shapes it takes
0.76 of F(2x2, 3x3)'s time on the 16x16 map and 0.84-0.97 on the 8x8 one (perf/README.md, "Applying a
frozen block").

Threads and scratch memory are those of ``greedy.kernels.conv`` (one worker per core, each taking
whole chunks, single-threaded BLAS): a chunk's V and M take 16 (C + F) values a tile (36 with 4x4
tiles), at most ``CHUNK_BYTES`` (8 MiB) per worker. The results differ from the direct convolution by
rounding only: the transforms add and subtract in another order (in float32, within 5e-6 of the largest
output in ``tests/test_winograd.py``; F(4x4, 3x3)'s larger coefficients round about twice as much).
"""
import numba
import numpy as np
from numba import prange

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.kernels.conv import _run_chunks, _same_dtype, _scratch_bytes, _split
from greedy.kernels.convpool import max4_argmax

CHUNK_BYTES = 8 * 2**20
# work above this many scratch bytes is split between the workers (at N = 256 the 128 -> 128 conv on
# 4 x 4 maps, 9.4 MB, ran as one chunk of 8 MiB and one of 1.1 MB: one core did nearly all of it)
SPLIT_BYTES = 2**20
# Below 32 input channels the 16 multiplies of a chunk are too thin for BLAS: 1, 3 and 16 channels ran
# at 0.16, 0.63 and 0.83 of the im2col convolution's speed, 32 at 1.0-1.2, 64 to 256 at 1.4-1.6.
MIN_CHANNELS = 32

def _computable(w, pad, pool, ho, wo):
    """3x3 taps, padding 0 to 2, pool 1 or 2 fitting the ho x wo output."""
    return w.shape[2:] == (3, 3) and 0 <= pad <= 2 and pool in (1, 2) and min(ho, wo) >= pool


def applies(w, stride, pad, pool, h, wd):
    """Whether ``conv_forward`` takes a conv of weights w (F, C, KH, KW) with this stride, padding and max
    pool on an h x wd input, and should: stride 1, ``_computable``, and at least ``MIN_CHANNELS`` input
    channels."""
    return stride == 1 and w.shape[1] >= MIN_CHANNELS and _computable(w, pad, pool, h + 2 * pad - 2,
                                                                      wd + 2 * pad - 2)


def weight_tiles(w, tile=2):
    """U (16, F, C) = G g G^T of every 3x3 filter g of w (F, C, 3, 3) for F(2x2, 3x3), or U (36, F, C) with
    F(4x4, 3x3)'s G for ``tile`` 4; computed in float64, in w's dtype.

    Made on every call (block weights may change between calls, and batch norm is folded into new
    arrays each time), so it is one threaded pass of ``_weight_tiles`` or ``_weight_tiles6``: about 1 ms
    for 256 x 256 float32 filters on the 2-core EPYC of perf/README.md (NumPy's einsum: 25 ms), once per
    propagation batch."""
    if tile not in (2, 4):
        raise ConfigError(f"Winograd output tiles are 2 or 4 pixels wide, got {tile!r}")
    w = np.ascontiguousarray(w)
    if tile == 4:
        u = np.empty((36,) + w.shape[:2], w.dtype)
        _weight_tiles6(w, u)
    else:
        u = np.empty((16,) + w.shape[:2], w.dtype)
        _weight_tiles(w, u)
    return u


def output_tile(ho, wo):
    """The output tile side conv_forward uses for an ho x wo output: 4 (F(4x4, 3x3)) when both sides are
    multiples of 4, else 2."""
    return 4 if ho % 4 == 0 and wo % 4 == 0 else 2


@numba.njit(nogil=True, cache=True, inline="always")
def _g_rows(g0, g1, g2):
    """G (g0, g1, g2) for G = ((1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1))."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


@numba.njit(parallel=True, cache=True)
def _weight_tiles(w, u):
    """u[4i + j, f, c] = (G g G^T)[i, j] for g = w[f, c] (``_g_rows``), in float64."""
    f, c = w.shape[0], w.shape[1]
    for k in prange(f):
        for ci in range(c):
            g = w[k, ci]
            a0, a1, a2, a3 = _g_rows(np.float64(g[0, 0]), np.float64(g[1, 0]), np.float64(g[2, 0]))
            b0, b1, b2, b3 = _g_rows(np.float64(g[0, 1]), np.float64(g[1, 1]), np.float64(g[2, 1]))
            c0, c1, c2, c3 = _g_rows(np.float64(g[0, 2]), np.float64(g[1, 2]), np.float64(g[2, 2]))
            for i, (x0, x1, x2) in enumerate(((a0, b0, c0), (a1, b1, c1), (a2, b2, c2), (a3, b3, c3))):
                y0, y1, y2, y3 = _g_rows(x0, x1, x2)
                u[4 * i, k, ci] = y0
                u[4 * i + 1, k, ci] = y1
                u[4 * i + 2, k, ci] = y2
                u[4 * i + 3, k, ci] = y3


@numba.njit(nogil=True, cache=True, inline="always")
def _fill_plane(src, pad, rows, cols, plane):
    """plane[pad + r, pad + q] = src[r, q] for r < rows, q < cols: one input plane (H, W) into the middle
    of a zero-padded scratch plane whose border stays zero."""
    for r in range(rows):
        for q in range(cols):
            plane[r + pad, pad + q] = src[r, q]


@numba.njit(nogil=True, cache=True)
def _input_tiles(x, pad, th, tw, v):
    """x (n, C, H, W) -> v (16, C, n*th*tw): B^T d B of the 4x4 input tile d at rows 2a - pad, columns
    2b - pad (zero outside x) of every sample, channel and tile (a, b), tiles ordered by (sample, a, b).

    Each plane is copied into the middle of a zero-padded scratch plane of (2 th + 2) x (2 tw + 2) values,
    so the tiles are read without bounds checks."""
    n, c, h, w = x.shape
    hp, wp = 2 * th + 2, 2 * tw + 2
    rows, cols = min(h, hp - pad), min(w, wp - pad)
    plane = np.zeros((hp, wp), v.dtype)
    t4 = np.empty((4, wp), v.dtype)
    for i in range(n * c):  # channel by channel: each of v's 16 rows of a channel is written in order
        ci = i // n
        s = i - ci * n
        _fill_plane(x[s, ci], pad, rows, cols, plane)
        for a in range(th):
            p0, p1, p2, p3 = plane[2 * a], plane[2 * a + 1], plane[2 * a + 2], plane[2 * a + 3]
            for q in range(wp):  # B^T d: the rows of the strip
                t4[0, q] = p0[q] - p2[q]
                t4[1, q] = p1[q] + p2[q]
                t4[2, q] = p2[q] - p1[q]
                t4[3, q] = p1[q] - p3[q]
            t0 = (s * th + a) * tw
            for e in range(4):  # (B^T d) B: the columns of each tile
                row = t4[e]
                o0, o1, o2, o3 = v[4 * e, ci], v[4 * e + 1, ci], v[4 * e + 2, ci], v[4 * e + 3, ci]
                for b in range(tw):
                    q = 2 * b
                    o0[t0 + b] = row[q] - row[q + 2]
                    o1[t0 + b] = row[q + 1] + row[q + 2]
                    o2[t0 + b] = row[q + 2] - row[q + 1]
                    o3[t0 + b] = row[q + 1] - row[q + 3]


@numba.njit(nogil=True, cache=True, inline="always")
def _tile_rows(m, k, t):
    """The two rows (r0j, r1j) of A^T M of tile t of filter k, M = m[:, k, t] as 4x4."""
    r00 = m[0, k, t] + m[4, k, t] + m[8, k, t]
    r01 = m[1, k, t] + m[5, k, t] + m[9, k, t]
    r02 = m[2, k, t] + m[6, k, t] + m[10, k, t]
    r03 = m[3, k, t] + m[7, k, t] + m[11, k, t]
    r10 = m[4, k, t] - m[8, k, t] - m[12, k, t]
    r11 = m[5, k, t] - m[9, k, t] - m[13, k, t]
    r12 = m[6, k, t] - m[10, k, t] - m[14, k, t]
    r13 = m[7, k, t] - m[11, k, t] - m[15, k, t]
    return r00 + r01 + r02, r01 - r02 - r03, r10 + r11 + r12, r11 - r12 - r13


@numba.njit(nogil=True, cache=True)
def _output_tiles(m, bias, th, tw, relu, pool, y, argmax, wo_conv):
    """m (16, F, n*th*tw) -> y (n, F, Ho, Wo): A^T M A + bias of every tile, then ReLU if ``relu``; with
    ``pool`` 2 the max of each tile is y[s, f, a, b] (y is the pooled map, th x tw), with 1 the tile's
    values within Ho x Wo are written. A non-empty ``argmax`` (y's shape, int32; pool 2 only) gets each
    window's ``max4_argmax`` index into the conv plane, ``wo_conv`` wide."""
    f, n = m.shape[1], y.shape[0]
    ho, wo = y.shape[2], y.shape[3]
    tiles = th * tw
    keep = argmax.size > 0
    zero = m.dtype.type(0)
    lo = zero if relu else m.dtype.type(-np.inf)
    for k in range(f):
        bk = bias[k]
        for s in range(n):
            if pool == 2:  # tile t of sample s is pooled value t - s * tiles of its plane: one run
                dst = y[s, k].reshape(tiles)
                t0 = s * tiles
                if keep:
                    idx = argmax[s, k].reshape(tiles)
                    for q in range(tiles):
                        o00, o01, o10, o11 = _tile_rows(m, k, t0 + q)
                        a = q // tw
                        dst[q], idx[q] = max4_argmax(o00 + bk, o01 + bk, o10 + bk, o11 + bk,
                                                      2 * a * wo_conv + 2 * (q - a * tw), wo_conv, relu, zero)
                    continue
                for q in range(tiles):
                    o00, o01, o10, o11 = _tile_rows(m, k, t0 + q)
                    dst[q] = max(max(max(o00, o01), max(o10, o11)) + bk, lo)
                continue
            dst = y[s, k]
            for a in range(th):
                t0 = (s * th + a) * tw
                r = 2 * a
                for b in range(tw):
                    o00, o01, o10, o11 = _tile_rows(m, k, t0 + b)
                    q = 2 * b
                    dst[r, q] = max(o00 + bk, lo)
                    if q + 1 < wo:
                        dst[r, q + 1] = max(o01 + bk, lo)
                    if r + 1 < ho:
                        dst[r + 1, q] = max(o10 + bk, lo)
                        if q + 1 < wo:
                            dst[r + 1, q + 1] = max(o11 + bk, lo)


# F(4x4, 3x3): a 6x6 input tile d gives a 4x4 output tile A^T [(G g G^T) * (B^T d B)] A, 36 multiplies
# per tile and input channel for 16 outputs (F(2x2, 3x3): 64). Lavin and Gray's matrices:
# G = (1/4, 0, 0; -1/6, -1/6, -1/6; -1/6, 1/6, -1/6; 1/24, 1/12, 1/6; 1/24, -1/12, 1/6; 0, 0, 1),
# B^T = (4, 0, -5, 0, 1, 0; 0, -4, -4, 1, 1, 0; 0, 4, -4, -1, 1, 0; 0, -2, -1, 2, 1, 0; 0, 2, -1, -2, 1, 0;
# 0, 4, 0, -5, 0, 1), A^T = (1, 1, 1, 1, 1, 0; 0, 1, -1, 2, -2, 0; 0, 1, 1, 4, 4, 0; 0, 1, -1, 8, -8, 1).
# Their integer entries as float32 constants: float32 tiles stay float32, float64 ones float64.
_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)


@numba.njit(nogil=True, cache=True, inline="always")
def _g6_rows(g0, g1, g2):
    """G (g0, g1, g2) for F(4x4, 3x3)'s 6x3 G."""
    s, sixth = g0 + g2, 1.0 / 6.0
    return (0.25 * g0, -(s + g1) * sixth, (g1 - s) * sixth, (0.25 * g0 + 0.5 * g1 + g2) * sixth,
            (0.25 * g0 - 0.5 * g1 + g2) * sixth, g2)


@numba.njit(nogil=True, cache=True, inline="always")
def _bt6(p0, p1, p2, p3, p4, p5):
    """B^T (p0, ..., p5) for F(4x4, 3x3)."""
    return (_4 * p0 - _5 * p2 + p4, p3 + p4 - _4 * (p1 + p2), _4 * (p1 - p2) + p4 - p3,
            _2 * (p3 - p1) + p4 - p2, _2 * (p1 - p3) + p4 - p2, _4 * p1 - _5 * p3 + p5)


@numba.njit(nogil=True, cache=True, inline="always")
def _at6(m0, m1, m2, m3, m4, m5):
    """A^T (m0, ..., m5) for F(4x4, 3x3)."""
    a, b = m1 + m2, m1 - m2
    c, d = m3 + m4, m3 - m4
    return m0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + m5


@numba.njit(parallel=True, cache=True)
def _weight_tiles6(w, u):
    """u[6i + j, f, c] = (G g G^T)[i, j] for g = w[f, c] and F(4x4, 3x3)'s G, in float64."""
    f, c = w.shape[0], w.shape[1]
    for k in prange(f):
        t = np.empty((6, 3))
        block = np.empty((36, c), u.dtype)  # filter k's tiles, copied to u's 36 rows in runs
        for ci in range(c):
            g = w[k, ci]
            for col in range(3):  # G g
                t0, t1, t2, t3, t4, t5 = _g6_rows(np.float64(g[0, col]), np.float64(g[1, col]),
                                                  np.float64(g[2, col]))
                t[0, col], t[1, col], t[2, col], t[3, col], t[4, col], t[5, col] = t0, t1, t2, t3, t4, t5
            for i in range(6):  # (G g) G^T
                y0, y1, y2, y3, y4, y5 = _g6_rows(t[i, 0], t[i, 1], t[i, 2])
                block[6 * i, ci], block[6 * i + 1, ci], block[6 * i + 2, ci] = y0, y1, y2
                block[6 * i + 3, ci], block[6 * i + 4, ci], block[6 * i + 5, ci] = y3, y4, y5
        for e in range(36):
            u[e, k] = block[e]


# Tiles of F(4x4, 3x3) transformed at a time into a local block before they are copied to (or read from)
# the 36 rows of V (or M) in runs: written tile by tile, the 36 scattered rows cost 4x the arithmetic.
TILE_BLOCK = 256


@numba.njit(nogil=True, cache=True)
def _input_tiles6(x, pad, th, tw, v):
    """x (n, C, H, W) -> v (36, C, n*th*tw): B^T d B of the 6x6 input tile d at rows 4a - pad, columns
    4b - pad (zero outside x), tiles ordered by (sample, a, b), through a zero-padded scratch plane of
    (4 th + 2) x (4 tw + 2) values, as ``_input_tiles``. The tiles of ``TILE_BLOCK`` // (th tw) samples
    of a channel are made in a local block, then copied to v's rows."""
    n, c, h, w = x.shape
    hp, wp = 4 * th + 2, 4 * tw + 2
    rows, cols = min(h, hp - pad), min(w, wp - pad)
    tiles = th * tw
    group = max(1, TILE_BLOCK // tiles)
    plane = np.zeros((hp, wp), v.dtype)
    t6 = np.empty((6, wp), v.dtype)
    block = np.empty((36, group * tiles), v.dtype)
    for ci in range(c):
        for s0 in range(0, n, group):
            s1 = min(n, s0 + group)
            for s in range(s0, s1):
                _fill_plane(x[s, ci], pad, rows, cols, plane)
                for a in range(th):
                    p0, p1, p2, p3 = plane[4 * a], plane[4 * a + 1], plane[4 * a + 2], plane[4 * a + 3]
                    p4, p5 = plane[4 * a + 4], plane[4 * a + 5]
                    for q in range(wp):  # B^T d: the rows of the strip
                        r0, r1, r2, r3, r4, r5 = _bt6(p0[q], p1[q], p2[q], p3[q], p4[q], p5[q])
                        t6[0, q] = r0
                        t6[1, q] = r1
                        t6[2, q] = r2
                        t6[3, q] = r3
                        t6[4, q] = r4
                        t6[5, q] = r5
                    t0 = (s - s0) * tiles + a * tw
                    for e in range(6):  # (B^T d) B: the columns of each tile
                        row = t6[e]
                        for b in range(tw):
                            q = 4 * b
                            r0, r1, r2, r3, r4, r5 = _bt6(row[q], row[q + 1], row[q + 2], row[q + 3], row[q + 4],
                                                          row[q + 5])
                            block[6 * e, t0 + b] = r0
                            block[6 * e + 1, t0 + b] = r1
                            block[6 * e + 2, t0 + b] = r2
                            block[6 * e + 3, t0 + b] = r3
                            block[6 * e + 4, t0 + b] = r4
                            block[6 * e + 5, t0 + b] = r5
            size = (s1 - s0) * tiles
            for e in range(36):
                v[e, ci, s0 * tiles:s0 * tiles + size] = block[e, :size]


@numba.njit(nogil=True, cache=True)
def _output_tiles6(m, bias, th, tw, relu, pool, y, argmax, wo_conv):
    """m (36, F, n*th*tw) -> y (n, F, 4 th / pool, 4 tw / pool): A^T M A + bias of every 4x4 tile, then ReLU
    if ``relu``, then with ``pool`` 2 the max of each 2x2 window, and where ``argmax`` (y's shape, int32)
    is not empty, its ``max4_argmax`` index into the conv plane, ``wo_conv`` wide. The tiles of
    ``TILE_BLOCK`` // (th tw) samples of a filter are transformed together, each stage a loop over the tiles."""
    f, n = m.shape[1], y.shape[0]
    tiles = th * tw
    group = max(1, TILE_BLOCK // tiles)
    keep = argmax.size > 0
    zero = m.dtype.type(0)
    lo = zero if relu else m.dtype.type(-np.inf)
    rows = np.empty((24, group * tiles), m.dtype)  # A^T M: row i, column j at 6 i + j
    out = np.empty((16, group * tiles), m.dtype)  # A^T M A + bias: row i, column j at 4 i + j
    for k in range(f):
        bk = bias[k]
        for s0 in range(0, n, group):
            s1 = min(n, s0 + group)
            size = (s1 - s0) * tiles
            mk = m[:, k, s0 * tiles:s0 * tiles + size]
            for j in range(6):
                for t in range(size):
                    r0, r1, r2, r3 = _at6(mk[j, t], mk[6 + j, t], mk[12 + j, t], mk[18 + j, t], mk[24 + j, t],
                                          mk[30 + j, t])
                    rows[j, t] = r0
                    rows[6 + j, t] = r1
                    rows[12 + j, t] = r2
                    rows[18 + j, t] = r3
            for i in range(4):
                for t in range(size):
                    o0, o1, o2, o3 = _at6(rows[6 * i, t], rows[6 * i + 1, t], rows[6 * i + 2, t], rows[6 * i + 3, t],
                                          rows[6 * i + 4, t], rows[6 * i + 5, t])
                    out[4 * i, t] = o0 + bk
                    out[4 * i + 1, t] = o1 + bk
                    out[4 * i + 2, t] = o2 + bk
                    out[4 * i + 3, t] = o3 + bk
            for s in range(s0, s1):
                dst = y[s, k]
                for a in range(th):
                    for b in range(tw):
                        t = (s - s0) * tiles + a * tw + b
                        if pool == 1:
                            for i in range(4):
                                for j in range(4):
                                    dst[4 * a + i, 4 * b + j] = max(out[4 * i + j, t], lo)
                            continue
                        for i in range(2):
                            for j in range(2):
                                e = 8 * i + 2 * j
                                if keep:
                                    dst[2 * a + i, 2 * b + j], argmax[s, k, 2 * a + i, 2 * b + j] = max4_argmax(
                                        out[e, t], out[e + 1, t], out[e + 4, t], out[e + 5, t],
                                        (4 * a + 2 * i) * wo_conv + 4 * b + 2 * j, wo_conv, relu, zero)
                                else:
                                    dst[2 * a + i, 2 * b + j] = max(max(max(out[e, t], out[e + 1, t]),
                                                                        max(out[e + 4, t], out[e + 5, t])), lo)


def conv_forward(x, w, b, pad=1, relu=False, pool=1, out=None, keep_argmax=False):
    """maxpool(relu(conv(x, w) + b)) for 3x3 filters, stride 1: ``greedy.kernels.conv.conv2d_forward``'s
    result up to rounding, by Winograd F(4x4, 3x3) or F(2x2, 3x3) (``output_tile``).

    x (N, C, H, W), w (F, C, 3, 3), b (F,), one float dtype; ``pool`` 1 or 2 (a 2x2 max pool with stride
    2, flooring odd sides); ``out`` as in ``conv2d_forward``. Returns (N, F, Ho // pool, Wo // pool) with
    Ho = H + 2 pad - 2 (same for Wo); with ``keep_argmax`` (pool 2 only), (that map, argmax) as
    ``conv2d_forward(..., keep_argmax=True)`` gives them, for ``conv2d_backward(..., argmax=argmax)``.
    """
    x, w, stride, pad, ho, wo = ck._conv_args(x, w, 1, pad)
    b = validate.float_array(b, "b", 1)
    _same_dtype(x=x, w=w, b=b)
    pool = validate.integer(pool, "pool", 1)
    if not _computable(w, pad, pool, ho, wo):
        raise ConfigError(f"Winograd convolution takes 3x3 filters, padding 0-2 and pool 1 or 2 fitting the "
                          f"output, got {w.shape[2]}x{w.shape[3]}, padding {pad}, pool {pool}")
    f, c = w.shape[:2]
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    if keep_argmax and pool != 2:
        raise ConfigError(f"Winograd convolution keeps the argmax of a 2x2 max pool only, got pool {pool}")
    n, dt = x.shape[0], x.dtype
    tile = output_tile(ho, wo)
    if tile == 4:
        th, tw = ho // 4, wo // 4
    else:
        th, tw = (ho // 2, wo // 2) if pool == 2 else (-(-ho // 2), -(-wo // 2))
    y = ck._output(out, (n, f, ho // pool, wo // pool), dt)
    argmax = np.empty(y.shape if keep_argmax else (0, 0, 0, 0), np.int32)
    u = weight_tiles(w, tile)
    tiles, e_count = th * tw, len(u)
    nb = ck.chunk_samples(n, e_count * (c + f) * tiles * dt.itemsize, CHUNK_BYTES, numba.get_num_threads(),
                          SPLIT_BYTES)

    def task(n0, m, buf):
        v, mt = _split(buf, dt, e_count * c * m * tiles, e_count * f * m * tiles)
        v, mt = v.reshape(e_count, c, m * tiles), mt.reshape(e_count, f, m * tiles)
        (_input_tiles6 if tile == 4 else _input_tiles)(x[n0:n0 + m], pad, th, tw, v)
        for e in range(e_count):
            np.matmul(u[e], v[e], out=mt[e])
        (_output_tiles6 if tile == 4 else _output_tiles)(mt, b, th, tw, bool(relu), pool, y[n0:n0 + m],
                                                          argmax[n0:n0 + m], wo)

    _run_chunks(task, n, nb, _scratch_bytes(dt, e_count * c * nb * tiles, e_count * f * nb * tiles))
    return (y, argmax) if keep_argmax else y


def convolve(x, w, b, stride=1, pad=0, relu=False, pool=1, keep_argmax=False, out=None):
    """``greedy.kernels.conv.conv2d_forward(x, w, b, stride, pad, relu, pool, keep_argmax, out)``, by
    ``conv_forward`` where Winograd ``applies`` (x (N, C, H, W) with C >= ``MIN_CHANNELS``, 3x3 taps, stride 1;
    pool 2 when ``keep_argmax``), else by im2col."""
    if (x.ndim == 4 and applies(w, stride, pad, pool, x.shape[2], x.shape[3])
            and (pool == 2 or not keep_argmax)):
        return conv_forward(x, w, b, pad, relu=relu, pool=pool, out=out, keep_argmax=keep_argmax)
    return ck.conv2d_forward(x, w, b, stride, pad, relu=relu, pool=pool, keep_argmax=keep_argmax, out=out)


def input_grad_applies(w, stride, pad):
    """Whether ``input_grad`` takes the input gradient of a conv of weights w (F, C, KH, KW) with this stride
    and padding, and should: 3x3 taps, stride 1, padding 0-2, and F <= C with F at least ``MIN_CHANNELS``. On the
    2-core EPYC (512 images; perf/README.md, "The CIFAR-10 end-to-end step") it took 0.54-0.77 of the im2col
    input gradient's time for F = C = 32, 64 and 128, but 1.0-1.3 for 32 -> 64 and 64 -> 128 convs."""
    return stride == 1 and w.shape[2:] == (3, 3) and 0 <= pad <= 2 and MIN_CHANNELS <= w.shape[0] <= w.shape[1]


def input_grad(dy, w, pad=1):
    """dL/dx of a 3x3, stride-1 conv of weights w (F, C, 3, 3) and padding ``pad`` given dy (N, F, Ho, Wo), one
    float dtype: the full correlation of dy with the mirrored, transposed filters, by ``conv_forward``.
    Returns (N, C, Ho + 2 pad - 2, Wo + 2 pad - 2) (the conv input's shape); ``conv2d_backward``'s dx up to
    rounding."""
    w = validate.float_array(w, "w", 4)
    if w.shape[2:] != (3, 3) or not 0 <= pad <= 2:
        raise ConfigError(f"Winograd input gradients take 3x3 filters and padding 0-2, got "
                          f"{w.shape[2]}x{w.shape[3]}, padding {pad}")
    mirrored = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return conv_forward(dy, mirrored, np.zeros(w.shape[1], w.dtype), 2 - pad)
