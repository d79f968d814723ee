"""``load_dataset(name)``: every dataset by name."""

from greedy.data import images, synthetic
from greedy.data.container import Dataset, check_dataset
from greedy.errors import ConfigError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "synthetic", "synthetic-grey")

CLASS_NAMES = {**images.CLASS_NAMES, "synthetic": synthetic.CLASS_NAMES,
               "synthetic-grey": synthetic.CLASS_NAMES}


def dataset_key(name: str) -> str:
    """Canonical form of a dataset name; ConfigError naming the valid names if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def load_dataset(name: str, data_dir=None, download: bool = True, progress: bool = True,
                 quiet: bool = False, synthetic_size=(2000, 500), seed: int = 0) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`) -> :class:`Dataset`.

    Images are uint8 NCHW: (N, 1, 28, 28) for ``mnist``, ``fashion-mnist`` and
    ``synthetic-grey``; (N, 3, 32, 32) for ``cifar10`` and ``synthetic``. Labels are
    int64 in 0..9.

    data_dir: folder holding the files (else ``$GREEDY_DATA``; see
    :mod:`greedy.data.files`); a folder that does not exist is a DatasetError.
    download: fetch missing files from the canonical mirrors. progress: a download
    progress bar on stderr. quiet: print nothing (no progress bar, no notice about
    local files that differ from the published release).
    synthetic_size = (n_train, n_test) and seed apply to the synthetic sets, whose
    train and test sets come from independent streams of ``seed``.
    """
    key = dataset_key(name)
    if key.startswith("synthetic"):
        return synthetic.load_synthetic(key == "synthetic-grey", synthetic_size, seed)
    if key == "cifar10":
        data = images.load_cifar_dataset(data_dir, download, progress, quiet)
    else:
        data = images.load_idx_dataset(key, data_dir, download, progress, quiet)
    return check_dataset(data, key)
