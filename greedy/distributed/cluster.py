"""The Dask side: site workers, the plugin that opens each site's shard, and running a function on every site.

Every worker of a site is started with the site's resource (``dask worker --resources "site-3=1"``)
and one thread. ``SitePlugin`` runs on each worker as it starts (again after a restart): it finds
the site whose resource the worker has and opens that site's shard from its folder, memory-mapped,
as ``worker.greedy_site`` (a ``SiteState``). Raw samples therefore never enter Dask's memory: no
key holds them, so nothing (``rebalance``, ``replicate``, retiring a worker) can move them.

``Sites.run`` submits one task per site, pinned by its resource (a restriction that survives a
worker restart, unlike a worker address), and waits for all of them: a worker that dies is
restarted by its nanny and the task runs again; a site with no worker for ``timeout`` seconds
ends the run with a ``SiteLostError`` naming it (the scheduler's ``no-workers-timeout`` is set to
the same value on the local cluster).
"""
import functools
import logging
import os
import time

import numpy as np

from greedy.distributed import require_dask
from greedy.distributed.shard import open_shard
from greedy.errors import GreedyError

POLL_SECONDS = 0.5


class SiteLostError(GreedyError):
    """A site has no worker for longer than the timeout, or its workers keep dying."""


class SiteState:
    """What a worker knows of its site: ``name``, ``resource``, ``path``, the shard ``x`` (N, ...) and
    ``y`` (N,) (read-only memory maps), ``opened`` (every file it opened), ``memo`` (results it keeps
    between tasks; lost with the worker, so every task can recompute what it needs) and ``delay``
    (seconds every task sleeps first: an injected slow site or link latency)."""

    def __init__(self, site, sample_shape, delay=0.0):
        self.name, self.resource, self.path = site["name"], site["resource"], site["path"]
        self.cache_root = site.get("cache") or os.path.join(self.path, "cache")
        self.opened = []
        self.x, self.y = open_shard(self.path, sample_shape)
        self.opened += [os.path.join(self.path, "x.npy"), os.path.join(self.path, "y.npy")]
        self.memo = {}
        self.delay = float(delay)

    def pause(self):
        if self.delay:
            time.sleep(self.delay)

    def cache_path(self, run_key, name):
        folder = os.path.join(self.cache_root, run_key)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, name)

    def load(self, run_key, name):
        """A cache array written on this site (memory-mapped)."""
        path = self.cache_path(run_key, name)
        self.opened.append(path)
        return np.load(path, mmap_mode="r", allow_pickle=False)


@functools.cache
def _plugin_class():
    distributed = require_dask()

    class SitePlugin(distributed.WorkerPlugin):
        """Open the shard of the site whose resource the worker has (none: the worker serves no site)."""
        name = "greedy-sites"

        def __init__(self, sites, sample_shape, delays=None):
            self.sites, self.sample_shape, self.delays = sites, list(sample_shape), dict(delays or {})

        def setup(self, worker):
            tags = set(worker.state.total_resources)
            mine = [s for s in self.sites if s["resource"] in tags]
            worker.greedy_site = None
            if len(mine) == 1:
                worker.greedy_site = SiteState(mine[0], self.sample_shape, self.delays.get(mine[0]["name"], 0.0))

    return SitePlugin


def current_site():
    """The ``SiteState`` of the worker running the calling task."""
    from distributed import get_worker
    site = getattr(get_worker(), "greedy_site", None)
    if site is None:
        raise SiteLostError("a site task ran on a worker that serves no site (its resource matches no site)")
    site.pause()
    return site


def worker_env(threads):
    """Environment of a site worker process: Numba and BLAS use ``threads`` threads."""
    n = str(int(threads))
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "DASK_LOGGING__DISTRIBUTED": "error"}


def start_local_cluster(manifest, threads=1, processes=True, timeout=120.0):
    """A cluster on this machine (127.0.0.1) with one worker per site of ``manifest``: one Dask thread
    and ``threads`` Numba/BLAS threads each, the site's resource, no memory limit. Worker processes
    (``processes``) run under a nanny that restarts them; otherwise the workers share this process."""
    distributed = require_dask()
    import dask
    from distributed import Nanny, Scheduler, SpecCluster, Worker
    workers = {}
    for s in manifest["sites"]:
        options = {"nthreads": 1, "resources": {s["resource"]: 1}, "host": "127.0.0.1"}
        if processes:
            options.update(env=worker_env(threads), memory_limit=0)
        workers[s["name"]] = {"cls": Nanny if processes else Worker, "options": options}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    with dask.config.set({"distributed.scheduler.no-workers-timeout": f"{timeout}s",
                          "distributed.worker.daemon": False}):
        cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)
    return cluster, distributed.Client(cluster)


class Sites:
    """The coordinator's handle on the sites of a manifest through a Dask ``client``.

    ``ledger`` (``greedy.distributed.accounting.Ledger``) counts the bytes of every call.
    ``delays`` {site name: seconds} makes a site slow (tests, latency simulation)."""

    def __init__(self, client, manifest, ledger, timeout=120.0, delays=None):
        self.client, self.manifest, self.ledger, self.timeout = client, manifest, ledger, float(timeout)
        self.sites = manifest["sites"]
        self.names = [s["name"] for s in self.sites]
        client.register_plugin(_plugin_class()(self.sites, manifest["sample_shape"], delays))
        self.wait_for_workers()

    def __len__(self):
        return len(self.sites)

    def workers_per_site(self):
        """{resource: number of workers the scheduler knows with it}."""
        counts = self.client.run_on_scheduler(
            lambda dask_scheduler: {tag: len(ws) for tag, ws in dask_scheduler.resources.items()})
        return {s["resource"]: counts.get(s["resource"], 0) for s in self.sites}

    def wait_for_workers(self):
        """Return once every site has a worker; SiteLostError naming the first missing site after the timeout."""
        start = time.monotonic()
        while True:
            missing = [s for s in self.sites if self.workers_per_site()[s["resource"]] == 0]
            if not missing:
                return
            if time.monotonic() - start > self.timeout:
                raise self._lost(missing[0])
            time.sleep(POLL_SECONDS)

    def _lost(self, site):
        return SiteLostError(f"site {site['name']!r} has had no worker with resource {site['resource']} for "
                             f"{self.timeout:g} s (start one with: dask worker SCHEDULER --nthreads 1 "
                             f"--resources \"{site['resource']}=1\")")

    def run(self, step, fn, args=(), per_site=None):
        """[fn(*args, *per_site[i]) on site i for every site], in site order.

        ``step`` names the call for the ledger; ``args`` go to every site, ``per_site`` (a list, one
        tuple per site) to one. A task whose worker dies runs again on the site's restarted worker."""
        from distributed import TimeoutError as DaskTimeout
        from distributed import wait
        per_site = per_site or [()] * len(self.sites)
        futures = []
        for s, extra in zip(self.sites, per_site):
            futures.append(self.client.submit(fn, *args, *extra, resources={s["resource"]: 1}, pure=False,
                                              key=f"{step}-{s['name']}-{time.monotonic_ns()}"))
        self.ledger.sent(step, [tuple(args) + tuple(extra) for extra in per_site])
        missing_since = {}
        try:
            while True:
                pending = [i for i, f in enumerate(futures) if not f.done()]
                if not pending:
                    break
                try:
                    wait([futures[i] for i in pending], timeout=POLL_SECONDS)
                    continue
                except (DaskTimeout, TimeoutError):
                    pass
                present, now = self.workers_per_site(), time.monotonic()
                for i in pending:
                    s = self.sites[i]
                    if present[s["resource"]]:
                        missing_since.pop(i, None)
                    elif now - missing_since.setdefault(i, now) > self.timeout:
                        raise self._lost(s)
            results = [self._result(f, s, step) for f, s in zip(futures, self.sites)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        self.ledger.received(step, results)
        return results

    def _result(self, future, site, step):
        from distributed import KilledWorker
        from distributed.scheduler import NoValidWorkerError
        try:
            return future.result()
        except NoValidWorkerError:
            raise self._lost(site) from None
        except KilledWorker:
            raise SiteLostError(f"site {site['name']!r}: its workers died repeatedly running {step}") from None

    def opened_files(self):
        """{site name: files its worker opened} (locality checks)."""
        found = self.client.run(lambda dask_worker: (getattr(dask_worker, "greedy_site", None) and
                                                     (dask_worker.greedy_site.name,
                                                      list(dask_worker.greedy_site.opened))))
        return {v[0]: v[1] for v in found.values() if v}


def connect(scheduler, timeout=30.0):
    """A Client of the running Dask cluster at ``scheduler`` (tcp://HOST:PORT); SiteLostError if none answers."""
    distributed = require_dask()
    try:
        return distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise SiteLostError(f"no Dask scheduler answers at {scheduler}: {e}") from None
