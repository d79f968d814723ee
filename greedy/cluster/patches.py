"""3x3 patches of a layer's input, windows of a sequence, and their affine preprocessing.

A patch is the (C, 3, 3) window around a pixel (zero padding 1), flattened in
(c, kh, kw) order to a vector of 9C: exactly what a 3x3 "same" convolution
sees. On a sequence (N, C, L) a patch is the (C, k) window of k consecutive
positions around a position (k odd, zero padding k // 2), flattened in (c, k)
order to a vector of kC: what a width-k "same" Conv1d sees. Below, 9C reads kC. Preprocessing is an affine map z = p @ A + c (A (9C, d), c (d,)), so a
filter bank W (d, F) trained on preprocessed patches is the ordinary conv with
weights A @ W and bias b + c @ W on the raw input (``fold_into_conv``).

Defaults and why:

- ``remove_mean=True`` subtracts each patch's mean per channel (seed 003's
  colour normalisation): clusters then describe spatial structure, not the
  colour or brightness that dominate raw patch distances.
- ``whiten="pca"`` rotates to principal components, keeps the leading
  ``n_components`` (at most 64 by default; the patch-bag trainer asks for 32,
  16 on MNIST) and scales each to unit variance
  (with ``eps`` regularisation, as in Coates & Ng 2011). k-means in whitened
  space finds edge-like centroids instead of low-frequency blobs, and the
  reduced dimension makes every assignment cheaper.
"""
import numpy as np

from greedy.kernels import winograd
from greedy.kernels.cast import as_float32, to_channels_last
from greedy.kernels.conv import conv2d_forward
from greedy.kernels.conv1d import conv1d_forward
from greedy.kernels.im2col import gather_patches, im2col
from greedy.kernels.lowrank import compose
from greedy.kernels.pointwise import centred_rows
from greedy.kernels.taps import conv_taps
from greedy.memory import once_written_array
from greedy.errors import ConfigError


def extract_patches(x, size=3):
    """All size x size patches with "same" zero padding: x (N, C, H, W) -> (N*H*W, C*size*size), rows image-major;
    or all windows of ``size`` positions of sequences x (N, C, L) -> (N*L, C*size), rows sequence-major."""
    if size % 2 != 1:
        raise ConfigError(f"patch size must be odd, got {size}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 3:
        n, c, length = x.shape
        windows = np.lib.stride_tricks.sliding_window_view(_pad_sequences(x, size), size, axis=2)
        return np.ascontiguousarray(windows.transpose(0, 2, 1, 3)).reshape(n * length, c * size)
    return im2col(x, size, size, 1, size // 2)


def _pad_sequences(x, size):
    p = size // 2
    return np.pad(x, ((0, 0), (0, 0), (p, p)))


def gather_windows(x, seq, pos, size):
    """Rows of ``extract_patches(x, size)`` for (sequence, position) pairs only: x (N, C, L) float32,
    seq, pos (M,) int -> (M, C*size) float32."""
    windows = _pad_sequences(x, size)[seq[:, None], :, pos[:, None] + np.arange(size)]  # (M, size, C)
    return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(len(seq), -1)


def sample_patches(x, n_patches, rng, size=3, chunk_images=2048):
    """A uniform random sample of ``n_patches`` patches from images x (N, C, H, W) (or windows from
    sequences x (N, C, L)), gathered image-chunk by chunk.

    Only the sampled windows are read (no full patch matrix): image patches straight from a float16
    or float32 x, windows from a chunk of ``chunk_images`` sequences converted to float32; each
    chunk's patches are written into the one output array. Returns (n_patches, C*size*size) float32
    ((n_patches, C*size) for sequences).
    """
    n = len(x)
    h, w = x.shape[2:] if x.ndim == 4 else (1, x.shape[2])
    positions = h * w
    picks = rng.choice(n * positions, size=min(n_patches, n * positions), replace=False)
    picks.sort()
    img, pos = picks // positions, picks % positions
    starts = np.arange(0, n, chunk_images)
    bounds = np.searchsorted(img, np.append(starts, n))
    out = once_written_array((len(picks), x.shape[1] * size ** (x.ndim - 2)), np.float32)
    for start, a, b in zip(starts, bounds[:-1], bounds[1:]):
        if a == b:
            continue
        if x.ndim == 3:
            xb = np.ascontiguousarray(x[start:start + chunk_images], dtype=np.float32)
            out[a:b] = gather_windows(xb, img[a:b] - start, pos[a:b], size)
            continue
        xb = x[start:start + chunk_images]
        if xb.dtype.kind != "f":
            xb = xb.astype(np.float32)
        out[a:b] = gather_patches(xb, img[a:b] - start, pos[a:b] // w, pos[a:b] % w, size, size, size // 2)
    return out


def centred_patches(patches, step, mu):
    """Every ``step``-th row of patches (n, D) minus mu (D,) float64, as float32 (ceil(n / step), D)."""
    patches = np.ascontiguousarray(patches, dtype=np.float32)
    mu = np.ascontiguousarray(mu, dtype=np.float64)
    if patches.ndim != 2 or mu.shape != (patches.shape[1],) or step < 1:
        raise ConfigError(f"centred_patches needs patches (n, D), mu (D,) and step >= 1, got {patches.shape}, "
                          f"{mu.shape} and {step}")
    out = np.empty((-(-len(patches) // step), patches.shape[1]), np.float32)
    centred_rows(patches, int(step), mu, out)
    return out


def mean_removal_matrix(channels, size=3, ndim=2):
    """(9C, 9C) projection subtracting each channel's mean over the size x size window (``ndim=1``: over
    the window of ``size`` positions, (kC, kC))."""
    k = size ** ndim
    return np.eye(channels * k) - np.kron(np.eye(channels), np.full((k, k), 1.0 / k))


class PatchPreprocessor:
    """Fit an affine patch map z = p @ A_ + c_ on sample patches (n, 9C).

    Parameters: ``channels`` of the input, ``size`` (odd), ``ndim`` (2: size x size patches of images,
    1: windows of ``size`` positions of sequences), ``remove_mean`` (bool), ``whiten``
    ("pca" or None), ``n_components`` (int or None: min(9C, 64)), ``eps``
    (added to eigenvalues, relative to the largest).
    Fitted: ``A_`` (9C, d) float32, ``c_`` (d,) float32, ``explained_variance_ratio_``.
    """

    def __init__(self, channels, size=3, remove_mean=True, whiten="pca", n_components=None, eps=1e-2,
                 cov_samples=50_000, ndim=2):
        if ndim not in (1, 2):
            raise ConfigError(f"ndim must be 1 (sequences) or 2 (images), got {ndim!r}")
        self.ndim = ndim
        if whiten not in ("pca", None):
            raise ConfigError(f"whiten must be 'pca' or None, got {whiten!r}")
        if cov_samples < 2:
            raise ConfigError(f"cov_samples must be >= 2, got {cov_samples!r}")
        self.cov_samples = int(cov_samples)
        self.channels, self.size = channels, size
        self.remove_mean, self.whiten = remove_mean, whiten
        self.n_components, self.eps = n_components, eps

    def fit(self, patches):
        """Fit to sample patches (n, 9C)."""
        dim = patches.shape[1]
        a = self._mean_map(dim)
        mu = patches.mean(axis=0, dtype=np.float64) @ a
        cov = None
        if self.whiten == "pca":
            step = -(-len(patches) // self.cov_samples)
            if self.remove_mean:
                sub = patches[::step].astype(np.float64) @ a  # 9C is small on the only layer that removes means
                sub = (sub - mu).astype(np.float32)
            else:
                sub = centred_patches(patches, step, mu)
            cov = (sub.T @ sub).astype(np.float64) / max(len(sub) - 1, 1)
        return self._fit_map(a, mu, cov)

    def fit_moments(self, mean, cov):
        """Fit to the mean (9C,) and covariance (9C, 9C) float64 of the raw patches (e.g. pooled from sums
        made elsewhere): the map ``fit`` makes from a sample with those moments."""
        mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
            raise ConfigError(f"patch moments must be a mean (D,) and a covariance (D, D), got {mean.shape} "
                              f"and {cov.shape}")
        a = self._mean_map(len(mean))
        return self._fit_map(a, mean @ a, a.T @ cov @ a if self.whiten == "pca" else None)

    def _mean_map(self, dim):
        return mean_removal_matrix(self.channels, self.size, self.ndim) if self.remove_mean else np.eye(dim)

    def _fit_map(self, a, mu, cov):
        """Set A_, c_ from the mean-removal map a (9C, 9C), the mapped mean mu and covariance cov (None: no whitening)."""
        dim = len(a)
        if self.whiten == "pca":
            vals, vecs = np.linalg.eigh(cov)
            order = np.argsort(vals)[::-1]
            vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
            d = self.n_components or min(dim, 64)
            if self.remove_mean:
                d = min(d, dim - self.channels)  # mean removal leaves C null directions
            scale = 1.0 / np.sqrt(vals[:d] + self.eps * vals[0])
            self.explained_variance_ratio_ = float(vals[:d].sum() / max(vals.sum(), 1e-30))
            a = a @ vecs[:, :d] * scale
            mu = mu @ vecs[:, :d] * scale
        else:
            mu = np.zeros(dim)
            self.explained_variance_ratio_ = 1.0
        self.A_ = a.astype(np.float32)
        self.c_ = (-mu).astype(np.float32)
        return self

    def transform(self, patches):
        """Patches (n, 9C) -> preprocessed (n, d) float32."""
        return patches @ self.A_ + self.c_

    def transform_images(self, x):
        """Preprocessed patches at every position of x (N, C, H, W): (N*H*W, d) float32, rows image-major
        (sequences x (N, C, L): (N*L, d)).

        Equal to ``transform(extract_patches(x))`` (up to float rounding) but computed as a
        convolution with d filters, so the (N*H*W, 9C) patch matrix is never built. Images of
        at least 2d channels take Winograd's convolution where it applies (3x3 windows, at least
        ``winograd.MIN_CHANNELS`` channels: 2.2 times faster than the tap convolution for 128
        channels of 16 x 16, 1.2 times for 256 of 8 x 8), moved channels-last; else the
        channels-last tap convolution (``greedy.kernels.taps``), which writes 9d values a pixel
        instead of an im2col's 9C (2.0 to 4.5 times faster on the patch-bag layer shapes,
        perf/README.md; no faster at C = d).
        """
        d = self.A_.shape[1]
        if self.ndim == 1:
            w = np.ascontiguousarray(self.A_.T.reshape(d, self.channels, self.size))
            y = conv1d_forward(np.ascontiguousarray(x, dtype=np.float32), w, self.c_, 1, self.size // 2)
            return y.transpose(0, 2, 1).reshape(-1, d)
        w = np.ascontiguousarray(self.A_.T.reshape(d, self.channels, self.size, self.size))
        if self.channels >= 2 * d and winograd.applies(w, 1, self.size // 2, 1, *x.shape[2:]):
            y = winograd.conv_forward(as_float32(np.ascontiguousarray(x)), w, self.c_, self.size // 2)
            return to_channels_last(y, np.empty(y.shape[:1] + y.shape[2:] + y.shape[1:2], np.float32)).reshape(-1, d)
        if self.channels >= 2 * d:
            return conv_taps(np.asarray(x), w, self.c_).reshape(-1, d)
        y = conv2d_forward(np.ascontiguousarray(x, dtype=np.float32), w, self.c_, 1, self.size // 2)
        return y.transpose(0, 2, 3, 1).reshape(-1, d)


def conv_factors(pre, w, b):
    """The conv equal to ``z @ w + b`` on raw patches as a rank-d factorisation (float64): (basis (d, C, size,
    size), basis_bias (d,), mix (F, d), mix_bias (F,)), the basis being the preprocessing map (basis (d, C,
    size) when ``pre`` preprocesses sequence windows); ``greedy.kernels.lowrank.compose`` makes the one conv.

    pre: a fitted PatchPreprocessor; w (d, F); b (F,).
    """
    d = pre.A_.shape[1]
    basis = pre.A_.T.astype(np.float64).reshape((d, pre.channels) + (pre.size,) * getattr(pre, "ndim", 2))
    return basis, pre.c_.astype(np.float64), np.asarray(w, np.float64).T, np.asarray(b, np.float64)


def fold_into_conv(pre, w, b):
    """Weights (F, C, size, size) and bias (F,) of the conv equal to ``z @ w + b`` on raw patches
    (weights (F, C, size) of a Conv1d when ``pre`` preprocesses sequence windows), float64.

    pre: a fitted PatchPreprocessor; w (d, F); b (F,).
    """
    return compose(*conv_factors(pre, w, b))
