"""Map/reduce statistics of binary training: samples, histograms, class sums, quantiles and medians.

Training statistics are computed per shard of the training images by the ``map_*`` functions
(patch samples, per-class sums and counts, histograms), merged by adding (``reduce_sums``) or
concatenating, then used centrally (k-means, split filters, thresholds, quantile levels). Each
map needs only its shard, its own random stream and the merged statistics of earlier steps, so
it could run where the shard lives. ``# MAP`` / ``# REDUCE`` comments mark the boundaries here,
in ``greedy.methods.binary.filters`` and in ``greedy.methods.binary.trainer``.
"""
import numpy as np

from greedy import validate
from greedy.kernels.bitops import hamming_pairwise

# ---------------------------------------------------------------- shards and samples


def shard_ranges(n, shard_size):
    """[(start, stop), ...] covering range(n) in shards of at most shard_size."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def sample_positions(n_images, h, w, n, rng):
    """n uniform random (image, y, x) positions (without replacement) as three int64 arrays (n,)."""
    total = n_images * h * w
    flat = rng.choice(total, size=min(n, total), replace=False)
    flat.sort()
    img, rest = np.divmod(flat, h * w)
    y, x = np.divmod(rest, w)
    return img.astype(np.int64), y.astype(np.int64), x.astype(np.int64)


def sample_windows(n_images, h, w, n, rng, pool_shape=None):
    """n random positions, or with ``pool_shape`` (ph, pw) n random pooling windows of that shape.

    Returns img (n,), y (n, k), x (n, k) int64 with k = 1, or ph*pw (the window's pixels, row-major)."""
    if pool_shape is None:
        img, y, x = sample_positions(n_images, h, w, n, rng)
        return img, y[:, None], x[:, None]
    ph, pw = pool_shape
    img, y, x = sample_positions(n_images, h // ph, w // pw, n, rng)
    dy, dx = (a.ravel() for a in np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij"))
    return img, ph * y[:, None] + dy, pw * x[:, None] + dx


def avg_pool_image(x, times, shape=(2, 2)):
    """x (N, C, H, W) -> float64 average-pooled ``times`` times in ``shape`` windows (2x2, or 1x2 on
    sequences one row high; an odd last row or column is dropped each time)."""
    x = np.asarray(x, np.float64)
    ph, pw = shape
    for _ in range(times):
        n, c, h, w = x.shape
        h2, w2 = h // ph, w // pw
        x = x[:, :, :ph * h2, :pw * w2].reshape(n, c, h2, ph, w2, pw).mean(axis=(3, 5))
    return x


# ---------------------------------------------------------------- map and reduce steps


def reduce_sums(parts):
    """Adds per-shard statistics: a list of arrays or of tuples of arrays, element-wise."""
    parts = list(parts)
    if isinstance(parts[0], tuple):
        return tuple(sum(p[i] for p in parts) for i in range(len(parts[0])))
    return sum(parts)


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


def map_activation_histogram(codes, filters_flat, total, pool=None):
    """Histogram of each filter's (pooled) activation: codes (n, k, w), filters (F, w) uint64 -> int64 (F, total+1).

    k = 1, or the 4 patches of a 2x2 pooling window; the pooled activation is then the one whose
    threshold decides the pooled bit: the largest of the 4 for "or", the second largest for "majority".
    """
    n, k, w = codes.shape
    f = filters_flat.shape[0]
    act = (total - hamming_pairwise(codes.reshape(n * k, w), filters_flat)).reshape(n, k, f)
    if k == 1:
        act = act[:, 0]
    elif validate.one_of(pool, f"pool of windows of {k} patches", ("or", "majority")) == "or":
        act = act.max(axis=1)
    else:
        act = np.sort(act, axis=1)[:, k - 2]
    return np.bincount((act + np.arange(f) * (total + 1)).ravel(), minlength=f * (total + 1)).reshape(f, total + 1)


def median_from_histogram(hist, on_fraction=0.5):
    """Per-row median threshold of integer activations, histogram (F, total+1) -> float64 (F,).

    The integer t for which ``activation >= t`` holds for the fraction of samples nearest 1/2
    (or ``on_fraction``; the smaller t on a tie). With ties (e.g. the many equal patches of a blank
    background) this is the side of the tied value that splits the samples more evenly.
    """
    on = on_fractions(hist)
    return np.abs(on - on_fraction).argmin(axis=1).astype(np.float64)


def on_fractions(hist):
    """Share of samples with ``activation >= t`` for every row and every integer t: float64 (F, total+2)."""
    n = hist.sum(axis=1, keepdims=True).astype(np.float64)
    below = np.concatenate([np.zeros((len(hist), 1)), np.cumsum(hist, axis=1)], axis=1)  # count(act < t)
    return 1.0 - below / np.maximum(n, 1)


# ---------------------------------------------------------------- levels and class means


def value_range(scale=None):
    """(lo, hi, bins) of raw input values: [0, 256] for uint8 images (``scale`` None), else [-scale, scale]
    (float series, ``scale`` = their largest absolute value)."""
    return (0.0, 256.0, 1024) if scale is None else (-float(scale), float(scale), 4096)


def level_range(colour_norm, scale=None):
    """(lo, hi, bins) of the image layer's value histograms: centred values (twice the raw range, centred on
    0) with ``colour_norm``, else the raw ``value_range``."""
    lo, hi, bins = value_range(scale)
    return (lo - hi, hi - lo, 2 * bins) if colour_norm else (lo, hi, bins)


def series_scale(shards):
    """The largest absolute value of float series shards (n, C, 1, L) (MAP: per shard; REDUCE: max), at least
    1e-6; None for uint8 images."""
    if shards[0].dtype == np.uint8:
        return None
    return max(1e-6, max(float(np.abs(x).max()) if x.size else 0.0 for x in shards))


def map_level_histogram(x, n, colour_norm, rng, window=(3, 3), scale=None):
    """MAP of ``image_levels``: per-channel histogram int64 (C, bins) of the (centred) values of n sampled
    kh x kw windows (edge padding) of one shard's inputs x (n, C, H, W) (uint8 images, or float32 series
    one row high with ``scale``); rng: the shard's Generator."""
    lo, hi, bins = level_range(colour_norm, scale)
    kh, kw = window
    nn, yy, xx = sample_positions(len(x), x.shape[2], x.shape[3], n, rng)
    pad = np.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), mode="edge").astype(np.float64)
    vals = np.stack([pad[nn, :, yy + j // kw, xx + j % kw] for j in range(kh * kw)], axis=1)  # (n, kh*kw, C)
    if colour_norm:
        vals = vals - vals.mean(axis=1, keepdims=True)
    return map_value_histogram(vals.reshape(-1, x.shape[1]), lo, hi, bins)


def levels_sample(n_shard, n_total, patch_sample):
    """Patches a shard of ``n_shard`` of ``n_total`` images samples for the image layer's levels."""
    return int(np.ceil(patch_sample * n_shard / n_total))


def image_levels(shards, n_levels, colour_norm, patch_sample, rngs, window=(3, 3), scale=None):
    """Thermometer levels (C, n_levels) float64 of the image layer, from per-shard histograms of the
    (centred) values of sampled kh x kw windows; shards: uint8 images (n, C, H, W), or float32 series
    (n, C, 1, L) with their ``scale`` (``series_scale``); rngs: one Generator each."""
    n_total = sum(len(x) for x in shards)
    hists = [map_level_histogram(x, levels_sample(len(x), n_total, patch_sample), colour_norm, rng, window, scale)
             for x, rng in zip(shards, rngs)]  # MAP: histogram of sampled patch values per channel
    lo, hi, _ = level_range(colour_norm, scale)
    return quantiles_from_histogram(reduce_sums(hists), lo, hi, n_levels)  # REDUCE: add histograms


def map_colour_histogram(x, pools, shape=(2, 2), scale=None):
    """MAP of ``colour_levels``: per-channel histogram int64 (C, bins) over ``value_range(scale)`` of one
    shard's inputs x (n, C, H, W) average-pooled ``pools`` times in ``shape`` windows."""
    return map_value_histogram(avg_pool_image(x, pools, shape).transpose(0, 2, 3, 1).reshape(-1, x.shape[1]),
                               *value_range(scale))


def colour_levels_from_histogram(hist, n_levels, scale=None):
    """REDUCE of ``colour_levels``: levels (C, n_levels) float64 from the added histograms (C, bins)."""
    lo, hi, _ = value_range(scale)
    return quantiles_from_histogram(hist, lo, hi, n_levels)


def colour_levels(shards, pools, n_levels, shape=(2, 2), scale=None):
    """Thermometer levels (C, n_levels) float64 of the inputs average-pooled ``pools`` times in ``shape``
    windows, from per-shard histograms; shards: uint8 images (n, C, H, W) or float32 series (n, C, 1, L)
    with their ``scale``."""
    # MAP: per-shard histograms of pooled values; REDUCE: add them
    return colour_levels_from_histogram(
        reduce_sums(map_colour_histogram(x, pools, shape, scale) for x in shards), n_levels, scale)


def fit_ncm(features, labels, n_classes):
    """Class means (K, D) float64 of head features: per-shard features (n, D) and labels (n,);
    MAP per shard (sums, counts) then REDUCE (add)."""
    sums, counts = reduce_sums(map_class_sums(f, lab, n_classes) for f, lab in zip(features, labels))
    return sums / np.maximum(counts, 1)[:, None]
