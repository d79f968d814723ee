"""Memory of a training run: what is available, the peak it reached, and where feature caches live.

A layer-wise run keeps each block's input for the whole training set in a *cache* (N x C x H x W
float32 or float16 values). ``CacheStore.empty`` allocates one: in memory when it fits, else as a
memory-mapped file in the run folder (``cache="auto"``), so that a run too large for the machine
slows down instead of being killed by the kernel's out-of-memory killer. ``cache="memory"`` and
``cache="disk"`` force either place. The file is unlinked as soon as it is mapped: the cache's
disk space is freed with the cache, and nothing is left behind by a run that is killed. Caches in
memory are mappings of their own, kept for the next cache when they die (``memory_array``).
"""
import errno
import mmap
import os
import resource
import sys
import tempfile
import threading
import weakref

import numpy as np

from greedy.checkpoint import write_error
from greedy.errors import ConfigError

CACHE_MODES = ("auto", "memory", "disk")

# a cache goes to disk when it needs more than this share of the available memory: the rest is
# left for the training of the block that reads it and for the next cache, written while it lives
AVAILABLE_SHARE = 0.6

# caches of at least this many bytes in memory are mapped in small pages (``memory_array``)
SMALL_PAGES_MIN_BYTES = 64 * 1024**2
# mappings of dead arrays kept for reuse by ``memory_array``, at most this share of physical memory
KEEP_FREE_SHARE = 0.25


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
        # mappings kept for reuse are not counted as available by the system, but a cache may take them
        return free is not None and nbytes > AVAILABLE_SHARE * (free + free_area_bytes())

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


class _Area:
    """An anonymous mapping of ``memory_array``'s and whether an array still uses it."""

    def __init__(self, nbytes):
        self.map = mmap.mmap(-1, nbytes)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.nbytes, self.in_use = nbytes, False


_areas = []
_areas_lock = threading.RLock()  # re-entrant: a finalizer may run in a thread holding it


def memory_array(shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` in an anonymous memory mapping in small
    (4 KiB) pages, reused after the array is gone.

    NumPy asks for transparent huge pages for every large array. A cache is written once and then read
    in batches, so huge pages gain it little, and the first write to fresh huge pages can be slow: on a
    2-core KVM guest, writing 1.76 GB took 0.50-4.0 s in huge pages and 0.70-0.79 s in small ones
    (perf/README.md, "Cache memory"). Memory given back to the system costs again when it is next
    written (the kernel clears it; a virtual machine's host may have taken it back: 4 GiB took 7.8 s
    to write fresh, 1.6 s again at once and 5.2 s again after 6 s idle, against 0 s in a mapping
    kept). So when the array and its views are gone the mapping is kept, and the next request it
    can hold takes it (the smallest such); mappings no array uses are unmapped, largest first, once
    they pass ``KEEP_FREE_SHARE`` of physical memory or the memory still available, and all of them by
    ``release_free_areas``.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = max(count * dtype.itemsize, 1)
    with _areas_lock:
        fits = [a for a in _areas if not a.in_use and a.nbytes >= nbytes]
        area = min(fits, key=lambda a: a.nbytes) if fits else None
        if area is None:
            try:
                area = _Area(nbytes)
            except OSError as e:
                raise MemoryError(f"cannot map {nbytes / 2**30:.2f} GiB for a cache in memory "
                                  f"({e.strerror}); --cache disk puts caches in the run folder") from None
            _areas.append(area)
        area.in_use = True
    flat = np.frombuffer(area.map, dtype, count=count)
    weakref.finalize(flat, _free_area, area)
    return flat.reshape(shape)


def _free_area(area):
    with _areas_lock:
        area.in_use = False
        _unmap_free(_keep_free_bytes())


def _keep_free_bytes():
    """Bytes of free mappings to keep: ``KEEP_FREE_SHARE`` of physical memory, and no more than the
    memory the system still has available (so that kept mappings never push it towards swapping)."""
    try:
        share = int(KEEP_FREE_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0
    available = available_bytes()
    return 0 if available is None else min(share, available)


def _unmap_free(keep):
    """Drop free areas, largest first, until those left take at most ``keep`` bytes (lock held)."""
    free = sorted((a for a in _areas if not a.in_use), key=lambda a: a.nbytes, reverse=True)
    total = sum(a.nbytes for a in free)
    for area in free:
        if total <= keep:
            break
        _areas.remove(area)  # unmapped when the last reference goes: the dead array's buffer may hold one
        total -= area.nbytes


def release_free_areas():
    """Unmap every mapping of ``memory_array`` no array uses any more (the end of a run)."""
    with _areas_lock:
        _unmap_free(0)


def free_area_bytes():
    """Bytes of ``memory_array`` mappings kept for reuse."""
    with _areas_lock:
        return sum(a.nbytes for a in _areas if not a.in_use)


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
