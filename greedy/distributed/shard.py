"""Split a dataset into per-site folders, for trying distributed training on one machine.

``split_indices`` draws which training samples each site holds: ``iid`` (a random even split),
``by-class`` (each class on one site only; classes dealt out at random) or ``dirichlet:ALPHA``
(each class spread over the sites in proportions drawn from a symmetric Dirichlet(ALPHA): small
ALPHA gives sites few classes each, large ALPHA tends to iid). ``write_shards`` writes each
site's samples as ``<out>/site-<i>/x.npy`` and ``y.npy``, the test split as ``<out>/test.npz``
(it stays with the coordinator) and ``<out>/manifest.json``. ``open_shard`` reads a site's folder.
"""
import os

import numpy as np

from greedy import atomic
from greedy.distributed.manifest import ManifestError, write_manifest
from greedy.errors import ConfigError, DatasetError

SPLITS = ("iid", "by-class", "dirichlet:ALPHA")


def parse_split(text):
    """('iid' | 'by-class' | 'dirichlet', alpha or None) from 'iid', 'by-class' or 'dirichlet:0.3'."""
    if text in ("iid", "by-class"):
        return text, None
    kind, _, value = str(text).partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = 0.0
    if kind == "dirichlet" and np.isfinite(alpha) and alpha > 0:
        return kind, alpha
    raise ConfigError(f"unknown split {text!r}; choose iid, by-class or dirichlet:ALPHA with ALPHA > 0")


def split_indices(y, n_sites, split, seed=0):
    """Sorted index arrays (one per site) of the samples with labels y (N,) each site holds.

    The draws come from ``np.random.SeedSequence(seed)``; every site gets at least one sample,
    else ConfigError.
    """
    kind, alpha = parse_split(split)
    y = np.asarray(y)
    classes = np.unique(y)
    if n_sites < 1 or n_sites > len(y):
        raise ConfigError(f"--sites must be between 1 and the {len(y)} training samples, got {n_sites}")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    if kind == "iid":
        parts = np.array_split(rng.permutation(len(y)), n_sites)
    elif kind == "by-class":
        if n_sites > len(classes):
            raise ConfigError(f"--split by-class needs at most one site per class ({len(classes)}), got {n_sites}")
        dealt = np.array_split(rng.permutation(classes), n_sites)
        parts = [np.flatnonzero(np.isin(y, cls)) for cls in dealt]
    else:
        parts = [[] for _ in range(n_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_sites, alpha)))[:-1] * len(idx)).astype(int)
            for site, piece in enumerate(np.split(idx, cuts)):
                parts[site].append(piece)
        parts = [np.concatenate(p) for p in parts]
    for i, p in enumerate(parts):
        if len(p) == 0:
            raise ConfigError(f"--split {split} left site-{i} without samples; use fewer sites, a larger ALPHA "
                              f"or another --seed")
    return [np.sort(p) for p in parts]


def save_npy(path, array):
    """Write one array as .npy atomically."""
    with atomic.atomic_file(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def write_shards(data, dataset, out, n_sites, split, seed=0):
    """Write the sites' folders, the coordinator's test split and the manifest under ``out``;
    returns the manifest dict. ``data`` is a ``greedy.data.Dataset``."""
    parts = split_indices(data.y_train, n_sites, split, seed)
    os.makedirs(out, exist_ok=True)
    sites = []
    for i, idx in enumerate(parts):
        name = f"site-{i}"
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        save_npy(os.path.join(folder, "x.npy"), data.x_train[idx])
        save_npy(os.path.join(folder, "y.npy"), data.y_train[idx].astype(np.int64))
        sites.append({"name": name, "resource": name, "path": name, "samples": int(len(idx)),
                      "classes": np.bincount(data.y_train[idx], minlength=data.n_classes).tolist()})
    atomic.save_npz(os.path.join(out, "test.npz"), {"x": data.x_test, "y": data.y_test.astype(np.int64)})
    return write_manifest(os.path.join(out, "manifest.json"), dataset, data.class_names, data.x_train.shape[1:],
                          data.x_train.dtype, "test.npz", sites)


def open_shard(path, sample_shape=None):
    """(x, y) of the site folder ``path``, memory-mapped read-only: x (N, ...) uint8 or float32, y (N,) int64.

    DatasetError naming the file when one is missing, unreadable or inconsistent."""
    arrays = []
    for name in ("x.npy", "y.npy"):
        file = os.path.join(path, name)
        try:
            arrays.append(np.load(file, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read the site's shard {file}: {e}") from None
    x, y = arrays
    if len(x) != len(y) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(x) == 0:
        raise DatasetError(f"{path}: x.npy {x.shape} and y.npy {y.shape} {y.dtype} are not one labelled shard")
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise DatasetError(f"{path}: samples of shape {tuple(x.shape[1:])}, the manifest says {tuple(sample_shape)}")
    return x, y


__all__ = ["ManifestError", "SPLITS", "open_shard", "parse_split", "split_indices", "write_shards"]
