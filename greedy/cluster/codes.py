"""Patch-bag codes: every image as the counts of its patches' nearest centroids (seed 001).

``encode`` assigns every 3x3 patch of every image to its nearest centroid, streamed in image
chunks, and counts the assignments per image, optionally per region of the image (e.g. the
four quadrants), as sparse ``RegionCodes``. Sequences (N, C, L) likewise: every window of k
positions, counted per segment of the sequence (``side`` segments). ``cluster_images`` clusters each class's codes
into weighted prototypes ("distributions of centroids can also be clustered").
"""
import numba
import numpy as np
import scipy.sparse as sp

from greedy.cluster.kmeans import KMeans, assign
from greedy.errors import ConfigError
from greedy.kernels.codes import count_codes, gather_rows, region_rows

ENCODE_CHUNK_BYTES = 64 * 1024**2
# Codes up to this size are kept as one dense (N, R, k) array, larger ones as CSR matrices.
DENSE_CODES_MAX_BYTES = 1024**3

def region_of_positions(h, w, side):
    """Region of each position (P,) int64 of an h x w map, row-major, split into side x side regions:
    position (r, c) falls in region (r*side // h, c*side // w), so the regions split the rows and the
    columns as evenly as integers allow. ``h=None``: the segment of each of the w positions of a
    sequence split into ``side`` segments (p*side // w)."""
    if h is None:
        return np.arange(w, dtype=np.int64) * side // w
    rows = np.minimum(np.arange(h, dtype=np.int64) * side // h, side - 1)
    cols = np.minimum(np.arange(w, dtype=np.int64) * side // w, side - 1)
    return (rows[:, None] * side + cols[None, :]).reshape(-1)


def region_sizes(h, w, side):
    """Number of positions in each region of ``region_of_positions(h, w, side)`` (side*side, or side segments)."""
    return np.bincount(region_of_positions(h, w, side), minlength=side if h is None else side * side)


def region_histograms(labels, region_of, n_regions, k, dtype=np.float32):
    """Each image's label frequencies per region as one CSR matrix (n, R*k), the regions side by side.

    labels (n*P,) integers in [0, k), image by image; region_of (P,) int64 in [0, n_regions), the region of
    each of an image's P positions (``region_of_positions``). Row i, column r*k + c holds the number of image
    i's positions in region r labelled c, over the number of positions in region r. Returns (the CSR
    matrix of ``dtype``, the number of distinct labels of each image (n,) int64). Memory: (n, P) columns
    and values besides the output.
    """
    region_of = np.ascontiguousarray(region_of, np.int64)
    labels = np.ascontiguousarray(labels, np.int64).reshape(-1)
    positions = len(region_of)
    if positions == 0 or len(labels) % positions:
        raise ConfigError(f"{len(labels)} labels are not whole images of {positions} positions")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ConfigError(f"labels must lie in [0, {k}), got {labels.min()}..{labels.max()}")
    if region_of.min() < 0 or region_of.max() >= n_regions:
        raise ConfigError(f"region_of must lie in [0, {n_regions}), got {region_of.min()}..{region_of.max()}")
    n = len(labels) // positions
    cols, vals = np.empty((n, positions), np.int64), np.empty((n, positions), dtype)
    runs, distinct = np.empty(n, np.int64), np.empty(n, np.int64)
    region_rows(labels, region_of, np.bincount(region_of, minlength=n_regions).astype(dtype), k,
                min(n, numba.get_num_threads()), cols, vals, runs, distinct)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(runs, out=indptr[1:])
    index_dtype = np.int32 if n_regions * k < 2**31 and indptr[-1] < 2**31 else np.int64
    indices, data = np.empty(indptr[-1], index_dtype), np.empty(indptr[-1], dtype)
    gather_rows(cols, vals, indptr, indices, data)
    matrix = sp.csr_matrix((data, indices, indptr.astype(index_dtype)),
                           shape=(n, n_regions * k))
    return matrix, distinct


class RegionCodes:
    """Centroid frequencies of N images in R regions over k centroids, float32.

    Row i of region r holds image i's centroid counts in region r divided by the number of
    positions in that region, so each row sums to one. Held either as ``parts``, a list of R CSR
    matrices (N, k) (what sites send), as ``stacked``, one CSR matrix (N, R*k) of the regions side by
    side (what ``encode`` makes of many images' codes and ``hashed_codes`` of byte codes, and what a batch
    of sparse codes is: one row gather and one sparse product, not R), or as one dense ``array`` (N, R, k) (small
    dictionaries: a batch is then one gather and one GEMM). Give exactly one of them (``stacked``
    with ``n_regions``); the other sparse form is made on first use. Indexable by an index array.
    """

    def __init__(self, parts=None, weights=None, array=None, stacked=None, n_regions=None):
        if sum(a is not None for a in (parts, array, stacked)) != 1:
            raise ConfigError("RegionCodes needs one of parts, array or stacked")
        if array is not None and array.ndim != 3:
            raise ConfigError(f"a RegionCodes array is (N, R, k), got shape {array.shape}")
        if stacked is not None and (not n_regions or stacked.shape[1] % n_regions):
            raise ConfigError(f"stacked codes of {stacked.shape[1]} columns do not split into {n_regions} regions")
        self._parts, self._stacked, self.n_regions = parts, stacked, n_regions
        self.array = array
        self.weights = weights

    @property
    def parts(self):
        if self._parts is None:
            if self.array is not None:
                self._parts = [sp.csr_matrix(self.array[:, r]) for r in range(self.array.shape[1])]
            else:
                k = self._stacked.shape[1] // self.n_regions
                self._parts = [self._stacked[:, r * k:(r + 1) * k].tocsr() for r in range(self.n_regions)]
        return self._parts

    @property
    def stacked(self):
        """One CSR matrix (N, R*k): the regions' codes side by side."""
        if self._stacked is None:
            if self.array is not None:
                self._stacked = sp.csr_matrix(self.array.reshape(len(self.array), -1))
            else:
                self._stacked = sp.hstack(self._parts, format="csr")
            self.n_regions = len(self._parts) if self._parts is not None else self.array.shape[1]
        return self._stacked

    def __len__(self):
        if self.array is not None:
            return len(self.array)
        return (self._parts[0] if self._stacked is None else self._stacked).shape[0]

    def __getitem__(self, idx):
        if self.array is not None:
            return RegionCodes(array=self.array[idx])
        stacked = self.stacked
        return RegionCodes(stacked=stacked[idx], n_regions=self.n_regions)

    @property
    def nnz(self):
        if self.array is not None:
            return int(np.count_nonzero(self.array))
        return self._stacked.nnz if self._stacked is not None else sum(p.nnz for p in self._parts)

    def dense(self):
        """(N, R*k) dense array of all regions side by side."""
        if self.array is not None:
            return self.array.reshape(len(self.array), -1)
        return self.stacked.toarray()


def encode(x, pre, centers, side=1, chunk_bytes=ENCODE_CHUNK_BYTES, dtype=np.float32, rows=None,
           dense_max_bytes=DENSE_CODES_MAX_BYTES):
    """Assign every patch of every image to its nearest centroid, streamed in image chunks.

    x (N, C, H, W) float (or sequences (N, C, L) with ``side`` segments); pre a fitted PatchPreprocessor;
    centers (k, d) float32; rows: indices (M,) of the images to encode, in the order of the codes
    (None: all of x; a chunk of x is gathered at a time, so x is never copied whole).
    The patches are projected by a convolution (``PatchPreprocessor.transform_images``), so the
    (N*H*W, 9C) patch matrix is never built. A chunk holds as many images as take ``chunk_bytes``
    for their float32 input, their d projections (twice: the conv's output and its transpose) and
    their counts; the conv's and ``assign``'s own scratch blocks come on top.
    The codes are one dense (M, R, k) array when it takes at most ``dense_max_bytes``, else one CSR
    matrix (M, R*k) of the regions side by side, built chunk by chunk (``region_histograms``).
    Returns (RegionCodes of ``dtype``, stats dict with inertia per patch and mean distinct centroids per image).
    """
    n = len(x) if rows is None else len(rows)
    h, w = x.shape[2:] if x.ndim == 4 else (None, x.shape[2])
    region_of = region_of_positions(h, w, side)
    n_regions, positions = (side * side, h * w) if h else (side, w)
    k = len(centers)
    sizes = region_sizes(h, w, side).astype(dtype)
    per_image = (positions * (x.shape[1] + 2 * pre.A_.shape[1]) + n_regions * k) * 4
    step = max(1, chunk_bytes // per_image)
    sq = (centers.astype(np.float32) ** 2).sum(axis=1)
    array = np.zeros((n, n_regions, k), dtype) if n * n_regions * k * np.dtype(dtype).itemsize <= dense_max_bytes \
        else None
    chunks = []
    inertia, distinct = 0.0, 0
    for start in range(0, n, step):
        xb = x[start:start + step] if rows is None else x[rows[start:start + step]]
        labels, dist = assign(pre.transform_images(xb), centers, sq)
        inertia += float(dist.sum())
        if array is None:
            rows_b, distinct_b = region_histograms(labels, region_of, n_regions, k, dtype)
            chunks.append(rows_b)
            distinct += int(distinct_b.sum())
        else:
            counts = array[start:start + len(xb)]
            count_codes(labels.astype(np.int64), region_of, counts)
            distinct += int((counts.sum(axis=1) > 0).sum())
            counts /= sizes[None, :, None]
    codes = RegionCodes(array=array) if array is not None else \
        RegionCodes(stacked=sp.vstack(chunks, format="csr"), n_regions=n_regions)
    stats = {"inertia_per_patch": inertia / (n * positions), "distinct_centroids_per_image": distinct / n,
             "code_density": codes.nnz / (n * n_regions * k)}
    return codes, stats


def cluster_images(codes, y, n_classes, per_class, seed):
    """Cluster each class's codes into ``per_class`` prototypes; returns (RegionCodes with weights, labels)."""
    dense = codes.dense()
    protos, labels, weights = [], [], []
    for cls in range(n_classes):
        rows = dense[y == cls]
        if len(rows) == 0:
            continue
        m = min(per_class, len(rows))
        km = KMeans(m, max_iter=20, random_state=seed).fit(rows)
        protos.append(km.cluster_centers_)
        weights.append(np.bincount(km.labels_, minlength=m).astype(np.float32))
        labels.append(np.full(m, cls))
    protos = np.concatenate(protos).astype(np.float32)
    k = codes.parts[0].shape[1]
    parts = [sp.csr_matrix(protos[:, r * k:(r + 1) * k]) for r in range(len(codes.parts))]
    return RegionCodes(parts), np.concatenate(labels), np.concatenate(weights)
