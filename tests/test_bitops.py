import numba
import numpy as np
import pytest

from greedy.kernels.bitops import (
    binary_conv2d,
    binary_conv2d_activations,
    hamming_pairwise,
    hamming_to_filters,
    pack_bits,
    pool_bits,
    popcount64,
    unpack_bits,
)
from greedy.errors import ConfigError

BIT_COUNTS = [1, 63, 64, 65, 130, 200]


def random_bits(rng, shape):
    return (rng.random(shape) < 0.5).astype(np.uint8)


@numba.njit(cache=True)
def _popcounts(x):
    out = np.empty(x.size, np.int64)
    for i in range(x.size):
        out[i] = popcount64(x[i])
    return out


def conv_reference(bits, fbits, window=(3, 3)):
    """bits (N, H, W, C) 0/1, fbits (F, kh*kw, C) 0/1 -> agreeing bits (N, H, W, F), zero padding."""
    n, h, w, c = bits.shape
    kh, kw = window
    padded = np.zeros((n, h + kh - 1, w + kw - 1, c), np.uint8)
    padded[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w] = bits
    act = np.zeros((n, h, w, fbits.shape[0]), np.int64)
    for o in range(kh * kw):
        dy, dx = divmod(o, kw)
        xs = padded[:, dy : dy + h, dx : dx + w, :]
        act += (xs[..., None, :] == fbits[None, None, None, :, o, :]).sum(-1)
    return act


@pytest.mark.parametrize("n_bits", BIT_COUNTS)
def test_pack_unpack_round_trip_and_layout(n_bits):
    rng = np.random.default_rng(n_bits)
    bits = random_bits(rng, (3, 2, n_bits))
    packed, nb = pack_bits(bits)
    assert nb == n_bits
    assert packed.dtype == np.uint64 and packed.shape == (3, 2, (n_bits + 63) // 64)
    np.testing.assert_array_equal(unpack_bits(packed, n_bits), bits)
    # bit i lives in bit i % 64 of word i // 64; high bits of the last word are zero
    code = bits[1, 0]
    words = [0] * packed.shape[-1]
    for i in range(n_bits):
        words[i // 64] |= int(code[i]) << (i % 64)
    assert [int(v) for v in packed[1, 0]] == words
    np.testing.assert_array_equal(pack_bits(bits.astype(bool))[0], packed)


def test_pack_bits_rejects_bad_input():
    with pytest.raises(ConfigError, match="only 0 and 1"):
        pack_bits(np.array([0, 2, 1]))
    with pytest.raises(ConfigError, match="bool or integer"):
        pack_bits(np.zeros(5, np.float32))
    with pytest.raises(ConfigError, match="at least one bit"):
        pack_bits(np.zeros((3, 0), np.uint8))
    with pytest.raises(ConfigError, match="ceil"):
        unpack_bits(np.zeros((2, 2), np.uint64), 200)


def test_popcount64_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64, endpoint=True)
    x[:3] = [0, 2**64 - 1, 2**63]
    np.testing.assert_array_equal(_popcounts(x), np.bitwise_count(x))
    np.testing.assert_array_equal(_popcounts(x.view(np.int64)), np.bitwise_count(x))


@pytest.mark.parametrize("n_bits", BIT_COUNTS)
def test_hamming_pairwise_matches_unpacked_xor(n_bits):
    rng = np.random.default_rng(n_bits)
    bits_a = random_bits(rng, (7, n_bits))
    bits_b = random_bits(rng, (1030, n_bits))  # more than one 1024-code tile
    ref = (bits_a[:, None, :] ^ bits_b[None, :, :]).sum(-1)
    a, _ = pack_bits(bits_a)
    b, _ = pack_bits(bits_b)
    d = hamming_pairwise(a, b)
    assert d.dtype == np.int32 and d.shape == (7, 1030)
    np.testing.assert_array_equal(d, ref)
    out = np.full((7, 1030), -1, np.int32)
    assert hamming_to_filters(a, b, out=out) is out
    np.testing.assert_array_equal(out, ref)


def test_hamming_pairwise_rejects_bad_input():
    a = np.zeros((3, 2), np.uint64)
    with pytest.raises(ConfigError, match="same number of words"):
        hamming_pairwise(a, np.zeros((4, 3), np.uint64))
    with pytest.raises(ConfigError, match="uint64"):
        hamming_pairwise(a.astype(np.int64), a)
    with pytest.raises(ConfigError, match="out must be"):
        hamming_pairwise(a, a, out=np.empty((3, 3), np.int64))


@pytest.mark.parametrize("n_bits,n_filters", [(1, 3), (63, 70), (65, 5), (130, 64)])
def test_binary_conv2d_matches_reference(n_bits, n_filters):
    rng = np.random.default_rng(n_bits + n_filters)
    bits = random_bits(rng, (2, 5, 4, n_bits))
    fbits = random_bits(rng, (n_filters, 9, n_bits))
    x, _ = pack_bits(bits)
    f, _ = pack_bits(fbits)
    ref = conv_reference(bits, fbits)

    act = binary_conv2d_activations(x, f, n_bits)
    assert act.dtype == np.int32 and act.shape == (2, 5, 4, n_filters)
    np.testing.assert_array_equal(act, ref)

    thresholds = np.median(ref.reshape(-1, n_filters), axis=0) + rng.choice([-0.5, 0.0, 0.5, 1.0], n_filters)
    out = binary_conv2d(x, f, thresholds, n_bits)
    assert out.dtype == np.uint64 and out.shape == (2, 5, 4, (n_filters + 63) // 64)
    np.testing.assert_array_equal(unpack_bits(out, n_filters), ref >= thresholds)
    np.testing.assert_array_equal(pack_bits(unpack_bits(out, n_filters))[0], out)  # high bits zero

    half = 9 * n_bits / 2
    np.testing.assert_array_equal(unpack_bits(binary_conv2d(x, f, half, n_bits), n_filters), ref >= half)


@pytest.mark.parametrize("window", [(1, 5), (1, 1), (5, 5), (3, 1)])
def test_binary_conv2d_of_other_windows_matches_reference(window):
    """1 x k windows on sequences (maps one row high), and other odd windows on images."""
    rng = np.random.default_rng(window[1])
    n_bits, n_filters = 70, 9
    shape = (3, 1, 11, n_bits) if window[0] == 1 else (2, 6, 7, n_bits)
    bits = random_bits(rng, shape)
    fbits = random_bits(rng, (n_filters, window[0] * window[1], n_bits))
    ref = conv_reference(bits, fbits, window)
    x, f = pack_bits(bits)[0], pack_bits(fbits)[0]
    np.testing.assert_array_equal(binary_conv2d_activations(x, f, n_bits, window), ref)
    thresholds = np.median(ref.reshape(-1, n_filters), axis=0)
    np.testing.assert_array_equal(unpack_bits(binary_conv2d(x, f, thresholds, n_bits, window), n_filters),
                                  ref >= thresholds)


def test_binary_conv2d_rejects_bad_input():
    x = np.zeros((1, 3, 3, 2), np.uint64)
    f = np.zeros((4, 9, 2), np.uint64)
    with pytest.raises(ConfigError, match="words per pixel"):
        binary_conv2d(x, f, 0, 200)
    with pytest.raises(ConfigError, match="filters must have shape"):
        binary_conv2d(x, np.zeros((4, 8, 2), np.uint64), 0, 100)
    with pytest.raises(ConfigError, match=r"shape \(F, 5, 2\) for a 1x5 window"):
        binary_conv2d(x, f, 0, 100, window=(1, 5))
    with pytest.raises(ConfigError, match="odd and positive"):
        binary_conv2d(x, f, 0, 100, window=(1, 4))
    with pytest.raises(ConfigError, match="thresholds must be 4"):
        binary_conv2d(x, f, np.zeros(3), 100)
    with pytest.raises(ConfigError, match="thresholds must be 4"):
        binary_conv2d(x, f, np.array([0, 1, np.nan, 2]), 100)
    bad = f.copy()
    bad[0, 0, 1] = np.uint64(1) << np.uint64(40)
    with pytest.raises(ConfigError, match="beyond n_bits=100"):
        binary_conv2d_activations(x, bad, 100)


@pytest.mark.parametrize("n_bits", [1, 65, 200])
@pytest.mark.parametrize("mode", ["or", "majority"])
def test_pool_bits_matches_reference(n_bits, mode):
    rng = np.random.default_rng(n_bits)
    bits = random_bits(rng, (2, 5, 7, n_bits))  # odd sizes: last row and column dropped
    x, _ = pack_bits(bits)
    out = pool_bits(x, mode)
    assert out.shape == (2, 2, 3, x.shape[-1])
    blocks = bits[:, :4, :6].reshape(2, 2, 2, 3, 2, n_bits).sum(axis=(2, 4))
    ref = blocks >= (1 if mode == "or" else 2)
    np.testing.assert_array_equal(unpack_bits(out, n_bits), ref)
    np.testing.assert_array_equal(pack_bits(unpack_bits(out, n_bits))[0], out)


@pytest.mark.parametrize("n_bits", [1, 65, 200])
def test_pool_bits_of_sequences_matches_reference(n_bits):
    rng = np.random.default_rng(n_bits)
    bits = random_bits(rng, (3, 1, 9, n_bits))  # a map one row high; the odd last position dropped
    out = pool_bits(pack_bits(bits)[0], "or", (1, 2))
    assert out.shape == (3, 1, 4, (n_bits + 63) // 64)
    np.testing.assert_array_equal(unpack_bits(out, n_bits), bits[:, :, :8].reshape(3, 1, 4, 2, n_bits).max(axis=3))


def test_pool_bits_rejects_bad_input():
    x = np.zeros((1, 4, 4, 1), np.uint64)
    with pytest.raises(ConfigError, match="majority pooling needs 2x2"):
        pool_bits(x[:, :1], "majority", (1, 2))
    with pytest.raises(ConfigError, match="2x2 or 1x2"):
        pool_bits(x, "or", (2, 1))
    with pytest.raises(ConfigError, match="mode"):
        pool_bits(x, "max")
    with pytest.raises(ConfigError, match="at least 2x2"):
        pool_bits(x[:, :1], "or")
    with pytest.raises(ConfigError, match="4 dimensions"):
        pool_bits(x[0], "or")
