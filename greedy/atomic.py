"""Files written whole or not at all: a temporary file in the target's folder, then a rename.

A reader never sees a half-written file under its final name, whatever stops the writer.
"""
import contextlib
import json
import os
import tempfile

import numpy as np


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes files readable by their owner only; a finished file gets the mode open() would give it
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_file(path, mode="w"):
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``, else it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), FILE_MODE)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, default=str))


def save_npz(path, arrays):
    """Write a dict of arrays to ``path`` (npz, readable with ``allow_pickle=False``) atomically."""
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
