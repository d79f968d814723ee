"""Hashed byte k-grams as the patch-bag codes of a byte sequence's first block (``--byte-codes hash``).

The first block of a byte network is ``emb<E>-c<F>k<k>-...``: a fixed byte embedding, then a conv
over windows of k embedded bytes. Windows of bytes are discrete: two windows are the same k-gram
or they are not, and which k-gram a window is matters (``ERROR`` against ``ERRNO``). So instead of
the nearest of a few k-means centroids, a window's code is its k-gram itself, hashed into
``buckets`` codes; the code of a sequence is its k-gram counts per segment, a bag of hashed byte
k-grams, the representation the 1-nearest-neighbour baseline uses too. The "centroid" of a code is
the mean preprocessed window of the training k-grams hashed to it: with no two k-grams in one
bucket it is the k-gram itself, and the code-space layer computes exactly what the folded conv
computes on the real windows. No dictionary is fitted, and assigning a window costs one hash.
"""
import numpy as np
import scipy.sparse as sp

from greedy.cluster.codes import RegionCodes, region_histograms, region_of_positions
from greedy.errors import ConfigError

FNV_OFFSET = np.uint64(14695981039346656037)
FNV_PRIME = np.uint64(1099511628211)
OUTSIDE = 256  # the value read beyond either end of a sequence: no byte has it
HASH_CHUNK = 1 << 12


def window_hashes(x, size):
    """FNV-1a hashes (N, L) uint64 of the ``size`` bytes centred on every position (zero-padded
    "same" windows, as a width-``size`` Conv1d sees them).

    x (N, 1, L): byte codes, uint8 or whole-number floats in [0, 255]; ``size`` odd. Positions
    beyond either end read ``OUTSIDE``, so a window at the edge differs from one over zero bytes.
    """
    if x.ndim != 3 or x.shape[1] != 1:
        raise ConfigError(f"hashed byte codes need byte sequences (N, 1, L), got shape {x.shape}")
    if size % 2 != 1:
        raise ConfigError(f"byte windows must have an odd width, got {size}")
    b = np.asarray(x[:, 0]).astype(np.uint64)
    half, length = size // 2, b.shape[1]
    padded = np.pad(b, ((0, 0), (half, half)), constant_values=OUTSIDE)
    h = np.full(b.shape, FNV_OFFSET, np.uint64)
    for t in range(size):
        h = (h ^ padded[:, t:t + length]) * FNV_PRIME
    return h


def bucket_ids(x, size, buckets):
    """Code (N*L,) int64 in [0, buckets) of every window of byte sequences x (N, 1, L), sequence-major."""
    length = x.shape[2]
    out = np.empty(len(x) * length, np.int64)
    for i in range(0, len(x), HASH_CHUNK):
        ids = window_hashes(x[i:i + HASH_CHUNK], size) % np.uint64(buckets)
        out[i * length:i * length + ids.size] = ids.reshape(-1)
    return out


def hashed_codes(x, size, buckets, segments, dtype=np.float32):
    """RegionCodes of byte sequences x (N, 1, L): per segment, the frequency of each hashed window code.

    Column r*buckets + c of row i holds the number of sequence i's windows in segment r with code c over
    the positions in that segment (each segment's columns sum to one).
    """
    length = x.shape[2]
    codes, _ = region_histograms(bucket_ids(x, size, buckets), region_of_positions(None, length, segments),
                                 segments, buckets, dtype)
    return RegionCodes(stacked=codes, n_regions=segments)


def bucket_centroids(x, embedded, pre, size, buckets, chunk=512):
    """Mean preprocessed window (buckets, d) float32 of the training windows of each code, and the
    number of windows per code (buckets,) int64.

    x (N, 1, L) bytes; embedded (N, E, L) the embedded bytes the block's conv reads; pre a fitted
    ``PatchPreprocessor`` of their windows. Codes no window has get the zero vector.
    """
    sums, counts = bucket_sums(x, embedded, pre, size, buckets, chunk)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


def bucket_sums(x, embedded, pre, size, buckets, chunk=512):
    """Sum of the preprocessed windows (buckets, d) float64 of each code and the number of windows per
    code (buckets,) int64, over byte sequences x (N, 1, L) and their embedding (N, E, L): the parts of
    ``bucket_centroids`` that add up over shards of the sequences."""
    d = pre.A_.shape[1]
    sums = np.zeros((buckets, d))
    counts = np.zeros(buckets, np.int64)
    for i in range(0, len(x), chunk):
        ids = bucket_ids(x[i:i + chunk], size, buckets)
        z = pre.transform_images(embedded[i:i + chunk])
        onehot = sp.csr_matrix((np.ones(len(ids)), (ids, np.arange(len(ids)))), shape=(buckets, len(ids)))
        sums += onehot @ z.astype(np.float64)
        counts += np.bincount(ids, minlength=buckets)
    return sums, counts
