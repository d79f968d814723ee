"""Patch-bag codes and the code-space layer against explicit convolution on images."""
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

import greedy
import greedy.methods.layerwise as layerwise
import greedy.methods.patchbag as patchbag
from greedy.data import load_dataset
from greedy.errors import ConfigError
from greedy.nn.activations import Tanh
from greedy.nn.layers import Conv2d, Dense
from greedy.nn.pooling import AvgPool2d, GlobalAvgPool
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import Sequential
from greedy.cluster.codes import (RegionCodes, cluster_images, encode, region_histograms, region_of_positions,
                                  region_sizes)
from greedy.nn.codelayer import CodeLayer
from greedy.cluster.patches import (PatchPreprocessor, centred_patches, extract_patches, fold_into_conv,
                                   mean_removal_matrix, sample_patches)

from gradcheck import numeric_grad, rel_error


def small_images(n=6, c=2, h=6, w=6, seed=0):
    """Integer-valued images, so patches are exact in float32 and distinct patches are far apart."""
    return np.random.default_rng(seed).integers(0, 3, (n, c, h, w)).astype(np.float64)


def exact_dictionary(x):
    """Identity preprocessing and every distinct patch of x as its own centroid."""
    pre = PatchPreprocessor(x.shape[1], remove_mean=False, whiten=None).fit(extract_patches(x))
    centers = np.unique(extract_patches(x), axis=0).astype(np.float32)
    return pre, centers


@pytest.mark.parametrize("side", [1, 2])
@pytest.mark.parametrize("dense_max_bytes", [0, 1 << 20], ids=["csr", "array"])
def test_code_layer_equals_explicit_conv_pool_head(side, dense_max_bytes):
    x = small_images()
    y = np.array([0, 1, 2, 0, 1, 2])
    pre, centers = exact_dictionary(x)
    codes, stats = encode(x, pre, centers, side, dtype=np.float64, dense_max_bytes=dense_max_bytes)
    assert (codes.array is None) == (dense_max_bytes == 0)
    assert stats["inertia_per_patch"] == pytest.approx(0.0, abs=1e-4)
    rng = np.random.default_rng(1)
    layer = CodeLayer(centers.astype(np.float64), 4, 3, side * side, "tanh", rng, np.float64)
    layer.params["b"][:] = rng.standard_normal(4)
    layer.params["a"][:] = rng.standard_normal(3)

    conv = Conv2d(4, 3, 1, 1)
    pool = GlobalAvgPool() if side == 1 else AvgPool2d(3)
    model = Sequential([conv, Tanh(), pool, Dense(3)]).build((2, 6, 6), 0, np.float64)
    w, b = fold_into_conv(pre, layer.params["w"], layer.params["b"])
    conv.params["w"][...] = w
    conv.params["b"][...] = b
    # the code layer's head sees regions side by side, the image head sees (C, 2, 2) flattened
    order = np.arange(4 * side * side).reshape(side * side, 4).T.reshape(-1)
    model.layers[3].params["w"][...] = layer.params["v"][order]
    model.layers[3].params["b"][...] = layer.params["a"]

    loss_codes, d_codes = softmax_cross_entropy(layer.forward(codes), y)
    loss_img, d_img = softmax_cross_entropy(model.forward(x), y)
    assert loss_codes == pytest.approx(loss_img, rel=1e-12)
    layer.backward(d_codes)
    model.backward(d_img)
    dw_conv = layer.grads["w"].T.reshape(4, 2, 3, 3)  # identity preprocessing: A = I, c = 0
    assert rel_error(dw_conv, conv.grads["w"]) < 1e-10
    assert rel_error(layer.grads["b"], conv.grads["b"]) < 1e-10
    assert rel_error(layer.grads["v"][order], model.layers[3].grads["w"]) < 1e-10


@pytest.mark.parametrize("storage", ["csr", "array"])
def test_code_layer_gradients_match_finite_differences(storage):
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((7, 5))
    counts = rng.integers(0, 3, (4, 2, 7)).astype(np.float64)
    codes = RegionCodes([sp.csr_matrix(counts[:, r] / 9.0) for r in range(2)]) if storage == "csr" \
        else RegionCodes(array=counts / 9.0)
    y = np.array([0, 1, 1, 2])
    for act in ("tanh", "relu"):
        layer = CodeLayer(centroids, 3, 3, 2, act, rng, np.float64)
        layer.params["b"][:] = rng.standard_normal(3) * 0.3

        def loss():
            return softmax_cross_entropy(layer.forward(codes), y)[0]

        _, d = softmax_cross_entropy(layer.forward(codes), y)
        layer.backward(d)
        for key in ("w", "b", "v", "a"):
            assert rel_error(layer.grads[key].copy(), numeric_grad(loss, layer.params[key])) < 1e-6, (act, key)


@pytest.mark.parametrize("dense_max_bytes", [0, 1 << 20], ids=["csr", "array"])
def test_codes_count_every_position_and_regions_partition_the_image(dense_max_bytes):
    x = small_images(n=5, h=7, w=5)
    pre, centers = exact_dictionary(x)
    codes, stats = encode(x, pre, centers, side=2, chunk_bytes=1, dense_max_bytes=dense_max_bytes)  # one image per chunk
    sizes = region_sizes(7, 5, 2)
    assert sizes.sum() == 35
    for r, part in enumerate(codes.parts):
        assert np.allclose(np.asarray(part.sum(axis=1)).ravel(), 1.0)
    whole, _ = encode(x, pre, centers, side=1)
    total = sum(part.toarray() * s for part, s in zip(codes.parts, sizes))
    assert np.allclose(total, whole.parts[0].toarray() * 35)
    assert 1 <= stats["distinct_centroids_per_image"] <= 35


@pytest.mark.parametrize("h,w,side", [(7, 5, 2), (32, 32, 4), (1, 3, 2), (None, 11, 3)])
def test_region_histograms_are_the_frequencies_of_each_region(h, w, side):
    rng = np.random.default_rng(3)
    region_of = region_of_positions(h, w, side)
    n_regions, k, n = (side if h is None else side * side), 13, 6
    labels = rng.integers(0, k, n * len(region_of))
    labels[:len(region_of)] = 4  # an image with one label everywhere
    codes, distinct = region_histograms(labels, region_of, n_regions, k)
    counts = np.zeros((n, n_regions, k))
    np.add.at(counts, (np.repeat(np.arange(n), len(region_of)), np.tile(region_of, n), labels), 1.0)
    sizes = region_sizes(h, w, side)
    assert sizes.sum() == len(region_of) and np.array_equal(sizes, np.bincount(region_of, minlength=n_regions))
    expected = (counts / np.maximum(sizes, 1)[None, :, None]).astype(np.float32)
    assert codes.dtype == np.float32 and codes.has_sorted_indices and codes.shape == (n, n_regions * k)
    assert np.array_equal(codes.toarray(), expected.reshape(n, -1))
    assert codes.nnz == np.count_nonzero(counts)
    assert np.array_equal(distinct, (counts.sum(axis=1) > 0).sum(axis=1)) and distinct[0] == 1


def test_region_histograms_refuse_labels_out_of_range_or_partial_images():
    region_of = region_of_positions(4, 4, 2)
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 5\)"):
        region_histograms(np.full(16, 5), region_of, 4, 5)
    with pytest.raises(ConfigError, match="not whole images of 16 positions"):
        region_histograms(np.zeros(20, np.int64), region_of, 4, 5)
    with pytest.raises(ConfigError, match="region_of must lie in"):
        region_histograms(np.zeros(16, np.int64), region_of, 3, 5)


def test_encoding_chosen_rows_equals_encoding_those_images():
    x = small_images(n=9, h=6, w=5)
    pre, centers = exact_dictionary(x)
    rows = np.array([7, 0, 3, 4])
    chosen, stats = encode(x, pre, centers, side=2, chunk_bytes=1, rows=rows)
    taken, taken_stats = encode(x[rows], pre, centers, side=2)
    assert len(chosen) == 4 and stats == taken_stats
    for a, b in zip(chosen.parts, taken.parts):
        assert (a != b).nnz == 0


def test_dense_and_sparse_codes_hold_the_same_frequencies_and_index_alike():
    x = small_images(n=9, h=6, w=5)
    pre, centers = exact_dictionary(x)
    sparse, sparse_stats = encode(x, pre, centers, side=2, chunk_bytes=1, dense_max_bytes=0)
    dense, dense_stats = encode(x, pre, centers, side=2, chunk_bytes=1)
    assert sparse.array is None and dense.array.shape == (9, 4, len(centers)) and sparse_stats == dense_stats
    assert np.array_equal(sparse.dense(), dense.dense()) and sparse.nnz == dense.nnz
    rows = np.array([8, 2, 2, 5])
    assert np.array_equal(sparse[rows].dense(), dense[rows].dense())
    for a, b in zip(sparse.parts, dense.parts):
        assert (a != b).nnz == 0
    batch = sparse[rows]  # a batch of sparse codes holds the regions side by side, and gives the parts back
    assert batch.array is None and batch.stacked.shape == (4, 4 * len(centers)) and len(batch) == 4
    assert batch.nnz == sum(p.nnz for p in batch.parts)
    for a, b in zip(batch.parts, dense[rows].parts):
        assert (a != b).nnz == 0
    assert np.array_equal(dense.stacked.toarray(), sparse.stacked.toarray())
    with pytest.raises(ValueError, match="one of parts, array or stacked"):
        RegionCodes()
    with pytest.raises(ValueError, match=r"\(N, R, k\)"):
        RegionCodes(array=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=f"do not split into {4 * len(centers) + 1} regions"):
        RegionCodes(stacked=sparse.stacked, n_regions=4 * len(centers) + 1)


def test_code_rows_draw_nothing_unless_they_sample():
    rng = np.random.default_rng(0)
    assert patchbag.code_rows(50, 0, rng) is None and patchbag.code_rows(50, 50, rng) is None and patchbag.code_rows(50, 80, rng) is None
    assert rng.integers(1000) == np.random.default_rng(0).integers(1000)  # no number was drawn
    rows = patchbag.code_rows(50, 20, np.random.default_rng(1))
    assert len(rows) == 20 and len(np.unique(rows)) == 20 and (np.diff(rows) > 0).all() and rows.max() < 50


def test_patchbag_trains_each_block_on_the_codes_of_code_images_and_propagates_all(monkeypatch):
    d = load_dataset("synthetic", synthetic_size=(600, 200))
    seen = []
    real_encode = patchbag.encode

    def spy(x, pre, centers, side=1, rows=None):
        seen.append((len(x), None if rows is None else len(rows)))
        return real_encode(x, pre, centers, side, rows=rows)

    monkeypatch.setattr(patchbag, "encode", spy)
    clf = greedy.LayerwiseClassifier(method="patchbag", random_state=0, code_images=150,
                                     arch="c8k3-relu-max2-c8k3-relu", clusters=16, patch_sample=3000,
                                     layer_budget="2e").fit(d.x_train, d.y_train)
    train_calls = [s for s in seen if s[0] == 600]
    assert train_calls == [(600, 150), (600, 150)]  # each block: 150 of the 600 images' codes
    assert clf.score(d.x_test, d.y_test) > 0.2  # ten classes: chance is 0.1
    layers = [e for e in clf.history_ if e.get("phase") == "propagate"]
    assert len(layers) == 2


def test_mirrors_train_the_blocks_on_the_originals_and_the_classifier_on_both(monkeypatch):
    d = load_dataset("synthetic", synthetic_size=(300, 100))
    options = dict(method="patchbag", random_state=0, arch="c8k3-relu-max2-c8k3-relu", clusters=16,
                   patch_sample=3000, layer_budget="2e", final_mix=False)
    seen = []
    real_train = layerwise.train_classifier

    def spy(x, y, *args, **kwargs):
        seen.append((x.copy(), y.copy()))
        return real_train(x, y, *args, **kwargs)

    monkeypatch.setattr(layerwise, "train_classifier", spy)
    plain = greedy.LayerwiseClassifier(mirrors=False, **options).fit(d.x_train, d.y_train)
    mirrored = greedy.LayerwiseClassifier(mirrors=True, **options).fit(d.x_train, d.y_train)
    convs = [[lay.params["w"] for lay in c.model_.model.layers if isinstance(lay, Conv2d)] for c in (plain, mirrored)]
    assert len(convs[0]) == 2
    # dictionaries and codes of the originals only; block 2's input is propagated in other batches,
    # which round differently in the last bits
    np.testing.assert_array_equal(convs[0][0], convs[1][0])
    np.testing.assert_allclose(convs[1][1], convs[0][1], rtol=0, atol=1e-4 * np.abs(convs[0][1]).max())
    (x_plain, y_plain), (x_mirrored, y_mirrored) = seen
    assert len(x_mirrored) == 600 and (y_mirrored == np.concatenate([d.y_train, d.y_train])).all()
    np.testing.assert_allclose(x_mirrored[:300], x_plain, rtol=0, atol=1e-3 * np.abs(x_plain).max())
    assert not np.array_equal(x_mirrored[300:], x_plain)  # the mirror images' own features
    assert mirrored.score(d.x_test, d.y_test) > 0.2


def test_centred_patches_are_the_float64_difference_rounded_once():
    rng = np.random.default_rng(3)
    p = (rng.standard_normal((101, 18)) * 1e3 + 7).astype(np.float32)
    mu = p.mean(axis=0, dtype=np.float64)
    got = centred_patches(p, 4, mu)
    assert got.dtype == np.float32 and np.array_equal(got, (p[::4] - mu).astype(np.float32))
    with pytest.raises(ConfigError, match="mu \\(D,\\)"):
        centred_patches(p, 4, mu[:5])


def test_preprocessing_folds_into_the_conv():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
    patches = extract_patches(x)
    pre = PatchPreprocessor(3, remove_mean=True, whiten="pca", n_components=12).fit(patches)
    z = pre.transform(patches)
    assert z.shape == (20 * 64, 12)
    w = rng.standard_normal((12, 5))
    b = rng.standard_normal(5)
    cw, cb = fold_into_conv(pre, w, b)
    conv = Conv2d(5, 3, 1, 1)
    out = Sequential([conv]).build((3, 8, 8), 0, np.float64)
    conv.params["w"][...] = cw
    conv.params["b"][...] = cb
    y = out.forward(x.astype(np.float64)).transpose(0, 2, 3, 1).reshape(-1, 5)
    assert np.allclose(y, z.astype(np.float64) @ w + b, atol=1e-3)
    # whitened components are decorrelated with unit variance (up to eps regularisation)
    cov = np.cov(z.astype(np.float64), rowvar=False)
    assert np.allclose(np.diag(cov), 1.0, atol=0.1)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.05


def test_mean_removal_removes_patch_colour():
    m = mean_removal_matrix(3)
    p = np.random.default_rng(0).standard_normal((10, 27)) + 5.0
    q = (p @ m).reshape(10, 3, 9)
    assert np.allclose(q.mean(axis=2), 0)


def test_sample_patches_are_real_patches():
    x = small_images(n=9)
    rng = np.random.default_rng(0)
    s = sample_patches(x.astype(np.float32), 40, rng, chunk_images=4)
    assert s.shape == (40, 18)
    allp = {tuple(r) for r in extract_patches(x.astype(np.float32))}
    assert all(tuple(r) in allp for r in s)


def test_image_clustering_keeps_classes_and_weights():
    x = small_images(n=12)
    y = np.repeat([0, 1, 2], 4)
    pre, centers = exact_dictionary(x)
    codes, _ = encode(x, pre, centers, 1)
    protos, labels, weights = cluster_images(codes, y, 3, 2, seed=0)
    assert len(protos) == 6 and list(labels) == [0, 0, 1, 1, 2, 2]
    assert np.allclose(weights.reshape(3, 2).sum(axis=1), 4)
    assert np.allclose(np.asarray(protos.parts[0].sum(axis=1)).ravel(), 1.0, atol=1e-5)


def test_transform_images_equals_transform_of_extracted_patches():
    x = small_images(n=5).astype(np.float32)
    pre = PatchPreprocessor(x.shape[1], n_components=8).fit(extract_patches(x))
    assert np.allclose(pre.transform_images(x), pre.transform(extract_patches(x)), atol=1e-4)


def test_block_activation_reads_the_block_and_refuses_what_codes_cannot_train():
    from greedy.methods.patchbag import block_activation

    def block(spec):
        return Sequential.from_spec(spec).build((3, 8, 8), 0)

    assert block_activation(block("c8k3-tanh-max2"))[1] == "tanh"
    assert block_activation(block("c8k3-relu"))[1] == "relu"
    for spec in ("c8k3-bn-relu-max2", "c8k3-max2", "c8k3-relu-c8k3-relu", "c8k5-relu"):
        with pytest.raises(ConfigError, match="patch-bag block"):
            block_activation(block(spec))


def test_whitening_from_a_covariance_subsample_still_whitens_the_patches():
    rng = np.random.default_rng(5)
    mix = rng.standard_normal((27, 27))
    patches = (rng.standard_normal((6000, 27)) @ mix).astype(np.float32)
    full = PatchPreprocessor(3, remove_mean=False, n_components=10).fit(patches)
    sub = PatchPreprocessor(3, remove_mean=False, n_components=10, cov_samples=1500).fit(patches)
    cov = np.cov(sub.transform(patches).astype(np.float64), rowvar=False)
    assert np.allclose(np.diag(cov), 1.0, atol=0.15)
    assert sub.explained_variance_ratio_ == pytest.approx(full.explained_variance_ratio_, abs=0.03)
    with pytest.raises(ConfigError, match="cov_samples"):
        PatchPreprocessor(3, cov_samples=1)


def test_default_blocks_are_relu_unless_told():
    from greedy.methods.config import resolve

    def resolve_options(values, family):
        return resolve("patchbag", family, 10, values)
    assert resolve_options({}, "cifar10").blocks[0] == "c128k3-relu-max2"
    mnist = resolve_options({}, "mnist")
    assert mnist.blocks == ["c32k3-relu-max2", "c64k3-relu-max2", "c128k3-relu-max2"]
    assert mnist.final_hidden == "fc256-relu-drop0.4" and mnist.final_features == "all"
    assert resolve_options({}, "cifar10").final_hidden == "fc512-relu-drop0.4"
    assert resolve_options({"final_hidden": "none"}, "mnist").final_hidden == "none"
    assert not mnist.colour_norm and resolve_options({}, "cifar10").colour_norm
    assert resolve_options({"colour_norm": True, "clusters": 64}, "mnist").clusters == 64
    assert resolve_options({"activation": "tanh"}, "mnist").blocks[1] == "c64k3-tanh-max2"
    with pytest.raises(ConfigError, match="--arch"):
        resolve_options({"arch": "c8k3-tanh", "activation": "relu"}, "mnist")


@pytest.mark.parametrize("mix_epochs,features", [(None, "all"), (1, "all"), (None, "last")])
def test_final_mix_trains_the_last_blocks_mix_with_the_classifier_and_the_model_applies_it(mix_epochs, features):
    d = load_dataset("synthetic", synthetic_size=(300, 100))
    options = dict(method="patchbag", random_state=0, arch="c8k3-relu-max2-c64k3-relu", clusters=16,
                   patch_sample=3000, layer_budget="2e", tta="none", final_epochs=3, final_min_steps=50,
                   final_features=features)
    plain = greedy.LayerwiseClassifier(final_mix=False, **options).fit(d.x_train, d.y_train,
                                                                      eval_set=(d.x_test, d.y_test))
    mixed = greedy.LayerwiseClassifier(final_mix=True, final_mix_epochs=mix_epochs, **options).fit(d.x_train, d.y_train,
                                                                      eval_set=(d.x_test, d.y_test))
    convs = [[lay for lay in c.model_.model.layers if isinstance(lay, Conv2d)] for c in (plain, mixed)]
    np.testing.assert_array_equal(convs[0][0].params["w"], convs[1][0].params["w"])  # block 1: codes only
    assert not np.allclose(convs[0][1].params["w"], convs[1][1].params["w"], rtol=0, atol=1e-3)
    basis, _, mix, _ = convs[1][1].low_rank(cheaper_only=False)
    assert basis.shape == (32, 8, 3, 3) and mix.shape == (64, 32)  # still the same basis, a new mix
    logged = [e["classifier_accuracy"] for e in mixed.history_ if e.get("phase") == "classifier"]
    # the accuracy measured through BasisMix is the assembled model's: the mix and the standardisation folded
    assert logged == [mixed.score(d.x_test, d.y_test)] and logged[0] > 0.2


def test_final_mix_needs_image_maps_pooled_in_quadrants_and_a_last_block_of_a_conv_and_a_relu():
    from greedy.methods.config import resolve
    with pytest.raises(ConfigError, match="--final-mix .* needs images, --final-pool quadrant"):
        greedy.LayerwiseClassifier(method="patchbag", final_mix=True, final_pool="gap").fit(
            np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="--final-mix-epochs and --final-mix-lr .* need --final-mix"):
        resolve("patchbag", "mnist", 10, {"final_mix_epochs": 4})
    with pytest.raises(ConfigError, match="--final-mix-epochs and --final-mix-lr .* need --final-mix"):
        resolve("patchbag", "cifar10", 10, {"final_mix_lr": 2.0, "final_mix": False})
    assert resolve("patchbag", "cifar10", 10, {"final_mix_epochs": 0}).final_mix_epochs == 0
    plain = resolve("patchbag", "cifar10", 10, {"final_mix": False})  # CIFAR-10's default mix epochs dropped
    assert not plain.final_mix and plain.final_mix_epochs is None
    recorded = dataclasses.asdict(plain)  # what a resumed run resolves again
    assert dataclasses.asdict(resolve("patchbag", "cifar10", 10, recorded)) == recorded
    with pytest.raises(ConfigError, match="a conv and a ReLU alone .* got c8k3-tanh; or give --no-final-mix"):
        greedy.LayerwiseClassifier(method="patchbag", arch="c8k3-relu-max2-c8k3-tanh").fit(
            np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
