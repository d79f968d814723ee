"""Random crops and flips against a NumPy reference built from np.pad."""
import numpy as np

from greedy.nn.augment import augmenter, random_crop_flip
from greedy.nn.augment1d import random_shift


def test_random_crop_flip_matches_padded_slices():
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 7)).astype(np.float32)
    pad = 2
    out = random_crop_flip(x, np.random.default_rng(1), pad=pad, flip=True)
    # the same draws, in the order random_crop_flip makes them
    rng = np.random.default_rng(1)
    dy, dx = rng.integers(0, 2 * pad + 1, 6), rng.integers(0, 2 * pad + 1, 6)
    flip = rng.random(6) < 0.5
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(6):
        src = padded[i, :, :, ::-1] if flip[i] else padded[i]
        want = src[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7]
        np.testing.assert_array_equal(out[i], want)
    assert out.dtype == np.float32 and flip.any() and not flip.all()


def test_random_crop_flip_without_padding_or_flip_is_identity():
    x = np.random.default_rng(2).standard_normal((3, 1, 4, 4))
    np.testing.assert_array_equal(random_crop_flip(x, np.random.default_rng(0), pad=0, flip=False), x)


def test_augmenter_crops_and_flips_images_by_its_pad_and_shifts_sequences():
    x = np.random.default_rng(3).standard_normal((8, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(augmenter(2, 1, True)(x, np.random.default_rng(4)),
                                  random_crop_flip(x, np.random.default_rng(4), pad=1, flip=True))
    np.testing.assert_array_equal(augmenter(2, 0, False)(x, np.random.default_rng(4)), x)
    seq = np.random.default_rng(5).standard_normal((8, 3, 20)).astype(np.float32)
    np.testing.assert_array_equal(augmenter(1, 3, True)(seq, np.random.default_rng(6)),
                                  random_shift(seq, np.random.default_rng(6), pad=3))
