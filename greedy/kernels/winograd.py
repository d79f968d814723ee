"""Winograd F(2x2, 3x3) convolution for inference: 3x3, stride-1 convs with bias, ReLU and 2x2 max pool fused.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). Each 2x2 output tile of a
filter is ``A^T [(G g G^T) * (B^T d B)] A`` for its 4x4 input tile d: 16 multiplies per tile and
input channel instead of 36. Over a chunk of samples with T tiles, the elementwise products summed
over channels are 16 BLAS multiplies ``M[e] (F, T) = U[e] (F, C) @ V[e] (C, T)``, one per position
e of the 4x4 transformed tile, with U = G g G^T (``weight_tiles``) and V = B^T d B (``_input_tiles``).
With a 2x2 max pool the output tiles are the pooling windows, so ``_output_tiles`` writes the pooled
map straight from M: bias, ReLU and the max in one pass, and no full-size map exists.

Threads and scratch memory are those of ``greedy.kernels.conv`` (one worker per core, each taking
whole chunks, single-threaded BLAS): a chunk's V and M take 16 (C + F) values a tile, at most
``CHUNK_BYTES`` (8 MiB) per worker. The results differ from the direct convolution by rounding only:
the transforms add and subtract in another order (in float32, within 2e-6 of the largest output in
``tests/test_winograd.py``).
"""
import numba
import numpy as np
from numba import prange

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.kernels.conv import _run_chunks, _same_dtype, _scratch_bytes, _split

CHUNK_BYTES = 8 * 2**20
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


def weight_tiles(w):
    """U (16, F, C) = G g G^T of every 3x3 filter g of w (F, C, 3, 3), computed in float64, in w's dtype.

    Made on every call (block weights may change between calls, and batch norm is folded into new
    arrays each time), so it is one threaded pass of ``_weight_tiles``: 3.7 ms for 256 x 256 float32
    filters, where NumPy's einsum took 25 ms, once per propagation batch."""
    u = np.empty((16,) + w.shape[:2], w.dtype)
    _weight_tiles(np.ascontiguousarray(w), u)
    return u


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
        for r in range(rows):
            for q in range(cols):
                plane[r + pad, pad + q] = x[s, ci, r, q]
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
def _output_tiles(m, bias, th, tw, relu, pool, y):
    """m (16, F, n*th*tw) -> y (n, F, Ho, Wo): A^T M A + bias of every tile, then ReLU if ``relu``; with
    ``pool`` 2 the max of each tile is y[s, f, a, b] (y is the pooled map, th x tw), with 1 the tile's
    values within Ho x Wo are written."""
    f, n = m.shape[1], y.shape[0]
    ho, wo = y.shape[2], y.shape[3]
    tiles = th * tw
    lo = m.dtype.type(0) if relu else m.dtype.type(-np.inf)
    for k in range(f):
        bk = bias[k]
        for s in range(n):
            if pool == 2:  # tile t of sample s is pooled value t - s * tiles of its plane: one run
                dst = y[s, k].reshape(tiles)
                t0 = s * tiles
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


def conv_forward(x, w, b, pad=1, relu=False, pool=1, out=None):
    """maxpool(relu(conv(x, w) + b)) for 3x3 filters, stride 1: ``greedy.kernels.conv.conv2d_forward``'s
    result up to rounding, by Winograd F(2x2, 3x3).

    x (N, C, H, W), w (F, C, 3, 3), b (F,), one float dtype; ``pool`` 1 or 2 (a 2x2 max pool with stride
    2, flooring odd sides); ``out`` as in ``conv2d_forward``. Returns (N, F, Ho // pool, Wo // pool) with
    Ho = H + 2 pad - 2 (same for Wo).
    """
    x, w, stride, pad, ho, wo = ck._conv_args(x, w, 1, pad)
    b = validate.float_array(b, "b", 1)
    _same_dtype(x=x, w=w, b=b)
    pool = validate.integer(pool, "pool", 1)
    if not _computable(w, pad, pool, ho, wo):
        raise ConfigError(f"Winograd F(2x2, 3x3) takes 3x3 filters, padding 0-2 and pool 1 or 2 fitting the "
                          f"output, got {w.shape[2]}x{w.shape[3]}, padding {pad}, pool {pool}")
    f, c = w.shape[:2]
    if b.shape[0] != f:
        raise ConfigError(f"b has {b.shape[0]} entries but w has {f} filters")
    n, dt = x.shape[0], x.dtype
    th, tw = (ho // 2, wo // 2) if pool == 2 else (-(-ho // 2), -(-wo // 2))
    y = ck._output(out, (n, f, ho // pool, wo // pool), dt)
    u = weight_tiles(w)
    tiles = th * tw
    nb = max(1, min(n, CHUNK_BYTES // (16 * (c + f) * tiles * dt.itemsize)))

    def task(n0, m, buf):
        v, mt = _split(buf, dt, 16 * c * m * tiles, 16 * f * m * tiles)
        v, mt = v.reshape(16, c, m * tiles), mt.reshape(16, f, m * tiles)
        _input_tiles(x[n0:n0 + m], pad, th, tw, v)
        for e in range(16):
            np.matmul(u[e], v[e], out=mt[e])
        _output_tiles(mt, b, th, tw, bool(relu), pool, y[n0:n0 + m])

    _run_chunks(task, n, nb, _scratch_bytes(dt, 16 * c * nb * tiles, 16 * f * nb * tiles))
    return y
