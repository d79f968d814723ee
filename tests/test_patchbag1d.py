"""Patch bags on sequences: windows, codes per segment, and the code-space layer against a Conv1d."""
import numpy as np
import pytest

from greedy.cluster.bytecodes import bucket_centroids, hashed_codes, window_hashes
from greedy.cluster.codes import encode, region_sizes
from greedy.cluster.patches import PatchPreprocessor, extract_patches, fold_into_conv, sample_patches
from greedy.nn.activations import Tanh
from greedy.nn.codelayer import CodeLayer
from greedy.nn.layers import Dense
from greedy.nn.layers1d import AvgPool1d, ByteEmbedding, Conv1d, GlobalAvgPool1d
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import Sequential

from gradcheck import rel_error


def small_sequences(n=5, c=2, length=10, seed=0):
    """Integer-valued sequences: windows are exact in float32 and distinct windows are far apart."""
    return np.random.default_rng(seed).integers(0, 3, (n, c, length)).astype(np.float64)


def test_windows_are_what_a_same_conv1d_sees():
    x = small_sequences(n=2, c=2, length=6)
    windows = extract_patches(x, 3)
    assert windows.shape == (12, 6)
    # sequence 1, position 0: channel-major, zero padding on the left
    assert np.array_equal(windows[6], [0, x[1, 0, 0], x[1, 0, 1], 0, x[1, 1, 0], x[1, 1, 1]])
    assert np.array_equal(windows[3], np.concatenate([x[0, 0, 2:5], x[0, 1, 2:5]]))
    sample = sample_patches(x, 12, np.random.default_rng(0), size=3)
    assert sorted(map(tuple, sample)) == sorted(map(tuple, windows.astype(np.float32)))


def test_preprocessed_windows_as_a_convolution_equal_the_explicit_transform():
    x = np.random.default_rng(0).standard_normal((4, 3, 20)).astype(np.float32)
    pre = PatchPreprocessor(3, 5, remove_mean=True, whiten="pca", n_components=8, ndim=1).fit(extract_patches(x, 5))
    assert pre.A_.shape == (15, 8)
    assert np.allclose(pre.transform_images(x), pre.transform(extract_patches(x, 5)), atol=1e-4)


@pytest.mark.parametrize("segments", [1, 3])
def test_encoding_counts_every_window_in_its_segment(segments):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 2, 11)).astype(np.float32)
    pre = PatchPreprocessor(2, 3, remove_mean=False, whiten=None, ndim=1).fit(extract_patches(x))
    centers = rng.standard_normal((9, 6)).astype(np.float32)
    codes, stats = encode(x, pre, centers, segments, chunk_bytes=3 * 11 * 6 * 4)  # three sequences a chunk
    z = extract_patches(x).astype(np.float64)
    labels = ((z[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1).reshape(7, 11)
    segment = np.arange(11) * segments // 11
    expected = np.zeros((7, segments, 9))
    np.add.at(expected, (np.arange(7)[:, None], segment[None, :], labels), 1.0)
    sizes = region_sizes(None, 11, segments)
    assert sizes.sum() == 11 and np.array_equal(sizes, np.bincount(segment))
    for r in range(segments):
        assert np.allclose(codes.parts[r].toarray(), expected[:, r] / sizes[r])
    assert stats["distinct_centroids_per_image"] == pytest.approx((expected.sum(axis=1) > 0).sum() / 7)


@pytest.mark.parametrize("segments", [1, 2])
def test_code_layer_equals_the_folded_conv1d_with_pooling_and_head(segments):
    x = small_sequences()
    y = np.array([0, 1, 2, 0, 1])
    pre = PatchPreprocessor(2, 3, remove_mean=False, whiten=None, ndim=1).fit(extract_patches(x))
    centers = np.unique(extract_patches(x), axis=0).astype(np.float32)  # every window is its own centroid
    codes, stats = encode(x, pre, centers, segments, dtype=np.float64)
    assert stats["inertia_per_patch"] == pytest.approx(0.0, abs=1e-4)
    rng = np.random.default_rng(1)
    layer = CodeLayer(centers.astype(np.float64), 4, 3, segments, "tanh", rng, np.float64)
    layer.params["b"][:] = rng.standard_normal(4)
    layer.params["a"][:] = rng.standard_normal(3)

    conv = Conv1d(4, 3)
    pool = GlobalAvgPool1d() if segments == 1 else AvgPool1d(5)
    model = Sequential([conv, Tanh(), pool, Dense(3)]).build((2, 10), 0, np.float64)
    w, b = fold_into_conv(pre, layer.params["w"], layer.params["b"])
    assert w.shape == (4, 2, 3)
    conv.params["w"][...] = w
    conv.params["b"][...] = b
    # the code layer's head sees segments side by side, the sequence head sees (F, segments) flattened
    order = np.arange(4 * segments).reshape(segments, 4).T.reshape(-1)
    model.layers[3].params["w"][...] = layer.params["v"][order]
    model.layers[3].params["b"][...] = layer.params["a"]

    loss_codes, d_codes = softmax_cross_entropy(layer.forward(codes), y)
    loss_seq, d_seq = softmax_cross_entropy(model.forward(x), y)
    assert loss_codes == pytest.approx(loss_seq, rel=1e-12)
    layer.backward(d_codes)
    model.backward(d_seq)
    assert rel_error(layer.grads["w"].T.reshape(4, 2, 3), conv.grads["w"]) < 1e-10  # identity preprocessing
    assert rel_error(layer.grads["b"], conv.grads["b"]) < 1e-10
    assert rel_error(layer.grads["v"][order], model.layers[3].grads["w"]) < 1e-10


def test_folding_whitened_windows_gives_the_conv1d_of_the_code_layer():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 16))
    pre = PatchPreprocessor(2, 5, remove_mean=True, whiten="pca", n_components=6, ndim=1).fit(extract_patches(x, 5))
    w, b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    conv = Sequential([Conv1d(4, 5)]).build((2, 16), 0, np.float64)
    conv.layers[0].params["w"][...], conv.layers[0].params["b"][...] = fold_into_conv(pre, w, b)
    z = pre.transform(extract_patches(x, 5)).astype(np.float64)
    expected = (z @ w + b).reshape(3, 16, 4).transpose(0, 2, 1)
    assert np.allclose(conv.forward(x), expected, atol=1e-4)


def test_hashed_byte_windows_equal_when_the_bytes_do_and_read_outside_apart_from_zero_bytes():
    x = np.array([[[7, 1, 2, 3, 0]], [[9, 1, 2, 3, 4]]], np.uint8)
    h = window_hashes(x, 3)
    assert h.shape == (2, 5) and h.dtype == np.uint64
    assert h[0, 2] == h[1, 2]  # (1, 2, 3) in both
    assert h[0, 1] != h[1, 1] and h[0, 3] != h[1, 3]  # (7|9, 1, 2) and (2, 3, 0|4)
    assert window_hashes(np.array([[[0, 0, 0]]], np.uint8), 3)[0, 0] != window_hashes(
        np.array([[[0, 0, 0, 0]]], np.uint8), 3)[0, 1]  # (outside, 0, 0) against (0, 0, 0)
    assert np.array_equal(window_hashes(x.astype(np.float32), 3), h)


@pytest.mark.parametrize("segments", [1, 2])
def test_hashed_codes_count_each_window_code_per_segment(segments):
    x = np.random.default_rng(0).integers(0, 4, (6, 1, 9)).astype(np.uint8)
    codes = hashed_codes(x, 3, 64, segments)
    ids = (window_hashes(x, 3) % np.uint64(64)).astype(np.int64)
    segment = np.arange(9) * segments // 9
    for r in range(segments):
        expected = np.stack([np.bincount(ids[i, segment == r], minlength=64) for i in range(6)])
        assert np.allclose(codes.parts[r].toarray(), expected / (segment == r).sum())


def test_code_layer_on_hashed_byte_codes_equals_embedding_and_folded_conv():
    """Without collisions every code's centroid is its window: the code layer is the real network."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, (5, 1, 12)).astype(np.uint8)
    y = np.array([0, 1, 2, 0, 1])
    embedding = Sequential([ByteEmbedding(3)]).build((1, 12), rng, np.float64)
    xe = embedding.forward(x)
    pre = PatchPreprocessor(3, 3, remove_mean=False, whiten=None, ndim=1).fit(extract_patches(xe))
    centers, counts = bucket_centroids(x, xe, pre, 3, 4096)
    windows = np.unique(window_hashes(x, 3))
    assert (counts > 0).sum() == len(np.unique(windows % np.uint64(4096))) == len(windows) and counts.sum() == 60
    codes = hashed_codes(x, 3, 4096, 1, np.float64)
    layer = CodeLayer(centers.astype(np.float64), 4, 3, 1, "tanh", rng, np.float64)
    layer.params["b"][:] = rng.standard_normal(4)
    conv = Conv1d(4, 3)
    model = Sequential([ByteEmbedding(3), conv, Tanh(), GlobalAvgPool1d(), Dense(3)]).build((1, 12), 0, np.float64)
    model.layers[0].params["w"][...] = embedding.layers[0].params["w"]
    conv.params["w"][...], conv.params["b"][...] = fold_into_conv(pre, layer.params["w"], layer.params["b"])
    model.layers[4].params["w"][...] = layer.params["v"]
    model.layers[4].params["b"][...] = layer.params["a"]
    assert np.allclose(layer.forward(codes), model.forward(x), atol=1e-5)


def test_byte_collisions_count_grams_sharing_a_bucket():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
    from byte_collisions import collisions
    # two lines of 4 bytes then padding: 10 windows over text, 9 distinct 3-grams ("abc" twice)
    x = np.zeros((2, 1, 6), np.uint8)
    x[0, 0, :4], x[1, 0, :4] = list(b"abcd"), list(b"xabc")
    rows, n_grams, n_windows = collisions(x, 3, buckets=(1, 1 << 40))
    assert n_windows == 10 and n_grams == 9
    assert rows[0][1:] == (9.0, 1.0, 1.0)
    assert rows[1][1:] == (1.0, 0.0, 0.0)
