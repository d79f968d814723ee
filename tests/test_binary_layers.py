"""Binary layers, filters, thresholds and map/reduce statistics against NumPy references."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.kernels.bitops import pack_bits, unpack_bits
from greedy.methods.binary import ConvLayer, ImageLayer
from greedy.methods.binary.filters import (binarize_centroids, choose_thresholds, class_partitions,
                                           map_position_sums, position_split_filters, split_filter)
from greedy.methods.binary.layers import ByteLayer, concat_bits, one_hot_bytes, thermometer
from greedy.methods.binary.stats import (avg_pool_image, fit_ncm, map_activation_histogram, map_class_sums,
                                         map_value_histogram, median_from_histogram, quantiles_from_histogram,
                                         reduce_sums)

# ---------------------------------------------------------------- NumPy references


def image_codes_reference(x, levels, norm, window=(3, 3)):
    """Inputs (N, C, H, W) -> 0/1 window codes (N, H, W, P*C*T), edge padding, bit (j*C + c)*T + t."""
    n, c, h, w = x.shape
    kh, kw = window
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), mode="edge")
    vals = np.stack([pad[:, :, dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)], axis=1)  # N,P,C,H,W
    if norm:
        vals = vals - vals.mean(axis=1, keepdims=True)
    bits = vals[..., None] > levels[None, None, :, None, None, :]  # N, 9, C, H, W, T
    return bits.transpose(0, 3, 4, 1, 2, 5).reshape(n, h, w, -1).astype(np.uint8)


def map_patches_reference(bits, window=(3, 3)):
    """0/1 maps (N, H, W, B) -> kh x kw windows with zero padding (N, H, W, kh*kw*B)."""
    n, h, w, b = bits.shape
    kh, kw = window
    pad = np.pad(bits, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return np.concatenate([pad[:, dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)], axis=3)


def layer_reference(codes, fbits, thresholds, pool, pool_shape=(2, 2)):
    """Bits of a binary layer from 0/1 patch codes (N, H, W, D), filters (F, D): agreement >= threshold, pooled."""
    agree = (codes[..., None, :] == fbits).sum(-1)
    out = (agree >= thresholds).astype(np.uint8)
    if pool:
        n, h, w, f = out.shape
        ph, pw = pool_shape
        win = out[:, :h // ph * ph, :w // pw * pw].reshape(n, h // ph, ph, w // pw, pw, f).sum(axis=(2, 4))
        out = (win >= (1 if pool == "or" else 2)).astype(np.uint8)
    return out


def random_bits(rng, shape, p=0.5):
    return (rng.random(shape) < p).astype(np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------- the layers


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("pool", [None, "or", "majority"])
def test_image_layer_matches_reference(rng, norm, pool):
    x = rng.integers(0, 256, (3, 2, 7, 6), dtype=np.uint8)
    x[0, :, :3, :3] = 100  # a flat region: ties between the patch values and its mean
    levels = np.sort(rng.uniform(-60, 200, (2, 3)), axis=1)
    layer = ImageLayer(levels, norm, pool=pool)
    codes = image_codes_reference(x, levels, norm)
    fbits = random_bits(rng, (70, layer.n_code_bits))
    layer.filters = layer.pack_filters(fbits)
    layer.thresholds = rng.integers(20, 40, 70).astype(np.float64)
    out = layer.forward(x)
    np.testing.assert_array_equal(unpack_bits(out, 70), layer_reference(codes, fbits, layer.thresholds, pool))


def test_image_layer_sampled_codes_match_reference(rng):
    x = rng.integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    levels = np.sort(rng.uniform(-50, 50, (3, 4)), axis=1)
    layer = ImageLayer(levels, True, pool="or")
    codes, img = layer.sample_codes(x, 6, np.random.default_rng(1))
    assert codes.shape == (6, 4, 2) and img.shape == (6,)
    ref = image_codes_reference(x, levels, True)
    # each sample is a 2x2 pooling window: find it among the reference codes of its image
    got = layer.unpack_codes(codes.reshape(-1, 2)).reshape(6, 4, -1)
    for i in range(6):
        windows = ref[img[i], :4, :4].reshape(2, 2, 2, 2, -1).transpose(0, 2, 1, 3, 4).reshape(4, 4, -1)
        assert any(np.array_equal(got[i], win) for win in windows)


@pytest.mark.parametrize("pool", [None, "or", "majority"])
def test_conv_layer_with_colour_feed_matches_reference(rng, pool):
    prev_bits, c_levels = 67, np.sort(rng.uniform(0, 255, (3, 5)), axis=1)
    x = rng.integers(0, 256, (2, 3, 12, 10), dtype=np.uint8)
    prev = random_bits(rng, (2, 6, 5, prev_bits))
    layer = ConvLayer(prev_bits + 15, pool=pool, colour_levels=c_levels, colour_pools=1)
    m = layer.inputs(pack_bits(prev)[0], prev_bits, x)
    pooled = x.reshape(2, 3, 6, 2, 5, 2).mean(axis=(3, 5)).transpose(0, 2, 3, 1)
    colour = (pooled[..., None] > c_levels).reshape(2, 6, 5, 15).astype(np.uint8)
    full = np.concatenate([prev, colour], axis=3)
    np.testing.assert_array_equal(unpack_bits(m, prev_bits + 15), full)
    fbits = random_bits(rng, (9, layer.n_code_bits))
    layer.filters = layer.pack_filters(fbits)
    layer.thresholds = np.full(9, layer.n_code_bits / 2.0)
    np.testing.assert_array_equal(unpack_bits(layer.forward(m), 9),
                                  layer_reference(map_patches_reference(full), fbits, layer.thresholds, pool))


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("pool", [None, "or"])
def test_image_layer_on_series_matches_reference(rng, norm, pool):
    """Float32 series one row high, 1 x 5 windows of 2 channels, 1 x 2 pooling."""
    x = rng.normal(size=(3, 2, 1, 13)).astype(np.float32)
    x[0, :, :, :6] = 0.5  # a flat stretch: ties between the window values and its mean
    levels = np.sort(rng.uniform(-1.5, 1.5, (2, 3)), axis=1)
    layer = ImageLayer(levels, norm, pool=pool, window=(1, 5), pool_shape=(1, 2))
    assert layer.n_code_bits == 5 * 2 * 3
    codes = image_codes_reference(x, levels, norm, (1, 5))
    fbits = random_bits(rng, (20, layer.n_code_bits))
    layer.filters = layer.pack_filters(fbits)
    layer.thresholds = rng.integers(10, 20, 20).astype(np.float64)
    np.testing.assert_array_equal(unpack_bits(layer.forward(x), 20),
                                  layer_reference(codes, fbits, layer.thresholds, pool, (1, 2)))
    sampled, img = layer.sample_codes(x, 5, np.random.default_rng(1))
    assert sampled.shape == (5, 2 if pool else 1, 1) and img.shape == (5,)
    for i in range(5):  # each sample is the codes of one position, or of a pooling window of two
        got = layer.unpack_codes(sampled[i])
        assert any(np.array_equal(got, codes[img[i], 0, j:j + len(got)]) for j in range(13))


def test_byte_layer_counts_matching_bytes(rng):
    """The one-hot code of a k-gram as filter: its activation is 256*k minus twice the window's bytes it
    misses, so at 256*k the bit is on where the k-gram occurs."""
    x = rng.integers(97, 101, (4, 1, 1, 12), dtype=np.uint8)  # bytes 'a'..'d'
    onehot = unpack_bits(one_hot_bytes(x), 256)
    assert onehot.shape == (4, 1, 12, 256) and (onehot.sum(-1) == 1).all()
    assert (onehot.argmax(-1) == x[:, 0]).all()
    layer = ByteLayer(pool="or", window=(1, 3))
    gram = np.frombuffer(b"abc", np.uint8)
    fbits = np.zeros((2, 3, 256), np.uint8)
    fbits[0, np.arange(3), gram] = 1
    fbits[1] = random_bits(rng, (3, 256))
    layer.filters = layer.pack_filters(fbits.reshape(2, -1))
    layer.thresholds = np.array([3 * 256.0, 3 * 256 / 2])  # filter 0: all 3 bytes match
    patches = map_patches_reference(onehot, (1, 3))
    ref = layer_reference(patches, fbits.reshape(2, -1), layer.thresholds, "or", (1, 2))
    out = unpack_bits(layer.forward(layer.inputs(None, 0, x)), 2)
    np.testing.assert_array_equal(out, ref)
    text = [bytes(row) for row in x[:, 0, 0]]
    has_abc = np.array([[b"abc" in t[max(0, 2 * j - 1):2 * j + 3] for j in range(6)] for t in text])
    np.testing.assert_array_equal(out[:, 0, :, 0], has_abc)  # a window centred on one of two pooled bytes
    with pytest.raises(ConfigError, match="byte layer expects uint8 bytes"):
        layer.inputs(None, 0, x.astype(np.float32))


def test_conv_layer_on_series_with_colour_feed_matches_reference(rng):
    prev_bits, c_levels = 40, np.sort(rng.uniform(-1, 1, (2, 3)), axis=1)
    x = rng.normal(size=(2, 2, 1, 16)).astype(np.float32)
    prev = random_bits(rng, (2, 1, 8, prev_bits))
    layer = ConvLayer(prev_bits + 6, pool="or", colour_levels=c_levels, colour_pools=1, window=(1, 5),
                      pool_shape=(1, 2))
    m = layer.inputs(pack_bits(prev)[0], prev_bits, x)
    pooled = x.reshape(2, 2, 1, 8, 2).mean(axis=4).transpose(0, 2, 3, 1)
    full = np.concatenate([prev, (pooled[..., None] > c_levels).reshape(2, 1, 8, 6).astype(np.uint8)], axis=3)
    np.testing.assert_array_equal(unpack_bits(m, prev_bits + 6), full)
    fbits = random_bits(rng, (7, layer.n_code_bits))
    layer.filters = layer.pack_filters(fbits)
    layer.thresholds = np.full(7, layer.n_code_bits / 2.0)
    np.testing.assert_array_equal(unpack_bits(layer.forward(m), 7), layer_reference(
        map_patches_reference(full, (1, 5)), fbits, layer.thresholds, "or", (1, 2)))


def test_conv_layer_sampled_codes_are_patches(rng):
    bits = random_bits(rng, (3, 5, 4, 70))
    layer = ConvLayer(70)
    codes, img = layer.sample_codes(pack_bits(bits)[0], 8, np.random.default_rng(2))
    got = layer.unpack_codes(codes[:, 0])
    ref = map_patches_reference(bits)
    for i in range(8):
        assert any(np.array_equal(got[i], p) for p in ref[img[i]].reshape(-1, 9 * 70))


@pytest.mark.parametrize("a_bits,b_bits", [(64, 10), (67, 70), (1, 130), (128, 64)])
def test_concat_bits(rng, a_bits, b_bits):
    a, b = random_bits(rng, (2, 3, a_bits)), random_bits(rng, (2, 3, b_bits))
    out = concat_bits(pack_bits(a)[0], a_bits, pack_bits(b)[0], b_bits)
    np.testing.assert_array_equal(out, pack_bits(np.concatenate([a, b], axis=2))[0])


def test_thermometer_and_avg_pool():
    v = np.array([[1.0, 5.0], [3.0, -1.0]])
    levels = np.array([[0.0, 2.0], [4.0, 6.0]])
    np.testing.assert_array_equal(thermometer(v, levels), [[1, 0, 1, 0], [1, 1, 0, 0]])
    x = np.arange(2 * 1 * 5 * 5).reshape(2, 1, 5, 5)
    np.testing.assert_allclose(avg_pool_image(x, 1)[0, 0], [[3, 5], [13, 15]])
    assert avg_pool_image(x, 2).shape == (2, 1, 1, 1)


# ---------------------------------------------------------------- filters


def test_split_filter_formula(rng):
    bits = random_bits(rng, (300, 40), p=0.3)
    labels = rng.integers(0, 5, 300)
    bits[labels == 1, :10] = 1  # class 1 patches have their first 10 bits set
    sums, counts = map_class_sums(bits, labels, 5)
    a, b = np.array([1, 3]), np.array([0, 2, 4])
    in_a, in_b = np.isin(labels, a), np.isin(labels, b)
    expected = (bits[in_a].mean(0) - bits[in_b].mean(0) > 0).astype(np.uint8)
    got = split_filter(sums, counts, a, b)
    np.testing.assert_array_equal(got, expected)
    assert got[:10].all()
    # keep < 1: the bits of largest difference follow the split, the others the majority of A and B
    kept = split_filter(sums, counts, a, b, keep=0.25)
    diff = bits[in_a].mean(0) - bits[in_b].mean(0)
    top = np.argsort(-np.abs(diff), kind="stable")[:10]
    rest = np.setdiff1d(np.arange(40), top)
    np.testing.assert_array_equal(kept[top], expected[top])
    np.testing.assert_array_equal(kept[rest], (bits[in_a | in_b].mean(0) > 0.5)[rest])


def test_class_partitions_tree_and_random():
    tree = class_partitions(10, 9, "tree", np.random.default_rng(0))
    assert len(tree) == 9
    root_a, root_b = tree[0]
    assert sorted(np.concatenate([root_a, root_b]).tolist()) == list(range(10)) and len(root_a) == 5
    for a, b in tree:
        assert len(np.intersect1d(a, b)) == 0 and abs(len(a) - len(b)) <= 1 and len(a) >= 1
    # a balanced binary tree over 10 leaves has 9 internal nodes: their A sides and B sides are the children
    children = {tuple(sorted(a.tolist())) for a, _ in tree} | {tuple(sorted(b.tolist())) for _, b in tree}
    nodes = {tuple(sorted(np.concatenate([a, b]).tolist())) for a, b in tree}
    assert nodes - {tuple(range(10))} <= children
    rand = class_partitions(10, 7, "random", np.random.default_rng(0))
    assert len(rand) == 7 and all(len(a) == 5 and len(b) == 5 for a, b in rand)
    with pytest.raises(ConfigError, match="partitions"):
        class_partitions(10, 3, "spiral", np.random.default_rng(0))


def test_binarize_centroids():
    c = np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.4], [0.7, 0.8, 0.5]])
    np.testing.assert_array_equal(binarize_centroids(c, "half"), [[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(binarize_centroids(c, "median"), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])


# ---------------------------------------------------------------- thresholds


def test_median_threshold_balances_ties(rng):
    act = np.concatenate([np.full(80, 7), rng.integers(0, 20, 20)])  # 80% tied at 7
    hist = np.bincount(act, minlength=30)[None]
    t = median_from_histogram(hist)[0]
    on = (act >= t).mean()
    candidates = [(act >= s).mean() for s in range(31)]
    assert abs(on - 0.5) == min(abs(c - 0.5) for c in candidates)
    act = rng.integers(0, 30, 1001)
    t = median_from_histogram(np.bincount(act, minlength=30)[None])[0]
    assert (act >= t).mean() >= 0.5 > (act >= t + 1).mean() or (act >= t).mean() == pytest.approx(0.5, abs=0.05)
    assert t == pytest.approx(np.median(act), abs=1)
    t25 = median_from_histogram(np.bincount(act, minlength=30)[None], on_fraction=0.25)[0]
    assert abs((act >= t25).mean() - 0.25) < 0.05


@pytest.mark.parametrize("pool", [None, "or", "majority"])
def test_median_threshold_of_pooled_output(rng, pool):
    bits = random_bits(rng, (6, 8, 8, 20))
    layer = ConvLayer(20, pool=pool)
    layer.filters = layer.pack_filters(random_bits(rng, (5, 180)))
    m = pack_bits(bits)[0]
    codes, _ = layer.sample_codes(m, 40, np.random.default_rng(0))
    layer.thresholds = choose_thresholds(layer, [(codes, None)], "median")
    act = 180 - (layer.unpack_codes(codes.reshape(-1, codes.shape[2]))[:, None, :] !=
                 unpack_bits(layer.filters_flat().reshape(5, 9, 1), 20).reshape(1, 5, 180)).sum(-1)
    act = act.reshape(len(codes), -1, 5)
    pooled = act[:, 0] if pool is None else act.max(1) if pool == "or" else np.sort(act, axis=1)[:, 2]
    for f in range(5):
        on = (pooled[:, f] >= layer.thresholds[f]).mean()
        best = min(abs((pooled[:, f] >= s).mean() - 0.5) for s in range(182))
        assert abs(on - 0.5) == pytest.approx(best)
    assert np.all(choose_thresholds(layer, [(codes, None)], "half") == 90.0)


def test_quantile_levels_skip_a_dominant_value(rng):
    values = np.concatenate([np.zeros(900), rng.uniform(10, 250, 100)])[:, None]
    hist = map_value_histogram(values, 0.0, 256.0, 1024)
    levels = quantiles_from_histogram(hist, 0.0, 256.0, 4)
    assert levels.shape == (1, 4) and np.all(np.diff(levels[0]) > 0) and levels[0, 0] > 0
    nz = np.sort(values[values > 0])
    for t, lv in enumerate(levels[0]):
        assert abs((nz < lv).mean() - (t + 1) / 5) < 0.03


# ---------------------------------------------------------------- map / reduce


def test_map_reduce_merge_equals_single_shard(rng):
    bits = random_bits(rng, (120, 33))
    labels = rng.integers(0, 4, 120)
    shards = [(0, 50), (50, 51), (51, 120)]
    merged = reduce_sums(map_class_sums(bits[a:b], labels[a:b], 4) for a, b in shards)
    single = map_class_sums(bits, labels, 4)
    for m, s in zip(merged, single):
        np.testing.assert_allclose(m, s)
    codes = pack_bits(random_bits(rng, (120, 1, 100)))[0]
    filters = pack_bits(random_bits(rng, (7, 100)))[0]
    merged = reduce_sums(map_activation_histogram(codes[a:b], filters, 100) for a, b in shards)
    np.testing.assert_array_equal(merged, map_activation_histogram(codes, filters, 100))
    np.testing.assert_array_equal(merged.sum(1), 120)
    values = rng.normal(0, 50, (120, 3))
    merged = reduce_sums(map_value_histogram(values[a:b], -256, 256, 64) for a, b in shards)
    np.testing.assert_array_equal(merged, map_value_histogram(values, -256, 256, 64))
    feats = [bits[a:b] for a, b in shards]
    np.testing.assert_allclose(fit_ncm(feats, [labels[a:b] for a, b in shards], 4),
                               single[0] / single[1][:, None])


def test_position_sums_merge_and_split_filter(rng):
    bits = random_bits(rng, (40, 4, 5, 8))
    labels = rng.integers(0, 3, 40)
    layer = ConvLayer(8)
    m = pack_bits(bits)[0]
    shards = [(0, 15), (15, 40)]
    merged = reduce_sums(map_position_sums(layer, m[a:b], labels[a:b], 3, b - a, np.random.default_rng(0))
                           for a, b in shards)
    single = map_position_sums(layer, m, labels, 3, 40, np.random.default_rng(0))
    np.testing.assert_allclose(merged[0], single[0])
    np.testing.assert_array_equal(merged[1], np.bincount(labels, minlength=3))
    filters = position_split_filters(layer, merged[0], merged[1], [(np.array([0]), np.array([1, 2]))],
                                       np.random.default_rng(0))
    patches = map_patches_reference(bits).astype(np.float64)
    diff = patches[labels == 0].mean(0) - patches[labels != 0].mean(0)  # (H, W, 72)
    matches = [np.array_equal(filters[0], (diff[y, x] > 0).astype(np.uint8)) for y in range(4) for x in range(5)]
    assert any(matches)
    with pytest.raises(ConfigError, match="use --split-context global or cluster"):
        map_position_sums(layer, m, labels, 2 ** 30 // (4 * 5 * 8 * 8) + 1, 40, np.random.default_rng(0))
