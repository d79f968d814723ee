"""UCR time-series archive (2018 release): ``ucr:<Name>``.

Files: ``D/ucr/UCRArchive_2018/<Name>/<Name>_{TRAIN,TEST}.tsv`` (or
``D/UCRArchive_2018/<Name>/...``) for D in :func:`greedy.data.files.search_dirs`.
One series a line: the class label, then the values, tab-separated.

Rules:

- labels are numbers; they are numbered 0..K-1 in increasing order of the distinct
  training labels, and the class names are the labels as written (``-1``, ``1``,
  ``2.5``). A test label absent from training is an error naming the file and line;
- values are float32 (N, 1, L);
- unequal lengths: the archive pads shorter series with NaN at the end. NaNs after a
  row's last value mark its end; the row is padded with zeros up to L, the longest
  series over both files (NaN columns beyond every series are dropped);
- missing values: a NaN before a row's last value is filled by linear interpolation
  between its nearest values on either side (a leading NaN takes the first value);
- a row with no value at all, an infinite value, a non-numeric value, a ragged row (a
  number of fields other than the first line's) or an empty file is a one-line
  DatasetError naming the file and line. Empty lines are skipped.
"""

import io
from pathlib import Path

import numpy as np

from greedy.data.container import Dataset
from greedy.data.files import search_dirs
from greedy.errors import DatasetError

URL = "https://www.cs.ucr.edu/~eamonn/time_series_data_2018/"
ARCHIVE_DIRS = (("ucr", "UCRArchive_2018"), ("UCRArchive_2018",))


def find_ucr(name: str, data_dir=None) -> Path:
    """The folder ``<Name>/`` of UCR set ``name`` (case-insensitive), or a DatasetError
    that says where to get the archive and where to put it."""
    dirs = search_dirs(data_dir)
    for folder in dirs:
        for parts in ARCHIVE_DIRS:
            archive = folder.joinpath(*parts)
            if (archive / name).is_dir():
                return archive / name
            if archive.is_dir():
                for sub in archive.iterdir():
                    if sub.name.lower() == name.lower() and sub.is_dir():
                        return sub
    raise DatasetError(
        f"ucr:{name}: {name}_TRAIN.tsv not found under {', '.join(map(str, dirs))}; the UCR "
        f"archive cannot be downloaded for you (it is password-protected): get "
        f"UCRArchive_2018.zip from {URL} and unzip it into DIR/ucr/ so that "
        f"DIR/ucr/UCRArchive_2018/{name}/{name}_TRAIN.tsv exists, with DIR given by "
        "--data-dir or GREEDY_DATA")


def _line_numbers(text: str) -> np.ndarray:
    """1-based line numbers of the non-blank lines of ``text``."""
    return np.array([i for i, line in enumerate(text.split("\n"), 1) if line.rstrip("\r")])


def _diagnose(path: Path, text: str) -> DatasetError | None:
    """The first ragged row or non-numeric value of a file that numpy could not read."""
    width = first = None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        if width is None:
            width, first = len(fields), number
        elif len(fields) != width:
            return DatasetError(f"{path} line {number}: {len(fields)} fields, but line "
                                f"{first} has {width} (ragged row)")
        for column, field in enumerate(fields, 1):
            try:
                float(field)
            except ValueError:
                what = "empty value" if not field.strip() else f"non-numeric value {field!r}"
                return DatasetError(f"{path} line {number}: {what} in field {column}")
    return None


def read_ucr_file(path) -> tuple[np.ndarray, np.ndarray]:
    """One UCR ``.tsv`` -> (labels float64 (N,), values float64 (N, W), NaN kept).

    Ragged rows, non-numeric values, infinities, rows without values and empty files
    are DatasetErrors naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise DatasetError(f"{path}: empty file, expected one series a line "
                           "(label<TAB>value<TAB>value...)")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter="\t", comments=None,
                           dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise (_diagnose(path, text) or DatasetError(
            f"{path}: {' '.join(str(exc).split())}")) from None
    if table.shape[1] < 2:
        raise DatasetError(f"{path} line {_line_numbers(text)[0]}: a label but no values")
    labels, values = table[:, 0], table[:, 1:]
    bad = ~np.isfinite(labels) | np.isinf(values).any(1) | np.isnan(values).all(1)
    if bad.any():
        row = int(np.argmax(bad))
        what = ("label is not a finite number" if not np.isfinite(labels[row]) else
                "infinite value" if np.isinf(values[row]).any() else "no value, only NaN")
        raise DatasetError(f"{path} line {_line_numbers(text)[row]}: {what}")
    return labels, values


def fill_missing(values: np.ndarray) -> np.ndarray:
    """NaN-marked series float64 (N, W) -> float32 (N, L) per the module's rules.

    Every row must hold at least one number. L = 1 + the last non-NaN column of any row.
    """
    observed = ~np.isnan(values)
    width = values.shape[1]
    columns = np.arange(width)
    length = int(np.max(np.where(observed, columns, -1))) + 1
    if observed[:, :length].all():
        return values[:, :length].astype(np.float32)
    prev = np.maximum.accumulate(np.where(observed, columns, -1), axis=1)
    after = np.minimum.accumulate(np.where(observed, columns, width)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(len(values))[:, None]
    left = values[rows, np.maximum(prev, 0)]
    right = values[rows, np.minimum(after, width - 1)]
    weight = (columns - prev) / np.maximum(after - prev, 1)
    filled = np.where(prev < 0, right, left + weight * (right - left))
    filled = np.where(after >= width, 0.0, filled)
    out = np.where(observed, values, filled)
    return out[:, :length].astype(np.float32)


def label_name(value: float) -> str:
    """A numeric label as written in the archive: ``1``, ``-1``, ``2.5``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def load_ucr(name: str, data_dir=None) -> Dataset:
    """UCR set ``name`` -> Dataset of float32 (N, 1, L) series (module docstring)."""
    folder = find_ucr(name, data_dir)
    paths = [folder / f"{folder.name}_{split}.tsv" for split in ("TRAIN", "TEST")]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"ucr:{name}: {path} is missing (the UCR layout is "
                               f"<Name>/<Name>_TRAIN.tsv and <Name>/<Name>_TEST.tsv; "
                               f"get the archive from {URL})")
    (train_labels, train_values), (test_labels, test_values) = map(read_ucr_file, paths)
    classes = np.unique(train_labels)
    y_test = np.searchsorted(classes, test_labels)
    unseen = classes[np.minimum(y_test, len(classes) - 1)] != test_labels
    if unseen.any():
        row = int(np.argmax(unseen))
        line = _line_numbers(paths[1].read_bytes().decode("utf-8", "replace"))[row]
        raise DatasetError(f"{paths[1]} line {line}: label {label_name(test_labels[row])} "
                           f"does not occur in {paths[0]}")
    width = max(train_values.shape[1], test_values.shape[1])
    pad = [np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=np.nan)
           for v in (train_values, test_values)]
    series = fill_missing(np.concatenate(pad))
    n = len(train_values)
    y_train = np.searchsorted(classes, train_labels).astype(np.int64)
    return Dataset(np.ascontiguousarray(series[:n, None]), y_train,
                   np.ascontiguousarray(series[n:, None]), y_test.astype(np.int64),
                   tuple(label_name(c) for c in classes))
