"""The site functions of ``--method binary`` on sites: each returns only small results.

A site splits its images into shards of ``shard_size`` (``shard_ranges``) numbered from its
``offset`` (the shards of the sites before it), so shard ``offset + j`` draws from the same named
random stream (``greedy.methods.binary.trainer.stream``) wherever it runs. Every statistic is the
MAP of a function of ``greedy.methods.binary`` (``stats``, ``filters``) summed over the site's
shards; the coordinator does the REDUCE. A block's bit maps stay on the site, in its cache folder
(``bits-<layer>.npy``, (N, H, W, w) uint64: the input of block ``layer``).

A *binary source* ``src`` names one layer's patch sample: ``run``, ``layer``, ``block`` (the
unfitted layer: its levels and sizes), ``patch_sample``, ``n_total`` (images on all sites),
``shard_size``, ``seed``, ``offsets`` (one per site) and ``binary`` (True). The sample is kept in
``site.memo`` and recomputed from the site's files after a restart.
"""
import os

import numpy as np
from numpy.lib.format import open_memmap

from greedy.distributed.cluster import current_site
from greedy.kernels.bitops import n_words
from greedy.methods.binary.filters import flat_sample, map_patch_sample, map_split_sums, split_images_of
from greedy.methods.binary.layers import ImageLayer, head_counts
from greedy.methods.binary.stats import (levels_sample, map_activation_histogram, map_class_sums, map_colour_histogram,
                                         map_level_histogram, reduce_sums, shard_ranges)
from greedy.methods.binary.trainer import (LEVELS_STREAM, PATCHES_STREAM, POSITIONS_STREAM, Shard, layer_input,
                                           stream)


def _shards(site, run_key, layer, shard_size):
    """[(start, stop, Shard)] of the site: images, and the bit map ``bits-<layer>.npy`` from block 1 on."""
    bits = site.load(run_key, f"bits-{layer}.npy") if layer else None
    return [(a, b, Shard(np.asarray(site.x[a:b]), None if bits is None else np.asarray(bits[a:b])))
            for a, b in shard_ranges(len(site.x), shard_size)]


def site_info(n_classes, shard_size):
    """The site's number of images ``n``, of shards, and its class counts (n_classes,)."""
    site = current_site()
    return {"n": len(site.x), "shards": len(shard_ranges(len(site.x), shard_size)),
            "classes": np.bincount(np.asarray(site.y), minlength=n_classes)[:n_classes]}


def level_histogram(colour_norm, patch_sample, n_total, shard_size, seed, offset):
    """The image layer's value histogram (C, bins) int64, summed over the site's shards (``image_levels``' MAP)."""
    site = current_site()
    return reduce_sums(map_level_histogram(sh.images, levels_sample(b - a, n_total, patch_sample),
                                           colour_norm, stream(seed, LEVELS_STREAM, 0, offset + j))
                       for j, (a, b, sh) in enumerate(_shards(site, None, 0, shard_size)))


def colour_histogram(pools, shard_size):
    """Histogram (C, 1024) int64 of the site's images pooled ``pools`` times (``colour_levels``' MAP)."""
    site = current_site()
    return reduce_sums(map_colour_histogram(sh.images, pools)
                       for _, _, sh in _shards(site, None, 0, shard_size))


def _parts(site, src, index):
    """Per shard: (input map, labels, patch sample (codes (n, k, w), labels (n,))) of the layer ``src`` names."""
    key = ("bsample", src["run"], src["layer"], src["seed"])
    if key not in site.memo:
        site.memo = {k: v for k, v in site.memo.items() if k[2] == src["layer"] and k[1] == src["run"]}
        block, offset, y = src["block"], src["offsets"][index], np.asarray(site.y)
        parts = []
        for j, (a, b, sh) in enumerate(_shards(site, src["run"], src["layer"], src["shard_size"])):
            inp = layer_input(block, sh)
            rng = stream(src["seed"], PATCHES_STREAM, src["layer"], offset + j)
            parts.append((inp, y[a:b], map_patch_sample(block, inp, y[a:b], src["patch_sample"], src["n_total"], rng)))
        site.memo[key] = parts
    return site.memo[key]


def binary_points(site, src, index):
    """The site's sampled patches of layer ``src`` as 0/1 float32 rows (n, D): the points of k-means filters."""
    key = ("points", src["run"], src["layer"], src["seed"])
    if key not in site.memo:
        samples = [flat_sample(part)[0] for _, _, part in _parts(site, src, index)]
        site.memo[key] = src["block"].unpack_codes(np.concatenate(samples)).astype(np.float32)
    return site.memo[key]


def split_sums(src, context, n_classes, split_images, centres, index):
    """Per-class sums (int32 when exact, else float64) and counts of patch bits, added over the site's shards
    (``map_split_sums``); ``centres`` the packed k-means filters for ``context="cluster"``."""
    site = current_site()
    block, offset = src["block"], src["offsets"][index]
    sums, counts = reduce_sums(
        map_split_sums(block, context, flat_sample(part), inp, lab, n_classes,
                       split_images_of(len(inp), src["n_total"], split_images),
                       stream(src["seed"], POSITIONS_STREAM, src["layer"], offset + j), centres)
        for j, (inp, lab, part) in enumerate(_parts(site, src, index)))
    if sums.max(initial=0) < 2**31:  # counts of bits: integers, sent in half the bytes
        sums = sums.astype(np.int32)
    return {"sums": sums, "counts": counts}


def activation_histogram(src, block, index):
    """Histograms (F, n_code_bits+1) int64 of every filter's (pooled) activation over the site's sampled
    patches; ``block`` the layer with its filters."""
    site = current_site()
    return reduce_sums(map_activation_histogram(part[0], block.filters_flat(), block.n_code_bits, block.pool)
                       for _, _, part in _parts(site, src, index))


def propagate(run_key, layer, block, shard_size):
    """Apply the fitted ``block`` to the site's input of ``layer``, writing ``bits-<layer+1>.npy`` on the site
    (complete files only: a ``.part`` file is renamed once written); returns the output shape."""
    site = current_site()
    n, _, h, w = site.x.shape
    if not isinstance(block, ImageLayer):
        h, w = site.load(run_key, f"bits-{layer}.npy").shape[1:3]
    if block.pool:
        h, w = h // 2, w // 2
    path = site.cache_path(run_key, f"bits-{layer + 1}.npy")
    out = open_memmap(path + ".part.npy", mode="w+", dtype=np.uint64, shape=(n, h, w, n_words(block.n_filters)))
    for a, b, sh in _shards(site, run_key, layer, shard_size):
        out[a:b] = block.forward(layer_input(block, sh))
    out.flush()
    del out
    os.replace(path + ".part.npy", path)
    site.memo = {}
    return (n, h, w, n_words(block.n_filters))


def head(run_key, n_layers, n_bits, regions, n_classes, share, per_class, seed):
    """The head features of the site's images: per-class sums (K, D) float64 and counts (K,) (the
    nearest-class-mean classifier), and for the linear classifier either every image's region popcounts
    (uint8 (N, D), or the bits packed 8 to a byte with ``regions=0``) with its label (``share="codes"``), or
    per class ``per_class`` prototypes of the features with their weights (``share="prototypes"``)."""
    from greedy.distributed.ops import class_prototypes
    site = current_site()
    m = site.load(run_key, f"bits-{n_layers}.npy")
    counts, area = head_counts(np.asarray(m), n_bits, regions)
    feats = counts if area is None else counts / area
    y = np.asarray(site.y)
    sums, n = map_class_sums(feats, y, n_classes)
    out = {"class_sums": sums, "class_counts": n, "y": y, "weights": None, "area": area}
    if share == "codes":
        return dict(out, counts=np.packbits(counts, axis=1) if area is None else counts)
    protos, labels, weights = class_prototypes(feats.astype(np.float32), y, per_class, seed)
    return dict(out, features=protos, y=labels, weights=weights)
