"""loghub (https://github.com/logpai/loghub): which system wrote a log message, and
which template it belongs to (``loghub:system``, ``loghub:event``).

Files: ``D/loghub/<System>/<System>_2k.log_structured.csv`` for D in
:func:`greedy.data.files.search_dirs`, every such system folder found (the loghub
2k samples: 16 systems of 2,000 lines). Only the ``Content`` column (the message,
without the header that would name the system) and ``EventId`` (its ground-truth
template) are read. loghub is free for research and academic use only; its licence
asks users to cite the loghub paper (``loghub/LICENSE``, ``loghub/CITATION``).

Tasks: ``system``, label = the system (classes: system names, sorted);
``event``, label = the system-qualified template ``<System>/<EventId>`` (classes
sorted by system, then template number).

The split (:func:`split_loghub`) is fixed: it does not depend on any seed. On the
16 2k samples: ``system``, 25,600 train / 6,400 test lines (400 of each system's 2,000);
``event``, 1,363 templates, 27,716 / 4,284 (13.4 %: the 923 templates with a single
distinct text, 7,930 lines, stay in training). Of the 32,000 lines, 15,482 texts are
distinct.
"""

import csv
import hashlib
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from greedy.data.container import Dataset
from greedy.data.files import search_dirs
from greedy.data.text import MAX_BYTES, encode_texts
from greedy.errors import ConfigError, DatasetError

URL = "https://github.com/logpai/loghub"
TASKS = ("system", "event")
TEST_FRACTION = 0.2
COLUMNS = ("Content", "EventId")


class LogLines(NamedTuple):
    """Every line of the loghub samples, in file order (systems sorted by name).

    texts: list of N ``bytes`` (the Content field); system: int64 (N,) into
    ``systems``; event: int64 (N,) into ``events`` (``"<System>/<EventId>"``).
    """

    texts: list
    system: np.ndarray
    event: np.ndarray
    systems: tuple
    events: tuple


def _structured_csv(folder: Path) -> Path:
    return folder / f"{folder.name}_2k.log_structured.csv"


def find_loghub(data_dir=None) -> Path:
    """The ``loghub/`` folder holding ``<System>/<System>_2k.log_structured.csv``."""
    dirs = search_dirs(data_dir)
    for folder in dirs:
        root = folder / "loghub"
        if root.is_dir() and any(_structured_csv(s).is_file() for s in root.iterdir()):
            return root
    raise DatasetError(
        f"loghub: no loghub/<System>/<System>_2k.log_structured.csv under "
        f"{', '.join(map(str, dirs))}; loghub cannot be downloaded for you (its licence "
        f"allows research and academic use only): get the 2k samples from {URL} and put "
        "each system's folder in DIR/loghub/ (DIR/loghub/HDFS/HDFS_2k.log_structured.csv "
        "and so on), with DIR given by --data-dir or GREEDY_DATA")


def _event_key(name: str) -> tuple:
    system, event = name.split("/", 1)
    return (system, *(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", event)))


def _read_system(path: Path) -> tuple[list, list]:
    """Content (bytes) and EventId of every row of one structured CSV."""
    texts, events = [], []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = csv.reader(f)
        try:
            header = next(rows, None)
            if header is None:
                raise DatasetError(f"{path}: empty file")
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DatasetError(f"{path} line 1: no {' or '.join(missing)} column in "
                                   f"the header ({','.join(header)})")
            content, event = (header.index(c) for c in COLUMNS)
            for row in rows:
                if len(row) != len(header):
                    raise DatasetError(f"{path} line {rows.line_num}: {len(row)} fields, "
                                       f"the header has {len(header)}")
                if not row[event]:
                    raise DatasetError(f"{path} line {rows.line_num}: empty EventId")
                texts.append(row[content].encode("utf-8", "surrogateescape"))
                events.append(row[event])
        except csv.Error as exc:
            raise DatasetError(f"{path} line {rows.line_num}: {exc}") from None
    if not texts:
        raise DatasetError(f"{path}: a header but no log lines")
    return texts, events


def read_loghub(root) -> LogLines:
    """All systems under ``root`` -> :class:`LogLines`."""
    root = Path(root)
    folders = sorted(s for s in root.iterdir() if _structured_csv(s).is_file())
    texts, system, qualified = [], [], []
    for i, folder in enumerate(folders):
        t, e = _read_system(_structured_csv(folder))
        texts.extend(t)
        system.extend([i] * len(t))
        qualified.extend(f"{folder.name}/{x}" for x in e)
    events = tuple(sorted(set(qualified), key=_event_key))
    index = {name: k for k, name in enumerate(events)}
    return LogLines(texts, np.array(system, np.int64),
                    np.fromiter(map(index.__getitem__, qualified), np.int64, len(qualified)),
                    tuple(f.name for f in folders), events)


def _digest(text: bytes) -> bytes:
    return hashlib.md5(text).digest()


def split_loghub(texts: list, events: np.ndarray, strata: np.ndarray,
                 test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Fixed train/test split -> bool (N,), True for a test line.

    texts: N ``bytes``; events: int (N,) template of each line; strata: int (N,) the
    label to stratify by. Rules:

    - identical texts fall on the same side; a text found under two templates
      stays in training;
    - a template with a single distinct text stays in training; every other template
      keeps at least one of its texts in training, so a test line's template always
      has other texts in training;
    - within each stratum, test lines are chosen text by text in the order of the
      texts' md5 digests, each taken when it fits: the stratum's test lines never
      exceed round(test_fraction x its lines). Strata made of single-text templates
      have no test lines, so the overall test share is below ``test_fraction``.
    """
    ids = {}
    tid = np.fromiter((ids.setdefault(t, len(ids)) for t in texts), np.int64, len(texts))
    n_texts = len(ids)
    count = np.bincount(tid, minlength=n_texts)
    pairs = np.unique(np.stack([tid, events]), axis=1)
    n_events_of_text = np.bincount(pairs[0], minlength=n_texts)
    texts_of_event = np.bincount(pairs[1], minlength=int(events.max()) + 1)
    first = np.unique(tid, return_index=True)[1]
    text_event, text_stratum = events[first], strata[first]
    target = np.floor(test_fraction * np.bincount(strata) + 0.5).astype(np.int64)
    eligible = np.flatnonzero((n_events_of_text == 1) & (texts_of_event[text_event] >= 2))
    by_id = list(ids)
    order = sorted(eligible.tolist(), key=lambda i: (text_stratum[i], _digest(by_id[i])))
    in_train = texts_of_event.copy()
    taken = np.zeros(len(target), np.int64)
    test_text = np.zeros(n_texts, bool)
    for i in order:
        s, e, c = text_stratum[i], text_event[i], count[i]
        if taken[s] + c <= target[s] and in_train[e] >= 2:
            test_text[i] = True
            taken[s] += c
            in_train[e] -= 1
    return test_text[tid]


def load_loghub(task: str, data_dir=None, max_bytes: int = MAX_BYTES,
                keep: str = "head") -> Dataset:
    """``loghub:system`` or ``loghub:event`` -> Dataset of uint8 (N, 1, max_bytes).

    x: each line's Content bytes, encoded per :mod:`greedy.data.text` (``max_bytes``,
    ``keep``); lines keep their file order within train and test. The split is
    :func:`split_loghub` stratified by the task's label.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown loghub task {task!r}; valid: loghub:system, loghub:event")
    logs = read_loghub(find_loghub(data_dir))
    labels, names = (logs.system, logs.systems) if task == "system" else (logs.event, logs.events)
    test = split_loghub(logs.texts, logs.event, labels)
    x = encode_texts(logs.texts, max_bytes, keep)
    return Dataset(x[~test], labels[~test], x[test], labels[test], names)
