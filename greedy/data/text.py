"""Text as fixed-length bytes, and a user's own labelled lines (``lines:PATH``).

Encoding rule (:func:`encode_bytes`), shared by every text dataset: a text becomes
``max_bytes`` uint8 values, its raw bytes (no decoding, so any encoding works) from
position 0, then zeros. A longer text is truncated: ``keep="head"`` keeps its first
``max_bytes`` bytes, ``keep="tail"`` its last. A zero byte inside a text is kept, and
reads the same as padding.
"""

from pathlib import Path

import numpy as np

from greedy.data.container import Dataset
from greedy.errors import ConfigError, DatasetError

MAX_BYTES = 256
KEEP = ("head", "tail")
LINES_FILES = ("train.tsv", "test.tsv")


def check_text_options(max_bytes, keep) -> tuple[int, str]:
    """Validated (max_bytes, keep); ConfigError naming the bad one."""
    try:
        n = int(max_bytes)
    except (TypeError, ValueError):
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}") from None
    if n < 1 or n != max_bytes:
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if keep not in KEEP:
        raise ConfigError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    return n, keep


def encode_bytes(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 max_bytes: int = MAX_BYTES, keep: str = "head",
                 chunk: int = 1 << 15) -> np.ndarray:
    """Texts held in one buffer -> uint8 (N, 1, max_bytes), zero-padded (module docstring).

    buf: uint8 (T,), all texts; starts, lengths: int64 (N,), text i is
    ``buf[starts[i]:starts[i] + lengths[i]]``.
    """
    max_bytes, keep = check_text_options(max_bytes, keep)
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    out = np.zeros((len(starts), 1, max_bytes), np.uint8)
    if len(buf) == 0:
        return out
    take = np.minimum(lengths, max_bytes)
    first = starts if keep == "head" else starts + lengths - take
    cols = np.arange(max_bytes, dtype=np.int64)
    last = len(buf) - 1
    for lo in range(0, len(starts), chunk):
        sl = slice(lo, lo + chunk)
        idx = np.minimum(first[sl, None] + cols, last)
        out[sl, 0] = np.where(cols < take[sl, None], buf[idx], 0)
    return out


def encode_texts(texts: list, max_bytes: int = MAX_BYTES, keep: str = "head") -> np.ndarray:
    """A list of N ``bytes`` -> uint8 (N, 1, max_bytes) (module docstring)."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    starts = np.cumsum(lengths) - lengths
    buf = np.frombuffer(b"".join(texts), np.uint8)
    return encode_bytes(buf, starts, lengths, max_bytes, keep)


def _lines(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-blank lines of ``data`` -> (starts, ends, 1-based line numbers), int64 (M,).

    Lines end at ``\\n``; one ``\\r`` before it is dropped; blank lines are skipped.
    """
    buf = np.frombuffer(data, np.uint8)
    breaks = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(buf)]])
    numbers = np.arange(1, len(starts) + 1)
    cr = np.zeros(len(ends), bool)
    nonempty = ends > starts
    cr[nonempty] = buf[ends[nonempty] - 1] == 13
    ends = ends - cr
    keep = ends > starts
    return starts[keep], ends[keep], numbers[keep]


def read_labelled_lines(path: Path) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ``label<TAB>text`` file -> (labels, buf, starts, lengths, line numbers).

    labels: list of N ``bytes``; the text of line i is ``buf[starts[i]:][:lengths[i]]``
    (the bytes after the first tab, to the end of the line); line numbers 1-based.
    Blank lines are skipped. A missing tab, an empty label or an empty file is a
    DatasetError naming the file and line.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    starts, ends, numbers = _lines(data)
    if len(starts) == 0:
        raise DatasetError(f"{path}: empty file, expected label<TAB>text lines")
    buf = np.frombuffer(data, np.uint8)
    tabs = np.flatnonzero(buf == 9)
    k = np.searchsorted(tabs, starts)
    tab = tabs[np.minimum(k, max(len(tabs) - 1, 0))] if len(tabs) else ends
    no_tab = (k >= len(tabs)) | (tab >= ends)
    if no_tab.any():
        raise DatasetError(f"{path} line {numbers[np.argmax(no_tab)]}: no tab between "
                           "label and text (expected label<TAB>text)")
    empty = tab == starts
    if empty.any():
        raise DatasetError(f"{path} line {numbers[np.argmax(empty)]}: empty label")
    labels = [data[s:t] for s, t in zip(starts.tolist(), tab.tolist())]
    return labels, buf, tab + 1, ends - tab - 1, numbers


def label_names(label: bytes) -> str:
    """A label's bytes as a class name (UTF-8, undecodable bytes as ``\\xNN``)."""
    return label.decode("utf-8", "backslashreplace")


def load_lines(folder, max_bytes: int = MAX_BYTES, keep: str = "head") -> Dataset:
    """A user's labelled lines: ``folder/train.tsv`` and ``folder/test.tsv`` -> Dataset.

    Each non-blank line is ``label<TAB>text``: the label is the bytes before the first
    tab, the text every byte after it (tabs included) up to the end of the line (a
    ``\\r`` before the ``\\n`` is dropped). x: uint8 (N, 1, max_bytes) per the module's
    encoding rule; y: int64 (N,), labels numbered in the byte order of the distinct
    training labels; class names: those labels as UTF-8 strings. A test label that no
    training line has is a DatasetError naming the file and line.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"lines:{folder}: no such folder (expected a folder holding "
                           "train.tsv and test.tsv, lines label<TAB>text)")
    paths = [folder / f for f in LINES_FILES]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"lines:{folder}: {path.name} is missing (expected "
                               "train.tsv and test.tsv, lines label<TAB>text)")
    train, test = (read_labelled_lines(p) for p in paths)
    classes = sorted(set(train[0]))
    index = {label: i for i, label in enumerate(classes)}
    y_test = np.fromiter((index.get(label, -1) for label in test[0]), np.int64, len(test[0]))
    unseen = y_test < 0
    if unseen.any():
        i = int(np.argmax(unseen))
        raise DatasetError(f"{paths[1]} line {test[4][i]}: label {label_names(test[0][i])!r} "
                           f"does not occur in {paths[0]}")
    y_train = np.fromiter((index[label] for label in train[0]), np.int64, len(train[0]))
    return Dataset(encode_bytes(*train[1:4], max_bytes, keep), y_train,
                   encode_bytes(*test[1:4], max_bytes, keep), y_test,
                   tuple(label_names(c) for c in classes))
