"""``load_dataset(name)``: every dataset by name."""

from greedy.data import images, synthetic
from greedy.data.container import Dataset, check_dataset
from greedy.data.loghub import load_loghub
from greedy.data.text import MAX_BYTES, check_text_options, load_lines
from greedy.data.ucr import load_ucr
from greedy.errors import ConfigError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "synthetic", "synthetic-grey")

# Patterns of the sequence datasets' names: <Name> is any UCR set, <PATH> a folder.
SEQUENCE_DATASETS = ("ucr:<Name>", "loghub:system", "loghub:event", "lines:<PATH>")

CLASS_NAMES = {**images.CLASS_NAMES, "synthetic": synthetic.CLASS_NAMES,
               "synthetic-grey": synthetic.CLASS_NAMES}


def dataset_key(name: str) -> str:
    """Canonical form of a dataset name; ConfigError naming the valid names if unknown.

    Image sets: lower case, ``_`` read as ``-`` (``Fashion_MNIST`` -> ``fashion-mnist``).
    Sequence sets: the prefix in lower case, ``ucr:<Name>`` and ``lines:<PATH>`` keep
    their argument as written, ``loghub:<task>`` lower case.
    """
    text = str(name).strip()
    prefix, colon, arg = text.partition(":")
    prefix = prefix.lower()
    if colon and prefix == "ucr":
        arg = arg.strip()
        if not arg or "/" in arg or "\\" in arg or arg in (".", ".."):
            raise ConfigError(f"dataset {name!r}: expected ucr:<Name>, the name of a UCR set "
                              "(a folder of the archive, such as FordA)")
        return f"ucr:{arg}"
    if colon and prefix == "lines":
        if not arg.strip():
            raise ConfigError(f"dataset {name!r}: expected lines:<PATH>, a folder holding "
                              "train.tsv and test.tsv")
        return f"lines:{arg}"
    if colon and prefix == "loghub" and f"loghub:{arg.strip().lower()}" in SEQUENCE_DATASETS:
        return f"loghub:{arg.strip().lower()}"
    key = text.lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: "
                          f"{', '.join(DATASETS + SEQUENCE_DATASETS)}")
    return key


def load_dataset(name: str, data_dir=None, download: bool = True, progress: bool = True,
                 quiet: bool = False, synthetic_size=(2000, 500), seed: int = 0,
                 max_bytes: int = MAX_BYTES, keep: str = "head") -> Dataset:
    """Load a dataset by name (:data:`DATASETS`, :data:`SEQUENCE_DATASETS`) -> :class:`Dataset`.

    Images, uint8 NCHW: (N, 1, 28, 28) for ``mnist``, ``fashion-mnist`` and
    ``synthetic-grey``; (N, 3, 32, 32) for ``cifar10`` and ``synthetic``; 10 classes.
    Sequences, (N, 1, L): float32 series for ``ucr:<Name>`` (:mod:`greedy.data.ucr`);
    uint8 text bytes, L = ``max_bytes``, for ``loghub:system``, ``loghub:event``
    (:mod:`greedy.data.loghub`) and ``lines:<PATH>`` (:mod:`greedy.data.text`). Labels
    are int64 in 0..K-1, K = ``len(class_names)``.

    data_dir: folder holding the files (else ``$GREEDY_DATA``; see
    :mod:`greedy.data.files`); a folder that does not exist is a DatasetError.
    download: fetch missing image files from the canonical mirrors (UCR and loghub
    cannot be downloaded). progress: a download progress bar on stderr. quiet: print
    nothing (no progress bar, no notice about local files that differ from the
    published release).
    synthetic_size = (n_train, n_test) and seed apply to the synthetic sets, whose
    train and test sets come from independent streams of ``seed``; every other split
    is fixed and ignores ``seed``.
    max_bytes, keep: text length and truncation (``"head"`` keeps a long text's first
    bytes, ``"tail"`` its last; shorter texts are zero-padded at the end).
    """
    key = dataset_key(name)
    family, _, arg = key.partition(":")
    if family in ("loghub", "lines"):
        check_text_options(max_bytes, keep)
    if key.startswith("synthetic"):
        return synthetic.load_synthetic(key == "synthetic-grey", synthetic_size, seed)
    if family == "ucr":
        data = load_ucr(arg, data_dir)
    elif family == "loghub":
        data = load_loghub(arg, data_dir, max_bytes, keep)
    elif family == "lines":
        data = load_lines(arg, max_bytes, keep)
    elif key == "cifar10":
        data = images.load_cifar_dataset(data_dir, download, progress, quiet)
    else:
        data = images.load_idx_dataset(key, data_dir, download, progress, quiet)
    return check_dataset(data, key)


__all__ = ["CLASS_NAMES", "DATASETS", "SEQUENCE_DATASETS", "dataset_key", "load_dataset"]
