"""The :class:`Dataset` container and the checks every loader applies to it."""

from typing import NamedTuple

import numpy as np

from greedy.errors import DatasetError

INPUT_KINDS = ("image", "series", "bytes")


class Dataset(NamedTuple):
    """A train/test split of one classification task.

    x_train, x_test: the inputs, one of three kinds (:attr:`input_kind`):

    - ``"image"``: uint8 (N, C, H, W), pixel values;
    - ``"series"``: float32 (N, C, L), real-valued sequences;
    - ``"bytes"``: uint8 (N, 1, L), a text's bytes from position 0, zero-padded.

    y_train, y_test: int64 (N,) in 0..K-1; class_names: tuple of K distinct strings,
    label ``k`` is ``class_names[k]``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple:
        """Shape of one input: (C, H, W) or (C, L)."""
        return tuple(self.x_train.shape[1:])

    @property
    def input_kind(self) -> str:
        """``"image"`` (4-D), ``"series"`` (3-D float32) or ``"bytes"`` (3-D uint8)."""
        if self.x_train.ndim == 4:
            return "image"
        return "bytes" if self.x_train.dtype == np.uint8 else "series"


def check_labels(labels: np.ndarray, where, n_classes: int = 10) -> np.ndarray:
    """Integer labels (N,) -> int64, or DatasetError naming ``where`` if outside 0..K-1."""
    if labels.size and (labels.max() >= n_classes or labels.min() < 0):
        bad = int(labels.max()) if labels.max() >= n_classes else int(labels.min())
        raise DatasetError(f"{where}: labels must lie in 0..{n_classes - 1}, found {bad}")
    return labels.astype(np.int64, copy=False)


def check_dataset(data: Dataset, where: str) -> Dataset:
    """Check shapes, dtypes and label ranges of a loaded dataset; returns it unchanged."""
    k = len(data.class_names)
    if k < 1 or len(set(data.class_names)) != k or not all(
            isinstance(c, str) for c in data.class_names):
        raise DatasetError(f"{where}: class names must be distinct strings")
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        if x.ndim not in (3, 4) or x.dtype not in (np.uint8, np.float32):
            raise DatasetError(f"{where}: {split} inputs must be uint8 or float32 of 3 or 4 "
                               f"dimensions, got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != (len(x),):
            raise DatasetError(f"{where}: {split} labels must be int64 ({len(x)},), "
                               f"got {y.dtype} {y.shape}")
        check_labels(y, f"{where} ({split})", k)
    if data.x_train.shape[1:] != data.x_test.shape[1:] or data.x_train.dtype != data.x_test.dtype:
        raise DatasetError(f"{where}: train inputs {data.x_train.dtype} {data.x_train.shape[1:]} "
                           f"and test inputs {data.x_test.dtype} {data.x_test.shape[1:]} differ")
    return data
