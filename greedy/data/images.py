"""Image datasets in their published file formats: MNIST and Fashion-MNIST (gzipped
IDX) and CIFAR-10 (pickled python batches, read with an unpickler that only
rebuilds numpy arrays). Where the files are found: :mod:`greedy.data.files`.

MNIST-style IDX files may sit in ``D/mnist/`` (``D/fashion-mnist/``) or in ``D``;
CIFAR-10 may be ``cifar-10-python.tar.gz`` (read straight from the compressed
stream, never extracted) or an extracted ``cifar-10-batches-py/``, in ``D`` or
``D/cifar10/`` (the archive wins when both are present).
"""

import gzip
import io
import math
import pickle
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from greedy.data.container import Dataset, check_labels
from greedy.data.files import (check_file, file_md5, locate, one_line, report_mismatches,
                               search_dirs)
from greedy.errors import DatasetError

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_TAR = "cifar-10-python.tar.gz"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: truncated or corrupt gzip file ({one_line(exc)})") from None


def parse_idx(raw: bytes, ndim: int, where) -> np.ndarray:
    """Uncompressed IDX bytes of unsigned bytes with ``ndim`` dimensions -> uint8 array."""
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DatasetError(f"{where}: file too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + ndim:
        raise DatasetError(f"{where}: IDX magic 0x{magic:08x}, expected 0x{0x800 + ndim:08x} "
                           f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need = math.prod(dims)
    if len(raw) - head != need:
        raise DatasetError(f"{where}: header says {'x'.join(map(str, dims))} = {need} bytes "
                           f"but the file holds {len(raw) - head}")
    return np.frombuffer(raw, np.uint8, need, head).reshape(dims).copy()


def read_idx(path, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions -> uint8 array."""
    return parse_idx(_gunzip(Path(path)), ndim, path)


def _idx_pair(x: np.ndarray, y: np.ndarray, images_path, labels_path):
    if x.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
    if len(x) != len(y):
        raise DatasetError(f"{images_path} holds {len(x)} images but {labels_path} holds "
                           f"{len(y)} labels")
    return x[:, None], check_labels(y, labels_path)


def load_idx_pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Gzipped IDX images and labels -> (uint8 (N, 1, 28, 28), int64 (N,))."""
    return _idx_pair(read_idx(images_path, 3), read_idx(labels_path, 1), images_path, labels_path)


def load_idx_dataset(name: str, data_dir, download: bool, progress: bool,
                     quiet: bool) -> Dataset:
    """MNIST or Fashion-MNIST, located, checked and read; one notice for odd checksums."""
    parts, mismatched = [], []
    for split in ("train", "test"):
        arrays, paths = [], []
        for fname, ndim in zip(IDX_FILES[split], (3, 1)):
            path = locate(name, fname, data_dir, download, progress and not quiet)
            raw = _gunzip(path)
            if not check_file(name, fname, path, raw):
                mismatched.append(path)
            arrays.append(parse_idx(raw, ndim, path))
            paths.append(path)
        parts.extend(_idx_pair(*arrays, *paths))
    report_mismatches(name, mismatched, quiet)
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
        raise DatasetError(f"{where}: corrupt pickle ({one_line(exc)})") from None
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
    return x.reshape(-1, 3, 32, 32), check_labels(y, where)


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
        raise DatasetError(f"{path}: corrupt or truncated tar.gz ({one_line(exc)})") from None
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


def load_cifar_dataset(data_dir, download: bool, progress: bool, quiet: bool) -> Dataset:
    """CIFAR-10, located (archive or extracted folder), checked and read."""
    for folder in search_dirs(data_dir):
        for base in (folder, folder / "cifar10"):
            if (base / CIFAR_TAR).is_file():
                with ThreadPoolExecutor(1) as pool:  # hash while the main thread gunzips
                    hashed = pool.submit(file_md5, base / CIFAR_TAR)
                    data = load_cifar10(base / CIFAR_TAR)
                    hashed.result()
                if not check_file("cifar10", CIFAR_TAR, base / CIFAR_TAR):
                    report_mismatches("cifar10", [base / CIFAR_TAR], quiet)
                return data
            if (base / CIFAR_DIR).is_dir():
                return load_cifar10(base / CIFAR_DIR)
    path = locate("cifar10", CIFAR_TAR, data_dir, download, progress and not quiet)
    return load_cifar10(path)
