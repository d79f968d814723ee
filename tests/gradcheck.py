"""Central finite differences shared by the gradient tests (float64)."""
import numpy as np


def numeric_grad(loss, a, h=1e-6):
    """Central finite differences of the scalar ``loss()`` with respect to every entry of ``a`` (changed in place)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = loss()
        flat[i] = old - h
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return g


def rel_error(a, b):
    """Largest absolute difference relative to the largest magnitude of a or b."""
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-12)
