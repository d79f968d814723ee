"""Patch bags on sites for sequences: logs (one system per site) and float series (greedy.distributed).

Dask clusters here keep their workers in the test process (one per site, 127.0.0.1).
"""
import json

import numpy as np
import pytest

from greedy.cluster.bytecodes import bucket_centroids, hashed_codes
from greedy.cluster.patches import PatchPreprocessor, sample_patches
from greedy.data import load_dataset
from greedy.distributed.manifest import read_manifest
from greedy.distributed.shard import write_shards
from greedy.errors import ConfigError
from greedy.methods.blocks import propagate
from greedy.nn.layers1d import ByteEmbedding
from greedy.nn.model import Sequential

distributed = pytest.importorskip("distributed")

from greedy.distributed import ops, sequence_ops  # noqa: E402
from greedy.distributed.patchbag import normalizer_on_sites  # noqa: E402
from greedy.distributed.train import run_sites  # noqa: E402
from test_distributed import local_sites  # noqa: E402

TEXT_OPTIONS = {"arch": "emb16-c64k5-relu-max4-c64k5-relu-max2", "clusters": 64, "patch_sample": 20000,
                "byte_buckets": 2048, "layer_budget": "2e", "final_epochs": 2, "seed": 0}
SERIES_OPTIONS = {"arch": "c64k5-relu-max2-c64k5-relu-max2", "clusters": 64, "patch_sample": 20000,
                  "layer_budget": "2e", "final_epochs": 3, "seed": 0}


def _slice(name, n_train, n_test):
    d = load_dataset(name, quiet=True)
    rng = np.random.default_rng(0)
    tr, te = (np.sort(rng.permutation(n)[:m]) for n, m in ((len(d.y_train), n_train), (len(d.y_test), n_test)))
    return d._replace(x_train=d.x_train[tr], y_train=d.y_train[tr], x_test=d.x_test[te], y_test=d.y_test[te])


@pytest.fixture(scope="module")
def logs():
    return _slice("loghub:system", 1600, 400)


@pytest.fixture(scope="module")
def log_sites(logs, tmp_path_factory):
    yield from local_sites(logs, "loghub:system", tmp_path_factory.mktemp("log-sites"), 4, "by-class")


def _result_arrays(obj):
    """Every numpy array in a site's result (through dicts, lists and sparse matrices)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if hasattr(obj, "indptr"):
        return [obj.data, obj.indices, obj.indptr]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in _result_arrays(v)]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in _result_arrays(v)]
    return []


def test_hashed_byte_codes_on_sites_equal_the_codes_of_all_sequences_in_one_place(logs, log_sites):
    sites, manifest = log_sites
    run_key = "bytes-test"
    normalizer, classes, sizes = normalizer_on_sites(sites, logs.n_classes)
    assert classes.sum() == len(logs.y_train) and sum(sizes) == len(logs.y_train)
    identity = [np.zeros(1, np.float32), np.full(1, 1 / 255, np.float32)]  # bytes are not standardised
    sites.run("normalise", ops.normalise, (run_key, *identity))
    embedding = ByteEmbedding(16)
    embedding.build((1, 256), np.random.default_rng(1))
    sites.run("embed", sequence_ops.embed, (run_key, 0, embedding))
    x = np.concatenate([np.load(f"{s['path']}/x.npy") for s in manifest["sites"]])  # the oracle's copy
    y = np.concatenate([np.load(f"{s['path']}/y.npy") for s in manifest["sites"]])
    embedded = propagate(Sequential([embedding]), x.astype(np.float32))
    pre = PatchPreprocessor(16, 5, ndim=1, n_components=16).fit(
        sample_patches(embedded, 5000, np.random.default_rng(0), 5))
    parts = sites.run("byte_sums", sequence_ops.byte_sums, (run_key, 0, pre, 5, 2048))
    centers, counts = sequence_ops.merge_byte_sums(parts, 2048, pre.A_.shape[1])
    one_centers, one_counts = bucket_centroids(x, embedded, pre, 5, 2048)
    assert np.array_equal(counts, one_counts) and counts.sum() == x.size
    np.testing.assert_allclose(centers, one_centers, rtol=1e-5, atol=1e-6)
    codes = sites.run("encode", sequence_ops.byte_codes, (run_key, 0, 5, 2048, 2, "codes", 100, logs.n_classes, 0))
    one = hashed_codes(x, 5, 2048, 2)
    for r in range(2):
        site_part = np.concatenate([c["parts"][r].toarray() for c in codes])
        assert np.array_equal(site_part, one.parts[r].toarray())
    assert np.array_equal(np.concatenate([c["y"] for c in codes]), y)
    sites.ledger.close_phase("bytes")
    assert all(p["between_workers_bytes"] == 0 for p in sites.ledger.phases.values())
    for result in parts + codes:  # counts and sums come back, never a byte sequence
        assert not any(a.dtype == np.uint8 or (a.ndim >= 2 and a.shape[-1] == x.shape[-1])
                       for a in _result_arrays(result))
    for name, files in sites.opened_files().items():
        folder = next(s["path"] for s in manifest["sites"] if s["name"] == name)
        assert files and all(f.startswith(folder + "/") for f in files)


def test_kmeans_on_the_sites_windows_equals_kmeans_on_all_windows(log_sites):
    from greedy.cluster.kmeans import KMeans
    from greedy.distributed.kmeans import init_on_sites, lloyd_on_sites
    sites, manifest = log_sites
    run_key = "windows-test"
    sites.run("normalise", ops.normalise, (run_key, np.zeros(1, np.float32), np.full(1, 1 / 255, np.float32)))
    counts = [1500, 1000, 2000, 500]
    src = {"run": run_key, "layer": 0, "size": 5, "seed": 7}
    windows = np.concatenate([  # the sites' window samples, recomputed here from their folders (the oracle)
        sample_patches(np.load(f"{s['path']}/x.npy").astype(np.float32), n,
                       np.random.default_rng(np.random.SeedSequence(7, spawn_key=(i,))), 5)
        for i, (s, n) in enumerate(zip(manifest["sites"], counts))])
    pre = PatchPreprocessor(1, 5, remove_mean=False, n_components=4, ndim=1).fit(windows)
    init, variance = init_on_sites(sites, src, pre, counts, 12, 5, seed=3)
    centers, inertia, n_iter, history = lloyd_on_sites(sites, src, counts, init, 30, 1e-4 * variance)
    single = KMeans(12, init=init, max_iter=30, tol=1e-4).fit(pre.transform(windows))
    assert n_iter == single.n_iter_ and n_iter > 1
    np.testing.assert_allclose(centers, single.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(history, single.inertia_history_, rtol=1e-5)


def test_logs_on_sites_one_system_each_train_close_to_one_process_and_stay_on_their_sites(logs, tmp_path):
    from click.testing import CliRunner
    from greedy.cli import main
    from greedy.modelfile import load
    from greedy.training import run_training
    write_shards(logs, "loghub:system", str(tmp_path / "sites"), 4, "by-class", seed=0)
    manifest = read_manifest(str(tmp_path / "sites" / "manifest.json"))
    assert all(sum(c > 0 for c in s["classes"]) == 4 for s in manifest["sites"])  # 16 systems, 4 a site
    dist = run_sites("patchbag", str(tmp_path / "sites" / "manifest.json"), TEXT_OPTIONS, str(tmp_path / "dist"),
                     verbose=False, processes=False, timeout=30)
    one = run_training("patchbag", logs, "loghub:system", TEXT_OPTIONS, str(tmp_path / "one"), 2, verbose=False)
    assert dist["test_accuracy"] > 0.8  # chance is 1/16
    assert abs(dist["test_accuracy"] - one["test_accuracy"]) <= 0.03, (dist["test_accuracy"], one["test_accuracy"])
    traffic = dist["traffic"]
    assert {"normalise", "embed", "patch_moments", "byte_sums", "kmeans_init", "kmeans_lloyd", "encode",
            "propagate", "features"} <= set(traffic)
    assert all(p["between_workers_bytes"] == 0 for p in traffic.values())
    assert traffic["embed"]["results_bytes"] < 1000 and traffic["propagate"]["results_bytes"] < 1000
    assert dist["raw_bytes_total"] >= 1600 * 256
    for site in manifest["sites"]:
        files = dist["site_files"][site["name"]]
        assert files and all(f.startswith(site["path"] + "/") for f in files)
        assert any(f.endswith("emb-0.npy") for f in files)  # the embedded bytes were written and read there
    model = load(str(tmp_path / "dist" / "model.npz"))
    assert type(model) is type(load(str(tmp_path / "one" / "model.npz")))
    assert model.model.spec() == load(str(tmp_path / "one" / "model.npz")).model.spec()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "dist")])  # the first n_test of loghub:system
    assert result.exit_code == 0, result.output
    full = load_dataset("loghub:system", quiet=True)
    expected = np.mean(model.predict_logits(full.x_test[:400]).argmax(1) == full.y_test[:400])
    assert json.loads(result.output.strip().splitlines()[-1])["test_accuracy"] == pytest.approx(expected)


def test_series_on_two_sites_train_close_to_one_process(tmp_path):
    from greedy.estimator import load as load_estimator
    from greedy.training import run_training
    series = _slice("ucr:FordA", 800, 400)
    write_shards(series, "ucr:FordA", str(tmp_path / "sites"), 2, "iid", seed=0)
    dist = run_sites("patchbag", str(tmp_path / "sites" / "manifest.json"), SERIES_OPTIONS, str(tmp_path / "dist"),
                     verbose=False, processes=False, timeout=30)
    one = run_training("patchbag", series, "ucr:FordA", SERIES_OPTIONS, str(tmp_path / "one"), 2, verbose=False)
    assert dist["test_accuracy"] > 0.8  # chance is 1/2
    assert abs(dist["test_accuracy"] - one["test_accuracy"]) <= 0.03, (dist["test_accuracy"], one["test_accuracy"])
    assert dist["traffic_total"]["between_workers_bytes"] == 0
    assert dist["traffic"]["propagate"]["results_bytes"] < 1000
    clf = load_estimator(str(tmp_path / "dist" / "model.npz"))  # the estimator reads a model trained on sites
    assert clf.predict_proba(series.x_test).shape == (len(series.x_test), 2)
    assert clf.score(series.x_test, series.y_test) == pytest.approx(dist["test_accuracy"])


def test_patchbag_on_sites_refuses_bytes_without_an_embedding_in_one_line(logs, tmp_path):
    write_shards(logs, "loghub:system", str(tmp_path / "sites"), 2, "iid", seed=0)
    with pytest.raises(ConfigError, match="byte embedding first") as e:
        run_sites("patchbag", str(tmp_path / "sites" / "manifest.json"),
                  dict(TEXT_OPTIONS, arch="c64k5-relu-max4"), str(tmp_path / "dist"), verbose=False,
                  processes=False, timeout=30)
    assert "\n" not in str(e.value)


def test_train_on_sites_takes_the_manifests_dataset_and_refuses_another_in_one_line(logs, tmp_path):
    from click.testing import CliRunner
    from greedy.cli import main
    write_shards(logs, "loghub:system", str(tmp_path / "sites"), 2, "iid", seed=0)
    result = CliRunner().invoke(main, ["train", "--method", "patchbag", "--dataset", "loghub:event",
                                       "--sites", str(tmp_path / "sites" / "manifest.json")])
    assert result.exit_code != 0
    line = result.output.strip()
    assert "\n" not in line and "loghub:event" in line and "loghub:system" in line, result.output


def test_binary_on_sites_refuses_sequences_in_one_line_before_the_run_folder(logs, tmp_path):
    write_shards(logs, "loghub:system", str(tmp_path / "sites"), 2, "iid", seed=0)
    with pytest.raises(ConfigError, match="holds sequences, which train in one process") as e:
        run_sites("binary", str(tmp_path / "sites" / "manifest.json"), {}, str(tmp_path / "dist"), verbose=False,
                  processes=False, timeout=30)
    assert "\n" not in str(e.value) and not (tmp_path / "dist").exists()


def test_code_images_on_sites_is_refused_in_one_line_before_the_run_folder(logs, tmp_path):
    write_shards(logs, "loghub:system", str(tmp_path / "sites"), 2, "iid", seed=0)
    with pytest.raises(ConfigError, match="--code-images draws from one training set") as e:
        run_sites("patchbag", str(tmp_path / "sites" / "manifest.json"), {"code_images": 100},
                  str(tmp_path / "dist"), verbose=False, processes=False, timeout=30)
    assert "\n" not in str(e.value) and not (tmp_path / "dist").exists()
