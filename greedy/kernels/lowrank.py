"""A convolution of rank d applied as two: d filters over the whole window, then a 1x1 mix to F channels.

A patch-bag block's conv is trained in the d-dimensional preprocessed patch space
(``greedy.cluster.patches``): its weights are ``mix @ basis`` for a basis of d full-window filters
(the whitening map) and a (F, d) mix, so every output pixel costs d x (C x K x K + F) multiplies
instead of F x C x K x K. For 256 filters over a 3x3 window of 128 channels and d = 32 that is
6.5 times fewer. ``conv_forward`` computes the d basis maps (by Winograd when it applies), then,
chunk by chunk, one BLAS multiply by the mix and the bias, ReLU and max pool of
``greedy.kernels.convpool`` on its output.

Threads and memory as in ``greedy.kernels.conv``: worker threads take whole chunks; each holds one
chunk's transposed basis maps and mixed output, (d + F) x n x Ho x Wo values, at most ``CHUNK_BYTES``.
The basis maps of the whole call, N x d x Ho x Wo values, are made first.
"""
import numpy as np

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.kernels import winograd
from greedy.kernels.cast import as_float32
from greedy.kernels.conv import _fnp_to_nfp, _run_chunks, _same_dtype, _scratch_bytes, _split
from greedy.kernels.convpool import fnp_to_nfp_relu_pool

CHUNK_BYTES = 4 * 2**20


def compose(basis, basis_bias, mix, mix_bias):
    """The one conv of a rank-d factorisation, in float64: weights mix @ basis (F, C, K...) and bias
    mix @ basis_bias + mix_bias (F,), for basis (d, C, K...) (2-D or 1-D windows), basis_bias (d,),
    mix (F, d), mix_bias (F,)."""
    basis, mix = np.asarray(basis, np.float64), np.asarray(mix, np.float64)
    d = basis.shape[0]
    if mix.ndim != 2 or mix.shape[1] != d or np.shape(basis_bias) != (d,) or np.shape(mix_bias) != (len(mix),):
        raise ConfigError(f"a rank-{d} factorisation takes basis_bias ({d},), mix (F, {d}) and mix_bias (F,), got "
                          f"{np.shape(basis_bias)}, {np.shape(mix)} and {np.shape(mix_bias)}")
    w = (mix @ basis.reshape(d, -1)).reshape((len(mix),) + basis.shape[1:])
    return w, mix @ np.asarray(basis_bias, np.float64) + np.asarray(mix_bias, np.float64)


def cheaper(channels, kernel_size, rank, filters):
    """Whether a rank-``rank`` conv of ``filters`` filters over ``channels`` x ``kernel_size``^2 windows
    takes at most a quarter of the multiplies as two convs (basis, then mix) that it takes as one: below
    that the two passes over memory cost what the multiplies save (32 -> 64 filters over 14 x 14 maps at
    rank 32, 0.44 of the multiplies, ran 5 % slower; 128 -> 256 at 16 x 16, 0.15, 2.2 times faster)."""
    window = channels * kernel_size * kernel_size
    return rank * (window + filters) <= 0.25 * window * filters


def basis_conv(x, basis, basis_bias, pad=1):
    """conv(x, basis) + basis_bias (N, d, Ho, Wo), stride 1: by Winograd where it applies, else im2col."""
    if winograd.applies(basis, 1, pad, 1, x.shape[2], x.shape[3]):
        return winograd.conv_forward(x, basis, basis_bias, pad)
    return ck.conv2d_forward(x, basis, basis_bias, 1, pad)


def basis_maps(x, basis, basis_bias, pad=1, batch=2048):
    """The basis maps (N, d, Ho, Wo) float32 of x (N, C, H, W) float16 or float32: conv(x, basis) +
    basis_bias, ``batch`` images converted to float32 at a time."""
    out = None
    for i in range(0, len(x), batch):
        z = basis_conv(as_float32(np.ascontiguousarray(x[i:i + batch])), basis, basis_bias, pad)
        if out is None:
            out = np.empty((len(x),) + z.shape[1:], np.float32)
        out[i:i + len(z)] = z
    return out


def conv_forward(x, basis, basis_bias, mix, bias, pad=1, relu=False, pool=1, out=None):
    """maxpool(relu(conv(x, w) + b)) for w = mix @ basis and b = mix @ basis_bias + bias, stride 1, computed
    as the d basis maps, then their 1x1 mix: ``greedy.kernels.conv.conv2d_forward``'s result with those
    w and b, up to rounding.

    x (N, C, H, W); basis (d, C, K, K); basis_bias (d,); mix (F, d); bias (F,); one float dtype.
    ``pool`` as in ``conv2d_forward`` (a size x size max pool with stride size, flooring odd sides);
    ``out`` a C-contiguous array of the result's shape and dtype to receive it, or None.
    Returns (N, F, Ho // pool, Wo // pool), Ho = H + 2 pad - K + 1 (same for Wo).
    """
    x, basis, _, pad, ho, wo = ck._conv_args(x, basis, 1, pad)
    basis_bias, bias = validate.float_array(basis_bias, "basis_bias", 1), validate.float_array(bias, "bias", 1)
    mix = validate.float_array(mix, "mix", 2)
    _same_dtype(x=x, basis=basis, basis_bias=basis_bias, mix=mix, bias=bias)
    d, f = basis.shape[0], mix.shape[0]
    if basis_bias.shape[0] != d or mix.shape[1] != d or bias.shape[0] != f:
        raise ConfigError(f"a rank-{d} conv takes basis_bias ({d},), mix (F, {d}) and bias (F,), got "
                          f"{basis_bias.shape}, {mix.shape} and {bias.shape}")
    pool = validate.integer(pool, "pool", 1)
    if pool > min(ho, wo):
        raise ConfigError(f"pool {pool} does not fit a {ho}x{wo} conv output")
    z = basis_conv(x, basis, basis_bias, pad)
    n, dt, p = x.shape[0], x.dtype, ho * wo
    z = z.reshape(n, d, p)
    mix = np.ascontiguousarray(mix)
    y = ck._output(out, (n, f, ho // pool, wo // pool), dt)
    nb = max(1, min(n, CHUNK_BYTES // ((d + f) * p * dt.itemsize)))

    def task(n0, m, buf):
        zt, yt = _split(buf, dt, d * m * p, f * m * p)
        zt, yt = zt.reshape(d, m, p), yt.reshape(f, m, p)
        np.copyto(zt, z[n0:n0 + m].transpose(1, 0, 2))
        np.matmul(mix, zt.reshape(d, m * p), out=yt.reshape(f, m * p))
        if relu or pool > 1:
            fnp_to_nfp_relu_pool(yt, bias, wo, pool, bool(relu), y[n0:n0 + m])
        else:
            _fnp_to_nfp(yt, bias, y[n0:n0 + m].reshape(m, f, p))

    _run_chunks(task, n, nb, _scratch_bytes(dt, d * nb * p, f * nb * p))
    return y
