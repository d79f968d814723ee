"""Site functions of the first block of a text network (``emb<E>-c<F>k<k>-...``) trained on sites.

The block's byte embedding is fixed (``greedy.methods.patchbag``), so the coordinator sends it to
the sites once and each writes its embedded bytes ``emb-<layer>.npy`` (``embed``); the window
moments (and, with ``--byte-codes kmeans``, k-means) read that cache like any other patch source
(``ops``). With ``--byte-codes hash`` no dictionary is fitted: a window's code is its hashed byte
k-gram (``greedy.cluster.bytecodes``), so each site counts its own codes (``byte_codes``) and
sends, per code its windows have, the sum of their preprocessed windows and their number
(``byte_sums``), from which the coordinator makes the codes' centroids. Neither returns a byte of a
sequence: a sum over windows and counts of hashed k-grams.
"""
import numpy as np

from greedy.cluster.bytecodes import bucket_sums, hashed_codes
from greedy.distributed.cluster import current_site
from greedy.distributed.ops import propagate_file, shared_codes
from greedy.nn.model import Sequential


def embedded_name(layer):
    """The site cache of block ``layer``'s embedded input."""
    return f"emb-{layer}.npy"


def embed(run_key, layer, embedding):
    """Write the site's ``emb-<layer>.npy``, the byte embedding ``embedding`` (a built ByteEmbedding) of its
    cache ``layer-<layer>.npy`` (N, 1, L), float32 (N, E, L); returns its shape."""
    site = current_site()
    out = propagate_file(site, run_key, Sequential([embedding]), f"layer-{layer}.npy", embedded_name(layer))
    return tuple(out.shape)


def byte_sums(run_key, layer, pre, size, buckets):
    """Per hashed code of the site's byte windows of width ``size`` (``buckets`` codes), the sum of their
    preprocessed embedded windows: {"ids" (U,) int64 the codes present, "sums" (U, d) float64,
    "counts" (U,) int64}."""
    site = current_site()
    sums, counts = bucket_sums(site.load(run_key, f"layer-{layer}.npy"), site.load(run_key, embedded_name(layer)),
                               pre, size, buckets)
    ids = np.flatnonzero(counts)
    return {"ids": ids, "sums": sums[ids], "counts": counts[ids]}


def merge_byte_sums(parts, buckets, d):
    """The codes' centroids (buckets, d) float32 (the mean preprocessed window of each code, zero for codes
    no site has) and windows per code (buckets,) int64 from the sites' ``byte_sums``."""
    sums, counts = np.zeros((buckets, d)), np.zeros(buckets, np.int64)
    for p in parts:
        sums[p["ids"]] += p["sums"]
        counts[p["ids"]] += p["counts"]
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


def byte_codes(run_key, layer, size, buckets, segments, share, per_class, n_classes, seed):
    """The site's byte sequences as their hashed k-gram frequencies per segment
    (``greedy.cluster.bytecodes.hashed_codes``), shared as ``ops.shared_codes`` does."""
    site = current_site()
    codes = hashed_codes(site.load(run_key, f"layer-{layer}.npy"), size, buckets, segments)
    n = len(codes)
    stats = {"codes_per_sequence": codes.nnz / n, "code_density": codes.nnz / (n * segments * buckets)}
    return shared_codes(codes, stats, np.asarray(site.y), share, per_class, n_classes, seed)
