"""Datasets: one container, loaders by name, file lookup, checksums and downloads.

``from greedy.data import load_dataset`` is the entry point; the modules:

- :mod:`greedy.data.container`: :class:`Dataset` and its checks;
- :mod:`greedy.data.files`: where files are looked for, checksums, downloads;
- :mod:`greedy.data.images`: MNIST / Fashion-MNIST (IDX) and CIFAR-10 readers;
- :mod:`greedy.data.synthetic`: the synthetic spatial-pattern set;
- :mod:`greedy.data.ucr`: UCR time series (``ucr:<Name>``);
- :mod:`greedy.data.loghub`: loghub messages (``loghub:system``, ``loghub:event``);
- :mod:`greedy.data.text`: text as fixed-length bytes, and ``lines:<PATH>``;
- :mod:`greedy.data.load`: :func:`load_dataset` and the dataset names.
"""

from greedy.data.container import INPUT_KINDS, Dataset, check_dataset, check_labels
from greedy.data.files import (CHECKSUMS, CONTENT_CHECKSUMS, MIRRORS, default_data_dir,
                               search_dirs)
from greedy.data.images import load_cifar10, load_idx_pair, read_cifar_batch, read_idx
from greedy.data.load import CLASS_NAMES, DATASETS, SEQUENCE_DATASETS, dataset_key, load_dataset
from greedy.data.loghub import load_loghub, read_loghub, split_loghub
from greedy.data.synthetic import make_synthetic
from greedy.data.text import KEEP, MAX_BYTES, encode_bytes, encode_texts, load_lines
from greedy.data.ucr import load_ucr, read_ucr_file

__all__ = [
    "CHECKSUMS", "CLASS_NAMES", "CONTENT_CHECKSUMS", "DATASETS", "Dataset", "INPUT_KINDS", "KEEP",
    "MAX_BYTES", "MIRRORS", "SEQUENCE_DATASETS", "check_dataset", "check_labels", "dataset_key",
    "default_data_dir", "encode_bytes", "encode_texts", "load_cifar10", "load_dataset",
    "load_idx_pair", "load_lines", "load_loghub", "load_ucr", "make_synthetic",
    "read_cifar_batch", "read_idx", "read_loghub", "read_ucr_file", "search_dirs",
    "split_loghub",
]
