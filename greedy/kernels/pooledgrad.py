"""Weight and input gradients of a convolution followed by max pooling, taken from the pooled gradient.

A max pool passes each window's gradient to one conv output, the window's argmax, so at most one
value in size x size of the conv output's gradient is not zero (none where a ReLU clipped the
window). The im2col backward (``greedy.kernels.conv``) multiplies that mostly-zero map all the same;
these kernels visit the window maxima only. For a maximum of gradient g at conv output (oh, ow):

- the weight gradient of its filter gets g times the input patch under it;
- the input gradient under that patch gets g times the filter.

Both are runs of kw*C contiguous values when the input and its gradient are held channels last and
zero padded, (m, H + 2 pad, W + 2 pad, C), and the weights as (F, KH, KW*C). Four maxima go through
each run at a time (four patches of one filter for the weight gradient; four filters whose maxima
lie at one position for the input gradient), so that every value loaded or stored serves four
multiply-adds.

Serial ``nogil`` kernels over a chunk of m samples, float32 or float64 (one dtype per call),
argmax int32 flat indices oh * Wo + ow into the conv output plane (-1: no gradient), as
``greedy.kernels.convpool.fnp_to_nfp_relu_pool_argmax`` writes them. Every index must lie in
[-1, Ho * Wo): the caller checks that, the kernels do not.
"""
import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def to_padded_channels_last(x, pad, xp):
    """x (m, C, H, W) -> xp (m, H + 2 pad, W + 2 pad, C), zero outside the middle (only the border is
    cleared: the middle is written)."""
    m, c, h, w = x.shape
    for s in range(m):
        xp[s, :pad] = 0
        xp[s, pad + h:] = 0
        for r in range(h):
            row = xp[s, r + pad]
            row[:pad] = 0
            row[pad + w:] = 0
            for ci in range(c):
                src = x[s, ci, r]
                for col in range(w):
                    row[col + pad, ci] = src[col]


@numba.njit(nogil=True, cache=True)
def from_padded_channels_last(xp, pad, x):
    """The middle of xp (m, H + 2 pad, W + 2 pad, C) -> x (m, C, H, W)."""
    m, c, h, w = x.shape
    for s in range(m):
        for ci in range(c):
            for r in range(h):
                src, dst = xp[s, r + pad], x[s, ci, r]
                for col in range(w):
                    dst[col] = src[col + pad, ci]


@numba.njit(nogil=True, cache=True, inline="always", fastmath={"contract"})
def _add_scaled(dst, src, g, n):
    """dst[:n] += g * src[:n]."""
    for t in range(n):
        dst[t] += g * src[t]


@numba.njit(nogil=True, cache=True, inline="always", fastmath={"contract"})
def _add_scaled4(dst, s0, s1, s2, s3, g0, g1, g2, g3, n):
    """dst[:n] += g0 * s0[:n] + g1 * s1[:n] + g2 * s2[:n] + g3 * s3[:n]."""
    for t in range(n):
        dst[t] += g0 * s0[t] + g1 * s1[t] + g2 * s2[t] + g3 * s3[t]


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def weight_grad(xp, dy, argmax, kh, wo, stride, dwt, dbpart):
    """Adds to dwt (F, KH, KW*C) the weight gradient of the conv whose pooled output's gradient is
    dy (m, F, hp, wp), for its input xp (m, Hp, Wp, C) (``to_padded_channels_last``); writes the
    bias-gradient partials, the sums of dy over windows with a maximum, into dbpart (m, F) float64."""
    m, f_count, hp, wp = dy.shape
    wpad, c = xp.shape[2], xp.shape[3]
    run = dwt.shape[2]
    rowstride = wpad * c
    bases = np.empty(hp * wp, np.int64)
    grads = np.empty(hp * wp, dwt.dtype)
    for s in range(m):
        xs = xp[s].reshape(-1)
        for f in range(f_count):
            count = 0
            acc = 0.0
            for a in range(hp):
                for b in range(wp):
                    at = argmax[s, f, a, b]
                    if at >= 0:   # the offset in xs of the top-left value of the patch under the maximum
                        oh = at // wo
                        bases[count] = oh * stride * rowstride + (at - oh * wo) * stride * c
                        grads[count] = dy[s, f, a, b]
                        acc += grads[count]
                        count += 1
            dbpart[s, f] = acc
            rows = dwt[f]
            j = 0
            while j + 4 <= count:
                b0, b1, b2, b3 = bases[j], bases[j + 1], bases[j + 2], bases[j + 3]
                for i in range(kh):
                    o = i * rowstride
                    _add_scaled4(rows[i], xs[b0 + o:], xs[b1 + o:], xs[b2 + o:], xs[b3 + o:],
                                 grads[j], grads[j + 1], grads[j + 2], grads[j + 3], run)
                j += 4
            for q in range(j, count):
                for i in range(kh):
                    _add_scaled(rows[i], xs[bases[q] + i * rowstride:], grads[q], run)


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def input_grad(dy, argmax, wt, wo, stride, dxp):
    """Adds to dxp (m, Hp, Wp, C) the input gradient of the conv of weights wt (F, KH, KW*C) whose
    pooled output's gradient is dy (m, F, hp, wp)."""
    m, f_count, hp, wp = dy.shape
    kh, run = wt.shape[1], wt.shape[2]
    wpad, c = dxp.shape[2], dxp.shape[3]
    rowstride = wpad * c
    # per window: the distinct positions of its filters' maxima, and which filters have each
    positions = np.empty(f_count, np.int64)
    members = np.empty((f_count, f_count), np.int64)
    sizes = np.empty(f_count, np.int64)
    for s in range(m):
        ds = dxp[s].reshape(-1)
        for a in range(hp):
            for b in range(wp):
                n_pos = 0
                for f in range(f_count):
                    at = argmax[s, f, a, b]
                    if at < 0:
                        continue
                    k = 0
                    while k < n_pos and positions[k] != at:
                        k += 1
                    if k == n_pos:
                        positions[k] = at
                        sizes[k] = 0
                        n_pos += 1
                    members[k, sizes[k]] = f
                    sizes[k] += 1
                for k in range(n_pos):
                    at = positions[k]
                    oh = at // wo
                    base = oh * stride * rowstride + (at - oh * wo) * stride * c
                    fs = members[k]
                    j = 0
                    while j + 4 <= sizes[k]:
                        f0, f1, f2, f3 = fs[j], fs[j + 1], fs[j + 2], fs[j + 3]
                        for i in range(kh):
                            _add_scaled4(ds[base + i * rowstride:], wt[f0, i], wt[f1, i], wt[f2, i], wt[f3, i],
                                         dy[s, f0, a, b], dy[s, f1, a, b], dy[s, f2, a, b], dy[s, f3, a, b], run)
                        j += 4
                    for q in range(j, sizes[k]):
                        for i in range(kh):
                            _add_scaled(ds[base + i * rowstride:], wt[fs[q], i], dy[s, fs[q], a, b], run)
