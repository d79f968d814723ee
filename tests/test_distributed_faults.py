"""Faults on sites: worker processes killed mid-task are restarted and the result is unchanged; a site gone
for good ends the run with a one-line error naming it. Two site worker processes under nannies (127.0.0.1)."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from greedy.cluster.patches import PatchPreprocessor
from greedy.data import load_dataset
from greedy.distributed.manifest import read_manifest
from greedy.distributed.shard import write_shards
from greedy.methods.blocks import propagate
from greedy.nn.model import Sequential

distributed = pytest.importorskip("distributed")

from greedy.distributed import ops  # noqa: E402
from greedy.distributed.accounting import Ledger  # noqa: E402
from greedy.distributed.cluster import SiteLostError, Sites, start_local_cluster  # noqa: E402
from greedy.distributed.kmeans import init_on_sites, lloyd_on_sites  # noqa: E402
from greedy.distributed.patchbag import normalizer_on_sites  # noqa: E402

RUN = "faults"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    d = load_dataset("mnist", quiet=True)
    d = d._replace(x_train=d.x_train[:1200], y_train=d.y_train[:1200], x_test=d.x_test[:10], y_test=d.y_test[:10])
    folder = tmp_path_factory.mktemp("sites")
    write_shards(d, "mnist", str(folder), 2, "iid", seed=0)
    manifest = read_manifest(str(folder / "manifest.json"))
    cluster, client = start_local_cluster(manifest, processes=True, timeout=60)
    sites = Sites(client, manifest, Ledger(client), timeout=60)
    normalizer = normalizer_on_sites(sites, 10)[0]
    sites.run("normalise", ops.normalise, (RUN, normalizer.mean, normalizer.std))
    yield sites, manifest
    client.close()
    cluster.close()


def _pids(client):
    """{site name: pid of its worker process}."""
    found = client.run(lambda dask_worker: (dask_worker.name, os.getpid()))
    return dict(found.values())


def _slow(client, name, seconds):
    client.run(lambda dask_worker: setattr(dask_worker.greedy_site, "delay", seconds)
               if dask_worker.greedy_site.name == name else None)


def _kill_later(pid, seconds):
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def test_a_worker_killed_mid_iteration_is_restarted_and_kmeans_ends_the_same(sites):
    sites, manifest = sites
    src, counts = {"run": RUN, "layer": 0, "size": 3, "seed": 5}, [3000, 3000]
    identity = PatchPreprocessor(1, 3, remove_mean=False, whiten=None).fit(np.zeros((2, 9), np.float32))
    init, _ = init_on_sites(sites, src, identity, counts, 8, 3, seed=1)
    clean = lloyd_on_sites(sites, src, counts, init, 5, 0.0)
    before = _pids(sites.client)
    _slow(sites.client, "site-1", 2.0)
    killed = []

    def kill_during_next_pass(it, inertia, shift):
        if it == 2:
            killed.append(_kill_later(before["site-1"], 0.7))

    faulty = lloyd_on_sites(sites, src, counts, init, 5, 0.0, on_iteration=kill_during_next_pass)
    assert killed and _pids(sites.client)["site-1"] != before["site-1"]  # restarted by its nanny
    assert np.array_equal(clean[0], faulty[0]) and clean[1:3] == faulty[1:3]


def test_a_worker_killed_mid_propagation_is_restarted_and_writes_the_same_output(sites):
    sites, manifest = sites
    block = Sequential.from_spec("c8k3-relu-max2").build((1, 28, 28), np.random.default_rng(0))
    site0 = manifest["sites"][0]["path"]
    with open(f"{site0}/cache/{RUN}/layer-1.npy.part.npy", "wb") as f:
        f.write(b"a write cut short")
    pid = _pids(sites.client)["site-0"]
    _slow(sites.client, "site-0", 2.0)
    _kill_later(pid, 0.7)
    shapes = sites.run("propagate", ops.propagate_block, (RUN, 0, block, 0))
    assert _pids(sites.client)["site-0"] != pid and shapes[0] == (600, 8, 14, 14)
    for s in manifest["sites"]:
        x = np.load(f"{s['path']}/cache/{RUN}/layer-0.npy")
        np.testing.assert_allclose(np.load(f"{s['path']}/cache/{RUN}/layer-1.npy"), propagate(block, x), atol=1e-6)


def test_a_site_gone_for_good_ends_the_run_after_the_timeout_naming_it(sites):
    sites, manifest = sites
    names = sites.client.run_on_scheduler(lambda dask_scheduler: {w.name: a for a, w in dask_scheduler.workers.items()})
    addr = names["site-1"]
    sites.client.retire_workers([addr], close_workers=True, remove=True)
    sites.timeout = 3.0
    t = time.monotonic()
    with pytest.raises(SiteLostError, match="site 'site-1' has had no worker with resource site-1 for 3 s") as e:
        sites.run("propagate", ops.input_moments, (10,))
    assert "\n" not in str(e.value) and time.monotonic() - t < 15
