"""Random crops and flips against a NumPy reference built from np.pad."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.methods.blocks import augmentation
from greedy.methods.config import resolve
from greedy.nn.augment import alternating_flips, augmenter, random_crop_flip
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


def test_alternating_flips_mirror_each_image_in_every_other_epoch_whatever_its_batch():
    idx = np.arange(20_000)
    first, second, third = (alternating_flips(idx, epoch, seed=3) for epoch in (1, 2, 3))
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)
    assert 0.48 < first.mean() < 0.52
    # a function of the index alone: any batch of the same indices, in any order, gets the same flips
    batch = np.random.default_rng(0).permutation(idx)[:512]
    np.testing.assert_array_equal(alternating_flips(batch, 5, seed=3), first[batch])
    # another seed mirrors another half
    assert 0.48 < (alternating_flips(idx, 1, seed=4) == first).mean() < 0.52


def test_alternate_augmenter_crops_at_random_and_mirrors_the_alternating_half():
    x = np.random.default_rng(7).standard_normal((16, 3, 6, 6)).astype(np.float32)
    idx = np.arange(100, 116)
    for epoch in (1, 2):
        got = augmenter(2, 2, "alternate", seed=9)(x, np.random.default_rng(8), idx, epoch)
        want = random_crop_flip(x, np.random.default_rng(8), pad=2, flip=alternating_flips(idx, epoch, seed=9))
        np.testing.assert_array_equal(got, want)
    # with no shift, the images of one epoch are the other epoch's mirrored
    one, two = (augmenter(2, 0, "alternate", seed=9)(x, np.random.default_rng(8), idx, e) for e in (1, 2))
    np.testing.assert_array_equal(one, two[..., ::-1])


def test_the_config_chooses_the_flips():
    x = np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32)
    idx, rng = np.arange(16), np.random.default_rng
    for options, flip in (({}, True), ({"alternate_flips": True}, alternating_flips(idx, 2, seed=5)),
                          ({"augment_flip": False, "alternate_flips": True}, False)):
        config = resolve("e2e", "cifar10", 10, dict(options, seed=5))
        np.testing.assert_array_equal(augmentation(config, 2)(x, rng(2), idx, 2),
                                      random_crop_flip(x, rng(2), pad=config.augment_pad, flip=flip))


@pytest.mark.parametrize("flip", [np.ones(3, bool), np.ones(4, np.uint8)])
def test_a_flip_mask_of_the_wrong_shape_or_dtype_is_refused(flip):
    with pytest.raises(ConfigError, match=r"flip must be \(4,\) bool"):
        random_crop_flip(np.zeros((4, 1, 3, 3), np.float32), np.random.default_rng(0), 1, flip)
    with pytest.raises(ConfigError, match="flips must be one of"):
        augmenter(2, 1, "sometimes")
