"""Binary networks built one layer at a time without gradients (seed 003); CLI method ``binary``.

Every feature is a bit and every filter is a bit string. A layer turns each
3x3 patch of its bit-packed input into one bit per filter::

    activation = number of patch bits that agree with the filter (9 * n_bits - hamming)
    feature bit = activation >= threshold

A layer may be followed by 2x2 pooling of the bits (``or2``: any of 4,
``maj2``: at least 2 of 4). Thresholds (``threshold``):

- ``"half"``: half the patch bits;
- ``"median"``: per filter, the median of its activation over sampled training
  patches, so the bit is on for half of them;
- ``"quantile"``: the same with an ``on_fraction`` other than 1/2 (sparser bits).

The activation that is counted is the one deciding the layer's *output* bit: for
a pooled layer, the largest (``or``) or second largest (``majority``) of the 4
activations of a pooling window. With many tied activations (the blank
background of MNIST) the threshold is the side of the tie that splits closer
to the wanted fraction (``median_from_histogram``).

Layers and their inputs
-----------------------
- **Image layer** (first): a 3x3xC patch of the uint8 image is coded to bits:
  with ``colour_norm`` each channel's patch mean is subtracted first (filters
  then see spatial structure, not colour), and each value v is thermometer
  coded against T levels, bit ``(j*C + c)*T + t`` = ``v[j, c] > levels[c, t]``
  (j: pixel of the patch, row-major; the image is edge-padded). Levels are
  quantiles of the training values (``levels`` per channel, default 4); a value
  shared by most pixels (MNIST's black) is left out of the quantiles.
- **Conv layers**: 3x3 patches of the previous layer's bit map (zero padding,
  ``greedy.bitops.binary_conv2d``). With ``colour_feed``, a layer that follows a
  pooling gets the original image, 2x2 average-pooled down to its resolution and
  thermometer coded (``colour_levels`` quantile levels per channel), appended to
  every pixel's bits, so colour removed by the first layer is available later.

Filters
-------
A layer of F filters has ``round(F * split_fraction)`` supervised split filters;
the rest are unsupervised:

- **k-means**: ``greedy.kmeans.KMeans`` on a sample of the layer's patches as
  0/1 vectors; each centroid is binarised against the per-dimension median of
  the centroids (``binarize="median"``) or against 0.5 (``"half"``).
- **split filters**: for a partition of a class set into A and B,
  ``bits(mean(A) - mean(B) > 0)`` over patches of images of those classes
  (``split_filter``). Partitions are the nodes of balanced binary trees over
  random class orders (a node's classes split in halves, then each half again;
  ``partitions="tree"``) or random balanced bipartitions (``"random"``). The
  patches whose means are compared (``split_context``): all sampled patches
  (``"global"``: translation makes the mean patch nearly the same at the 9
  pixels, so such a filter only weighs which channels are frequent), the
  sampled patches nearest one k-means filter (``"cluster"``), or the patches at
  one image position, drawn with probability proportional to how much A and B
  differ there (``"position"``, default). With ``split_keep`` < 1 only that
  share of the bits, those where the means differ most, follow the formula;
  the others are the majority bit of A and B, so the filter is a typical patch
  leaning towards A rather than a +-1 weighting of every bit.

Map and reduce
--------------
Training statistics are computed per shard of the training images (the
``map_*`` functions: patch samples, per-class sums and counts, histograms),
merged by adding (``reduce_sums``) or concatenating, then used centrally
(k-means, split filters, thresholds, quantile levels); layer outputs are a map
with no reduce. The boundaries are marked ``# MAP`` / ``# REDUCE`` in
``fit_layer``, ``choose_filters``, ``choose_thresholds``, ``image_levels``,
``colour_levels``, ``fit_ncm`` and ``train_binary``. Each map needs only its
shard and the merged statistics of earlier steps, so it could run elsewhere
(k-means itself runs centrally on the merged sample).

The head
--------
The last bit map, flattened (``regions=0``) or as fractions of set bits in an
RxR grid of regions (popcounts), feeds a linear softmax classifier trained with
the project optimiser (``greedy.layerwise.train_classifier``) and a
gradient-free nearest-class-mean classifier (reported as
``ncm_test_accuracy``). Inference is popcounts up to the head. Model files store
filters bit-packed (``BinaryNetwork.save``, ``load_binary_model``).
"""
import json
import re
import time

import numba
import numpy as np
from numba import prange

from greedy.kernels.bitops import _gather_patch, _hamming_row, binary_conv2d, hamming_pairwise, pack_bits, pool2x2_bits, \
    unpack_bits
from greedy.errors import CheckpointError, ConfigError

FORMAT = "greedy-binary"
LOADER = "greedy.methods.binary:load_binary_model"

# ---------------------------------------------------------------- kernels


@numba.njit(cache=True)
def _image_code(img, n, y, x, levels, norm, vals, code):
    """Bit code of the 3x3 patch of img (N, H+2, W+2, C) uint8 (padded) whose top-left is (y, x).

    levels (C, T) float64; vals (9, C) float64 scratch; code (ceil(9*C*T/64),) uint64 output.
    Bit (j*C + c)*T + t is set when the value (minus the patch's channel mean if norm) > levels[c, t].
    """
    nc, nt = levels.shape
    for c in range(nc):
        s = 0.0
        j = 0
        for dy in range(3):
            for dx in range(3):
                v = np.float64(img[n, y + dy, x + dx, c])
                vals[j, c] = v
                s += v
                j += 1
        if norm:
            m = s / 9.0
            for j in range(9):
                vals[j, c] -= m
    word = np.uint64(0)
    b = 0
    k = 0
    for j in range(9):
        for c in range(nc):
            v = vals[j, c]
            for t in range(nt):
                word |= np.uint64(v > levels[c, t]) << np.uint64(b)
                b += 1
                if b == 64:
                    code[k] = word
                    k += 1
                    word = np.uint64(0)
                    b = 0
    if b:
        code[k] = word


@numba.njit(cache=True, parallel=True)
def _image_codes_kernel(img, nn, yy, xx, levels, norm, out):
    """Patch codes at positions (nn, yy, xx) of img (N, H+2, W+2, C) uint8 -> out (n, w) uint64."""
    for i in prange(nn.shape[0]):
        vals = np.empty((9, levels.shape[0]), np.float64)
        _image_code(img, nn[i], yy[i], xx[i], levels, norm, vals, out[i])


@numba.njit(cache=True, parallel=True)
def _image_layer_kernel(img, levels, norm, ft, max_ham, out):
    """Image layer: out (N, H, W, ceil(F/64)) gets bit f where hamming(code, filter f) <= max_ham[f].

    img (N, H+2, W+2, C) uint8 edge-padded; ft (w, F) uint64 (filters transposed); prange over (n, y).
    """
    n_img, h, wd, n_words = out.shape
    n_filters = ft.shape[1]
    for r in prange(n_img * h):
        n = r // h
        y = r - n * h
        vals = np.empty((9, levels.shape[0]), np.float64)
        code = np.empty(ft.shape[0], np.uint64)
        ham = np.empty(n_filters, np.int32)
        for x in range(wd):
            _image_code(img, n, y, x, levels, norm, vals, code)
            _hamming_row(code, ft, ham)
            for k in range(n_words):
                word = np.uint64(0)
                for f in range(64 * k, min(64 * k + 64, n_filters)):
                    word |= np.uint64(ham[f] <= max_ham[f]) << np.uint64(f - 64 * k)
                out[n, y, x, k] = word


@numba.njit(cache=True, parallel=True)
def _map_patches_kernel(x, nn, yy, xx, out):
    """3x3 patches (zero padding) of the bit map x (N, H, W, w) around (nn, yy, xx) -> out (n, 9*w) uint64."""
    for i in prange(nn.shape[0]):
        _gather_patch(x, nn[i], yy[i], xx[i], out[i])


# ---------------------------------------------------------------- bits and small helpers


def _n_words(n_bits):
    return (int(n_bits) + 63) // 64


def max_hamming(thresholds, total):
    """Per-filter largest hamming distance whose activation (total - hamming) is >= threshold, int64 (F,)."""
    th = np.asarray(thresholds, np.float64)
    return (total - np.ceil(np.clip(th, -1, total + 1))).astype(np.int64)


def concat_bits(a, a_bits, b, b_bits):
    """Per-pixel concatenation of bit codes: a (..., ceil(a_bits/64)) then b (..., ceil(b_bits/64)) uint64.

    Returns uint64 (..., ceil((a_bits + b_bits)/64)): bits 0..a_bits-1 from a, then b's bits.
    """
    a_bits, b_bits = int(a_bits), int(b_bits)
    if a.shape[:-1] != b.shape[:-1]:
        raise ConfigError(f"cannot concatenate bit maps of shapes {a.shape} and {b.shape}")
    n_words = _n_words(a_bits + b_bits)
    out = np.zeros(a.shape[:-1] + (n_words,), np.uint64)
    out[..., :a.shape[-1]] = a
    base, off = divmod(a_bits, 64)
    if off == 0:
        out[..., base:base + b.shape[-1]] = b
        return out
    for k in range(b.shape[-1]):  # over words, not pixels
        out[..., base + k] |= b[..., k] << np.uint64(off)
        if base + k + 1 < n_words:
            out[..., base + k + 1] |= b[..., k] >> np.uint64(64 - off)
    return out


def thermometer(values, levels):
    """values (..., C) real, levels (C, T) -> bits uint8 (..., C*T), bit c*T + t = values[..., c] > levels[c, t]."""
    bits = values[..., :, None] > levels
    return bits.reshape(values.shape[:-1] + (-1,)).astype(np.uint8)


def avg_pool_image(x, times):
    """x (N, C, H, W) -> float64 2x2 average-pooled ``times`` times (odd last row/column dropped each time)."""
    x = np.asarray(x, np.float64)
    for _ in range(times):
        n, c, h, w = x.shape
        h2, w2 = h // 2, w // 2
        x = x[:, :, :2 * h2, :2 * w2].reshape(n, c, h2, 2, w2, 2).mean(axis=(3, 5))
    return x


def sample_windows(n_images, h, w, n, rng, pooled):
    """n random positions, or with ``pooled`` n random 2x2 pooling windows.

    Returns img (n,), y (n, k), x (n, k) int64 with k = 1, or 4 (the window's pixels)."""
    if not pooled:
        img, y, x = sample_positions(n_images, h, w, n, rng)
        return img, y[:, None], x[:, None]
    img, y, x = sample_positions(n_images, h // 2, w // 2, n, rng)
    return img, 2 * y[:, None] + np.array([0, 0, 1, 1]), 2 * x[:, None] + np.array([0, 1, 0, 1])


def shard_ranges(n, shard_size):
    """[(start, stop), ...] covering range(n) in shards of at most shard_size."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def sample_positions(n_images, h, w, n, rng):
    """n uniform random (image, y, x) positions (without replacement) as three int64 arrays."""
    total = n_images * h * w
    flat = rng.choice(total, size=min(n, total), replace=False)
    flat.sort()
    img, rest = np.divmod(flat, h * w)
    y, x = np.divmod(rest, w)
    return img.astype(np.int64), y.astype(np.int64), x.astype(np.int64)


# ---------------------------------------------------------------- map and reduce steps


def map_value_histogram(values, lo, hi, bins):
    """Per-channel histogram of values (n, C) on ``bins`` equal bins over [lo, hi] -> int64 (C, bins)."""
    values = np.asarray(values, np.float64)
    idx = np.clip(((values - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
    c = values.shape[1]
    return np.bincount((idx + np.arange(c) * bins).ravel(), minlength=c * bins).reshape(c, bins)


def quantiles_from_histogram(hist, lo, hi, n_levels):
    """Levels (C, n_levels) float64 at probabilities (t+1)/(n_levels+1) from histograms (C, bins) over [lo, hi].

    A bin holding more than 1/(n_levels+1) of a channel's values is left out of the quantiles (but a level
    then separates it from its neighbours).
    """
    c, bins = hist.shape
    hist = np.array(hist, np.float64)
    # a value held by many pixels (MNIST's black background) would take every level: leave its bin out
    mode = hist.argmax(axis=1)
    heavy = hist[np.arange(c), mode] > hist.sum(axis=1) / (n_levels + 1)
    hist[np.arange(c)[heavy], mode[heavy]] = 0
    cum = np.cumsum(hist, axis=1) / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    probs = (np.arange(n_levels) + 1.0) / (n_levels + 1)
    idx = np.stack([np.searchsorted(cum[i], probs, side="left") for i in range(c)])
    return lo + (np.minimum(idx, bins - 1) + 1.0) * (hi - lo) / bins  # upper edge of the bin


def map_class_sums(bits, labels, n_classes):
    """Per-class sums of 0/1 rows bits (n, D) and counts: (float64 (K, D), int64 (K,))."""
    onehot = np.zeros((len(labels), n_classes), np.float32)
    onehot[np.arange(len(labels)), labels] = 1
    return (onehot.T @ bits.astype(np.float32)).astype(np.float64), np.bincount(labels, minlength=n_classes)


def reduce_sums(parts):
    """Adds per-shard statistics: a list of arrays or of tuples of arrays, element-wise."""
    parts = list(parts)
    if isinstance(parts[0], tuple):
        return tuple(sum(p[i] for p in parts) for i in range(len(parts[0])))
    return sum(parts)


def map_activation_histogram(codes, filters_flat, total, pool=None):
    """Histogram of each filter's (pooled) activation: codes (n, k, w), filters (F, w) -> int64 (F, total+1).

    k = 1, or the 4 patches of a 2x2 pooling window; the pooled activation is then the one whose
    threshold decides the pooled bit: the largest of the 4 for "or", the second largest for "majority".
    """
    n, k, w = codes.shape
    f = filters_flat.shape[0]
    act = (total - hamming_pairwise(codes.reshape(n * k, w), filters_flat)).reshape(n, k, f)
    if k == 1:
        act = act[:, 0]
    elif pool == "or":
        act = act.max(axis=1)
    elif pool == "majority":
        act = np.sort(act, axis=1)[:, k - 2]
    else:
        raise ConfigError(f"pool must be 'or' or 'majority' for windows of {k} patches, got {pool!r}")
    return np.bincount((act + np.arange(f) * (total + 1)).ravel(), minlength=f * (total + 1)).reshape(f, total + 1)


def median_from_histogram(hist, on_fraction=0.5):
    """Per-row median threshold of integer activations, histogram (F, total+1) -> float64 (F,).

    The integer t for which ``activation >= t`` holds for the fraction of samples nearest 1/2
    (or ``on_fraction``; the smaller t on a tie). With ties (e.g. the many equal patches of a blank
    background) this is the side of the tied value that splits the samples more evenly.
    """
    n = hist.sum(axis=1, keepdims=True).astype(np.float64)
    below = np.concatenate([np.zeros((len(hist), 1)), np.cumsum(hist, axis=1)], axis=1)  # count(act < t)
    on = 1.0 - below / np.maximum(n, 1)
    return np.abs(on - on_fraction).argmin(axis=1).astype(np.float64)


# ---------------------------------------------------------------- filter generators


def binarize_centroids(centroids, mode="median"):
    """Centroids (k, D) of 0/1 data -> 0/1 uint8 (k, D): above the per-dimension median of the centroids, or > 0.5."""
    centroids = np.asarray(centroids, np.float64)
    if mode == "median":
        return (centroids > np.median(centroids, axis=0)).astype(np.uint8)
    if mode == "half":
        return (centroids > 0.5).astype(np.uint8)
    raise ConfigError(f"binarize must be 'median' or 'half', got {mode!r}")


def kmeans_filters(bits, n_filters, binarize="median", max_iter=15, seed=0):
    """k-means on 0/1 patches bits (n, D), centroids binarised -> filter bits uint8 (n_filters, D)."""
    from greedy.cluster.kmeans import KMeans
    if len(bits) < n_filters:
        raise ConfigError(f"need at least {n_filters} sampled patches for {n_filters} k-means filters, "
                          f"got {len(bits)}; raise --patch-sample")
    km = KMeans(n_filters, max_iter=max_iter, random_state=seed).fit(np.asarray(bits, np.float32))
    return binarize_centroids(km.cluster_centers_, binarize)


def split_filter(class_sums, class_counts, a, b, keep=1.0, base=None):
    """``bits(mean(A) - mean(B) > 0)``: class_sums (K, D), class_counts (K,), class index lists a, b -> uint8 (D,).

    With ``keep`` < 1 only the ceil(keep * D) bits where the two means differ most follow that sign;
    the others are copied from ``base`` (D,) 0/1, by default the majority bit of the patches of A and B,
    so the filter is a typical patch of both sets, leaning towards A.
    """
    na, nb = class_counts[a].sum(), class_counts[b].sum()
    if na == 0 or nb == 0:
        return np.zeros(class_sums.shape[1], np.uint8)
    sa, sb = class_sums[a].sum(0), class_sums[b].sum(0)
    diff = sa / na - sb / nb
    bits = (diff > 0).astype(np.uint8)
    if keep >= 1:
        return bits
    out = ((sa + sb) / (na + nb) > 0.5).astype(np.uint8) if base is None else np.array(base, np.uint8)
    top = np.argsort(-np.abs(diff), kind="stable")[:int(np.ceil(keep * len(diff)))]
    out[top] = bits[top]
    return out


def class_partitions(n_classes, n, mode="tree", rng=None):
    """n partitions (A, B) of class subsets, as lists of index arrays.

    ``"tree"``: the nodes of balanced binary trees over random class orders (a
    node's classes split in halves, then each half again), one tree after
    another; ``"random"``: random balanced bipartitions of all classes.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if n_classes < 2:
        raise ConfigError(f"split filters need at least 2 classes, got {n_classes}")
    out = []
    while len(out) < n:
        order = rng.permutation(n_classes)
        if mode == "random":
            out.append((np.sort(order[:n_classes // 2]), np.sort(order[n_classes // 2:])))
        elif mode == "tree":
            stack = [order]
            while stack and len(out) < n:
                node = stack.pop(0)
                if len(node) < 2:
                    continue
                a, b = node[:len(node) // 2], node[len(node) // 2:]
                out.append((np.sort(a), np.sort(b)))
                stack += [a, b]
        else:
            raise ConfigError(f"partitions must be 'tree' or 'random', got {mode!r}")
    return out[:n]


def split_filters(class_sums, class_counts, partitions, keep=1.0):
    """One split filter per partition -> uint8 (len(partitions), D)."""
    return np.stack([split_filter(class_sums, class_counts, a, b, keep) for a, b in partitions])


# ---------------------------------------------------------------- layers


class ImageLayer:
    """First layer: bit-coded 3x3 patches of uint8 images (N, C, H, W) against binary filters.

    levels (C, T) float64 thermometer levels; filters (F, ceil(9*C*T/64)) uint64 of
    ``n_code_bits = 9*C*T`` bits; thresholds (F,) float64; pool None, "or" or "majority".
    """

    def __init__(self, levels, colour_norm=True, filters=None, thresholds=None, pool=None):
        self.levels = np.ascontiguousarray(levels, np.float64)
        self.colour_norm = bool(colour_norm)
        self.filters, self.thresholds, self.pool = filters, thresholds, pool

    @property
    def n_code_bits(self):
        return 9 * self.levels.size

    @property
    def n_filters(self):
        return len(self.filters)

    def padded(self, x):
        """uint8 (N, C, H, W) -> edge-padded NHWC uint8 (N, H+2, W+2, C)."""
        if x.ndim != 4 or x.shape[1] != self.levels.shape[0] or x.dtype != np.uint8:
            raise ConfigError(f"image layer expects uint8 images (N, {self.levels.shape[0]}, H, W), "
                              f"got {x.dtype} of shape {x.shape}")
        return np.pad(np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.uint8),
                      ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")

    def sample_codes(self, x, n, rng):
        """Codes (n, k, w) uint64 of n random positions (k = 1) or pooling windows (k = 4) of images x
        (N, C, H, W), and their image indices (n,)."""
        nn, yy, xx = sample_windows(len(x), x.shape[2], x.shape[3], n, rng, self.pool is not None)
        k = yy.shape[1]
        out = np.empty((len(nn) * k, _n_words(self.n_code_bits)), np.uint64)
        _image_codes_kernel(self.padded(x), np.repeat(nn, k), yy.ravel(), xx.ravel(), self.levels,
                            self.colour_norm, out)
        return out.reshape(len(nn), k, -1), nn

    def unpack_codes(self, codes):
        return unpack_bits(codes, self.n_code_bits)

    def position_bits(self, x):
        """Patch bits per image over all positions."""
        return x.shape[2] * x.shape[3] * self.n_code_bits

    def position_bits_map(self, x):
        """Patch codes of every position of images x (N, C, H, W), unpacked: uint8 (N, H, W, n_code_bits)."""
        n, _, h, w = x.shape
        nn, yy, xx = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij"))
        out = np.empty((n * h * w, _n_words(self.n_code_bits)), np.uint64)
        _image_codes_kernel(self.padded(x), nn, yy, xx, self.levels, self.colour_norm, out)
        return self.unpack_codes(out).reshape(n, h, w, -1)

    def patches_of_map(self, m):
        """A map of per-position patch values (H, W, n_code_bits) is already in patch form."""
        return m

    def pack_filters(self, bits):
        return pack_bits(bits)[0]

    def filters_flat(self):
        return self.filters

    def forward(self, x):
        """uint8 images (N, C, H, W) -> bit map uint64 (N, H', W', ceil(F/64)) (H' = H//2 if pooled)."""
        out = np.empty((len(x), x.shape[2], x.shape[3], _n_words(self.n_filters)), np.uint64)
        _image_layer_kernel(self.padded(x), self.levels, self.colour_norm, np.ascontiguousarray(self.filters.T),
                            max_hamming(self.thresholds, self.n_code_bits), out)
        return pool2x2_bits(out, self.pool) if self.pool else out


class ConvLayer:
    """Binary 3x3 conv over a bit map (N, H, W, ceil(n_bits/64)) with filters (F, 9, ceil(n_bits/64)) uint64.

    ``colour_levels`` (C, T) float64 or None: when set, the original image pooled
    ``colour_pools`` times and thermometer coded is appended to the input bits
    (``n_bits`` counts them).
    """

    def __init__(self, n_bits, filters=None, thresholds=None, pool=None, colour_levels=None, colour_pools=0):
        self.n_bits = int(n_bits)
        self.filters, self.thresholds, self.pool = filters, thresholds, pool
        self.colour_levels = None if colour_levels is None else np.asarray(colour_levels, np.float64)
        self.colour_pools = int(colour_pools)

    @property
    def n_code_bits(self):
        return 9 * self.n_bits

    @property
    def n_filters(self):
        return len(self.filters)

    def inputs(self, prev, prev_bits, images):
        """This layer's input map: the previous bit map, plus the pooled colour code of images if fed."""
        if self.colour_levels is None:
            return prev
        pooled = avg_pool_image(images, self.colour_pools).transpose(0, 2, 3, 1)
        colour, c_bits = pack_bits(thermometer(pooled, self.colour_levels))
        return concat_bits(prev, prev_bits, colour, c_bits)

    def sample_codes(self, m, n, rng):
        """Patch codes (n, k, 9*w) uint64 of n random positions (k = 1) or pooling windows (k = 4) of the
        input map m, and their image indices (n,)."""
        nn, yy, xx = sample_windows(m.shape[0], m.shape[1], m.shape[2], n, rng, self.pool is not None)
        k = yy.shape[1]
        out = np.empty((len(nn) * k, 9 * m.shape[3]), np.uint64)
        _map_patches_kernel(m, np.repeat(nn, k), yy.ravel(), xx.ravel(), out)
        return out.reshape(len(nn), k, -1), nn

    def unpack_codes(self, codes):
        return unpack_bits(codes.reshape(len(codes), 9, -1), self.n_bits).reshape(len(codes), -1)

    def position_bits(self, m):
        return m.shape[1] * m.shape[2] * self.n_bits

    def position_bits_map(self, m):
        """Input bits per pixel (patches are formed later, from class means): uint8 (N, H, W, n_bits)."""
        return unpack_bits(m, self.n_bits)

    def patches_of_map(self, m):
        """Per-pixel values (H, W, n_bits) -> their 3x3 patches (zero padding) (H, W, 9*n_bits), code order."""
        h, w, _ = m.shape
        p = np.pad(m, ((1, 1), (1, 1), (0, 0)))
        return np.stack([p[j // 3:j // 3 + h, j % 3:j % 3 + w] for j in range(9)], axis=2).reshape(h, w, -1)

    def pack_filters(self, bits):
        return pack_bits(bits.reshape(len(bits), 9, self.n_bits))[0]

    def filters_flat(self):
        return self.filters.reshape(len(self.filters), -1)

    def forward(self, m):
        """Input map (N, H, W, w) -> bit map (N, H', W', ceil(F/64))."""
        out = binary_conv2d(m, self.filters, self.thresholds, self.n_bits)
        return pool2x2_bits(out, self.pool) if self.pool else out


# ---------------------------------------------------------------- the network


def head_features(m, n_bits, regions=0, chunk=500):
    """Head input from the last bit map m (N, H, W, w): flattened bits uint8 (N, H*W*n_bits) for regions=0,
    else float32 (N, R*R*n_bits) fractions of set bits in an RxR grid of regions (popcounts per region)."""
    if not regions:
        return unpack_bits(m, n_bits).reshape(len(m), -1)
    n, h, w, _ = m.shape
    if regions > min(h, w):
        raise ConfigError(f"regions={regions} exceeds the last map's size {h}x{w}")
    ys = np.linspace(0, h, regions + 1).astype(int)
    xs = np.linspace(0, w, regions + 1).astype(int)
    area = np.outer(np.diff(ys), np.diff(xs)).astype(np.float32)[None, :, :, None]
    out = np.empty((n, regions, regions, n_bits), np.float32)
    for i in range(0, n, chunk):
        bits = unpack_bits(m[i:i + chunk], n_bits)
        rows = np.add.reduceat(bits, ys[:-1], axis=1, dtype=np.uint16)
        out[i:i + chunk] = np.add.reduceat(rows, xs[:-1], axis=2, dtype=np.uint16) / area
    return out.reshape(n, -1)


class BinaryNetwork:
    """An image layer, conv layers, and a linear head; ``forward(uint8 images) -> logits``.

    ``raw_input``: the CLI passes uint8 images as they are (no normaliser).
    head_w (D, K), head_b (K,) float32; class_means (K, D) float64 for the nearest-class-mean classifier.
    """

    raw_input = True

    def __init__(self, image_layer, layers, in_shape, n_classes, regions=0, head_w=None, head_b=None,
                 class_means=None, arch=""):
        self.image_layer, self.layers = image_layer, list(layers)
        self.in_shape, self.n_classes, self.regions = tuple(int(s) for s in in_shape), int(n_classes), int(regions)
        self.head_w, self.head_b, self.class_means, self.arch = head_w, head_b, class_means, arch

    def bit_map(self, x):
        """uint8 images (N, C, H, W) -> the last layer's bit map (N, H', W', w) uint64 (popcounts only)."""
        if tuple(x.shape[1:]) != self.in_shape:
            raise ConfigError(f"this network takes images of shape {self.in_shape}, got {tuple(x.shape[1:])}")
        m = self.image_layer.forward(x)
        bits = self.image_layer.n_filters
        for layer in self.layers:
            m = layer.forward(layer.inputs(m, bits, x))
            bits = layer.n_filters
        return m

    def last_bits(self):
        return (self.layers[-1] if self.layers else self.image_layer).n_filters

    def features(self, x, batch_size=1000):
        """Head input (N, D) of uint8 images x, in batches."""
        parts = [head_features(self.bit_map(x[i:i + batch_size]), self.last_bits(), self.regions)
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    def forward(self, x, train=False):
        """Logits float32 (N, K) of uint8 images (N, C, H, W)."""
        f = head_features(self.bit_map(x), self.last_bits(), self.regions)
        return f.astype(np.float32) @ self.head_w + self.head_b

    def ncm_scores(self, f):
        """Nearest-class-mean scores (N, K) of head features f: minus the squared distance up to a per-row constant."""
        m = self.class_means
        return 2.0 * f.astype(np.float64) @ m.T - (m * m).sum(axis=1)

    def filter_bits(self):
        return sum(layer.n_filters * layer.n_code_bits for layer in [self.image_layer] + self.layers)

    def n_parameters(self):
        """Filter bits + thresholds + head weights."""
        n_thr = sum(layer.n_filters for layer in [self.image_layer] + self.layers)
        return int(self.filter_bits() + n_thr + self.head_w.size + self.head_b.size)

    def size_bytes(self):
        """(bytes of this model's parameters with bit-packed filters, bytes with float32 filters)."""
        layers = [self.image_layer] + self.layers
        n_thr = sum(layer.n_filters for layer in layers)
        head = 4 * (self.head_w.size + self.head_b.size)
        packed = sum(layer.filters.nbytes for layer in layers)
        return int(packed + 4 * n_thr + head), int(4 * self.filter_bits() + 4 * n_thr + head)

    def save(self, path, normalizer=None, class_names=(), extra=None):
        """Write an npz model file (no pickles): filters uint64 bit-packed, thresholds, levels, head."""
        from greedy.nn.model import atomic_save_npz
        il = self.image_layer
        meta = {"format": FORMAT, "loader": LOADER, "arch": self.arch, "in_shape": list(self.in_shape),
                "n_classes": self.n_classes, "regions": self.regions, "class_names": list(class_names),
                "mean": None if normalizer is None else np.asarray(normalizer.mean).tolist(),
                "std": None if normalizer is None else np.asarray(normalizer.std).tolist(),
                "image": {"colour_norm": il.colour_norm, "pool": il.pool},
                "layers": [{"n_bits": la.n_bits, "pool": la.pool, "colour_pools": la.colour_pools,
                            "colour_feed": la.colour_levels is not None} for la in self.layers],
                "extra": extra or {}}
        arrays = {"meta": np.array(json.dumps(meta)), "image/levels": il.levels, "image/filters": il.filters,
                  "image/thresholds": il.thresholds, "head/w": self.head_w, "head/b": self.head_b,
                  "ncm/means": self.class_means}
        for i, la in enumerate(self.layers):
            arrays[f"layer/{i}/filters"] = la.filters
            arrays[f"layer/{i}/thresholds"] = la.thresholds
            if la.colour_levels is not None:
                arrays[f"layer/{i}/colour_levels"] = la.colour_levels
        atomic_save_npz(path, arrays)


def load_binary_model(path):
    """Load ``(BinaryNetwork, Normalizer or None, meta)`` from a file written by ``BinaryNetwork.save``."""
    from greedy.nn.model import Normalizer
    try:
        with np.load(path, allow_pickle=False) as f:
            a = {k: f[k] for k in f.files}
        meta = json.loads(str(a["meta"]))
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a binary model file (format {meta.get('format')!r})")
        im = meta["image"]
        image = ImageLayer(a["image/levels"], im["colour_norm"], a["image/filters"],
                           a["image/thresholds"], im["pool"])
        layers = [ConvLayer(la["n_bits"], a[f"layer/{i}/filters"], a[f"layer/{i}/thresholds"], la["pool"],
                            a[f"layer/{i}/colour_levels"] if la["colour_feed"] else None, la["colour_pools"])
                  for i, la in enumerate(meta["layers"])]
        net = BinaryNetwork(image, layers, meta["in_shape"], meta["n_classes"], meta["regions"], a["head/w"],
                            a["head/b"], a["ncm/means"], meta["arch"])
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable binary model file ({type(e).__name__}: {e})") from None
    _check_network(net, path)
    normalizer = Normalizer(meta["mean"], meta["std"]) if meta.get("mean") is not None else None
    return net, normalizer, meta


def _check_network(net, path):
    """Raises CheckpointError if the arrays of a loaded network do not fit together."""
    il = net.image_layer
    problems = []
    if il.filters.dtype != np.uint64 or il.filters.shape[1:] != (_n_words(il.n_code_bits),):
        problems.append(f"image filters have shape {il.filters.shape}, dtype {il.filters.dtype}")
    bits = il.n_filters
    for i, la in enumerate(net.layers):
        c_bits = 0 if la.colour_levels is None else la.colour_levels.size
        if la.n_bits != bits + c_bits or la.filters.shape[1:] != (9, _n_words(la.n_bits)):
            problems.append(f"layer {i} filters have shape {la.filters.shape} for {bits} + {c_bits} input bits")
        bits = la.n_filters
    for i, la in enumerate([il] + net.layers):
        if la.thresholds.shape != (la.n_filters,):
            problems.append(f"layer {i} has {la.thresholds.shape} thresholds for {la.n_filters} filters")
    if net.head_w.shape[1:] != (net.n_classes,) or net.head_b.shape != (net.n_classes,):
        problems.append(f"head has shape {net.head_w.shape} for {net.n_classes} classes")
    if problems:
        raise CheckpointError(f"{path}: inconsistent binary model: {'; '.join(problems)}")


# ---------------------------------------------------------------- training

DEFAULTS = {"levels": 4, "colour_levels": 8, "colour_norm": True, "colour_feed": True, "threshold": "quantile",
            "on_fraction": 0.25, "binarize": "median", "split_fraction": 0.5, "partitions": "tree",
            "split_context": "position", "split_keep": 0.25, "split_images": 2_000, "patch_sample": 30_000,
            "kmeans_iter": 15, "shard_size": 5_000, "regions": 4, "final_epochs": 10, "seed": 0}
DATASET_ARCH = {"cifar10": "c128-or2-c256", "mnist": "c128-or2-c256"}
_POOLS = {"or2": "or", "maj2": "majority"}


def parse_arch(spec):
    """'c128-or2-c256-maj2' -> [(128, 'or'), (256, 'majority')]: filters per layer and the pooling after it."""
    out = []
    for token in str(spec).strip().split("-"):
        m = re.fullmatch(r"c(\d+)", token)
        if m and int(m[1]) > 0:
            out.append([int(m[1]), None])
        elif token in _POOLS and out and out[-1][1] is None:
            out[-1][1] = _POOLS[token]
        else:
            raise ConfigError(f"bad token {token!r} in binary architecture {spec!r}; use c<filters> layers, each "
                              f"optionally followed by or2 or maj2, e.g. c128-or2-c256-or2")
    return [tuple(t) for t in out]


def resolve_options(opts, dataset):
    o = dict(DEFAULTS)
    o.update({k: v for k, v in opts.items() if v is not None})
    if opts.get("final_hidden") not in (None, "", "none"):
        raise ConfigError("binary: the head on the packed bits is linear; --final-hidden is not supported")
    if opts.get("epochs") is not None:
        o["final_epochs"] = opts["epochs"]
    if opts.get("lr") is not None:
        o["final_lr"] = opts["lr"]
    if opts.get("weight_decay") is not None:
        o["final_weight_decay"] = opts["weight_decay"]
    if opts.get("batch_size") is not None:
        o["final_batch_size"] = opts["batch_size"]
    rgb = dataset in ("cifar10", "synthetic")
    o["arch"] = opts.get("arch") or DATASET_ARCH["cifar10" if rgb else "mnist"]
    o["layer_specs"] = parse_arch(o["arch"])
    if o["threshold"] not in ("median", "half", "quantile"):
        raise ConfigError(f"threshold must be 'median', 'half' or 'quantile', got {o['threshold']!r}")
    if not 0 < o["on_fraction"] < 1:
        raise ConfigError(f"on fraction must be in (0, 1), got {o['on_fraction']}")
    if not 0 <= o["split_fraction"] <= 1:
        raise ConfigError(f"split fraction must be in [0, 1], got {o['split_fraction']}")
    if not 0 < o["split_keep"] <= 1:
        raise ConfigError(f"split keep must be in (0, 1], got {o['split_keep']}")
    if o["split_context"] not in ("global", "cluster", "position"):
        raise ConfigError(f"split context must be 'global', 'cluster' or 'position', got {o['split_context']!r}")
    if int(o["regions"]) < 0:
        raise ConfigError(f"regions must be >= 0 (0: flattened bits), got {o['regions']}")
    for name in ("levels", "colour_levels", "patch_sample", "shard_size"):
        if int(o[name]) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {o[name]}")
    return o


def _shard_rng(seed, layer, shard):
    return np.random.default_rng([seed, layer, shard])


def choose_filters(layer, inputs, labels, parts, n_classes, n_filters, o, seed):
    """Filter bits (n_filters, n_code_bits) of ``layer``: k-means filters, then split filters.

    inputs, labels: per-shard layer inputs and labels; parts: per-shard patch samples (codes (n, w), labels (n,)).
    ``o["split_context"]`` says over which patches the class means of a split are taken: all sampled
    patches (``"global"``), the sampled patches nearest one k-means filter (``"cluster"``), or the
    patches at one image position (``"position"``, chosen at random, weighted by how much the two
    class sets differ there).
    """
    n_split = int(round(n_filters * o["split_fraction"])) if n_classes > 1 else 0
    rng = np.random.default_rng([seed, 1])
    chosen = []
    if n_filters - n_split:
        codes = np.concatenate([c for c, _ in parts])  # REDUCE: concatenate the shards' samples
        chosen.append(kmeans_filters(layer.unpack_codes(codes), n_filters - n_split, o["binarize"],
                                     o["kmeans_iter"], seed))
    if not n_split:
        return np.concatenate(chosen)
    partitions = class_partitions(n_classes, n_split, o["partitions"], rng)
    context = o["split_context"]
    if context == "global":
        # MAP: per-shard class sums and counts of patch bits; REDUCE: add them
        sums, counts = reduce_sums(map_class_sums(layer.unpack_codes(c), lab, n_classes) for c, lab in parts)
        chosen.append(split_filters(sums, counts, partitions, o["split_keep"]))
    elif context == "cluster":
        if not chosen:
            raise ConfigError("split_context 'cluster' needs k-means filters (split fraction below 1)")
        centres = layer.pack_filters(chosen[0]).reshape(len(chosen[0]), -1)
        # MAP: per-shard sums and counts per (nearest k-means filter, class); REDUCE: add them
        sums, counts = reduce_sums(
            map_class_sums(layer.unpack_codes(c), hamming_pairwise(c, centres).argmin(1) * n_classes + lab,
                           len(centres) * n_classes) for c, lab in parts)
        sums = sums.reshape(len(centres), n_classes, -1)
        counts = counts.reshape(len(centres), n_classes)
        groups = rng.choice(len(centres), size=n_split, p=counts.sum(1) / counts.sum())
        chosen.append(np.stack([split_filter(sums[g], counts[g], a, b, o["split_keep"], chosen[0][g])
                                for g, (a, b) in zip(groups, partitions)]))
    elif context == "position":
        n_total = sum(len(inp) for inp in inputs)
        # MAP: per-shard class sums of the patch bits at every position, for a sample of images; REDUCE: add
        sums, counts = reduce_sums(
            map_position_sums(layer, inp, lab, n_classes, int(np.ceil(o["split_images"] * len(inp) / n_total)),
                              _shard_rng(seed, 777, s)) for s, (inp, lab) in enumerate(zip(inputs, labels)))
        chosen.append(position_split_filters(layer, sums, counts, partitions, rng, o["split_keep"]))
    else:
        raise ConfigError(f"split context must be 'global', 'cluster' or 'position', got {context!r}")
    return np.concatenate(chosen)


def map_position_sums(layer, inp, labels, n_classes, n_images, rng, chunk_values=20_000_000):
    """Per-class sums (K, H, W, D) float64 of the patch bits at every position of n_images random images of
    this shard's input, and the class counts (K,)."""
    idx = np.sort(rng.choice(len(inp), size=min(n_images, len(inp)), replace=False))
    sums, counts = None, np.bincount(labels[idx], minlength=n_classes)
    step = max(1, chunk_values // max(1, layer.position_bits(inp)))
    for i in range(0, len(idx), step):
        sel = idx[i:i + step]
        bits = layer.position_bits_map(inp[sel])  # (n, H, W, D) uint8
        part = map_class_sums(bits.reshape(len(sel), -1), labels[sel], n_classes)[0].reshape(
            (n_classes,) + bits.shape[1:])
        sums = part if sums is None else sums + part
    return sums, counts


def position_split_filters(layer, sums, counts, partitions, rng, keep=1.0):
    """Split filters from per-class position sums (K, H, W, D): each partition at a position drawn with
    probability proportional to the L1 difference of its two class means' patches there."""
    out = []
    for a, b in partitions:
        na, nb = max(counts[a].sum(), 1), max(counts[b].sum(), 1)
        patches_a = layer.patches_of_map(sums[a].sum(0)).reshape(-1, layer.n_code_bits)  # (H*W, n_code_bits)
        patches_b = layer.patches_of_map(sums[b].sum(0)).reshape(-1, layer.n_code_bits)
        score = np.abs(patches_a / na - patches_b / nb).sum(axis=1)
        pos = rng.choice(len(score), p=score / score.sum()) if score.sum() > 0 else 0
        out.append(split_filter(np.stack([patches_a[pos], patches_b[pos]]), np.array([na, nb]), [0], [1], keep))
    return np.stack(out)


def choose_thresholds(layer, parts, mode, on_fraction=0.25):
    """Per-filter thresholds: half the patch bits (``"half"``), or the activation that the sampled patches'
    (pooled) activation reaches for half of them (``"median"``) or for ``on_fraction`` (``"quantile"``).

    parts: per-shard patch samples (codes (n, k, w), anything)."""
    total = layer.n_code_bits
    if mode == "half":
        return np.full(layer.n_filters, total / 2.0)
    if mode == "median":
        on_fraction = 0.5
    # MAP: per-shard activation histograms of every filter; REDUCE: add them
    hist = reduce_sums(map_activation_histogram(c, layer.filters_flat(), total, layer.pool) for c, _ in parts)
    return median_from_histogram(hist, on_fraction)


def fit_layer(layer, inputs, labels, n_classes, n_filters, o, index, log):
    """Choose filters and thresholds of ``layer`` from per-shard inputs; returns per-shard outputs.

    inputs: list of per-shard layer inputs (uint8 images or bit maps); labels: per-shard label arrays.
    """
    seed = o["seed"]
    t = time.perf_counter()
    n_total = sum(len(inp) for inp in inputs)
    # MAP: each shard samples its share of patches (the statistics below reduce over these parts)
    per_window = 4 if layer.pool else 1
    parts = []
    for s, (inp, lab) in enumerate(zip(inputs, labels)):
        n = int(np.ceil(o["patch_sample"] * len(inp) / n_total / per_window))
        codes, img = layer.sample_codes(inp, n, _shard_rng(seed, index, s))
        parts.append((codes, lab[img]))
    flat = [(c.reshape(-1, c.shape[2]), np.repeat(lab, c.shape[1])) for c, lab in parts]
    bits = choose_filters(layer, inputs, labels, flat, n_classes, n_filters, o, seed + 1000 * index)
    layer.filters = layer.pack_filters(bits)
    layer.thresholds = choose_thresholds(layer, parts, o["threshold"], o["on_fraction"])
    t_filters = time.perf_counter() - t
    t = time.perf_counter()
    outputs = [layer.forward(inp) for inp in inputs]  # MAP: layer outputs stay with their shard
    mean_on = float(np.mean([unpack_bits(out[:200], n_filters).mean() for out in outputs]))
    log("layer", layer=index, filters=n_filters, code_bits=layer.n_code_bits, fit_seconds=round(t_filters, 3),
        forward_seconds=round(time.perf_counter() - t, 3), out_shape=list(outputs[0].shape[1:3]) + [n_filters],
        fraction_on=round(mean_on, 4))
    return outputs


def image_levels(shards, n_levels, colour_norm, patch_sample, seed):
    """Thermometer levels (C, n_levels) of the image layer from per-shard histograms of (centred) patch values."""
    lo, hi, bins = (-256.0, 256.0, 2048) if colour_norm else (0.0, 256.0, 1024)
    n_total = sum(len(x) for x in shards)
    hists = []
    for s, x in enumerate(shards):  # MAP: histogram of sampled patch values per channel
        rng = _shard_rng(seed, 999, s)
        nn, yy, xx = sample_positions(len(x), x.shape[2], x.shape[3],
                                      int(np.ceil(patch_sample * len(x) / n_total)), rng)
        pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").astype(np.float64)
        vals = np.stack([pad[nn, :, yy + j // 3, xx + j % 3] for j in range(9)], axis=1)  # (n, 9, C)
        if colour_norm:
            vals = vals - vals.mean(axis=1, keepdims=True)
        hists.append(map_value_histogram(vals.reshape(-1, x.shape[1]), lo, hi, bins))
    return quantiles_from_histogram(reduce_sums(hists), lo, hi, n_levels)  # REDUCE: add histograms


def colour_levels(shards, pools, n_levels):
    """Thermometer levels (C, n_levels) of the image average-pooled ``pools`` times, from per-shard histograms."""
    # MAP: per-shard histograms of pooled values; REDUCE: add them
    hist = reduce_sums(map_value_histogram(avg_pool_image(x, pools).transpose(0, 2, 3, 1).reshape(-1, x.shape[1]),
                                           0.0, 256.0, 1024) for x in shards)
    return quantiles_from_histogram(hist, 0.0, 256.0, n_levels)


def fit_network(x, y, n_classes, o, log=lambda *a, **k: None):
    """Build the layers of a BinaryNetwork on uint8 images x (N, C, H, W), labels y (N,).

    Returns (network without head, per-shard last bit maps).
    """
    specs = o["layer_specs"]
    shards = [(a, b) for a, b in shard_ranges(len(x), o["shard_size"])]
    images = [x[a:b] for a, b in shards]
    labels = [y[a:b] for a, b in shards]
    levels = image_levels(images, o["levels"], o["colour_norm"], o["patch_sample"], o["seed"])
    image = ImageLayer(levels, o["colour_norm"], pool=specs[0][1])
    maps = fit_layer(image, images, labels, n_classes, specs[0][0], o, 0, log)
    layers, bits, pools = [], specs[0][0], int(specs[0][1] is not None)
    for index, (width, pool) in enumerate(specs[1:], start=1):
        feed = o["colour_feed"] and specs[index - 1][1] is not None
        c_levels = colour_levels(images, pools, o["colour_levels"]) if feed else None
        layer = ConvLayer(bits + (0 if c_levels is None else c_levels.size), pool=pool, colour_levels=c_levels,
                          colour_pools=pools)
        inputs = [layer.inputs(m, bits, im) for m, im in zip(maps, images)]  # MAP
        maps = fit_layer(layer, inputs, labels, n_classes, width, o, index, log)
        del inputs
        layers.append(layer)
        bits, pools = width, pools + int(pool is not None)
    return BinaryNetwork(image, layers, x.shape[1:], n_classes, o["regions"], arch=o["arch"]), maps


def fit_ncm(features, labels, n_classes):
    """Class means (K, D) float64 of head features; MAP per shard (sums, counts) then REDUCE (add)."""
    sums, counts = reduce_sums(map_class_sums(f, lab, n_classes) for f, lab in zip(features, labels))
    return sums / np.maximum(counts, 1)[:, None]


def train_binary(data, normalizer, opts, run):
    """Binary network built layer by layer without gradients, then a linear head; CLI method ``binary``."""
    from greedy.methods.layerwise import train_classifier
    cpu0 = time.process_time()
    o = resolve_options(opts, run.dataset)
    n_classes = len(data.class_names)
    run.log("options", arch=o["arch"], threshold=o["threshold"], colour_norm=o["colour_norm"],
            colour_feed=o["colour_feed"], split_fraction=o["split_fraction"], partitions=o["partitions"])
    net, maps = fit_network(data.x_train, data.y_train, n_classes, o, run.log)
    t = time.perf_counter()
    bits = net.last_bits()
    feats = [head_features(m, bits, o["regions"]) for m in maps]  # MAP
    del maps
    test_feats = net.features(data.x_test)
    run.log("features", seconds_in_phase=round(time.perf_counter() - t, 3), head_inputs=int(feats[0].shape[1]))
    labels = [data.y_train[a:b] for a, b in shard_ranges(len(data.x_train), o["shard_size"])]
    net.class_means = fit_ncm(feats, labels, n_classes)
    ncm_acc = float((net.ncm_scores(test_feats).argmax(1) == data.y_test).mean())
    t = time.perf_counter()
    rng = np.random.default_rng(o["seed"])
    (dense,), head_acc = train_classifier(np.concatenate(feats), data.y_train, test_feats, data.y_test,
                                          n_classes, o, rng)
    net.head_w, net.head_b = dense.params["w"], dense.params["b"]
    run.log("classifier", seconds_in_phase=round(time.perf_counter() - t, 3), test_accuracy=head_acc,
            ncm_test_accuracy=ncm_acc)
    packed, float32 = net.size_bytes()
    # CPU seconds of all threads: a steadier figure than wall time on a shared machine
    return net, {"arch": o["arch"], "ncm_test_accuracy": ncm_acc, "cpu_seconds": round(time.process_time() - cpu0, 1),
                 "model_bytes": packed, "float32_model_bytes": float32, "filter_bits": net.filter_bits(),
                 "options": {k: o[k] for k in DEFAULTS}}
