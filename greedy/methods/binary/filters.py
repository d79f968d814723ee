"""Bit filters and thresholds of a binary layer: k-means filters, split filters, class partitions.

A layer of F filters has ``round(F * split_fraction)`` supervised split filters; the rest are
unsupervised:

- **k-means**: ``greedy.cluster.kmeans.KMeans`` on a sample of the layer's patches as 0/1
  vectors; each centroid is binarised against the per-dimension median of the centroids
  (``binarize="median"``) or against 0.5 (``"half"``).
- **split filters**: for a partition of a class set into A and B, ``bits(mean(A) - mean(B) > 0)``
  over patches of images of those classes (``split_filter``). Partitions are the nodes of
  balanced binary trees over random class orders (a node's classes split in halves, then each
  half again; ``partitions="tree"``) or random balanced bipartitions (``"random"``). The patches
  whose means are compared (``split_context``): all sampled patches (``"global"``: translation
  makes the mean patch nearly the same at the 9 pixels, so such a filter only weighs which
  channels are frequent), the sampled patches nearest one k-means filter (``"cluster"``), or the
  patches at one image position, drawn with probability proportional to how much A and B differ
  there (``"position"``, default). With ``split_keep`` < 1 only that share of the bits, those
  where the means differ most, follow the formula; the others are the majority bit of A and B,
  so the filter is a typical patch leaning towards A rather than a +-1 weighting of every bit.

Thresholds (``choose_thresholds``): ``"half"``: half the patch bits; ``"median"``: per filter,
the median of its activation over sampled training patches, so the bit is on for half of them;
``"quantile"``: the same with an ``on_fraction`` other than 1/2 (sparser bits). The activation
counted is the one deciding the layer's *output* bit: for a pooled layer, the largest (``or``)
or second largest (``majority``) of the 4 activations of a pooling window. With many tied
activations (the blank background of MNIST) the threshold is the side of the tie that splits
closer to the wanted fraction (``median_from_histogram``).
"""
import numpy as np

from greedy import validate
from greedy.cluster.kmeans import KMeans
from greedy.errors import ConfigError
from greedy.kernels.bitops import hamming_pairwise
from greedy.methods.binary.stats import (map_activation_histogram, map_class_sums, median_from_histogram,
                                         on_fractions, reduce_sums)

BINARIZE = ("median", "half")
PARTITIONS = ("tree", "random")
SPLIT_CONTEXTS = ("global", "cluster", "position")
THRESHOLDS = ("median", "half", "quantile")
POSITION_SUMS_BYTES = 1 << 30  # the largest per-class position sums (K, H, W, D) float64 of a shard

# ---------------------------------------------------------------- filter generators


def binarize_centroids(centroids, mode="median"):
    """Centroids (k, D) of 0/1 data -> 0/1 uint8 (k, D): above the per-dimension median of the centroids, or > 0.5."""
    centroids = np.asarray(centroids, np.float64)
    if validate.one_of(mode, "binarize", BINARIZE) == "median":
        return (centroids > np.median(centroids, axis=0)).astype(np.uint8)
    return (centroids > 0.5).astype(np.uint8)


def kmeans_filters(bits, n_filters, binarize="median", max_iter=15, rng=None):
    """k-means on 0/1 patches bits (n, D), centroids binarised -> filter bits uint8 (n_filters, D).

    ``rng``: the Generator (or int seed) of k-means' initialisation."""
    if len(bits) < n_filters:
        raise ConfigError(f"need at least {n_filters} sampled patches for {n_filters} k-means filters, "
                          f"got {len(bits)}; raise --patch-sample")
    km = KMeans(n_filters, max_iter=max_iter, random_state=rng).fit(np.asarray(bits, np.float32))
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


def class_partitions(n_classes, n, mode, rng):
    """n partitions (A, B) of class subsets, as lists of index arrays; rng: a Generator.

    ``"tree"``: the nodes of balanced binary trees over random class orders (a node's classes
    split in halves, then each half again), one tree after another; ``"random"``: random
    balanced bipartitions of all classes.
    """
    validate.one_of(mode, "partitions", PARTITIONS)
    if n_classes < 2:
        raise ConfigError(f"split filters need at least 2 classes, got {n_classes}")
    out = []
    while len(out) < n:
        order = rng.permutation(n_classes)
        if mode == "random":
            out.append((np.sort(order[:n_classes // 2]), np.sort(order[n_classes // 2:])))
            continue
        stack = [order]
        while stack and len(out) < n:
            node = stack.pop(0)
            if len(node) < 2:
                continue
            a, b = node[:len(node) // 2], node[len(node) // 2:]
            out.append((np.sort(a), np.sort(b)))
            stack += [a, b]
    return out[:n]


def split_filters(class_sums, class_counts, partitions, keep=1.0):
    """One split filter per partition -> uint8 (len(partitions), D)."""
    return np.stack([split_filter(class_sums, class_counts, a, b, keep) for a, b in partitions])


def map_position_sums(layer, inp, labels, n_classes, n_images, rng, chunk_values=20_000_000):
    """Per-class sums (K, H, W, D) float64 of the patch bits at every position of n_images random images of
    this shard's input, and the class counts (K,)."""
    need = n_classes * layer.position_bits(inp) * 8
    if need > POSITION_SUMS_BYTES:
        raise ConfigError(f"position split filters would sum {need / 2**30:.1f} GiB of per-class position codes "
                          f"({n_classes} classes); use --split-context global or cluster")
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


# ---------------------------------------------------------------- a layer's filters and thresholds


def n_split_filters(n_filters, split_fraction, n_classes):
    """How many of a layer's ``n_filters`` are split filters."""
    return int(round(n_filters * split_fraction)) if n_classes > 1 else 0


def split_centres(layer, kmeans_bits):
    """The k-means filters (k, D) 0/1 as packed codes (k, w) uint64: the clusters of ``split_context="cluster"``."""
    return layer.pack_filters(kmeans_bits).reshape(len(kmeans_bits), -1)


def map_split_sums(layer, context, part, inp, lab, n_classes, n_images, rng, centres=None):
    """MAP of the split filters on one shard: per-class sums and counts of patch bits (float64, int64).

    ``context`` "global": over the shard's sampled patches ``part`` (codes (n, w), labels (n,)), (K, D);
    "cluster": per (nearest k-means filter of ``centres`` (k, w), class), (k*K, D); "position": at every
    position of ``n_images`` random images of the shard's input ``inp`` with labels ``lab`` (rng), (K, H, W, D)."""
    if context == "global":
        sample, labels = part
        return map_class_sums(layer.unpack_codes(sample), labels, n_classes)
    if context == "cluster":
        sample, labels = part
        return map_class_sums(layer.unpack_codes(sample), hamming_pairwise(sample, centres).argmin(1) * n_classes
                              + labels, len(centres) * n_classes)
    return map_position_sums(layer, inp, lab, n_classes, n_images, rng)


def split_images_of(n_shard, n_total, split_images):
    """Images a shard of ``n_shard`` of ``n_total`` samples for position split filters."""
    return int(np.ceil(split_images * n_shard / n_total))


def split_filters_from_sums(layer, context, sums, counts, partitions, kmeans_bits, n_classes, split_rng, keep):
    """REDUCE of the split filters: filter bits uint8 (len(partitions), D) from the added ``map_split_sums``;
    ``kmeans_bits`` the layer's k-means filters (the bits a "cluster" split filter starts from)."""
    if context == "global":
        return split_filters(sums, counts, partitions, keep)
    if context == "cluster":
        k = len(kmeans_bits)
        sums, counts = sums.reshape(k, n_classes, -1), counts.reshape(k, n_classes)
        groups = split_rng.choice(k, size=len(partitions), p=counts.sum(1) / counts.sum())
        return np.stack([split_filter(sums[g], counts[g], a, b, keep, kmeans_bits[g])
                         for g, (a, b) in zip(groups, partitions)])
    return position_split_filters(layer, sums, counts, partitions, split_rng, keep)


def choose_filters(layer, inputs, labels, parts, n_classes, n_filters, config, kmeans_rng, split_rng, shard_rngs):
    """Filter bits uint8 (n_filters, n_code_bits) of ``layer``: k-means filters, then split filters.

    inputs, labels: per-shard layer inputs and labels; parts: per-shard patch samples (codes (n, w),
    labels (n,)); ``config``: a BinaryConfig (split_fraction, binarize, kmeans_iter, partitions,
    split_context, split_keep, split_images). Random streams: ``kmeans_rng`` (k-means),
    ``split_rng`` (partitions, clusters and positions of split filters), ``shard_rngs`` (one per
    shard: the images of position sums).
    """
    c = config
    context = validate.one_of(c.split_context, "split_context", SPLIT_CONTEXTS)
    n_split = n_split_filters(n_filters, c.split_fraction, n_classes)
    chosen = []
    if n_filters - n_split:
        codes = np.concatenate([sample for sample, _ in parts])  # REDUCE: concatenate the shards' samples
        chosen.append(kmeans_filters(layer.unpack_codes(codes), n_filters - n_split, c.binarize, c.kmeans_iter,
                                     kmeans_rng))
    if not n_split:
        return np.concatenate(chosen)
    if context == "cluster" and not chosen:
        raise ConfigError("split_context 'cluster' needs k-means filters (split fraction below 1)")
    partitions = class_partitions(n_classes, n_split, c.partitions, split_rng)
    centres = split_centres(layer, chosen[0]) if context == "cluster" else None
    n_total = sum(len(inp) for inp in inputs)
    # MAP: per-shard class sums and counts (of sampled patches, per nearest k-means filter, or per position);
    # REDUCE: add them
    sums, counts = reduce_sums(
        map_split_sums(layer, context, part, inp, lab, n_classes, split_images_of(len(inp), n_total, c.split_images),
                       rng, centres)
        for part, inp, lab, rng in zip(parts, inputs, labels, shard_rngs))
    chosen.append(split_filters_from_sums(layer, context, sums, counts, partitions, chosen[0] if chosen else None,
                                          n_classes, split_rng, c.split_keep))
    return np.concatenate(chosen)


def map_patch_sample(layer, inp, lab, patch_sample, n_total, rng):
    """MAP: one shard's share of a layer's sampled patches: codes (n, k, w) uint64 (k = 4 patches of a pooling
    window, else 1) and their images' labels (n,), from the shard's input ``inp`` and labels ``lab``."""
    per_window = 4 if layer.pool else 1
    codes, img = layer.sample_codes(inp, int(np.ceil(patch_sample * len(inp) / n_total / per_window)), rng)
    return codes, lab[img]


def flat_sample(part):
    """A ``map_patch_sample`` part as one patch per row: codes (n*k, w) and labels (n*k,)."""
    codes, lab = part
    return codes.reshape(-1, codes.shape[2]), np.repeat(lab, codes.shape[1])


def set_thresholds(layer, hist, mode, on_fraction):
    """Set ``layer.thresholds`` from activation histograms (F, total+1) (``thresholds_from_histogram``);
    returns the mean share of sampled patches whose bit is on."""
    layer.thresholds = thresholds_from_histogram(hist, mode, on_fraction)
    t = np.ceil(layer.thresholds).astype(np.int64)
    return float(on_fractions(hist)[np.arange(len(hist)), np.clip(t, 0, hist.shape[1])].mean())


def activation_histogram(layer, parts):
    """Histograms (F, n_code_bits+1) int64 of every filter's (pooled) activation over the sampled patches.

    parts: per-shard patch samples (codes (n, k, w), anything)."""
    # MAP: per-shard activation histograms of every filter; REDUCE: add them
    return reduce_sums(map_activation_histogram(sample, layer.filters_flat(), layer.n_code_bits, layer.pool)
                       for sample, _ in parts)


def thresholds_from_histogram(hist, mode, on_fraction=0.25):
    """Per-filter thresholds (F,) float64 from activation histograms (F, total+1) (``choose_thresholds``)."""
    if validate.one_of(mode, "threshold", THRESHOLDS) == "half":
        return np.full(len(hist), (hist.shape[1] - 1) / 2.0)
    return median_from_histogram(hist, 0.5 if mode == "median" else on_fraction)


def choose_thresholds(layer, parts, mode, on_fraction=0.25):
    """Per-filter thresholds: half the patch bits (``"half"``), or the activation that the sampled patches'
    (pooled) activation reaches for half of them (``"median"``) or for ``on_fraction`` (``"quantile"``).

    parts: per-shard patch samples (codes (n, k, w), anything)."""
    if validate.one_of(mode, "threshold", THRESHOLDS) == "half":
        return np.full(layer.n_filters, layer.n_code_bits / 2.0)
    return thresholds_from_histogram(activation_histogram(layer, parts), mode, on_fraction)
