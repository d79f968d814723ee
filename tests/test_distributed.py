"""Training on sites (greedy.distributed): shards and manifests, locality, k-means equivalence, a patch-bag run.

Dask clusters here keep their workers in the test process (one per site, 127.0.0.1);
tests/test_distributed_faults.py has the worker processes it kills.
"""
import json

import numpy as np
import pytest

from greedy.cluster.kmeans import KMeans
from greedy.cluster.patches import PatchPreprocessor, sample_patches
from greedy.data import load_dataset
from greedy.distributed.manifest import ManifestError, check_manifest, read_manifest
from greedy.distributed.shard import split_indices, write_shards
from greedy.errors import ConfigError

distributed = pytest.importorskip("distributed")

from greedy.distributed import ops  # noqa: E402
from greedy.distributed.accounting import Ledger  # noqa: E402
from greedy.distributed.cluster import SiteLostError, Sites, start_local_cluster  # noqa: E402
from greedy.distributed.kmeans import init_on_sites, iteration_bound, lloyd_on_sites  # noqa: E402
from greedy.distributed.patchbag import normalizer_on_sites  # noqa: E402


@pytest.fixture(scope="module")
def mnist():
    d = load_dataset("mnist", quiet=True)
    return d._replace(x_train=d.x_train[:3000], y_train=d.y_train[:3000], x_test=d.x_test[:1000],
                      y_test=d.y_test[:1000])


def test_splits_cover_every_sample_once_and_follow_their_rule():
    y = np.repeat(np.arange(10), 100)
    for split in ("iid", "by-class", "dirichlet:0.3"):
        parts = split_indices(y, 4, split, seed=1)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
        assert [list(p) for p in parts] == [list(p) for p in split_indices(y, 4, split, seed=1)]
    assert [len(p) for p in split_indices(y, 4, "iid")] == [250] * 4
    classes = [set(y[p]) for p in split_indices(y, 4, "by-class")]
    assert sum(len(c) for c in classes) == 10 and set().union(*classes) == set(range(10))
    few = [len(set(y[p])) for p in split_indices(y, 4, "dirichlet:0.05", seed=3)]
    assert min(few) < 10  # a small alpha leaves sites without some classes
    for bad in ("dirichlet:0", "dirichlet:x", "by-site"):
        with pytest.raises(ConfigError, match="unknown split"):
            split_indices(y, 4, bad)
    with pytest.raises(ConfigError, match="at most one site per class"):
        split_indices(y, 11, "by-class")


def test_manifest_errors_are_one_line_and_name_the_problem(tmp_path):
    good = {"format": "greedy-sites", "version": 1, "dataset": "mnist", "class_names": ["a", "b"],
            "sample_shape": [1, 4, 4], "dtype": "uint8", "test": "t.npz",
            "sites": [{"name": "s0", "resource": "site-0", "path": "s0"}]}
    assert check_manifest(good)["sites"][0]["path"].endswith("s0")
    for change, message in (({"format": "x"}, "not a greedy sites manifest"), ({"sites": []}, "no sites"),
                            ({"dtype": "int64"}, "dtype"),
                            ({"sites": [{"name": "s0", "resource": "a b", "path": "p"}]}, "resource"),
                            ({"sites": [{"name": "s0", "resource": "r", "path": "p"}] * 2}, "unique"),
                            ({"sites": [{"name": "s0", "resource": "r"}]}, "path")):
        with pytest.raises(ManifestError, match=message) as e:
            check_manifest(dict(good, **change))
        assert "\n" not in str(e.value)
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(ManifestError, match="not JSON"):
        read_manifest(str(tmp_path / "m.json"))


def local_sites(data, dataset, folder, n_sites, split):
    """Yield (Sites, manifest) of ``data`` sharded into ``folder``, on a local cluster whose workers run in
    this process; the cluster closes after the yield (a fixture's body)."""
    write_shards(data, dataset, str(folder), n_sites, split, seed=0)
    manifest = read_manifest(str(folder / "manifest.json"))
    cluster, client = start_local_cluster(manifest, processes=False, timeout=20)
    yield Sites(client, manifest, Ledger(client), timeout=20), manifest
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def sites(mnist, tmp_path_factory):
    yield from local_sites(mnist, "mnist", tmp_path_factory.mktemp("sites"), 3, "dirichlet:0.5")


def _site_patches(manifest, run_key, src, counts):
    """The sites' patch samples, recomputed here from their folders (the oracle)."""
    out = []
    for i, (s, n) in enumerate(zip(manifest["sites"], counts)):
        x = np.load(f"{s['path']}/cache/{run_key}/layer-0.npy")
        rng = np.random.default_rng(np.random.SeedSequence(src["seed"], spawn_key=(i,)))
        out.append(sample_patches(x, n, rng, 3))
    return np.concatenate(out)


def test_kmeans_on_sites_equals_kmeans_on_all_points_and_moves_no_raw_data(sites):
    sites, manifest = sites
    run_key = "kmeans-test"
    normalizer, classes, sizes = normalizer_on_sites(sites, 10)
    sites.run("normalise", ops.normalise, (run_key, normalizer.mean, normalizer.std))
    sites.ledger.close_phase("setup")
    counts = [3000, 2000, 4000]
    src = {"run": run_key, "layer": 0, "size": 3, "seed": 7}
    patches = _site_patches(manifest, run_key, src, counts)
    pre = PatchPreprocessor(1, 3, remove_mean=False, n_components=8).fit(patches)
    k, d = 16, pre.A_.shape[1]
    init, variance = init_on_sites(sites, src, pre, counts, k, 5, seed=3)
    sites.ledger.close_phase("init")
    per_iteration = []
    centers, inertia, n_iter, history = lloyd_on_sites(
        sites, src, counts, init, 30, 1e-4 * variance,
        on_iteration=lambda it, inertia, shift: per_iteration.append(sites.ledger.close_phase("lloyd")))
    points = pre.transform(patches)
    single = KMeans(k, init=init, max_iter=30, tol=1e-4).fit(points)
    assert n_iter == single.n_iter_ and n_iter > 2
    np.testing.assert_allclose(centers, single.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(history, single.inertia_history_, rtol=1e-5)
    to_sites, back = iteration_bound(k, d, len(sites))
    assert [rec["rounds"] for rec in per_iteration] == [2] + [1] * (n_iter - 1)  # the first has pass 0 too
    for rec in per_iteration:
        assert rec["between_workers_bytes"] == 0
        assert 0 < rec["to_coordinator_bytes"] <= rec["rounds"] * back
        assert 0 < rec["to_sites_bytes"] <= rec["rounds"] * to_sites
    assert all(p["between_workers_bytes"] == 0 for p in sites.ledger.phases.values())
    for name, files in sites.opened_files().items():
        folder = next(s["path"] for s in manifest["sites"] if s["name"] == name)
        assert files and all(f.startswith(folder + "/") for f in files)
    assert set(sites.opened_files()) == {"site-0", "site-1", "site-2"}


def test_a_slow_site_changes_nothing(sites):
    sites, manifest = sites
    src = {"run": "kmeans-test", "layer": 0, "size": 3, "seed": 7}
    counts = [3000, 2000, 4000]
    rng = np.random.default_rng(0)
    init = rng.standard_normal((8, 8)).astype(np.float32)
    fast = lloyd_on_sites(sites, src, counts, init, 4, 0.0)
    sites.client.run(lambda dask_worker: setattr(dask_worker.greedy_site, "delay", 0.3)
                     if dask_worker.greedy_site.name == "site-1" else None)
    try:
        slow = lloyd_on_sites(sites, src, counts, init, 4, 0.0)
    finally:
        sites.client.run(lambda dask_worker: setattr(dask_worker.greedy_site, "delay", 0.0))
    assert np.array_equal(fast[0], slow[0]) and fast[1:3] == slow[1:3]


def test_a_site_without_workers_ends_after_the_timeout_naming_it(sites):
    sites_, manifest = sites
    more = dict(manifest, sites=manifest["sites"] + [dict(manifest["sites"][0], name="site-9", resource="site-9")])
    import time
    t = time.monotonic()
    with pytest.raises(SiteLostError, match="site 'site-9' has had no worker with resource site-9 for 2 s") as e:
        Sites(sites_.client, more, Ledger(sites_.client), timeout=2)
    assert "\n" not in str(e.value) and time.monotonic() - t < 10


def test_patchbag_on_sites_is_within_one_point_of_one_process(mnist, tmp_path):
    from greedy.distributed.train import run_sites
    from greedy.training import run_training
    write_shards(mnist, "mnist", str(tmp_path / "sites"), 2, "iid", seed=0)
    options = {"clusters": 64, "patch_sample": 20000, "layer_budget": "2e", "final_epochs": 2, "seed": 0}
    dist = run_sites("patchbag", str(tmp_path / "sites" / "manifest.json"), options, str(tmp_path / "dist"),
                     verbose=False, processes=False, timeout=30)
    one = run_training("patchbag", mnist, "mnist", options, str(tmp_path / "one"), 2, verbose=False)
    assert abs(dist["test_accuracy"] - one["test_accuracy"]) <= 0.01, (dist["test_accuracy"], one["test_accuracy"])
    assert dist["test_accuracy"] > 0.9
    traffic = dist["traffic"]
    assert {"normalise", "patch_moments", "kmeans_init", "kmeans_lloyd", "encode", "propagate", "features"} <= set(traffic)
    assert dist["traffic_total"]["between_workers_bytes"] == 0
    assert dist["raw_bytes_total"] >= 3000 * 784
    events = [json.loads(line) for line in (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()]
    assert sum(e["phase"] == "traffic" for e in events) >= 7
    from greedy.modelfile import load
    model = load(str(tmp_path / "dist" / "model.npz"))
    assert type(model) is type(load(str(tmp_path / "one" / "model.npz")))


def test_binary_on_sites_is_within_one_point_of_one_process_and_keeps_the_data_on_the_sites(mnist, tmp_path):
    from click.testing import CliRunner
    from greedy.cli import main
    from greedy.distributed.train import run_sites
    from greedy.methods.binary import BinaryNetwork
    from greedy.modelfile import load
    from greedy.training import run_training
    write_shards(mnist, "mnist", str(tmp_path / "sites"), 2, "iid", seed=0)
    manifest = read_manifest(str(tmp_path / "sites" / "manifest.json"))
    options = {"seed": 0}
    dist = run_sites("binary", str(tmp_path / "sites" / "manifest.json"), options, str(tmp_path / "dist"),
                     verbose=False, processes=False, timeout=30)
    one = run_training("binary", mnist, "mnist", options, str(tmp_path / "one"), 2, verbose=False)
    assert abs(dist["test_accuracy"] - one["test_accuracy"]) <= 0.01, (dist["test_accuracy"], one["test_accuracy"])
    assert dist["test_accuracy"] > 0.9 and abs(dist["ncm_accuracy"] - one["ncm_accuracy"]) <= 0.02
    traffic = dist["traffic"]
    assert {"levels", "kmeans_init", "kmeans_lloyd", "split_sums", "thresholds", "propagate", "features"} <= set(traffic)
    assert all(p["between_workers_bytes"] == 0 for p in traffic.values())
    for phase in ("levels", "kmeans_init", "kmeans_lloyd", "split_sums", "thresholds", "features"):
        assert traffic[phase]["to_coordinator_bytes"] > 0, phase
    assert traffic["propagate"]["results_bytes"] < 1000  # the bit maps stay on the sites
    # per image uint8 counts per region and filter and a label; per site class sums and the regions' areas:
    # not the 14x14 bit maps
    assert traffic["features"]["results_bytes"] < 3000 * (16 * 256 + 8) + 2 * (10 * 4096 * 8 + 4096 * 4 + 1000)
    for site in manifest["sites"]:  # each worker opened its own shard and caches only
        files = dist["site_files"][site["name"]]
        assert files and all(f.startswith(site["path"] + "/") for f in files)
        assert any(f.endswith("bits-2.npy") for f in files)  # the last bit map was written and read on the site
    model = load(str(tmp_path / "dist" / "model.npz"))
    assert type(model) is BinaryNetwork is type(load(str(tmp_path / "one" / "model.npz")))
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "dist")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["test_accuracy"] == dist["test_accuracy"]


def test_patch_moments_fit_the_preprocessor_a_sample_fits(mnist):
    x = mnist.x_train[:200].astype(np.float32) / 255
    patches = sample_patches(x, 5000, np.random.default_rng(0), 3).astype(np.float64)
    for remove_mean in (False, True):
        pre = PatchPreprocessor(1, 3, remove_mean=remove_mean, n_components=8).fit(patches)
        moments = PatchPreprocessor(1, 3, remove_mean=remove_mean, n_components=8).fit_moments(
            patches.mean(axis=0), np.cov(patches, rowvar=False))
        z, zm = pre.transform(patches), moments.transform(patches)
        np.testing.assert_allclose(np.abs(z), np.abs(zm), rtol=1e-3, atol=1e-3)  # eigenvectors up to sign
    with pytest.raises(ConfigError, match="patch moments"):
        PatchPreprocessor(1, 3).fit_moments(np.zeros(9), np.zeros((8, 8)))


def test_resume_of_a_run_on_sites_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner
    from greedy.cli import main
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {"method": "binary", "dataset": "mnist", "seed": 0, "threads": 1, "data_dir": None, "n_train": 300,
         "n_test": 100, "options": {}, "sites": str(tmp_path / "manifest.json"), "scheduler": None,
         "share": "codes"}))
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code != 0
    line = result.output.strip()
    assert "\n" not in line and "sites" in line and "no checkpoint" in line, result.output


def test_without_dask_training_on_sites_is_a_one_line_error_with_the_install_command(monkeypatch):
    import sys
    from greedy.distributed import require_dask
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ConfigError, match=r'pip install "greedy\[distributed\]"'):
        require_dask()


def test_the_shard_command_writes_sites_a_test_split_and_a_manifest(tmp_path):
    from click.testing import CliRunner
    from greedy.cli import main
    out = tmp_path / "s"
    result = CliRunner().invoke(main, ["shard", "--dataset", "mnist", "--n-train", "300", "--n-test", "50",
                                       "--sites", "3", "--split", "by-class", "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = read_manifest(str(out / "manifest.json"))
    assert [s["samples"] for s in m["sites"]] and sum(s["samples"] for s in m["sites"]) == 300
    assert np.load(out / "test.npz")["x"].shape == (50, 1, 28, 28)
    labels = [set(np.load(out / f"site-{i}" / "y.npy")) for i in range(3)]
    assert not labels[0] & labels[1] and not labels[1] & labels[2]
    result = CliRunner().invoke(main, ["train", "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2 and "go with --sites" in result.output


@pytest.mark.parametrize("option,message", [("mirrors", "--mirrors adds mirror images to one training set"),
                                            ("final_mix", "--final-mix trains the last block")])
def test_one_process_options_on_sites_are_refused_in_one_line_before_the_run_folder(mnist, tmp_path, option,
                                                                                   message):
    from greedy.distributed.train import run_sites
    write_shards(mnist, "mnist", str(tmp_path / "sites"), 2, "iid", seed=0)
    with pytest.raises(ConfigError, match=message) as e:
        run_sites("patchbag", str(tmp_path / "sites" / "manifest.json"), {option: True}, str(tmp_path / "dist"),
                  verbose=False, processes=False, timeout=30)
    assert "\n" not in str(e.value) and not (tmp_path / "dist").exists()
