"""Functions that run on a site's worker and return only small results.

Each reads the site's shard or a cache written on the site (``SiteState.load``), never receives
raw samples and never returns them: moments, k-means sums and counts, codes or prototypes, pooled
features, class sums, histograms. Every function can run again on a restarted worker and give
the same result: its random draws come from the seeds it is given, and what it keeps between
calls (``site.memo``) it can recompute from the files on the site.

A *patch source* ``src`` is a dict: ``run`` (the run's cache key), ``layer`` (the block whose input
cache the patches come from), ``size`` (patch side, or window width on sequences), ``seed``, and
optionally ``file``, the cache the patches are read from when it is not ``layer-<layer>.npy`` (the
embedded bytes of a text block, ``greedy.distributed.sequence_ops``); with ``(n, index)``, the number
of patches this site samples and its index in the manifest, it names one site's patch sample.
"""
import os

import numpy as np
from numpy.lib.format import open_memmap

from greedy.cluster.codes import cluster_images, encode
from greedy.cluster.kmeans import KMeans, _assign, _sq_norms
from greedy.cluster.patches import sample_patches
from greedy.distributed.cluster import current_site
from greedy.distributed.shard import save_npy
from greedy.kernels.cast import as_float32
from greedy.methods.blocks import pool_maps, propagate, spec_ndim
from greedy.nn.fit import predict
from greedy.nn.model import Sequential, parse_spec
from greedy.nn.network import Normalizer

CHUNK = 4096


def _write_cache(site, run_key, name, shape, dtype, fill):
    """Create the site's cache file ``name`` of ``shape`` and ``dtype``, filled by ``fill(array)``, under its
    final name only once complete (a worker killed half way leaves a ``.part`` file the next attempt reuses)."""
    path = site.cache_path(run_key, name)
    part = path + ".part.npy"
    out = open_memmap(part, mode="w+", dtype=dtype, shape=tuple(shape))
    fill(out)
    out.flush()
    del out
    os.replace(part, path)
    return path


class _FileStore:
    """A ``CacheStore`` stand-in for ``blocks.propagate``: its one array is a memory-mapped .npy file."""

    def __init__(self, path):
        self.path, self.array = path, None

    def empty(self, shape, dtype):
        self.array = open_memmap(self.path, mode="w+", dtype=dtype, shape=tuple(shape))
        return self.array


# ---- inputs -------------------------------------------------------------------------------------------------

def input_moments(n_classes):
    """Per-channel sums of x / 255 and of its square (float64 (C,)), the values per channel, and the class
    counts (n_classes,) of the site's shard."""
    site = current_site()
    x, c = site.x, site.x.shape[1]
    s, s2 = np.zeros(c), np.zeros(c)
    axes = (0,) + tuple(range(2, x.ndim))
    for i in range(0, len(x), CHUNK):
        xb = np.asarray(x[i:i + CHUNK], np.float64) / 255.0
        s += xb.sum(axis=axes)
        s2 += (xb * xb).sum(axis=axes)
    return {"n": len(x), "values": len(x) * int(np.prod(x.shape[2:])), "sum": s, "sumsq": s2,
            "classes": np.bincount(site.y, minlength=n_classes)[:n_classes]}


def normalise(run_key, mean, std):
    """Write the first block's input cache ``layer-0.npy``: ``Normalizer(mean, std)(x)``, float32; returns its shape."""
    site = current_site()
    norm = Normalizer(mean, std)

    def fill(out):
        for i in range(0, len(site.x), CHUNK):
            out[i:i + CHUNK] = norm(np.asarray(site.x[i:i + CHUNK]))
    _write_cache(site, run_key, "layer-0.npy", site.x.shape, np.float32, fill)
    return tuple(site.x.shape)


# ---- patches and k-means ------------------------------------------------------------------------------------

def src_file(src):
    """The cache file a patch source reads."""
    return src.get("file") or f"layer-{src['layer']}.npy"


def _sample(site, src, n, index):
    key = ("sample", src["run"], src["layer"], src["seed"])
    if key not in site.memo:
        site.memo = {k: v for k, v in site.memo.items() if k[2] == src["layer"] and k[1] == src["run"]}
        x = site.load(src["run"], src_file(src))
        rng = np.random.default_rng(np.random.SeedSequence(src["seed"], spawn_key=(index,)))
        site.memo[key] = sample_patches(x, n, rng, src["size"])
    return site.memo[key]


def _points(site, src, n, index):
    """The site's preprocessed patch sample (n, d) float32 (the preprocessing map was saved by ``local_kmeans``);
    for a binary source (``greedy.distributed.binary_ops``) its sampled patch bits."""
    if src.get("binary"):
        from greedy.distributed.binary_ops import binary_points
        return binary_points(site, src, index)
    key = ("points", src["run"], src["layer"], src["seed"])
    if key not in site.memo:
        with np.load(site.cache_path(src["run"], f"pre-{src['layer']}.npz"), allow_pickle=False) as f:
            a, c = f["A"], f["c"]
        site.memo[key] = _sample(site, src, n, index) @ a + c
    return site.memo[key]


def patch_moments(src, cov_rows, n, index):
    """Moments of the site's raw patch sample (n, D): ``n``, ``sum`` (D,), and over every s-th row
    (about ``cov_rows`` rows) ``n_cov``, ``cov_sum`` (D,) and ``outer`` (D, D), float64."""
    site = current_site()
    p = _sample(site, src, n, index)
    sub = p[::max(1, -(-len(p) // max(cov_rows, 2)))].astype(np.float64)
    return {"n": len(p), "sum": p.sum(axis=0, dtype=np.float64), "n_cov": len(sub), "cov_sum": sub.sum(axis=0),
            "outer": sub.T @ sub}


def local_kmeans(src, pre_a, pre_c, k, iters, kmeans_seed, n, index):
    """Save the preprocessing map on the site (none for a binary source), preprocess the site's sample and
    cluster it locally.

    Returns ``centers`` (k', d) float32 and their ``counts`` (k',) (k' = min(k, n)), and the
    sample's ``n``, ``s1`` and ``s2`` (per-feature sums of z and z^2, float64) for k-means' tolerance."""
    site = current_site()
    if pre_a is not None:
        from greedy.atomic import save_npz
        save_npz(site.cache_path(src["run"], f"pre-{src['layer']}.npz"), {"A": pre_a, "c": pre_c})
        site.memo.pop(("points", src["run"], src["layer"], src["seed"]), None)
    z = _points(site, src, n, index)
    km = KMeans(min(k, len(z)), max_iter=iters, random_state=kmeans_seed).fit(z)
    z64 = z.astype(np.float64)
    return {"centers": km.cluster_centers_, "counts": np.bincount(km.labels_, minlength=len(km.cluster_centers_)),
            "n": len(z), "s1": z64.sum(axis=0), "s2": (z64 * z64).sum(axis=0)}


def lloyd_partial(src, centers, iteration, previous, n, index):
    """One Lloyd pass over the site's points: per-cluster ``sums`` (k, d) and ``counts`` (k,) float64, the
    ``inertia`` (float) and ``changed``, the points whose nearest centre differs from the pass of
    ``iteration - 1`` (recomputed from ``previous`` centres if this worker did not make that pass)."""
    site = current_site()
    z = _points(site, src, n, index)
    centers = np.asarray(centers, z.dtype)
    labels, d2, sums, counts = _assign(z, centers, _sq_norms(centers), weights=np.ones(len(z)))
    key = ("labels", src["run"], src["layer"], src["seed"])
    done, before = site.memo.get(key, (None, None))
    if done != iteration - 1 and previous is not None:
        prev = np.asarray(previous, z.dtype)
        before = _assign(z, prev, _sq_norms(prev))[0]
    changed = len(z) if before is None or iteration == 0 else int((before != labels).sum())
    site.memo[key] = (iteration, labels)
    return {"sums": sums, "counts": counts, "inertia": float(d2.astype(np.float64).sum()), "changed": changed}


# ---- codes, propagation, features ---------------------------------------------------------------------------

def encode_codes(run_key, layer, pre, centers, side, share, per_class, n_classes, seed, file=None):
    """The site's images (or sequences; ``file`` the cache they are read from when not ``layer-<layer>.npy``)
    as patch-bag codes (``greedy.cluster.codes.encode``) with their labels
    (``share="codes"``), or each class clustered into ``per_class`` weighted prototypes
    (``share="prototypes"``). Returns {"parts": the RegionCodes' CSR matrices, "y", "weights" (None for codes),
    "stats"}: plain arrays and matrices, whose size Dask's transfer logs measure."""
    site = current_site()
    codes, stats = encode(site.load(run_key, f"layer-{layer}.npy" if file is None else file), pre, centers, side)
    return shared_codes(codes, stats, np.asarray(site.y), share, per_class, n_classes, seed)


def shared_codes(codes, stats, y, share, per_class, n_classes, seed):
    """What a site sends of its RegionCodes ``codes`` with labels y (N,): every sequence's or image's codes
    (``share="codes"``) or ``per_class`` weighted prototypes per class (``share="prototypes"``), as
    {"parts", "y", "weights" (None for codes), "stats"}."""
    if share == "codes":
        return {"parts": codes.parts, "y": y, "weights": None, "stats": stats}
    protos, labels, weights = cluster_images(codes, y, n_classes, per_class, seed)
    return {"parts": protos.parts, "y": labels, "weights": weights, "stats": stats}


def propagate_file(site, run_key, block, source, target):
    """The frozen ``block`` applied to the site's cache ``source``, written as the cache ``target`` (under its
    final name only once complete); returns the new cache, memory-mapped."""
    path = site.cache_path(run_key, target)
    store = _FileStore(path + ".part.npy")
    out = propagate(block, site.load(run_key, source), store=store)
    out.flush()
    os.replace(store.path, path)
    return out


def propagate_block(run_key, layer, block, tap_size):
    """Apply the frozen ``block`` to the site's cache ``layer-<layer>.npy``, writing ``layer-<layer+1>.npy``
    on the site (and the max-pooled ``tap-<layer>.npy`` when ``tap_size``); returns the output shape."""
    site = current_site()
    out = propagate_file(site, run_key, block, f"layer-{layer}.npy", f"layer-{layer + 1}.npy")
    if tap_size:
        save_npy(site.cache_path(run_key, f"tap-{layer}.npy"), pool_maps(out, tap_size))
    return tuple(out.shape)


def final_features(run_key, n_layers, pool, tap_layers, share, per_class, n_classes, seed):
    """The final classifier's features of the site's images: the taps of ``tap_layers`` and the last
    cache pooled by the ``pool`` token, (N, D) with labels (N,) (``share="codes"``); or per class
    ``per_class`` k-means prototypes with their weights (``share="prototypes"``). Features travel as float16
    (the classifier standardises them; half the bytes)."""
    site = current_site()
    x = site.load(run_key, f"layer-{n_layers}.npy")
    if pool:
        pooler = Sequential(parse_spec(pool, spec_ndim(x.shape[1:]))).build(x.shape[1:])
        last = predict(pooler, x, as_float32)
    else:
        last = as_float32(np.asarray(x))
    parts = [np.asarray(site.load(run_key, f"tap-{t}.npy")) for t in tap_layers]
    feats = np.concatenate(parts + [last.reshape(len(x), -1)], axis=1)
    y = np.asarray(site.y)
    if share == "codes":
        return {"features": feats.astype(np.float16), "y": y, "weights": None}
    protos, labels, weights = class_prototypes(feats, y, per_class, seed)
    return {"features": protos, "y": labels, "weights": weights}


def class_prototypes(feats, y, per_class, seed):
    """Per class of labels y, ``per_class`` k-means prototypes of feats (N, D): float16 (P, D), labels (P,),
    weights (P,) (images per prototype)."""
    protos, labels, weights = [], [], []
    for cls in np.unique(y):
        rows = feats[y == cls]
        km = KMeans(min(per_class, len(rows)), max_iter=20, random_state=seed).fit(rows)
        protos.append(km.cluster_centers_)
        weights.append(np.bincount(km.labels_, minlength=len(km.cluster_centers_)))
        labels.append(np.full(len(km.cluster_centers_), cls))
    return np.concatenate(protos).astype(np.float16), np.concatenate(labels), np.concatenate(weights)


def opened_files():
    """Files this site's worker opened (locality tests)."""
    return list(current_site().opened)

