"""Sequence datasets: UCR series, loghub messages, a user's labelled lines."""

import os
import time
from pathlib import Path

import numpy as np
import pytest

import greedy.data as D
from greedy.data import files as F
from greedy.data import loghub as LH
from greedy.data import ucr as U
from greedy.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GREEDY_DATA") or REPO.parent / "shared" / "data")


def one_line_error(excinfo, *needles):
    text = str(excinfo.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No GREEDY_DATA, an empty default folder, no system folders."""
    monkeypatch.delenv("GREEDY_DATA", raising=False)
    monkeypatch.setattr(F, "default_data_dir", lambda: tmp_path / "default")
    monkeypatch.setattr(F, "SYSTEM_DIRS", ())
    return tmp_path


def require(path):
    assert path.exists(), f"{path} missing; set GREEDY_DATA to the shared data folder"


# ---------------------------------------------------------------- names

def test_dataset_names():
    assert D.dataset_key("UCR:FordA") == "ucr:FordA"
    assert D.dataset_key(" loghub:Event ") == "loghub:event"
    assert D.dataset_key("lines:/some/where") == "lines:/some/where"
    assert D.dataset_key("Fashion_MNIST") == "fashion-mnist"
    for bad in ("ucr:", "ucr:../etc", "lines:", "loghub:words", "wikipedia"):
        with pytest.raises(ConfigError) as e:
            D.dataset_key(bad)
        one_line_error(e, repr(bad))
    with pytest.raises(ConfigError) as e:
        D.load_dataset("loghub:words")
    one_line_error(e, *D.SEQUENCE_DATASETS)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_bytes": 0}, "max_bytes"), ({"max_bytes": 2.5}, "max_bytes"),
    ({"keep": "middle"}, "keep must be one of head, tail"),
])
def test_bad_text_options(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        D.load_dataset(f"lines:{tmp_path}", **kwargs)


# ---------------------------------------------------------------- UCR, real data

@pytest.mark.parametrize("name, shapes, k, counts", [
    ("FordA", (3601, 1320, 500), 2, None),
    ("ElectricDevices", (8926, 7711, 96), 7, [727, 2231, 851, 1474, 2406, 509, 728]),
])
def test_ucr_real_sets(name, shapes, k, counts):
    require(SHARED / "ucr" / "UCRArchive_2018" / name)
    d = D.load_dataset(f"ucr:{name}", data_dir=SHARED, seed=5)
    n_train, n_test, length = shapes
    assert d.x_train.shape == (n_train, 1, length) and d.x_test.shape == (n_test, 1, length)
    assert d.x_train.dtype == d.x_test.dtype == np.float32 and d.input_kind == "series"
    assert d.y_train.dtype == np.int64 and d.n_classes == k
    assert set(np.unique(d.y_train)) == set(range(k)) == set(np.unique(d.y_test))
    first = (SHARED / "ucr" / "UCRArchive_2018" / name / f"{name}_TEST.tsv").open().readline()
    label, *values = first.split("\t")
    np.testing.assert_allclose(d.x_test[0, 0], np.array(values, np.float32))
    assert d.class_names[d.y_test[0]] == label
    if counts:
        assert np.bincount(d.y_train).tolist() == counts
        assert d.class_names == tuple(str(i) for i in range(1, 8))
    else:
        assert d.class_names == ("-1", "1")


def test_ucr_name_is_case_insensitive():
    require(SHARED / "ucr" / "UCRArchive_2018" / "FordA")
    d = D.load_dataset("ucr:forda", data_dir=SHARED)
    assert d.x_test.shape == (1320, 1, 500)


# ---------------------------------------------------------------- UCR, files made here

def write_ucr(root, name, train, test):
    folder = root / "ucr" / "UCRArchive_2018" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_TRAIN.tsv").write_text(train)
    (folder / f"{name}_TEST.tsv").write_text(test)
    return folder


def test_ucr_labels_not_zero_based_are_numbered_in_sorted_order(isolated):
    write_ucr(isolated, "Toy", "7\t1\t2\n-2\t3\t4\n3\t5\t6\n7\t7\t8\n", "3\t0\t0\n-2\t1\t1\n")
    d = D.load_dataset("ucr:Toy", data_dir=isolated)
    assert d.class_names == ("-2", "3", "7")
    assert d.y_train.tolist() == [2, 0, 1, 2] and d.y_test.tolist() == [1, 0]
    np.testing.assert_array_equal(d.x_train[:, 0], [[1, 2], [3, 4], [5, 6], [7, 8]])


def test_ucr_missing_values_and_unequal_lengths(isolated):
    train = ("1\t1\tNaN\tNaN\t4\tNaN\tNaN\n"    # interior gap, then the series ends
             "2\tNaN\t2\t3\tNaN\tNaN\tNaN\n"    # leading NaN takes the first value
             "1\t1\t2\t3\t4\t5\tNaN\n")          # the longest series: length 5
    test = "2\t9\t8\n"                           # shorter file: padded like a short series
    write_ucr(isolated, "Gaps", train, test)
    d = D.load_dataset("ucr:Gaps", data_dir=isolated)
    assert d.x_train.shape == (3, 1, 5) and d.x_test.shape == (1, 1, 5)
    np.testing.assert_allclose(d.x_train[:, 0], [[1, 2, 3, 4, 0], [2, 2, 3, 0, 0], [1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(d.x_test[0, 0], [9, 8, 0, 0, 0])
    assert not np.isnan(d.x_train).any()


UCR_BAD = {
    "ragged": ("1\t1\t2\n2\t1\t2\t3\n", "line 2: 4 fields, but line 1 has 3 (ragged row)"),
    "non-numeric": ("1\t1\t2\n\n2\t1\tabc\n", "line 3: non-numeric value 'abc' in field 3"),
    "empty value": ("1\t1\t\n", "line 1: empty value in field 3"),
    "empty file": ("", "empty file"),
    "whitespace only": ("\n  \n", "empty file"),
    "label only": ("1\n2\n", "line 1: a label but no values"),
    "all NaN": ("1\t1\t2\n\n2\tNaN\tNaN\n", "line 3: no value, only NaN"),
    "infinite": ("1\t1\t2\n2\t1\tinf\n", "line 2: infinite value"),
    "NaN label": ("1\t1\t2\nnan\t1\t2\n", "line 2: label is not a finite number"),
}


@pytest.mark.parametrize("case", list(UCR_BAD))
def test_ucr_bad_files_name_file_and_line(isolated, case):
    content, message = UCR_BAD[case]
    folder = write_ucr(isolated, "Bad", content, "1\t5\t6\n")
    with pytest.raises(DatasetError) as e:
        D.load_dataset("ucr:Bad", data_dir=isolated)
    one_line_error(e, str(folder / "Bad_TRAIN.tsv"), message)


def test_ucr_test_label_missing_from_training(isolated):
    folder = write_ucr(isolated, "Unseen", "1\t1\t2\n2\t3\t4\n", "1\t0\t0\n\n3\t1\t1\n")
    with pytest.raises(DatasetError) as e:
        D.load_dataset("ucr:Unseen", data_dir=isolated)
    one_line_error(e, str(folder / "Unseen_TEST.tsv"), "line 3: label 3 does not occur in",
                   str(folder / "Unseen_TRAIN.tsv"))


def test_ucr_missing_set_says_where_to_get_and_put_it(isolated):
    with pytest.raises(DatasetError) as e:
        D.load_dataset("ucr:FordA", data_dir=isolated)
    one_line_error(e, "ucr:FordA", U.URL, "password-protected", str(isolated),
                   "ucr/UCRArchive_2018/FordA/FordA_TRAIN.tsv", "--data-dir", "GREEDY_DATA")
    folder = write_ucr(isolated, "Half", "1\t1\n", "1\t1\n")
    (folder / "Half_TEST.tsv").unlink()
    with pytest.raises(DatasetError) as e:
        D.load_dataset("ucr:Half", data_dir=isolated)
    one_line_error(e, str(folder / "Half_TEST.tsv"), "is missing", U.URL)
    with pytest.raises(DatasetError) as e:
        D.load_dataset("ucr:FordA", data_dir=isolated / "nope")
    one_line_error(e, f"--data-dir {isolated / 'nope'}: no such folder")
    assert not (isolated / "nope").exists()


# ---------------------------------------------------------------- loghub, real data

@pytest.fixture(scope="module")
def logs():
    require(SHARED / "loghub")
    return LH.read_loghub(SHARED / "loghub")


def test_loghub_loads_both_tasks_quickly():
    require(SHARED / "loghub")
    start = time.perf_counter()
    system = D.load_dataset("loghub:system", data_dir=SHARED, seed=1)
    event = D.load_dataset("loghub:event", data_dir=SHARED, seed=2)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed  # a fraction of a second on the reference machine
    assert system.n_classes == 16 and event.n_classes > 1300
    assert system.class_names[:3] == ("Android", "Apache", "BGL")
    assert event.class_names[:2] == ("Android/E1", "Android/E2")
    for d in (system, event):
        assert len(d.x_train) + len(d.x_test) == 32000
        assert d.x_train.shape[1:] == (1, 256) and d.x_train.dtype == np.uint8
        assert d.input_kind == "bytes"
    assert np.bincount(system.y_test).tolist() == [400] * 16
    assert np.bincount(system.y_train).tolist() == [1600] * 16
    again = D.load_dataset("loghub:system", data_dir=SHARED, seed=9)
    for a, b in zip(system[:4], again[:4]):
        np.testing.assert_array_equal(a, b)


def test_loghub_inputs_are_the_content_bytes(logs):
    d = D.load_dataset("loghub:event", data_dir=SHARED, max_bytes=64, keep="tail")
    test = LH.split_loghub(logs.texts, logs.event, logs.event)
    texts = [t for t, is_test in zip(logs.texts, test) if not is_test]
    for i in (0, 5000, len(texts) - 1):
        want = texts[i][-64:]
        assert bytes(d.x_train[i, 0, :len(want)]) == want
        assert not d.x_train[i, 0, len(want):].any()
        assert d.class_names[d.y_train[i]].split("/")[0] in logs.systems


@pytest.mark.parametrize("task", ["system", "event"])
def test_loghub_split_rules(logs, task):
    labels = logs.system if task == "system" else logs.event
    test = LH.split_loghub(logs.texts, logs.event, labels)
    train_texts = {t for t, is_test in zip(logs.texts, test) if not is_test}
    test_texts = {t for t, is_test in zip(logs.texts, test) if is_test}
    # identical texts on the same side: no test text appears in training
    assert test_texts and not test_texts & train_texts
    # a test line's template has other texts in training; single-text templates train only
    texts_of = {}
    for t, e in zip(logs.texts, logs.event):
        texts_of.setdefault(int(e), set()).add(t)
    for e in np.unique(logs.event[test]):
        assert texts_of[int(e)] & train_texts
    single = [e for e, ts in texts_of.items() if len(ts) == 1]
    assert not np.isin(logs.event[test], single).any()
    # stratified: never more than 20 % of a label, and 20 % where the rules allow
    n = np.bincount(labels)
    n_test = np.bincount(labels[test], minlength=len(n))
    assert (n_test <= np.floor(0.2 * n + 0.5)).all()
    if task == "system":
        assert (n_test == 400).all()
    else:
        share = n_test[n_test > 0] / n[n_test > 0]
        assert 0.18 <= np.median(share) <= 0.22 and 0.12 < test.mean() < 0.2, test.mean()


def test_split_on_a_toy_case():
    texts = [b"a", b"a", b"b", b"z", b"c", b"d", b"e", b"f", b"g", b"g", b"z", b"h", b"h"]
    events = np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 3, 3])
    test = LH.split_loghub(texts, events, events)
    # template 0: 4 lines, at most round(0.8) = 1 in test; "a" (2 lines) never fits,
    # "z" is also under template 2, so "b" is the one
    assert test[:4].tolist() == [False, False, True, False]
    assert not test[4] and not test[11:].any()      # single-text templates 1 and 3
    assert test[5:8].sum() == 1 and not test[8:].any()  # one of d, e, f; "g" is 2 lines
    half = LH.split_loghub(texts, events, np.zeros_like(events), test_fraction=0.5)
    assert half.sum() == 7 and not half[[3, 4, 10, 11, 12]].any()  # 7 = round(0.5 x 13)
    for e in (0, 2):
        assert not half[events == e].all()


def write_logs(root, system, text):
    folder = root / "loghub" / system
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{system}_2k.log_structured.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("LineId,Content\n1,x\n", "line 1: no EventId column"),
    ("LineId,Content,EventId\n1,a,E1\n2,\"b,c\",E2\n3,d,E1,extra\n", "line 4: 4 fields"),
    ("LineId,Content,EventId\n1,\"multi\nline\",E1\n2,b,\n", "line 4: empty EventId"),
    ("LineId,Content,EventId\n", "a header but no log lines"),
])
def test_loghub_bad_files(isolated, content, message):
    path = write_logs(isolated, "Toy", content)
    with pytest.raises(DatasetError) as e:
        D.load_dataset("loghub:event", data_dir=isolated)
    one_line_error(e, str(path), message)


def test_loghub_missing_says_where_to_get_and_put_it(isolated):
    with pytest.raises(DatasetError) as e:
        D.load_dataset("loghub:system", data_dir=isolated)
    one_line_error(e, LH.URL, "research and academic use", str(isolated),
                   "loghub/HDFS/HDFS_2k.log_structured.csv", "--data-dir")


# ---------------------------------------------------------------- lines:PATH

def write_lines(folder, train: bytes, test: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_bytes(train)
    (folder / "test.tsv").write_bytes(test)
    return folder


def test_lines_reads_bytes_with_length_rules(tmp_path):
    train = (b"spam\tbuy \xff\xfe now\r\n"          # not UTF-8, CRLF
             b"\n"                                  # blank lines are skipped
             b"ham\thello\tworld\n"                 # tabs after the first belong to the text
             b"\xc3\xa9t\xc3\xa9\t\n"               # UTF-8 label, empty text
             b"ham\t0123456789abcdef")              # no final newline
    folder = write_lines(tmp_path / "mine", train, b"spam\tx\n")
    d = D.load_dataset(f"lines:{folder}", max_bytes=8)
    assert d.class_names == ("ham", "spam", "été")
    assert d.y_train.tolist() == [1, 0, 2, 0] and d.y_test.tolist() == [1]
    assert d.x_train.shape == (4, 1, 8) and d.x_train.dtype == np.uint8
    assert [bytes(r) for r in d.x_train[:, 0]] == [b"buy \xff\xfe n", b"hello\two", bytes(8),
                                                   b"01234567"]
    assert bytes(d.x_test[0, 0]) == b"x" + bytes(7)
    tail = D.load_dataset(f"lines:{folder}", max_bytes=8, keep="tail")
    assert [bytes(r) for r in tail.x_train[:, 0]] == [b"y \xff\xfe now", b"lo\tworld", bytes(8),
                                                      b"89abcdef"]


@pytest.mark.parametrize("train, test, where, message", [
    (b"a\tx\nno tab here\n", b"a\ty\n", "train.tsv", "train.tsv line 2: no tab between label"),
    (b"a\tx\n", b"", "test.tsv", "empty file"),
    (b"a\tx\n\n\tnolabel\n", b"a\ty\n", "train.tsv", "line 3: empty label"),
    (b"a\tx\nb\ty\n", b"a\tz\n\nc\tw\n", "test.tsv", "line 3: label 'c' does not occur in"),
])
def test_lines_bad_files(tmp_path, train, test, where, message):
    folder = write_lines(tmp_path / "bad", train, test)
    with pytest.raises(DatasetError) as e:
        D.load_dataset(f"lines:{folder}")
    one_line_error(e, str(folder / where), message)


def test_lines_missing_folder_or_file(tmp_path):
    with pytest.raises(DatasetError) as e:
        D.load_dataset(f"lines:{tmp_path / 'nope'}")
    one_line_error(e, str(tmp_path / "nope"), "no such folder", "train.tsv and test.tsv")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.tsv").write_bytes(b"a\tb\n")
    with pytest.raises(DatasetError) as e:
        D.load_dataset(f"lines:{tmp_path / 'half'}")
    one_line_error(e, "test.tsv is missing")


def test_encode_bytes_does_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    texts = [bytes(rng.integers(1, 256, rng.integers(0, 40)).astype(np.uint8)) for _ in range(300)]
    lengths = np.array([len(t) for t in texts])
    buf = np.frombuffer(b"".join(texts), np.uint8)
    starts = np.cumsum(lengths) - lengths
    for keep in D.KEEP:
        whole = D.encode_bytes(buf, starts, lengths, 16, keep)
        chunked = D.encode_bytes(buf, starts, lengths, 16, keep, chunk=7)
        np.testing.assert_array_equal(whole, chunked)
        for row, t in zip(whole[:, 0], texts):
            kept = t[:16] if keep == "head" else t[-16:] if t else b""
            assert bytes(row) == kept + bytes(16 - len(kept))
    assert D.encode_texts([], 4).shape == (0, 1, 4)
