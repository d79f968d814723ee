"""A synthetic image set whose ten classes differ only in spatial pattern."""

import numpy as np

from greedy.data.container import Dataset
from greedy.errors import ConfigError

CLASS_NAMES = ("horizontal bars", "vertical bars", "diagonal bars \\", "diagonal bars /",
               "disc", "ring", "square", "plus", "x-cross", "dots")


def make_synthetic(n: int, seed=0, grey: bool = False, chunk: int = 4096):
    """Ten classes told apart only by spatial pattern -> (uint8 (n, C, S, S), int64 (n,)).

    RGB 32x32 (C=3) or, with ``grey``, 28x28 (C=1). Each image is a two-colour
    pattern plus Gaussian noise: oriented gratings (4 orientations), disc, ring,
    square, plus, diagonal cross, dot lattice, each at a random position, scale,
    phase and small rotation. Both colours are drawn uniformly per image and the
    pattern covers a random 15-35% of the pixels whatever the class, so the colour
    histogram carries no class information. ``seed`` is anything
    ``numpy.random.default_rng`` accepts; the output is a function of (n, seed, grey).
    """
    rng = np.random.default_rng(seed)
    size, channels = (28, 1) if grey else (32, 3)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    params = {
        "frac": rng.uniform(0.15, 0.35, n),
        "cx": rng.uniform(0.3, 0.7, n), "cy": rng.uniform(0.3, 0.7, n),
        "tilt": rng.uniform(-0.2, 0.2, n),
        "freq": rng.uniform(3.0, 5.0, n), "phase": rng.uniform(0, 2 * np.pi, n),
        "radius": rng.uniform(0.25, 0.33, n),
    }
    colour_a = rng.uniform(0, 255, (n, channels, 1, 1)).astype(np.float32)
    shift = rng.uniform(0.35 * 255, 0.65 * 255, (n, channels, 1, 1)).astype(np.float32)
    colour_b = (colour_a + shift) % np.float32(255)
    x = np.empty((n, channels, size, size), np.uint8)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        mask = _synthetic_masks(y[sl], {k: v[sl] for k, v in params.items()}, size)
        img = rng.standard_normal(x[sl].shape, dtype=np.float32)
        img *= np.float32(0.06 * 255)
        img += colour_a[sl]
        img += mask[:, None] * (colour_b[sl] - colour_a[sl])
        np.clip(np.rint(img, out=img), 0, 255, out=img)
        x[sl] = img
    return x, y


_GRATING_ANGLES = (0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4)  # normal of the bars; y points down


def _synthetic_masks(y: np.ndarray, p: dict, size: int) -> np.ndarray:
    """Masks float32 (m, size, size) of 0/1: the top ``frac`` of each image's class field."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    field = np.empty((len(y), size, size), np.float32)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        q = {k: v[idx, None, None].astype(np.float32) for k, v in p.items()}
        dx, dy = g[None, None, :] - q["cx"], g[None, :, None] - q["cy"]
        angle = q["tilt"] + np.float32(_GRATING_ANGLES[c] if c < 4 else 0.0)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = dy * np.cos(angle) - dx * np.sin(angle)
        wave = np.float32(2 * np.pi) * q["freq"]
        if c < 4:
            f = np.cos(wave * v + q["phase"])
        elif c == 4:
            f = -np.hypot(dx, dy)
        elif c == 5:
            f = -np.abs(np.hypot(dx, dy) - q["radius"])
        elif c == 6:
            f = -np.maximum(np.abs(u), np.abs(v))
        elif c == 7:
            f = -np.minimum(np.abs(u), np.abs(v))
        elif c == 8:
            f = -np.minimum(np.abs(u + v), np.abs(u - v))
        else:
            f = np.sin(wave * u + q["phase"]) * np.sin(wave * v)
        field[idx] = f
    flat = field.reshape(len(y), -1)
    k = np.minimum(((1 - p["frac"]) * flat.shape[1]).astype(np.int64), flat.shape[1] - 1)
    thresh = np.take_along_axis(np.sort(flat, axis=1), k[:, None], axis=1)
    return (field > thresh[:, :, None]).astype(np.float32)


def load_synthetic(grey: bool, synthetic_size=(2000, 500), seed=0) -> Dataset:
    """Train and test sets of sizes ``synthetic_size`` from independent streams of ``seed``."""
    try:
        n_train, n_test = (int(s) for s in synthetic_size)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic_size must be (n_train, n_test), got "
                          f"{synthetic_size!r}") from None
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"synthetic_size must be positive, got {synthetic_size!r}")
    try:
        train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    except (TypeError, ValueError):
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}") from None
    return Dataset(*make_synthetic(n_train, train_seq, grey),
                   *make_synthetic(n_test, test_seq, grey), CLASS_NAMES)
