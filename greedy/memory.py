"""Memory of a training run: what is available, the peak it reached, and where feature caches live.

A layer-wise run keeps each block's input for the whole training set in a *cache* (N x C x H x W
float32 or float16 values). ``CacheStore.empty`` allocates one: in memory when it fits, else as a
memory-mapped file in the run folder (``cache="auto"``), so that a run too large for the machine
slows down instead of being killed by the kernel's out-of-memory killer. ``cache="memory"`` and
``cache="disk"`` force either place. The file is unlinked as soon as it is mapped: the cache's
disk space is freed with the cache, and nothing is left behind by a run that is killed.
"""
import errno
import mmap
import os
import resource
import sys
import tempfile

import numpy as np

from greedy.checkpoint import write_error
from greedy.errors import ConfigError

CACHE_MODES = ("auto", "memory", "disk")

# a cache goes to disk when it needs more than this share of the available memory: the rest is
# left for the training of the block that reads it and for the next cache, written while it lives
AVAILABLE_SHARE = 0.6

# caches of at least this many bytes in memory are mapped in small pages (``memory_array``)
SMALL_PAGES_MIN_BYTES = 64 * 1024**2


def available_bytes():
    """Bytes of memory available to a new allocation without swapping (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def peak_rss_bytes():
    """Peak resident memory of this process so far, in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class CacheStore:
    """Allocates feature caches in memory or as memory-mapped files in ``folder``.

    mode: "auto" (on disk when a cache needs more than ``AVAILABLE_SHARE`` of ``available_bytes()``),
    "memory" or "disk". folder: where cache files go (None: the system's temporary folder).
    available: a function giving the bytes available (default ``available_bytes``).
    ``spilled`` counts the caches put on disk.
    """

    def __init__(self, mode="auto", folder=None, available=None):
        if mode not in CACHE_MODES:
            raise ConfigError(f"cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
        self.mode, self.folder, self.available = mode, folder, available
        self.spilled = 0

    def on_disk(self, nbytes):
        """Whether a cache of ``nbytes`` goes to disk."""
        if self.mode != "auto":
            return self.mode == "disk"
        free = (self.available or available_bytes)()
        return free is not None and nbytes > AVAILABLE_SHARE * free

    def empty(self, shape, dtype):
        """An uninitialised array of ``shape`` and ``dtype``: an ndarray, or an np.memmap on disk."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not self.on_disk(nbytes):
            return once_written_array(shape, dtype)
        self.spilled += 1
        return disk_array(shape, dtype, self.folder)


def once_written_array(shape, dtype):
    """An uninitialised array for data written once and then read: in small pages (``memory_array``) from
    ``SMALL_PAGES_MIN_BYTES`` up, else an ordinary ``np.empty``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return memory_array(shape, dtype) if nbytes >= SMALL_PAGES_MIN_BYTES else np.empty(shape, dtype)


def memory_array(shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` in an anonymous memory mapping of its own, in
    small (4 KiB) pages; the mapping is released with the array.

    NumPy asks for transparent huge pages for every large array. A cache is written once and then read
    in batches, so huge pages gain it little, and the first write to fresh huge pages can be slow: on a
    2-core KVM guest, writing 1.76 GB took 0.50-4.0 s in huge pages and 0.70-0.79 s in small ones
    (perf/README.md, "Cache memory").
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    try:
        area = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    except OSError as e:
        raise MemoryError(f"cannot map {count * dtype.itemsize / 2**30:.2f} GiB for a cache in memory "
                          f"({e.strerror}); --cache disk puts caches in the run folder") from None
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        area.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(area, dtype, count=count).reshape(shape)


def disk_array(shape, dtype, folder=None):
    """A writable np.memmap of ``shape`` and ``dtype`` backed by an unlinked file in ``folder``.

    The file's blocks are reserved before it is mapped (``posix_fallocate``), so a full disk is a
    ``WriteError`` here rather than a SIGBUS when a page is first written.
    """
    folder = folder or tempfile.gettempdir()
    nbytes = max(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, 1)
    path = os.path.join(folder, ".cache")
    try:
        fd, path = tempfile.mkstemp(dir=folder, prefix=".cache.", suffix=".bin")
        try:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                    raise
                os.ftruncate(fd, nbytes)  # the file system cannot reserve blocks: a sparse file
            with os.fdopen(fd, "r+b", closefd=False) as f:
                array = np.memmap(f, dtype=dtype, mode="r+", shape=tuple(shape))
        finally:
            os.close(fd)
            os.remove(path)
    except OSError as e:
        raise write_error(path, e) from None
    return array


def cache_fields(cache):
    """Figures of a cache for the run's log: its size in MiB and whether it lives on disk ({} for a
    cache that is not one array)."""
    if not isinstance(cache, np.ndarray):
        return {}
    return {"cache_mb": round(cache.nbytes / 2**20, 1), "cache_on_disk": isinstance(cache, np.memmap)}
