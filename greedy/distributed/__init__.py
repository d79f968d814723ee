"""Training across sites with Dask distributed: every site's data stays on its own machines.

A *site* holds a shard of the training data in a folder on its machines (``shard``, ``manifest``);
its Dask workers carry the resource tag of the site and open that folder themselves
(``cluster.SitePlugin``), so raw samples never become Dask keys. The coordinator (this process)
sends each site a function of ``ops`` with small arguments and receives small results: k-means
sums and counts, patch moments, codes or prototypes, class sums, histograms, pooled features.
``patchbag`` and ``binary`` are the drivers of the two methods; ``train.run_sites`` writes the
usual run folder; ``accounting`` counts the bytes each phase moves.

Dask is an optional dependency: ``pip install "greedy[distributed]"``.
"""
from greedy.errors import ConfigError

INSTALL_HINT = 'pip install "greedy[distributed]"'


def require_dask():
    """Import ``distributed``; a one-line ConfigError naming the extra when it is missing."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"training on sites needs Dask distributed: {INSTALL_HINT}") from None
    return distributed
