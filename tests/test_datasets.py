"""Dataset loaders: file formats, lookup order, checksums, downloads, synthetic data."""

import gzip
import contextlib
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import greedy.data as D
from greedy import progress
from greedy.data import files as F
from greedy.data import images as I
from greedy.data import synthetic as S
from greedy.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parent.parent
MNIST_FILES = I.IDX_FILES["train"] + I.IDX_FILES["test"]


# ---------------------------------------------------------------- helpers

def idx_gz(arr, magic=None):
    arr = np.asarray(arr, np.uint8)
    magic = 0x800 + arr.ndim if magic is None else magic
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(head + arr.tobytes())


def mnist_arrays(seed=0, n_train=30, n_test=10):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
            rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))


def write_mnist(folder, seed=0):
    """The four IDX files in ``folder``; returns their arrays (train x, y, test x, y)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays(seed)
    for fname, arr in zip(MNIST_FILES[:2] + MNIST_FILES[2:], arrays):
        (folder / fname).write_bytes(idx_gz(arr))
    return arrays


def md5(data):
    return hashlib.md5(data).hexdigest()


def batch_bytes(x, y, protocol=pickle.HIGHEST_PROTOCOL):
    return pickle.dumps({b"batch_label": b"test", b"labels": [int(v) for v in y],
                         b"data": np.asarray(x, np.uint8).reshape(len(x), 3072),
                         b"filenames": [b"a.png"] * len(x)}, protocol=protocol)


def cifar_batches(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 10, n))
            for name in I.CIFAR_TRAIN + (I.CIFAR_TEST,)}


def tar_gz(members, prefix="cifar-10-batches-py/"):
    """members: name -> bytes, written in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cifar_tar(batches, order=None, prefix="cifar-10-batches-py/"):
    order = order or list(batches)
    return tar_gz({k: batch_bytes(*batches[k]) for k in order}, prefix)


def one_line_error(excinfo, *needles):
    text = str(excinfo.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)


class FakeResponse:
    """Stands in for urlopen's response: serves ``data`` in small reads."""

    def __init__(self, data, fail_after=None, on_read=None, exc=ConnectionResetError):
        self.data, self.pos, self.fail_after = data, 0, fail_after
        self.on_read, self.exc = on_read, exc
        self.headers = {"Content-Length": str(len(data))}

    def read(self, n=-1):
        if self.on_read:
            self.on_read()
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise self.exc("connection reset by peer")
        chunk = self.data[self.pos:self.pos + 100]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No GREEDY_DATA, a private default dir, no system dirs, no network."""
    monkeypatch.delenv("GREEDY_DATA", raising=False)
    default = tmp_path / "default"
    monkeypatch.setattr(F, "default_data_dir", lambda: default)
    monkeypatch.setattr(F, "SYSTEM_DIRS", ())
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return {"tmp": tmp_path, "default": default, "calls": calls, "mp": monkeypatch}


def trust(monkeypatch, name, folder):
    """Publish the md5s of the files in ``folder`` for ``name``, so they load silently."""
    for fname in D.CHECKSUMS[name]:
        path = folder / fname
        if path.exists():
            monkeypatch.setitem(D.CHECKSUMS[name], fname, md5(path.read_bytes()))


def load_quiet(*args, **kwargs):
    """Load with notices on; assert that nothing was written to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        data = D.load_dataset(*args, progress=False, **kwargs)
    assert err.getvalue() == ""
    return data


# ---------------------------------------------------------------- names, checksums, lookup

def test_checksums_json_equals_module_constant():
    on_disk = json.loads((REPO / "datasets" / "checksums.json").read_text())
    assert on_disk == {"file_md5": D.CHECKSUMS, "gunzipped_md5": D.CONTENT_CHECKSUMS}
    assert set(D.CHECKSUMS) == set(F.MIRRORS)
    for table in (D.CHECKSUMS, D.CONTENT_CHECKSUMS):
        for name, files in table.items():
            assert set(files) <= set(D.CHECKSUMS[name])
            assert all(len(h) == 32 and int(h, 16) >= 0 for h in files.values())


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        D.load_dataset("imagenet")
    one_line_error(e, "imagenet", *D.DATASETS)


def test_names_are_normalised_and_have_ten_classes():
    d = D.load_dataset("Synthetic_Grey", synthetic_size=(20, 10))
    assert d.x_train.shape == (20, 1, 28, 28)
    for name in D.DATASETS:
        assert len(D.CLASS_NAMES[name]) == 10 and len(set(D.CLASS_NAMES[name])) == 10


def test_repo_and_cache_dirs(monkeypatch, tmp_path):
    assert F.repo_datasets_dir() == REPO / "datasets"
    monkeypatch.setattr(F, "repo_datasets_dir", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.default_data_dir() == tmp_path / "xdg" / "greedy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.default_data_dir() == tmp_path / "home" / ".cache" / "greedy"


def test_search_order(env):
    mp, tmp = env["mp"], env["tmp"]
    assert D.search_dirs() == [env["default"]]
    (tmp / "envdir").mkdir()
    (tmp / "arg").mkdir()
    mp.setenv("GREEDY_DATA", str(tmp / "envdir"))
    mp.setattr(F, "SYSTEM_DIRS", (tmp / "sys",))
    assert D.search_dirs() == [tmp / "envdir", env["default"], tmp / "sys"]
    assert D.search_dirs(tmp / "arg") == [tmp / "arg", env["default"], tmp / "sys"]


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize("layout", ["subdir", "flat"])
def test_mnist_loads_from_data_dir(env, layout):
    folder = env["tmp"] / "data"
    arrays = write_mnist(folder / "mnist" if layout == "subdir" else folder)
    trust(env["mp"], "mnist", folder / "mnist" if layout == "subdir" else folder)
    d = load_quiet("mnist", data_dir=folder)
    for got, want in zip(d[:4], arrays):
        np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_train.dtype == np.uint8
    assert d.y_train.dtype == np.int64 and d.y_test.shape == (10,)
    assert d.class_names == D.CLASS_NAMES["mnist"]
    assert env["calls"] == []


def test_lookup_prefers_argument_then_env_then_default_then_system(env):
    mp, tmp = env["mp"], env["tmp"]
    sources = {"arg": tmp / "arg", "env": tmp / "env", "default": env["default"],
               "sys": tmp / "sys"}
    labels = {}
    for seed, (key, folder) in enumerate(sources.items()):
        labels[key] = write_mnist(folder / "fashion-mnist", seed)[1]
    mp.setattr(F, "SYSTEM_DIRS", (tmp / "sys",))
    mp.setenv("GREEDY_DATA", str(tmp / "env"))
    mp.setattr(F, "CHECKSUMS", {**F.CHECKSUMS, "fashion-mnist": {f: "0" * 32 for f in MNIST_FILES}})

    def got(**kw):
        return D.load_dataset("fashion-mnist", quiet=True, **kw).y_train

    np.testing.assert_array_equal(got(data_dir=tmp / "arg"), labels["arg"])
    np.testing.assert_array_equal(got(), labels["env"])
    mp.delenv("GREEDY_DATA")
    np.testing.assert_array_equal(got(), labels["default"])
    for f in MNIST_FILES:
        (env["default"] / "fashion-mnist" / f).unlink()
    np.testing.assert_array_equal(got(), labels["sys"])


def test_named_subfolder_wins_over_top_level_files(env):
    folder = env["tmp"] / "data"
    write_mnist(folder, seed=1)
    fashion = write_mnist(folder / "fashion-mnist", seed=2)
    trust(env["mp"], "fashion-mnist", folder / "fashion-mnist")
    d = load_quiet("fashion-mnist", data_dir=folder)
    np.testing.assert_array_equal(d.y_train, fashion[1])
    assert d.class_names[0] == "T-shirt/top"


def test_checksum_mismatch_warns_once_on_one_line_and_still_loads(env, capsys):
    folder = env["tmp"] / "data"
    arrays = write_mnist(folder / "mnist")
    d = D.load_dataset("mnist", data_dir=folder)
    D.load_dataset("mnist", data_dir=folder)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: mnist: "), err
    assert "differ from the published release" in err and str(folder / "mnist") in err
    assert all(f in err for f in MNIST_FILES)
    np.testing.assert_array_equal(d.y_train, arrays[1])
    other = env["tmp"] / "other"
    write_mnist(other / "mnist")
    D.load_dataset("mnist", data_dir=other, quiet=True)
    assert capsys.readouterr().err == ""


def _regzip(blob, level, mtime):
    return gzip.compress(gzip.decompress(blob), compresslevel=level, mtime=mtime)


def test_recompressed_published_content_is_accepted_silently(env, capsys):
    """A .gz whose bytes differ from the archive but whose content is the published one."""
    folder = env["tmp"] / "data" / "mnist"
    arrays = write_mnist(folder)
    for fname in MNIST_FILES:
        original = (folder / fname).read_bytes()
        env["mp"].setitem(D.CHECKSUMS["mnist"], fname, md5(original))
        env["mp"].setitem(D.CONTENT_CHECKSUMS["mnist"], fname, md5(gzip.decompress(original)))
        again = _regzip(original, level=1, mtime=123456789)
        assert again != original
        (folder / fname).write_bytes(again)
    d = D.load_dataset("mnist", data_dir=folder.parent)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(d.x_test[:, 0], arrays[2])
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(_regzip(idx_gz(arrays[3][::-1]), level=9, mtime=1))
    d = D.load_dataset("mnist", data_dir=folder.parent)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "t10k-labels-idx1-ubyte.gz" in err
    assert "train-images" not in err
    np.testing.assert_array_equal(d.y_test, arrays[3][::-1])


def test_published_content_of_the_shared_mnist_copies():
    """The uncompressed md5s of ../shared/data/mnist are the table's (its README lists them)."""
    root = Path(os.environ.get("GREEDY_DATA") or REPO.parent / "shared" / "data") / "mnist"
    for fname in MNIST_FILES:
        path = root / fname
        assert path.is_file(), f"{path} missing; set GREEDY_DATA to the shared data folder"
        assert F.file_md5(path) != D.CHECKSUMS["mnist"][fname]
        assert F.content_md5(path) == D.CONTENT_CHECKSUMS["mnist"][fname]
        assert F.check_file("mnist", fname, path)
    with pytest.raises(DatasetError) as e:
        F.check_file("fashion-mnist", MNIST_FILES[0], root / MNIST_FILES[0])
    one_line_error(e, "this is mnist's train-images-idx3-ubyte.gz, not fashion-mnist's")


def test_mnist_file_offered_as_fashion_is_an_error(env):
    folder = env["tmp"] / "data"
    write_mnist(folder)
    trust(env["mp"], "mnist", folder)
    with pytest.raises(DatasetError) as e:
        D.load_dataset("fashion-mnist", data_dir=folder, progress=False)
    one_line_error(e, "mnist's train-images-idx3-ubyte.gz", "not fashion-mnist's")


def _zero_middle(blob):
    return blob[:20] + bytes(60) + blob[80:]


BROKEN_IDX = {
    "truncated gzip": ("train-images-idx3-ubyte.gz",
                       lambda: idx_gz(np.zeros((30, 28, 28)))[:-40], "truncated or corrupt gzip"),
    "not gzip": ("train-labels-idx1-ubyte.gz", lambda: b"this is not gzip data at all",
                 "truncated or corrupt gzip"),
    "corrupt deflate": ("t10k-images-idx3-ubyte.gz", lambda: _zero_middle(idx_gz(
                        np.arange(7840).reshape(10, 28, 28) % 251)), "truncated or corrupt gzip"),
    "wrong magic": ("train-images-idx3-ubyte.gz",
                    lambda: idx_gz(np.zeros((30, 28, 28)), magic=0x0D03), "IDX magic 0x00000d03"),
    "labels as images": ("t10k-labels-idx1-ubyte.gz",
                         lambda: idx_gz(np.zeros((10, 28, 28))), "IDX magic 0x00000803"),
    "wrong dims": ("train-images-idx3-ubyte.gz", lambda: idx_gz(np.zeros((30, 27, 28))),
                   "27x28, expected 28x28"),
    "short payload": ("train-images-idx3-ubyte.gz",
                      lambda: gzip.compress(gzip.decompress(idx_gz(np.zeros((30, 28, 28))))[:-5]),
                      "but the file holds"),
    "header only half": ("train-labels-idx1-ubyte.gz", lambda: gzip.compress(b"\0\0\x08"),
                         "too short for an IDX header"),
    "count mismatch": ("train-labels-idx1-ubyte.gz", lambda: idx_gz(np.zeros(29)),
                       "holds 30 images but"),
    "label out of range": ("t10k-labels-idx1-ubyte.gz", lambda: idx_gz(np.r_[np.zeros(9), 10]),
                           "labels must lie in 0..9, found 10"),
}


@pytest.mark.parametrize("case", list(BROKEN_IDX))
def test_broken_idx_files_raise_one_line_errors(env, case):
    fname, make, message = BROKEN_IDX[case]
    folder = env["tmp"] / "data" / "mnist"
    write_mnist(folder)
    (folder / fname).write_bytes(make())
    with pytest.raises(DatasetError) as e:
        D.load_dataset("mnist", data_dir=folder.parent, quiet=True)
    one_line_error(e, fname, message)


# ---------------------------------------------------------------- CIFAR-10

def test_cifar_from_tar_in_archive_order(env):
    batches = cifar_batches()
    folder = env["tmp"] / "data"
    folder.mkdir()
    shuffled = ["data_batch_4", "test_batch", "data_batch_2", "data_batch_5",
                "data_batch_1", "data_batch_3"]
    (folder / I.CIFAR_TAR).write_bytes(cifar_tar(batches, shuffled, "./cifar-10-batches-py/"))
    trust(env["mp"], "cifar10", folder)
    d = load_quiet("cifar10", data_dir=folder)
    x_train = np.concatenate([batches[b][0] for b in I.CIFAR_TRAIN])
    np.testing.assert_array_equal(d.x_train, x_train)
    np.testing.assert_array_equal(d.y_train, np.concatenate([batches[b][1] for b in I.CIFAR_TRAIN]))
    np.testing.assert_array_equal(d.x_test, batches["test_batch"][0])
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_train.dtype == np.uint8
    assert d.y_test.dtype == np.int64 and d.class_names[0] == "airplane"


def test_cifar_from_extracted_dir_in_cifar10_subfolder(env):
    batches = cifar_batches(seed=1)
    folder = env["tmp"] / "data" / "cifar10" / I.CIFAR_DIR
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(batch_bytes(x, y, protocol=2))
    d = load_quiet("cifar10", data_dir=env["tmp"] / "data")
    np.testing.assert_array_equal(d.y_test, batches["test_batch"][1])
    np.testing.assert_array_equal(d.x_train[-4:], batches["data_batch_5"][0])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batch_pickle_protocols(protocol):
    x, y = cifar_batches()["data_batch_1"]
    got_x, got_y = D.read_cifar_batch(batch_bytes(x, y, protocol), "batch")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_running(env):
    marker = env["tmp"] / "pwned"
    payload = pickle.dumps({b"data": _Evil(f"touch {marker}"), b"labels": [0]})
    with pytest.raises(DatasetError) as e:
        D.read_cifar_batch(payload, "evil_batch")
    one_line_error(e, "evil_batch", "refusing to unpickle", "system")
    batches = {k: batch_bytes(*v) for k, v in cifar_batches().items()}
    batches["data_batch_2"] = payload
    folder = env["tmp"] / "data"
    folder.mkdir()
    (folder / I.CIFAR_TAR).write_bytes(tar_gz(batches))
    trust(env["mp"], "cifar10", folder)
    with pytest.raises(DatasetError) as e:
        D.load_dataset("cifar10", data_dir=folder, progress=False)
    one_line_error(e, "data_batch_2", "refusing to unpickle")
    eval_payload = pickle.dumps({b"data": eval, b"labels": []})
    with pytest.raises(DatasetError, match="builtins.eval"):
        D.read_cifar_batch(eval_payload, "batch")
    assert not marker.exists()


def _tar_with_symlink():
    members = {k: batch_bytes(*v) for k, v in cifar_batches().items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            if name == "data_batch_1":
                info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
                continue
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _bad_batch(change):
    members = {k: batch_bytes(*v) for k, v in cifar_batches().items()}
    x, y = cifar_batches()["data_batch_3"]
    batch = {b"data": x.reshape(4, 3072).astype(np.uint8), b"labels": [int(v) for v in y]}
    batch.update(change)
    members["data_batch_3"] = pickle.dumps(batch)
    return tar_gz(members)


BROKEN_CIFAR = {
    "missing batch": (lambda: tar_gz({k: batch_bytes(*v) for k, v in cifar_batches().items()
                                      if k != "data_batch_3"}),
                      "cifar-10-batches-py/data_batch_3 is missing"),
    "truncated tar": (lambda: cifar_tar(cifar_batches())[:-3000], "corrupt or truncated tar.gz"),
    "not a tar": (lambda: gzip.compress(b"hello" * 1000), "corrupt or truncated tar.gz"),
    "not gzip": (lambda: b"\x00" * 5000, "corrupt or truncated tar.gz"),
    "symlink member": (_tar_with_symlink, "data_batch_1 is not a regular file"),
    "garbage pickle": (lambda: tar_gz({**{k: batch_bytes(*v) for k, v in cifar_batches().items()},
                                       "data_batch_3": b"\x80\x04garbage"}), "corrupt pickle"),
    "label 10": (lambda: _bad_batch({b"labels": [0, 1, 2, 10]}), "labels must lie in 0..9"),
    "label count": (lambda: _bad_batch({b"labels": [0, 1, 2]}), "4 images but labels"),
    "data shape": (lambda: _bad_batch({b"data": np.zeros((4, 1024), np.uint8)}),
                   "b'data' must be uint8 N x 3072"),
    "data dtype": (lambda: _bad_batch({b"data": np.zeros((4, 3072), np.float32)}),
                   "b'data' must be uint8 N x 3072"),
    "not a dict": (lambda: tar_gz({**{k: batch_bytes(*v) for k, v in cifar_batches().items()},
                                   "data_batch_3": pickle.dumps([1, 2, 3])}), "not a CIFAR batch"),
}


@pytest.mark.parametrize("case", list(BROKEN_CIFAR))
def test_broken_cifar_raises_one_line_errors(env, case):
    make, message = BROKEN_CIFAR[case]
    folder = env["tmp"] / "data"
    folder.mkdir()
    (folder / I.CIFAR_TAR).write_bytes(make())
    with pytest.raises(DatasetError) as e:
        D.load_dataset("cifar10", data_dir=folder, quiet=True)
    one_line_error(e, str(folder / I.CIFAR_TAR), message)


def test_extracted_cifar_missing_batch(env):
    folder = env["tmp"] / "data" / I.CIFAR_DIR
    folder.mkdir(parents=True)
    for name, (x, y) in cifar_batches().items():
        if name != I.CIFAR_TEST:
            (folder / name).write_bytes(batch_bytes(x, y))
    with pytest.raises(DatasetError) as e:
        D.load_dataset("cifar10", data_dir=folder.parent, progress=False)
    one_line_error(e, str(folder), "test_batch is missing")


# ---------------------------------------------------------------- downloads

def serve(env, files, **response_kwargs):
    """Patch urlopen to serve ``files`` (url basename -> bytes); records the urls asked for."""
    calls = env["calls"]

    def urlopen(url, *args, **kwargs):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return FakeResponse(files[name], **response_kwargs)

    env["mp"].setattr(urllib.request, "urlopen", urlopen)
    return calls


def all_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_download_writes_temp_then_renames(env, capsys):
    arrays = mnist_arrays()
    files = {f: idx_gz(a) for f, a in zip(MNIST_FILES, arrays)}
    for f, data in files.items():
        env["mp"].setitem(D.CHECKSUMS["mnist"], f, md5(data))
    target = env["tmp"] / "data"
    target.mkdir()
    during = []

    def urlopen(url, *args, **kwargs):
        env["calls"].append(url)
        name = url.rsplit("/", 1)[1]

        def on_read():
            parts = list((target / "mnist").glob(f".{name}.*.tmp"))
            during.append(((target / "mnist" / name).exists(), len(parts)))

        return FakeResponse(files[name], on_read=on_read)

    env["mp"].setattr(urllib.request, "urlopen", urlopen)
    d = D.load_dataset("mnist", data_dir=target, progress=True)
    calls = env["calls"]
    assert calls == [F.MIRRORS["mnist"][0] + f for f in MNIST_FILES]
    assert len(during) > 4 and all(not final and parts == 1 for final, parts in during)
    assert all_files(target) == sorted(f"mnist/{f}" for f in files)
    np.testing.assert_array_equal(d.y_test, arrays[3])
    err = capsys.readouterr().err
    assert "downloading train-images-idx3-ubyte.gz" in err and "100.0%" in err
    assert "\r" not in err and err.count("\n") == 4  # not a terminal: one plain line per file
    load_quiet("mnist", data_dir=target)  # now read from disk
    assert len(calls) == 4


def test_download_falls_back_to_second_mirror(env):
    data = {f: idx_gz(a) for f, a in zip(MNIST_FILES, mnist_arrays())}
    for f, blob in data.items():
        env["mp"].setitem(D.CHECKSUMS["mnist"], f, md5(blob))
    calls = env["calls"]

    def urlopen(url, *args, **kwargs):
        calls.append(url)
        if url.startswith(F.MIRRORS["mnist"][0]):
            raise urllib.error.URLError("timed out")
        return FakeResponse(data[url.rsplit("/", 1)[1]])

    env["mp"].setattr(urllib.request, "urlopen", urlopen)
    d = load_quiet("mnist")
    assert calls[:2] == [m + MNIST_FILES[0] for m in F.MIRRORS["mnist"]]
    assert all_files(env["default"]) == sorted(f"mnist/{f}" for f in MNIST_FILES)
    assert d.x_train.shape == (30, 1, 28, 28)


def test_download_checksum_mismatch_is_an_error_and_leaves_nothing(env):
    files = {f: idx_gz(a) for f, a in zip(MNIST_FILES, mnist_arrays())}
    calls = serve(env, files)
    target = env["tmp"] / "dl"
    target.mkdir()
    with pytest.raises(DatasetError) as e:
        D.load_dataset("mnist", data_dir=target, progress=False)
    one_line_error(e, "train-images-idx3-ubyte.gz", "does not match the published",
                   D.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"])
    assert len(calls) == 2
    assert all_files(target) == []


@pytest.mark.parametrize("exc", [ConnectionResetError, KeyboardInterrupt])
def test_interrupted_download_leaves_no_file(env, exc):
    tar = cifar_tar(cifar_batches())
    env["mp"].setitem(D.CHECKSUMS["cifar10"], I.CIFAR_TAR, md5(tar))
    serve(env, {I.CIFAR_TAR: tar}, fail_after=len(tar) // 2, exc=exc)
    target = env["tmp"] / "dl"
    target.mkdir()
    with pytest.raises(DatasetError if exc is ConnectionResetError else KeyboardInterrupt) as e:
        D.load_dataset("cifar10", data_dir=target, progress=False)
    if exc is ConnectionResetError:
        one_line_error(e, "connection reset", "--data-dir")
    assert all_files(target) == []


def test_cifar_download_lands_in_data_dir(env):
    batches = cifar_batches(seed=3)
    tar = cifar_tar(batches)
    env["mp"].setitem(D.CHECKSUMS["cifar10"], I.CIFAR_TAR, md5(tar))
    calls = serve(env, {I.CIFAR_TAR: tar})
    target = env["tmp"] / "dl"
    target.mkdir()
    d = load_quiet("cifar10", data_dir=target)
    assert calls == [F.MIRRORS["cifar10"][0] + I.CIFAR_TAR]
    assert all_files(target) == [I.CIFAR_TAR]
    np.testing.assert_array_equal(d.y_train[:4], batches["data_batch_1"][1])


def test_unwritable_data_dir_downloads_to_default(env):
    files = {f: idx_gz(a) for f, a in zip(MNIST_FILES, mnist_arrays())}
    for f, blob in files.items():
        env["mp"].setitem(D.CHECKSUMS["mnist"], f, md5(blob))
    serve(env, files)
    locked = env["tmp"] / "locked"
    locked.mkdir()
    real_access = os.access
    env["mp"].setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    load_quiet("mnist", data_dir=locked)
    assert all_files(env["default"]) == sorted(f"mnist/{f}" for f in MNIST_FILES)
    assert all_files(locked) == []


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_missing_data_dir_is_an_error_and_nothing_is_created(env, how):
    nope = env["tmp"] / "nope"
    calls = serve(env, {})
    if how == "environment":
        env["mp"].setenv("GREEDY_DATA", str(nope))
    kwargs = {"data_dir": str(nope)} if how == "argument" else {}
    for name in ("mnist", "cifar10"):
        with pytest.raises(DatasetError) as e:
            D.load_dataset(name, quiet=True, **kwargs)
        label = f"--data-dir {nope}" if how == "argument" else f"GREEDY_DATA={nope}"
        one_line_error(e, f"{label}: no such folder")
    assert not nope.exists() and not env["default"].exists() and calls == []
    (env["tmp"] / "a_file").write_bytes(b"")
    with pytest.raises(DatasetError, match="not a folder"):
        D.load_dataset("mnist", data_dir=env["tmp"] / "a_file", quiet=True)
    assert D.load_dataset("synthetic", data_dir=nope, synthetic_size=(3, 2)).x_train.shape[0] == 3


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_download_progress_redraws_one_line_on_a_terminal(env, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "TTY_INTERVAL", 0.0)
    data = bytes(range(250)) * 4
    serve(env, {"x.gz": data})
    F.fetch("https://mirror/x.gz", env["tmp"] / "x.gz", md5(data), progress=True)  # ten reads of 100 bytes
    assert (env["tmp"] / "x.gz").read_bytes() == data
    text = term.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 11 and text.endswith("100.0% 0.0/0.0 MB\n")


def test_no_data_and_no_network_says_how_to_supply_data(env):
    with pytest.raises(DatasetError) as e:
        D.load_dataset("mnist", progress=False)
    one_line_error(e, "mnist", "train-images-idx3-ubyte.gz", str(env["default"]),
                   "network is unreachable", "--data-dir", "GREEDY_DATA", "online",
                   "--dataset synthetic")
    assert env["calls"] == [m + MNIST_FILES[0] for m in F.MIRRORS["mnist"]]
    assert all_files(env["tmp"]) == []
    with pytest.raises(DatasetError) as e:
        D.load_dataset("cifar10", download=False)
    one_line_error(e, "cifar-10-python.tar.gz", "downloading is off", "GREEDY_DATA",
                   "--dataset synthetic")
    assert len(env["calls"]) == 2


# ---------------------------------------------------------------- synthetic

def test_synthetic_shapes_determinism_and_balance():
    a = D.load_dataset("synthetic", synthetic_size=(60, 25), seed=3)
    b = D.load_dataset("synthetic", synthetic_size=(60, 25), seed=3)
    c = D.load_dataset("synthetic", synthetic_size=(60, 25), seed=4)
    assert a.x_train.shape == (60, 3, 32, 32) and a.x_test.shape == (25, 3, 32, 32)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64
    for u, v in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:25], a.x_test)
    assert np.bincount(a.y_train, minlength=10).tolist() == [6] * 10
    grey = D.load_dataset("synthetic-grey", synthetic_size=(7, 3))
    assert grey.x_train.shape == (7, 1, 28, 28) and grey.y_test.shape == (3,)
    assert a.class_names == grey.class_names == D.CLASS_NAMES["synthetic"]


def test_synthetic_does_not_depend_on_chunking():
    x1, y1 = S.make_synthetic(50, 5)
    x2, y2 = S.make_synthetic(50, 5, chunk=16)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_synthetic_bad_arguments():
    with pytest.raises(ConfigError, match="synthetic_size"):
        D.load_dataset("synthetic", synthetic_size=(0, 5))
    with pytest.raises(ConfigError, match="synthetic_size"):
        D.load_dataset("synthetic", synthetic_size=5)
    with pytest.raises(ConfigError, match="seed"):
        D.load_dataset("synthetic", seed=-1)


def _ridge_accuracy(f_train, y_train, f_test, y_test, lam):
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-8
    a = np.c_[(f_train - mu) / sd, np.ones(len(f_train))]
    b = np.c_[(f_test - mu) / sd, np.ones(len(f_test))]
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ np.eye(10)[y_train])
    return float(np.mean(np.argmax(b @ w, 1) == y_test))


def _power_spectrum(x):
    g = x.astype(np.float64).mean(1)
    g -= g.mean((1, 2), keepdims=True)
    g /= g.std((1, 2), keepdims=True) + 1e-8
    return np.log1p(np.abs(np.fft.rfft2(g)) ** 2).reshape(len(x), -1)


def _colour_histogram(x, bins=4):
    q = x.astype(np.int64) * bins // 256
    code = q[:, 0]
    for ch in range(1, x.shape[1]):
        code = code * bins + q[:, ch]
    offsets = np.arange(len(x))[:, None] * bins ** x.shape[1]
    counts = np.bincount((code.reshape(len(x), -1) + offsets).ravel(),
                         minlength=len(x) * bins ** x.shape[1])
    return counts.reshape(len(x), -1).astype(np.float64)


@pytest.mark.parametrize("name", ["synthetic", "synthetic-grey"])
def test_synthetic_classes_are_spatial_not_colour(name):
    d = D.load_dataset(name, synthetic_size=(2000, 1000), seed=11)
    spatial = _ridge_accuracy(_power_spectrum(d.x_train), d.y_train,
                              _power_spectrum(d.x_test), d.y_test, 1e-2)
    colour = _ridge_accuracy(_colour_histogram(d.x_train), d.y_train,
                             _colour_histogram(d.x_test), d.y_test, 1e-1)
    assert spatial > 0.6, spatial
    assert colour < 0.2, colour


# ---------------------------------------------------------------- the real offline copies

def test_real_offline_data():
    root = Path(os.environ.get("GREEDY_DATA") or REPO.parent / "shared" / "data")
    needed = [root / "mnist" / f for f in MNIST_FILES] + [root / I.CIFAR_TAR]
    missing = [str(p) for p in needed if not p.is_file()]
    assert not missing, (f"real datasets missing: {missing}; set GREEDY_DATA to the folder "
                         "holding mnist/*.gz and cifar-10-python.tar.gz")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        mnist = D.load_dataset("mnist", data_dir=root, download=False)
        assert err.getvalue() == ""  # recompressed original content: accepted silently
        cifar = D.load_dataset("cifar10", data_dir=root, download=False)
    # the shared CIFAR-10 is rebuilt from JPEGs: one notice line, once per process at most
    assert err.getvalue().count("\n") <= 1 and "\n" not in err.getvalue()[:-1]
    for d, shape, n_train, n_test in ((mnist, (1, 28, 28), 60000, 10000),
                                      (cifar, (3, 32, 32), 50000, 10000)):
        assert d.x_train.shape == (n_train,) + shape and d.x_test.shape == (n_test,) + shape
        assert d.x_train.dtype == d.x_test.dtype == np.uint8
        assert d.y_train.dtype == d.y_test.dtype == np.int64
        assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
        for y in (d.y_train, d.y_test):
            counts = np.bincount(y, minlength=10)
            assert len(counts) == 10 and y.min() == 0
            assert counts.min() > 0.08 * len(y) and counts.max() < 0.12 * len(y), counts
        assert 0 < d.x_train.mean() < 255 and d.x_train.max() == 255
    assert np.bincount(cifar.y_train).tolist() == [5000] * 10
    assert np.bincount(cifar.y_test).tolist() == [1000] * 10


# ---------------------------------------------------------------- the container

def test_container_allows_sequences_bytes_and_many_classes():
    rng = np.random.default_rng(0)
    k = 1500
    names = tuple(f"System{i % 16}/E{i}" for i in range(k))
    series = D.Dataset(rng.standard_normal((40, 3, 17)).astype(np.float32), np.arange(40) * 37 % k,
                       rng.standard_normal((5, 3, 17)).astype(np.float32), np.full(5, k - 1),
                       names)
    assert D.check_dataset(series, "s") is series
    assert series.input_kind == "series" and series.input_shape == (3, 17)
    assert series.n_classes == k
    text = D.Dataset(np.zeros((4, 1, 256), np.uint8), np.arange(4), np.zeros((2, 1, 256), np.uint8),
                     np.arange(2), ("a", "b", "c", "d"))
    assert D.check_dataset(text, "t").input_kind == "bytes"
    assert D.load_dataset("synthetic", synthetic_size=(2, 2)).input_kind == "image"
    bad_cases = [
        (series._replace(y_test=np.full(5, k)), f"labels must lie in 0..{k - 1}, found {k}"),
        (series._replace(y_train=series.y_train.astype(np.int32)), "train labels must be int64"),
        (series._replace(x_test=series.x_test[:, :, :16]), "differ"),
        (series._replace(x_train=series.x_train.astype(np.float64)), "uint8 or float32"),
        (series._replace(class_names=names[:-1] + ("System0/E0",)), "distinct"),
        (text._replace(x_train=np.zeros((4, 256), np.uint8)), "3 or 4 dimensions"),
    ]
    for data, message in bad_cases:
        with pytest.raises(DatasetError) as e:
            D.check_dataset(data, "where")
        one_line_error(e, "where", message)


def test_check_labels_names_the_range():
    np.testing.assert_array_equal(D.check_labels(np.array([0, 1299], np.uint16), "f", 1300),
                                  [0, 1299])
    with pytest.raises(DatasetError, match="f: labels must lie in 0..9, found -1"):
        D.check_labels(np.array([3, -1]), "f")
