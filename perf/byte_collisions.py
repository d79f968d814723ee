"""How often hashed byte k-grams share a bucket (the codes of a patch-bag text network's first block).

``python perf/byte_collisions.py event`` prints, for the training lines of ``loghub:event`` (or
``system``), the number of distinct byte 5-grams and, per bucket count, the share of 5-grams and
of windows whose bucket holds another 5-gram too. Windows of padding only are left out.
"""
import sys

import numpy as np

from greedy.cluster.bytecodes import window_hashes
from greedy.data.loghub import load_loghub

BUCKETS = (2048, 8192, 32768, 131072)


def collisions(x, size=5, buckets=BUCKETS, chunk=4096):
    """Rows (buckets, grams per used bucket, share of grams sharing a bucket, share of windows whose
    bucket is shared) for byte sequences x (N, 1, L) uint8, and the number of distinct grams.

    Distinct grams are told apart by their 64-bit FNV-1a hash (``window_hashes``)."""
    h = np.concatenate([window_hashes(x[i:i + chunk], size).reshape(-1) for i in range(0, len(x), chunk)])
    half = size // 2
    padded = np.pad(x[:, 0], ((0, 0), (half, half)))
    text = np.lib.stride_tricks.sliding_window_view(padded, size, axis=1).any(axis=2).reshape(-1)
    grams, occurrences = np.unique(h[text], return_counts=True)
    rows = []
    for b in buckets:
        used, which, per_bucket = np.unique(grams % np.uint64(b), return_inverse=True, return_counts=True)
        shared = per_bucket[which] > 1
        rows.append((b, len(grams) / len(used), shared.mean(),
                     (occurrences * shared).sum() / occurrences.sum()))
    return rows, len(grams), int(text.sum())


if __name__ == "__main__":
    task = sys.argv[1] if len(sys.argv) > 1 else "event"
    rows, n_grams, n_windows = collisions(load_loghub(task).x_train)
    print(f"loghub:{task}: {n_windows} windows over text, {n_grams} distinct 5-grams")
    for b, per, shared, windows in rows:
        print(f"{b:7d} buckets: {per:6.2f} 5-grams per used bucket, {shared:6.1%} of 5-grams and "
              f"{windows:6.1%} of windows share a bucket")
