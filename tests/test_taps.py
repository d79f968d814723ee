"""The channels-last tap convolution against a NumPy oracle, and the patch projection that uses it."""
import numpy as np
import pytest

from greedy.cluster.patches import PatchPreprocessor, extract_patches
from greedy.errors import ConfigError
from greedy.kernels import taps


def same_convolution(x, w, b):
    """Oracle: y[n, f, r, c] = b[f] + sum over (ch, a, t) of x[n, ch, r + a - kh//2, c + t - kw//2] w[f, ch, a, t],
    zero outside x; float64."""
    n, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    y = np.zeros((n, len(b), h, wd)) + b[None, :, None, None]
    for a in range(kh):
        for t in range(kw):
            y += np.einsum("nchw,fc->nfhw", xp[:, :, a:a + h, t:t + wd], w[:, :, a, t])
    return y


@pytest.mark.parametrize("kh, kw, h, w", [(3, 3, 5, 6), (5, 3, 4, 7), (1, 1, 3, 3), (3, 5, 1, 2)])
def test_tap_convolution_equals_the_same_padded_convolution(kh, kw, h, w, monkeypatch):
    monkeypatch.setattr(taps, "TAPS_CHUNK_BYTES", 1)  # one image per GEMM: the chunks are stitched right
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, h, w)).astype(np.float32)
    wt = rng.standard_normal((3, 6, kh, kw)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    want = same_convolution(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64))
    got = taps.conv_taps(x, wt, b)
    assert got.shape == (4, h, w, 3)
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_tap_convolution_refuses_what_it_cannot_compute_in_one_line():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ConfigError, match="5 input channels but x \\(N, C, H, W\\) has 3"):
        taps.conv_taps(x, np.zeros((2, 5, 3, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match="odd kernel sides"):
        taps.conv_taps(x, np.zeros((2, 3, 2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ConfigError, match="b has 3 entries"):
        taps.conv_taps(x, np.zeros((2, 3, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match="must be float32"):
        taps.conv_taps(x, np.zeros((2, 3, 3, 3)), np.zeros(2))
    with pytest.raises(ConfigError, match=r"float \(N, C, H, W\) array, got int64"):
        taps.conv_taps(np.zeros((2, 3, 4, 4), np.int64), np.zeros((2, 3, 3, 3), np.float32), np.zeros(2, np.float32))


# below 2d: the im2col convolution; from 2d: the tap convolution, and Winograd's from winograd.MIN_CHANNELS
@pytest.mark.parametrize("channels", [4, 20, 40])
def test_patch_projection_of_images_equals_the_projection_of_their_patches(channels):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, channels, 5, 4)).astype(np.float16)  # a half-precision cache
    pre = PatchPreprocessor(channels, 3, remove_mean=False, n_components=8).fit(
        rng.standard_normal((400, 9 * channels)).astype(np.float32))
    want = pre.transform(extract_patches(x.astype(np.float32)))
    np.testing.assert_allclose(pre.transform_images(x), want, rtol=1e-4, atol=1e-4)
