"""Sequences: one patch-bag code epoch against one epoch of the explicit Conv1d + pool + head, per
block shape (k-means codes of series windows, hashed byte 5-grams of text); and the loghub baseline (1-nearest-neighbour on hashed byte 3-grams) that the
greedy methods must beat."""
import time

import numpy as np
import pytest

from greedy.cluster.bytecodes import bucket_centroids, hashed_codes
from greedy.cluster.codes import encode
from greedy.cluster.kmeans import KMeans
from greedy.cluster.patches import PatchPreprocessor, sample_patches
from greedy.data import load_dataset
from greedy.nn.activations import ReLU
from greedy.nn.codelayer import CodeLayer
from greedy.nn.layers import Dense
from greedy.nn.layers1d import AvgPool1d, ByteEmbedding, Conv1d, GlobalAvgPool1d
from greedy.nn.model import Sequential

from knn_baseline import knn_accuracy
from test_bench_patchbag import bench_code_epoch_against

# (channels, length, window) of the inputs of patch-bag sequence blocks: FordA's first block, its
# second, and a text block's embedded bytes
SHAPES = [(1, 500, 5), (128, 250, 5), (16, 256, 5)]


@pytest.mark.parametrize("channels,length,size", SHAPES)
def test_code_epoch_vs_sequence_epoch(benchmark, rng, channels, length, size):
    n, filters, k, segments = 1024, 128, 512, 4
    x = rng.standard_normal((n, channels, length), dtype=np.float32)
    y = rng.integers(0, 2, n)
    sample = sample_patches(x, 50_000, rng, size)
    pre = PatchPreprocessor(channels, size, remove_mean=False, n_components=32, ndim=1).fit(sample)
    km = KMeans(k, max_iter=3, random_state=0).fit(pre.transform(sample))
    codes, _ = encode(x, pre, km.cluster_centers_, segments)
    layer = CodeLayer(km.cluster_centers_, filters, 2, segments, "relu", rng)
    sequence_model = Sequential([Conv1d(filters, size), ReLU(), AvgPool1d(length // segments), Dense(2)]) \
        .build((channels, length), 0)

    bench_code_epoch_against(benchmark, layer, codes, sequence_model, x, y, "sequence", ratio="ratio")


def test_hashed_byte_code_epoch_vs_text_epoch(benchmark, rng):
    """The first block of a byte network on hashed 5-gram codes (8,192 of them) against the same
    block (a fixed 16-dim embedding, the conv, global average pooling, the head) on the bytes."""
    n, filters, buckets, size, length = 1024, 128, 8192, 5, 256
    x = rng.integers(32, 127, (n, 1, length)).astype(np.uint8)
    y = rng.integers(0, 16, n)
    embedding = Sequential([ByteEmbedding(16)]).build((1, length), rng)
    xe = embedding.forward(x)
    pre = PatchPreprocessor(16, size, remove_mean=False, n_components=32, ndim=1).fit(
        sample_patches(xe, 50_000, rng, size))
    centers, _ = bucket_centroids(x, xe, pre, size, buckets)
    codes = hashed_codes(x, size, buckets, 1)
    layer = CodeLayer(centers, filters, 16, 1, "relu", rng)
    text_model = Sequential([ByteEmbedding(16), Conv1d(filters, size), ReLU(), GlobalAvgPool1d(), Dense(16)]) \
        .build((1, length), 0)

    bench_code_epoch_against(benchmark, layer, codes, text_model, x, y, "sequence", ratio="ratio")


@pytest.mark.parametrize("name", ["loghub:system", "loghub:event"])
def test_loghub_nearest_neighbour_baseline(benchmark, name):
    data = load_dataset(name)
    t = time.perf_counter()
    accuracy = knn_accuracy(data)
    benchmark.extra_info["seconds"] = round(time.perf_counter() - t, 2)
    benchmark.extra_info["test_accuracy"] = round(accuracy, 4)
    benchmark.pedantic(lambda: None, rounds=1)
    assert accuracy > 0.9
