"""Where dataset files live: lookup order, checksums, downloads, one-line notices.

Files are looked up, in order, in

1. ``data_dir`` if given, else the ``GREEDY_DATA`` environment variable; a folder
   named this way must exist (no folder is created on the user's behalf);
2. the checkout's ``datasets/`` folder (next to the ``greedy`` package, when that
   folder holds ``checksums.json`` and a ``pyproject.toml`` sits beside it), else
   the user cache ``$XDG_CACHE_HOME/greedy`` (``~/.cache/greedy``);
3. system folders (``/usr/share/datasets``, where Debian's
   ``dataset-fashion-mnist`` package installs ``fashion-mnist/*.gz``);

and, if still missing and downloading is on, fetched from the canonical mirrors into
folder 1 when it is writable, else folder 2 (the documented cache, the only folder
created when absent).

Checksums (:data:`CHECKSUMS`, mirrored in the tracked ``datasets/checksums.json``):
a file is accepted silently when its md5 equals the published md5 of the archive,
or, for a gzipped file listed in :data:`CONTENT_CHECKSUMS`, when the md5 of its
uncompressed content equals the published content's (a recompressed copy of the
original). A downloaded file must match the archive md5. A local file that matches
neither is used anyway, with one line on stderr (:func:`notice`).
"""

import gzip
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

from greedy.errors import DatasetError
from greedy.progress import Progress

ENV_VAR = "GREEDY_DATA"

SYSTEM_DIRS = (Path("/usr/share/datasets"),)

# md5 of each file exactly as published.
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

# md5 of the gunzipped content of a published .gz file: a local .gz whose own md5
# differs but whose content has this md5 is the same data, recompressed.
CONTENT_CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
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

HOW_TO_SUPPLY = ("supply the files with --data-dir DIR or the GREEDY_DATA environment "
                 "variable, or run once while online to download them; or use "
                 "--dataset synthetic")


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, whitespace collapsed to one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_NOTICED: set = set()


def notice(message: str, quiet: bool = False) -> None:
    """Write ``warning: message`` to stderr as one line, once per process; nothing if quiet."""
    if quiet or message in _NOTICED:
        return
    _NOTICED.add(message)
    sys.stderr.write("warning: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()


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


def user_data_dir(data_dir=None) -> Path | None:
    """``data_dir``, else ``$GREEDY_DATA``, else None; a named folder must exist.

    Raises DatasetError ("--data-dir /tmp/nope: no such folder") when it does not.
    """
    if data_dir is not None and str(data_dir) != "":
        where, folder = f"--data-dir {data_dir}", Path(data_dir).expanduser()
    elif os.environ.get(ENV_VAR):
        where, folder = f"{ENV_VAR}={os.environ[ENV_VAR]}", Path(os.environ[ENV_VAR]).expanduser()
    else:
        return None
    if not folder.exists():
        raise DatasetError(f"{where}: no such folder")
    if not folder.is_dir():
        raise DatasetError(f"{where}: not a folder")
    return folder


def search_dirs(data_dir=None) -> list[Path]:
    """Folders searched for data files, in order (see the module docstring)."""
    user = user_data_dir(data_dir)
    return ([user] if user is not None else []) + [default_data_dir(), *SYSTEM_DIRS]


def download_dir(data_dir=None) -> Path:
    """The user's folder when writable, else the default folder (created if absent)."""
    user = user_data_dir(data_dir)
    if user is not None and os.access(user, os.W_OK):
        return user
    default = default_data_dir()
    try:
        default.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"no writable folder to download into ({user or 'no data dir'}; "
                           f"{default}: {one_line(exc)})") from None
    if not os.access(default, os.W_OK):
        raise DatasetError(f"no writable folder to download into (tried "
                           f"{', '.join(str(p) for p in (user, default) if p)})")
    return default


def find_file(name: str, fname: str, dirs: list[Path]) -> Path | None:
    """First ``D/name/fname`` or ``D/fname`` that exists, over the folders ``dirs``."""
    for folder in dirs:
        for path in (folder / name / fname, folder / fname):
            if path.is_file():
                return path
    return None


# ---------------------------------------------------------------- checksums

_MD5_CACHE: dict = {}


def _md5_key(path: Path, kind: str) -> tuple:
    st = path.stat()
    return (kind, str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def file_md5(path) -> str:
    """Hex md5 of a file; cached per (path, inode, size, mtime) for the process."""
    path = Path(path)
    key = _md5_key(path, "file")
    if key not in _MD5_CACHE:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def content_md5(path, content: bytes | None = None) -> str | None:
    """Hex md5 of a gzip file's uncompressed content (``content`` if already read).

    None when the file is not a readable gzip stream; cached like :func:`file_md5`.
    """
    path = Path(path)
    key = _md5_key(path, "content")
    if key not in _MD5_CACHE:
        h = hashlib.md5()
        try:
            if content is not None:
                h.update(content)
            else:
                with gzip.open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
        except (OSError, EOFError):
            return None
        _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def check_file(name: str, fname: str, path, content: bytes | None = None) -> bool:
    """True when ``path`` holds the published ``name/fname`` (the archive or its content).

    ``content``: the file's already-gunzipped bytes, to avoid reading it twice.
    False when it matches neither; DatasetError when it is another published file.
    """
    path = Path(path)
    got = file_md5(path)
    if got == CHECKSUMS[name][fname]:
        return True
    inner = None
    if any(fname in files for files in CONTENT_CHECKSUMS.values()):
        inner = content_md5(path, content)
        if inner == CONTENT_CHECKSUMS.get(name, {}).get(fname):
            return True
    for table, md5 in ((CHECKSUMS, got), (CONTENT_CHECKSUMS, inner)):
        for other, files in table.items():
            for ofname, published in files.items():
                if md5 == published and (other, ofname) != (name, fname):
                    raise DatasetError(f"{path}: this is {other}'s {ofname}, "
                                       f"not {name}'s {fname}")
    return False


def report_mismatches(name: str, paths: list, quiet: bool) -> None:
    """One notice line for the local files of ``name`` that differ from the release."""
    if not paths:
        return
    folders = sorted({str(Path(p).parent) for p in paths})
    files = ", ".join(Path(p).name for p in paths)
    notice(f"{name}: {files} in {', '.join(folders)} differ from the published release "
           "(md5 of the file and of its content); using them anyway", quiet)


# ---------------------------------------------------------------- download

def download_line(label: str, done: int, total: int) -> str:
    """``downloading LABEL 42.0% 70.3/170.5 MB`` (``done`` and ``total`` in bytes; total 0 when unknown)."""
    mb = done / 1e6
    text = f"{100 * done / total:5.1f}% {mb:.1f}/{total / 1e6:.1f} MB" if total else f"{mb:.1f} MB"
    return f"downloading {label} {text}"


def fetch(url: str, dest: Path, md5: str, progress: bool) -> None:
    """Stream ``url`` into a temp file beside ``dest``, check md5, rename into place (``greedy.atomic``)."""
    from greedy.atomic import atomic_file
    h = hashlib.md5()
    with atomic_file(dest, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
        total, done = int(resp.headers.get("Content-Length") or 0), 0
        bar = Progress(enabled=progress)
        try:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if bar.due():
                    bar.show(download_line(dest.name, done, total))
        finally:
            bar.end(download_line(dest.name, done, total))
        if h.hexdigest() != md5:  # raised inside: the temporary file is removed, dest is left alone
            raise DatasetError(f"md5 {h.hexdigest()} does not match the published {md5}")


def download(name: str, fname: str, target: Path, progress: bool) -> Path:
    """Fetch ``name/fname`` from its mirrors into ``target`` (``target/name/`` for IDX)."""
    dest = target / fname if name == "cifar10" else target / name / fname
    made = not dest.parent.exists()
    dest.parent.mkdir(exist_ok=True)
    reasons = []
    try:
        for mirror in MIRRORS[name]:
            try:
                fetch(mirror + fname, dest, CHECKSUMS[name][fname], progress)
                return dest
            except Exception as exc:  # noqa: BLE001 - any failure moves on to the next mirror
                reasons.append(f"{mirror + fname}: {one_line(exc)}")
    finally:
        if made and not dest.exists() and not any(dest.parent.iterdir()):
            dest.parent.rmdir()
    raise DatasetError(f"download failed ({'; '.join(reasons)})")


def locate(name: str, fname: str, data_dir, download_ok: bool, progress: bool) -> Path:
    """Path of ``name/fname``: found in :func:`search_dirs`, else downloaded."""
    dirs = search_dirs(data_dir)
    path = find_file(name, fname, dirs)
    if path is not None:
        return path
    where = ", ".join(map(str, dirs))
    if not download_ok:
        raise DatasetError(f"{name}: {fname} not found in {where} and downloading is "
                           f"off; {HOW_TO_SUPPLY}")
    try:
        return download(name, fname, download_dir(data_dir), progress)
    except (DatasetError, OSError) as exc:
        raise DatasetError(f"{name}: {fname} not found in {where} and {exc}; "
                           f"{HOW_TO_SUPPLY}") from None
