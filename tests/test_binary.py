"""Binary training through the one layer-wise loop, the binary model file, options and the CLI."""
import json
import os

import numpy as np
import pytest

from greedy import modelfile
from greedy.errors import CheckpointError, ConfigError
from greedy.methods import METHODS
from greedy.methods.binary import BINARY, BinaryNetwork, BinaryTrainer, parse_arch
from greedy.methods.config import resolve
from greedy.methods.layerwise import train_layerwise
from greedy.monitor import Monitor


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------- training through the layer-wise loop


def tiny_data(rng, n=160, c=3, size=12, k=4):
    y = np.arange(n) % k
    x = rng.integers(0, 60, (n, c, size, size)).astype(np.uint8)
    for cls in range(k):  # a bright bar whose position depends on the class
        x[y == cls, :, 2 * cls + 1:2 * cls + 3, :] += 150
    return x, y


OPTS = dict(seed=0, arch="c16-or2-c16", patch_sample=2000, kmeans_iter=5, shard_size=60, split_images=80,
            epochs=20, final_min_steps=0, levels=3, colour_levels=3, regions=0)


class RecordingTrainer(BinaryTrainer):
    """A BinaryTrainer that keeps the classifier's features of the training set."""

    def features(self, x, which, rng):
        out = super().features(x, which, rng)
        if which == "train":
            self.train_features = out
        return out


def fit_tiny(x, y, eval_set=None, monitor=None, **kw):
    """(BinaryNetwork, training features of the head, summary) of a small run of the one layer-wise loop."""
    config = resolve("binary", "cifar10", 4, dict(OPTS, **kw))
    trainer = RecordingTrainer(config, 4)
    net, info = train_layerwise(trainer, x, y, eval_set, monitor or Monitor(), np.random.default_rng(0))
    return net, trainer.train_features, info


def test_binary_trainer_runs_through_the_layerwise_loop(rng):
    x, y = tiny_data(rng)
    monitor = Monitor()
    net, feats, info = fit_tiny(x[:120], y[:120], (x[120:], y[120:]), monitor, regions=2)
    assert isinstance(net, BinaryNetwork) and METHODS["binary"] is BINARY
    assert [lay["spec"] for lay in info["layers"]] == ["c16-or2", "c16"]
    assert all(lay["budget"] is None and 0 < lay["fraction_on"] < 1 for lay in info["layers"])
    assert [e["phase"] for e in monitor.events].count("layer_done") == 2
    assert 0 <= info["ncm_accuracy"] <= 1 and info["model_bytes"] < info["float32_model_bytes"]
    assert info["filter_bits"] == net.filter_bits() and info["arch"] == "c16-or2-c16"
    assert feats.shape == (120, 2 * 2 * 16) and feats.dtype == np.float32
    assert (net.predict_logits(x[:120]).argmax(1) == y[:120]).mean() > 0.6


def test_binary_method_is_reproducible_and_seeded():
    x, y = tiny_data(np.random.default_rng(3), n=120)

    def logits(seed):
        config = resolve("binary", "cifar10", 4, dict(OPTS, seed=seed))
        net, _ = BINARY.fit(x, y, 4, config, Monitor())
        return net.predict_logits(x), net.image_layer.filters

    (a, fa), (b, fb), (_, fc) = logits(0), logits(0), logits(1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(fa, fc)


def test_network_features_match_training_maps_and_ncm_learns(rng):
    x, y = tiny_data(rng)
    net, feats, _ = fit_tiny(x, y, split_context="position", split_fraction=0.5)
    np.testing.assert_array_equal(net.features(x, batch_size=50), feats)
    assert (net.ncm_scores(feats).argmax(1) == y).mean() > 0.6
    packed, float32 = net.size_bytes()
    assert float32 > packed and net.filter_bits() == 16 * 9 * 3 * 3 + 16 * 9 * (16 + 9)


@pytest.mark.parametrize("context", ["global", "cluster"])
def test_network_other_split_contexts(rng, context):
    x, y = tiny_data(rng, n=80)
    net, feats, _ = fit_tiny(x, y, split_context=context, threshold="half", colour_norm=False, colour_feed=False)
    assert feats.shape == (80, 6 * 6 * 16) and set(np.unique(feats)) <= {0, 1}
    assert net.layers[0].colour_levels is None and not net.image_layer.colour_norm


# ---------------------------------------------------------------- model files


def test_save_load_round_trip(rng, tmp_path):
    x, y = tiny_data(rng, n=80)
    net, _, _ = fit_tiny(x, y, regions=2)
    net.class_names = ["a", "b", "c", "d"]
    path = str(tmp_path / "model.npz")
    net.save(path, {"note": 1})
    loaded = modelfile.load(path)
    _, meta = modelfile.read_npz(path)
    np.testing.assert_array_equal(loaded.forward(x), net.forward(x))
    np.testing.assert_array_equal(loaded.predict_logits(x), net.predict_logits(x))
    np.testing.assert_array_equal(loaded.ncm_scores(loaded.features(x)), net.ncm_scores(net.features(x)))
    assert isinstance(loaded, BinaryNetwork) and meta["format"] == "greedy-binary" and "mean" not in meta
    assert loaded.class_names == ["a", "b", "c", "d"] and meta["extra"] == {"note": 1}
    assert loaded.image_layer.filters.dtype == np.uint64 and loaded.layers[0].filters.shape == (16, 9, 1)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["layer/0/filters"] = arrays["layer/0/filters"][:, :, :0]
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="inconsistent"):
        modelfile.load(path)
    with pytest.raises(CheckpointError, match="not found|not a readable"):
        modelfile.load(str(tmp_path / "missing.npz"))


def damage(arrays, what):
    if what == "filter shape":
        arrays["image/filters"] = arrays["image/filters"][:, :1]
    elif what == "filter dtype":
        arrays["layer/0/filters"] = arrays["layer/0/filters"].astype(np.float64)
    elif what == "NaN thresholds":
        arrays["layer/0/thresholds"] = np.full_like(arrays["layer/0/thresholds"], np.nan)
    elif what == "NaN levels":
        arrays["image/levels"] = np.full_like(arrays["image/levels"], np.nan)
    elif what == "head shape":
        arrays["head/w"] = arrays["head/w"][:-1]
    elif what == "missing array":
        del arrays["layer/0/colour_levels"]


@pytest.mark.parametrize("what,message", [
    ("filter shape", "image filters have shape"), ("filter dtype", "layer 0 filters"),
    ("NaN thresholds", "thresholds hold NaN"), ("NaN levels", "image levels hold NaN"),
    ("head shape", "head weights"), ("missing array", "no array 'layer/0/colour_levels'")])
def test_damaged_model_file_fails_with_checkpoint_error(rng, tmp_path, what, message):
    x, y = tiny_data(rng, n=80)
    net, _, _ = fit_tiny(x, y, regions=2)
    path = str(tmp_path / "model.npz")
    net.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    damage(arrays, what)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=message):
        modelfile.load(path)


def save_the_old_way(net, path, class_names, extra, with_format=True):
    """A model file as BinaryNetwork.save wrote it before model formats had names (loader string)."""
    il = net.image_layer
    meta = {"loader": "greedy.binary:load_binary_model", "arch": net.arch, "in_shape": list(net.in_shape),
            "n_classes": net.n_classes, "regions": net.regions, "class_names": list(class_names),
            "mean": None, "std": None, "image": {"colour_norm": il.colour_norm, "pool": il.pool},
            "layers": [{"n_bits": la.n_bits, "pool": la.pool, "colour_pools": la.colour_pools,
                        "colour_feed": la.colour_levels is not None} for la in net.layers], "extra": extra}
    if with_format:
        meta["format"] = "greedy-binary"
    arrays = {"meta": np.array(json.dumps(meta)), "image/levels": il.levels, "image/filters": il.filters,
              "image/thresholds": il.thresholds, "head/w": net.head_w, "head/b": net.head_b,
              "ncm/means": net.class_means}
    for i, la in enumerate(net.layers):
        arrays[f"layer/{i}/filters"] = la.filters
        arrays[f"layer/{i}/thresholds"] = la.thresholds
        if la.colour_levels is not None:
            arrays[f"layer/{i}/colour_levels"] = la.colour_levels
    np.savez(path, **arrays)


@pytest.mark.parametrize("with_format", [True, False])
def test_model_file_written_the_old_way_loads(rng, tmp_path, with_format):
    x, y = tiny_data(rng, n=80)
    net, _, _ = fit_tiny(x, y, regions=2)
    path = str(tmp_path / "old.npz")
    save_the_old_way(net, path, ["a", "b", "c", "d"], {"note": 1}, with_format)
    loaded = modelfile.load(path)
    assert isinstance(loaded, BinaryNetwork) and loaded.class_names == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(loaded.predict_logits(x), net.predict_logits(x))


# ---------------------------------------------------------------- options and inputs


def test_bad_options():
    with pytest.raises(ConfigError, match="bad token"):
        parse_arch("c16-max2")
    with pytest.raises(ConfigError, match="threshold"):
        BinaryTrainer(resolve("binary", "mnist", 10, {"threshold": "mean"}), 10)
    with pytest.raises(ConfigError, match="on_fraction"):
        BinaryTrainer(resolve("binary", "mnist", 10, {"on_fraction": 1.5}), 10)
    with pytest.raises(ConfigError, match="bad token"):
        parse_arch("c16k4")  # windows are odd, centred on their pixel
    assert parse_arch("c8-or2-c4k5-maj2-c2") == [(8, 3, "or"), (4, 5, "majority"), (2, 3, None)]
    assert BinaryTrainer(resolve("binary", "mnist", 10, {"arch": "c8-or2-c4k5-maj2-c2"}), 10).block_specs() == \
        ["c8-or2", "c4k5-maj2", "c2"]


def test_cli_train_and_evaluate(tmp_path):
    from click.testing import CliRunner

    from greedy.cli import main
    out = str(tmp_path / "run")
    args = ["train", "--method", "binary", "--dataset", "synthetic", "--n-train", "120", "--n-test", "40",
            "--arch", "c8-or2-c8", "--patch-sample", "1000", "--epochs", "2", "--regions", "1", "--out", out, "--quiet",
            "--threads", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["model_bytes"] < summary["float32_model_bytes"] and 0 <= summary["ncm_accuracy"] <= 1
    result = CliRunner().invoke(main, ["evaluate", out, "--dataset", "synthetic", "--n-train", "120",
                                       "--n-test", "40"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["test_accuracy"] == summary["test_accuracy"]


def test_network_rejects_wrong_images(rng):
    x, y = tiny_data(rng, n=40)
    net, _, _ = fit_tiny(x, y)
    with pytest.raises(ConfigError, match="uint8"):
        net.forward(x.astype(np.float32))
    with pytest.raises(ConfigError, match="shape"):
        net.forward(x[:, :, :8, :8])
    with pytest.raises(ConfigError, match="uint8"):
        BINARY.fit(x.astype(np.float32), y, 4, resolve("binary", "cifar10", 4, dict(OPTS)), Monitor())
