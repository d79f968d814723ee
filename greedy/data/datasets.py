"""Image classification datasets: MNIST, Fashion-MNIST, CIFAR-10 and a synthetic set.

``load_dataset(name)`` returns a :class:`Dataset` of uint8 NCHW images and int64
labels. Files are looked up, in order, in

1. ``data_dir`` if given, else the ``GREEDY_DATA`` environment variable;
2. the checkout's ``datasets/`` folder (next to the ``greedy`` package, when that
   folder holds ``checksums.json`` and a ``pyproject.toml`` sits beside it), else
   the user cache ``$XDG_CACHE_HOME/greedy`` (``~/.cache/greedy``);
3. system folders (``/usr/share/datasets``, where Debian's
   ``dataset-fashion-mnist`` package installs ``fashion-mnist/*.gz``);

and, if still missing and ``download=True``, fetched from the canonical mirrors into
the first writable folder of 1 and 2. Within a folder ``D`` the IDX files may sit in
``D/mnist/`` (``D/fashion-mnist/``) or in ``D`` itself; CIFAR-10 may be
``cifar-10-python.tar.gz`` (read straight from the compressed stream, never
extracted) or an extracted ``cifar-10-batches-py/``, in ``D`` or ``D/cifar10/``.

Every file with a published md5 (:data:`CHECKSUMS`, mirrored in the tracked
``datasets/checksums.json``) is verified: a download that does not match is an
error; a local file that does not match is used with a :class:`ChecksumWarning`.
"""

import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
import tempfile
import time
import urllib.request
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from greedy.errors import ConfigError, DatasetError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "synthetic", "synthetic-grey")

CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    },
}

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

SYSTEM_DIRS = (Path("/usr/share/datasets"),)

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"),
    "synthetic": ("horizontal bars", "vertical bars", "diagonal bars \\",
                  "diagonal bars /", "disc", "ring", "square", "plus", "x-cross",
                  "dots"),
}
CLASS_NAMES["synthetic-grey"] = CLASS_NAMES["synthetic"]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_TAR = "cifar-10-python.tar.gz"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"

_HOW_TO_SUPPLY = ("supply the files with --data-dir DIR or the GREEDY_DATA environment "
                  "variable, or run once while online to download them; or use "
                  "--dataset synthetic")


class Dataset(NamedTuple):
    """Train/test split: images uint8 (N, C, H, W), labels int64 (N,) in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple


class ChecksumWarning(UserWarning):
    """A local dataset file differs from the published release; it is used anyway."""


def _oneline(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- lookup

def repo_datasets_dir() -> Path | None:
    """The checkout's ``datasets/`` folder, or None when greedy is installed."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "datasets"
    if (folder / "checksums.json").is_file() and (root / "pyproject.toml").is_file():
        return folder
    return None


def default_data_dir() -> Path:
    """``datasets/`` in a checkout, else ``$XDG_CACHE_HOME/greedy`` (``~/.cache/greedy``)."""
    repo = repo_datasets_dir()
    if repo is not None:
        return repo
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "greedy"


def search_dirs(data_dir=None) -> list[Path]:
    """Folders searched for data files, in order (see the module docstring)."""
    dirs = []
    user = data_dir if data_dir is not None else os.environ.get("GREEDY_DATA")
    if user:
        dirs.append(Path(user).expanduser())
    dirs.append(default_data_dir())
    dirs.extend(SYSTEM_DIRS)
    return dirs


def _download_dir(data_dir) -> Path:
    user = data_dir if data_dir is not None else os.environ.get("GREEDY_DATA")
    candidates = ([Path(user).expanduser()] if user else []) + [default_data_dir()]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise DatasetError("no writable folder to download into (tried "
                       + ", ".join(map(str, candidates)) + ")")


def _find(name: str, fname: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for path in (folder / name / fname, folder / fname):
            if path.is_file():
                return path
    return None


# ---------------------------------------------------------------- checksums

_MD5_CACHE: dict = {}


def file_md5(path) -> str:
    """Hex md5 of a file; cached per (path, inode, size, mtime) for the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _MD5_CACHE:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def _check_local(name: str, fname: str, path: Path) -> None:
    got = file_md5(path)
    expected = CHECKSUMS[name][fname]
    if got == expected:
        return
    for other, files in CHECKSUMS.items():
        for ofname, md5 in files.items():
            if md5 == got and (other, ofname) != (name, fname):
                raise DatasetError(f"{path}: this is {other}'s {ofname}, not {name}'s {fname}")
    warnings.warn(f"{path}: md5 {got} differs from the published {expected}; "
                  "using it anyway", ChecksumWarning, stacklevel=2)


# ---------------------------------------------------------------- download

class _Progress:
    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.done, self.last = 0, 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last > 0.1:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        mb = self.done / 1e6
        if self.total:
            text = f"{100 * self.done / self.total:5.1f}% {mb:.1f}/{self.total / 1e6:.1f} MB"
        else:
            text = f"{mb:.1f} MB"
        sys.stderr.write(f"\rdownloading {self.label} {text}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fetch(url: str, dest: Path, md5: str, progress: bool) -> None:
    """Stream ``url`` into a temp file beside ``dest``, check md5, rename into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = _Progress(dest.name, total, progress)
            try:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
        if h.hexdigest() != md5:
            raise DatasetError(f"md5 {h.hexdigest()} does not match the published {md5}")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _download(name: str, fname: str, target: Path, progress: bool) -> Path:
    dest = target / fname if name == "cifar10" else target / name / fname
    dest.parent.mkdir(parents=True, exist_ok=True)
    reasons = []
    for mirror in MIRRORS[name]:
        try:
            _fetch(mirror + fname, dest, CHECKSUMS[name][fname], progress)
            return dest
        except Exception as exc:  # noqa: BLE001 - any failure moves on to the next mirror
            reasons.append(f"{mirror + fname}: {_oneline(exc)}")
    raise DatasetError(f"download failed ({'; '.join(reasons)})")


def _locate(name: str, fname: str, data_dir, download: bool, progress: bool) -> Path:
    dirs = search_dirs(data_dir)
    path = _find(name, fname, dirs)
    if path is not None:
        _check_local(name, fname, path)
        return path
    where = ", ".join(map(str, dirs))
    if not download:
        raise DatasetError(f"{name}: {fname} not found in {where} and downloading is "
                           f"off; {_HOW_TO_SUPPLY}")
    try:
        return _download(name, fname, _download_dir(data_dir), progress)
    except (DatasetError, OSError) as exc:
        raise DatasetError(f"{name}: {fname} not found in {where} and {exc}; "
                           f"{_HOW_TO_SUPPLY}") from None


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: truncated or corrupt gzip file ({_oneline(exc)})") from None


def read_idx(path, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions -> uint8 array."""
    path = Path(path)
    raw = _gunzip(path)
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DatasetError(f"{path}: file too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + ndim:
        raise DatasetError(f"{path}: IDX magic 0x{magic:08x}, expected 0x{0x800 + ndim:08x} "
                           f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need = math.prod(dims)
    if len(raw) - head != need:
        raise DatasetError(f"{path}: header says {'x'.join(map(str, dims))} = {need} bytes "
                           f"but the file holds {len(raw) - head}")
    return np.frombuffer(raw, np.uint8, need, head).reshape(dims).copy()


def _check_labels(labels: np.ndarray, where) -> np.ndarray:
    if labels.size and labels.max() >= 10:
        raise DatasetError(f"{where}: labels must lie in 0..9, found {int(labels.max())}")
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{where}: labels must lie in 0..9, found {int(labels.min())}")
    return labels.astype(np.int64)


def load_idx_pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Gzipped IDX images and labels -> (uint8 (N, 1, 28, 28), int64 (N,))."""
    x = read_idx(images_path, 3)
    if x.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
    y = read_idx(labels_path, 1)
    if len(x) != len(y):
        raise DatasetError(f"{images_path} holds {len(x)} images but {labels_path} holds "
                           f"{len(y)} labels")
    return x[:, None], _check_labels(y, labels_path)


def _load_idx_dataset(name, data_dir, download, progress) -> Dataset:
    parts = []
    for split in ("train", "test"):
        paths = [_locate(name, f, data_dir, download, progress) for f in IDX_FILES[split]]
        parts.extend(load_idx_pair(*paths))
    return Dataset(*parts, CLASS_NAMES[name])


# ---------------------------------------------------------------- CIFAR-10

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (what CIFAR batches contain)."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):  # numpy < 2 has no numpy._core
            return super().find_class(module.replace("numpy._core.", "numpy.core."), name)


def read_cifar_batch(data: bytes, where) -> tuple[np.ndarray, np.ndarray]:
    """Pickled CIFAR-10 batch bytes -> (uint8 (N, 3, 32, 32), int64 (N,))."""
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except Exception as exc:
        raise DatasetError(f"{where}: corrupt pickle ({_oneline(exc)})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{where}: not a CIFAR batch (expected a dict with b'data' "
                           "and b'labels')")
    x, y = batch[b"data"], batch[b"labels"]
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
            and x.shape[1] == 3072):
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DatasetError(f"{where}: b'data' must be uint8 N x 3072, got {desc}")
    try:
        y = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DatasetError(f"{where}: b'labels' is not a list of integers") from None
    if y.shape != (len(x),):
        raise DatasetError(f"{where}: {len(x)} images but labels of shape {y.shape}")
    return x.reshape(-1, 3, 32, 32), _check_labels(y, where)


def _norm_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _read_cifar_tar(path: Path) -> dict:
    wanted = {f"{CIFAR_DIR}/{b}": b for b in CIFAR_TRAIN + (CIFAR_TEST,)}
    found = {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                key = wanted.get(_norm_member(member.name))
                if key is None:
                    continue
                if not member.isfile():
                    raise DatasetError(f"{path}: {member.name} is not a regular file")
                found[key] = read_cifar_batch(tar.extractfile(member).read(),
                                              f"{path}:{member.name}")
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated tar.gz ({_oneline(exc)})") from None
    for member, key in wanted.items():
        if key not in found:
            raise DatasetError(f"{path}: CIFAR batch {member} is missing")
    return found


def _read_cifar_dir(folder: Path) -> dict:
    found = {}
    for key in CIFAR_TRAIN + (CIFAR_TEST,):
        path = folder / key
        if not path.is_file():
            raise DatasetError(f"{folder}: CIFAR batch {key} is missing")
        found[key] = read_cifar_batch(path.read_bytes(), path)
    return found


def load_cifar10(path) -> Dataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/``."""
    path = Path(path)
    batches = _read_cifar_dir(path) if path.is_dir() else _read_cifar_tar(path)
    x_train = np.concatenate([batches[b][0] for b in CIFAR_TRAIN])
    y_train = np.concatenate([batches[b][1] for b in CIFAR_TRAIN])
    x_test, y_test = batches[CIFAR_TEST]
    return Dataset(x_train, y_train, np.ascontiguousarray(x_test), y_test,
                   CLASS_NAMES["cifar10"])


def _load_cifar(data_dir, download, progress) -> Dataset:
    for folder in search_dirs(data_dir):
        for base in (folder, folder / "cifar10"):
            if (base / CIFAR_TAR).is_file():
                with ThreadPoolExecutor(1) as pool:  # hash while the main thread gunzips
                    hashed = pool.submit(file_md5, base / CIFAR_TAR)
                    data = load_cifar10(base / CIFAR_TAR)
                    hashed.result()
                _check_local("cifar10", CIFAR_TAR, base / CIFAR_TAR)
                return data
            if (base / CIFAR_DIR).is_dir():
                return load_cifar10(base / CIFAR_DIR)
    return load_cifar10(_locate("cifar10", CIFAR_TAR, data_dir, download, progress))


# ---------------------------------------------------------------- synthetic

def make_synthetic(n: int, seed=0, grey: bool = False, chunk: int = 4096):
    """Ten classes told apart only by spatial pattern -> (uint8 (n, C, S, S), int64 (n,)).

    RGB 32x32 (C=3) or, with ``grey``, 28x28 (C=1). Each image is a two-colour
    pattern plus Gaussian noise: oriented gratings (4 orientations), disc, ring,
    square, plus, diagonal cross, dot lattice, each at a random position, scale,
    phase and small rotation. Both colours are drawn uniformly per image and the
    pattern covers a random 15-35% of the pixels whatever the class, so the colour
    histogram carries no class information. ``seed`` is anything
    ``numpy.random.default_rng`` accepts; the output is a function of (n, seed, grey).
    """
    rng = np.random.default_rng(seed)
    size, channels = (28, 1) if grey else (32, 3)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    params = {
        "frac": rng.uniform(0.15, 0.35, n),
        "cx": rng.uniform(0.3, 0.7, n), "cy": rng.uniform(0.3, 0.7, n),
        "tilt": rng.uniform(-0.2, 0.2, n),
        "freq": rng.uniform(3.0, 5.0, n), "phase": rng.uniform(0, 2 * np.pi, n),
        "radius": rng.uniform(0.25, 0.33, n),
    }
    colour_a = rng.uniform(0, 255, (n, channels, 1, 1)).astype(np.float32)
    shift = rng.uniform(0.35 * 255, 0.65 * 255, (n, channels, 1, 1)).astype(np.float32)
    colour_b = (colour_a + shift) % np.float32(255)
    x = np.empty((n, channels, size, size), np.uint8)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        mask = _synthetic_masks(y[sl], {k: v[sl] for k, v in params.items()}, size)
        img = rng.standard_normal(x[sl].shape, dtype=np.float32)
        img *= np.float32(0.06 * 255)
        img += colour_a[sl]
        img += mask[:, None] * (colour_b[sl] - colour_a[sl])
        np.clip(np.rint(img, out=img), 0, 255, out=img)
        x[sl] = img
    return x, y


_GRATING_ANGLES = (0.0, np.pi / 2, np.pi / 4, 3 * np.pi / 4)  # normal of the bars; y points down


def _synthetic_masks(y: np.ndarray, p: dict, size: int) -> np.ndarray:
    """Masks float32 (m, size, size) of 0/1: the top ``frac`` of each image's class field."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    field = np.empty((len(y), size, size), np.float32)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        q = {k: v[idx, None, None].astype(np.float32) for k, v in p.items()}
        dx, dy = g[None, None, :] - q["cx"], g[None, :, None] - q["cy"]
        angle = q["tilt"] + np.float32(_GRATING_ANGLES[c] if c < 4 else 0.0)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = dy * np.cos(angle) - dx * np.sin(angle)
        wave = np.float32(2 * np.pi) * q["freq"]
        if c < 4:
            f = np.cos(wave * v + q["phase"])
        elif c == 4:
            f = -np.hypot(dx, dy)
        elif c == 5:
            f = -np.abs(np.hypot(dx, dy) - q["radius"])
        elif c == 6:
            f = -np.maximum(np.abs(u), np.abs(v))
        elif c == 7:
            f = -np.minimum(np.abs(u), np.abs(v))
        elif c == 8:
            f = -np.minimum(np.abs(u + v), np.abs(u - v))
        else:
            f = np.sin(wave * u + q["phase"]) * np.sin(wave * v)
        field[idx] = f
    flat = field.reshape(len(y), -1)
    k = np.minimum(((1 - p["frac"]) * flat.shape[1]).astype(np.int64), flat.shape[1] - 1)
    thresh = np.take_along_axis(np.sort(flat, axis=1), k[:, None], axis=1)
    return (field > thresh[:, :, None]).astype(np.float32)


# ---------------------------------------------------------------- entry point

def load_dataset(name: str, data_dir=None, download: bool = True, progress: bool = True,
                 synthetic_size=(2000, 500), seed: int = 0) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`) -> :class:`Dataset`.

    Images are uint8 NCHW: (N, 1, 28, 28) for ``mnist``, ``fashion-mnist`` and
    ``synthetic-grey``; (N, 3, 32, 32) for ``cifar10`` and ``synthetic``. Labels are
    int64 in 0..9. ``data_dir``, ``download`` and ``progress`` (a download progress
    bar on stderr) apply to the real datasets; ``synthetic_size`` = (n_train, n_test)
    and ``seed`` to the synthetic ones, whose train and test sets come from
    independent streams of ``seed``.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if key.startswith("synthetic"):
        try:
            n_train, n_test = (int(s) for s in synthetic_size)
        except (TypeError, ValueError):
            raise ConfigError(f"synthetic_size must be (n_train, n_test), got "
                              f"{synthetic_size!r}") from None
        if n_train < 1 or n_test < 1:
            raise ConfigError(f"synthetic_size must be positive, got {synthetic_size!r}")
        try:
            train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
        except (TypeError, ValueError):
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}") from None
        grey = key == "synthetic-grey"
        return Dataset(*make_synthetic(n_train, train_seq, grey),
                       *make_synthetic(n_test, test_seq, grey), CLASS_NAMES[key])
    if key == "cifar10":
        return _load_cifar(data_dir, download, progress)
    return _load_idx_dataset(key, data_dir, download, progress)
