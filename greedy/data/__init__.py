"""Datasets: one container, loaders by name, file lookup, checksums and downloads.

``from greedy.data import load_dataset`` is the entry point; the modules:

- :mod:`greedy.data.container`: :class:`Dataset` and its checks;
- :mod:`greedy.data.files`: where files are looked for, checksums, downloads;
- :mod:`greedy.data.images`: MNIST / Fashion-MNIST (IDX) and CIFAR-10 readers;
- :mod:`greedy.data.synthetic`: the synthetic spatial-pattern set;
- :mod:`greedy.data.load`: :func:`load_dataset` and the dataset names.
"""

from greedy.data.container import INPUT_KINDS, Dataset, check_dataset, check_labels
from greedy.data.files import (CHECKSUMS, CONTENT_CHECKSUMS, MIRRORS, default_data_dir,
                               search_dirs)
from greedy.data.images import load_cifar10, load_idx_pair, read_cifar_batch, read_idx
from greedy.data.load import CLASS_NAMES, DATASETS, dataset_key, load_dataset
from greedy.data.synthetic import make_synthetic

__all__ = [
    "CHECKSUMS", "CLASS_NAMES", "CONTENT_CHECKSUMS", "DATASETS", "Dataset", "INPUT_KINDS",
    "MIRRORS", "check_dataset", "check_labels", "dataset_key", "default_data_dir",
    "load_cifar10", "load_dataset", "load_idx_pair", "make_synthetic", "read_cifar_batch",
    "read_idx", "search_dirs",
]
