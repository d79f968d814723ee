"""The layer-wise loop, budgets, and every layer-wise method through the CLI on small synthetic data."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from greedy.cli import main
from greedy.errors import ConfigError
from greedy.methods import blocks, classifier
from greedy.methods.blocks import blocks_from_widths, parse_budget, propagate, split_blocks
from greedy.methods.classifier import classifier_layers, column_mean_std, standardize, train_classifier
from greedy.nn.model import Sequential


def test_split_blocks_and_widths():
    assert split_blocks("c8k3-bn-relu-c16k3-relu-max2") == ["c8k3-bn-relu", "c16k3-relu-max2"]
    assert blocks_from_widths(3, 16, widen_after=2) == ["c16k3-bn-relu-max2", "c16k3-bn-relu-max2",
                                                         "c32k3-bn-relu-max2"]
    with pytest.raises(ConfigError, match="conv blocks only"):
        split_blocks("c8k3-relu-fc10")
    with pytest.raises(ConfigError, match="start with a conv"):
        split_blocks("relu-c8k3")


def test_parse_budget_forms():
    assert parse_budget("2", 3) == [(2.0, "e")] * 3
    assert parse_budget("90s", 2) == [(90.0, "s")] * 2
    assert parse_budget("4e*0.5", 3) == [(4.0, "e"), (2.0, "e"), (1.0, "e")]
    assert parse_budget("3e,1e", 3) == [(3.0, "e"), (1.0, "e"), (1.0, "e")]
    for bad in ("lots", "0e", "-1e"):
        with pytest.raises(ConfigError):
            parse_budget(bad, 2)


def test_propagate_streams_and_switches_to_float16_for_large_caches(monkeypatch):
    block = Sequential.from_spec("c4k3-relu-max2").build((2, 8, 8), 0)
    x = np.random.default_rng(0).standard_normal((50, 2, 8, 8)).astype(np.float32)
    full = block.forward(x)
    out = propagate(block, x, batch_size=7)
    assert out.dtype == np.float32 and np.allclose(out, full, atol=1e-6)
    monkeypatch.setattr(blocks, "CACHE_FLOAT32_BYTES", 100)
    small = propagate(block, x, batch_size=7)
    assert small.dtype == np.float16 and np.allclose(small, full, atol=1e-2)


def test_propagate_sizes_its_batches_by_bytes(monkeypatch):
    block = Sequential.from_spec("c4k3-relu-max2").build((2, 8, 8), 0)
    x = np.random.default_rng(0).standard_normal((50, 2, 8, 8)).astype(np.float32)
    seen = []
    predict_batch = block.predict_batch
    monkeypatch.setattr(block, "predict_batch", lambda xb, out=None: seen.append(len(xb)) or predict_batch(xb, out))
    # a row is 2 x 8 x 8 float32 in (512 bytes), 4 x 4 x 4 out: 5,000 bytes make 9 rows a batch
    monkeypatch.setattr(blocks, "PROPAGATE_BATCH_BYTES", 5000)
    out = propagate(block, x)
    assert seen == [1] + [9] * 5 + [5] and np.array_equal(out, propagate(block, x, batch_size=50))
    monkeypatch.setattr(blocks, "PROPAGATE_BATCH_BYTES", 10)
    seen.clear()
    propagate(block, x[:3])
    assert seen == [1, 1, 1, 1]


def test_linear_classifier_folds_its_standardisation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    f = rng.standard_normal((600, 5)) * [1, 10, 100, 0.1, 1] + 50
    f[:, 0] += 3 * y
    f = f.astype(np.float32)
    (layer,), acc = train_classifier(f[:500], y[:500], f[500:], y[500:], 3, rng)
    raw_acc = float((layer.forward(f[500:]).argmax(1) == y[500:]).mean())
    assert raw_acc == pytest.approx(acc)
    assert acc > 0.8


def test_classifier_with_hidden_layers_folds_standardisation_into_its_first_layer():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    f = rng.standard_normal((600, 6)) * [1, 10, 100, 0.1, 1, 1] + 50
    f[:, 0] += 3 * y
    f[:, 1] += 20 * (y == 2)
    f = f.astype(np.float32)
    layers, acc = train_classifier(f[:500], y[:500], f[500:], y[500:], 3, rng, hidden="fc16-relu-drop0.2")
    assert [lay.spec() for lay in layers] == ["fc16", "relu", "drop0.2", "fc3"]
    raw = Sequential(layers)
    raw_acc = float((raw.predict_batch(f[500:]).argmax(1) == y[500:]).mean())
    assert raw_acc == pytest.approx(acc)
    assert acc > 0.8


@pytest.mark.parametrize("hidden", ["relu-fc16", "fc16-max2", "c8k3-relu", "fc16-bogus"])
def test_classifier_hidden_layers_must_be_dense_layers(hidden):
    with pytest.raises(ConfigError):
        classifier_layers(hidden, 3)
    with pytest.raises(ConfigError, match="training and evaluation"):
        train_classifier(np.zeros((4, 3), np.float32), np.zeros(4, int), np.zeros((2, 5), np.float32),
                         np.zeros(2, int), 3, np.random.default_rng(0))
    for linear in (None, "", "none"):
        assert [lay.spec() for lay in classifier_layers(linear, 3)] == ["fc3"]


@pytest.mark.parametrize("dtype,chunk", [(np.float32, 256 * 1024**2), (np.float32, 400), (np.float16, 400)])
def test_column_statistics_and_standardize_match_numpy_in_float64(monkeypatch, dtype, chunk):
    monkeypatch.setattr(classifier, "STANDARDIZE_CHUNK_BYTES", chunk)  # 400 bytes: 11 rows per chunk
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((203, 9)) * [1, 10, 100, 0.5, 1, 1, 1, 1, 1] + 100).astype(dtype)
    x64 = x.astype(np.float64)
    mean, std = column_mean_std(x)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x64.std(axis=0), rtol=1e-6)
    z = standardize(x, mean, std)
    assert z.dtype == np.float32 and z.shape == x.shape
    with pytest.raises(ConfigError, match="do not match"):  # the kernel would read past the statistics
        standardize(np.zeros((3, 12), dtype), mean, std)
    np.testing.assert_allclose(z, (x64 - mean) / std, rtol=1e-4, atol=1e-4)
    wide = np.full((len(x), 12), 7.0, np.float32)  # into the leading columns of a wider array
    standardize(x, mean, std, out=wide[:, :9])
    np.testing.assert_array_equal(wide[:, :9], z)
    assert (wide[:, 9:] == 7.0).all()
    with pytest.raises(ConfigError, match="out must be float32"):
        standardize(x, mean, std, out=wide[:, :8])


SMALL = ["--dataset", "synthetic", "--n-train", "800", "--n-test", "200", "--quiet", "--batch-size", "32"]


@pytest.mark.parametrize("method,args,floor", [
    ("aux", ["--arch", "c8k3-bn-relu-max2-c16k3-bn-relu-max2", "--layer-budget", "2e", "--final-classifier",
             "retrain"], 0.3),
    ("aux", ["--arch", "c8k3-bn-relu-max2-c16k3-bn-relu", "--layer-budget", "2e", "--augment", "--aux-pool", "none"],
     0.15),  # the last block's own head after 50 steps; the retrained classifier gets 2000
    ("cosine", ["--arch", "c8k3-bn-relu-max2-c16k3-bn-relu-max2", "--layer-budget", "2e"], 0.25),
    ("cosine", ["--arch", "c8k3-bn-relu-max2", "--layer-budget", "1e", "--aux-pool", "none"], 0.2),
    ("kl", ["--arch", "c8k3-bn-relu-max2", "--layer-budget", "1e", "--finetune-epochs", "1"], 0.15),
    ("patchbag", ["--arch", "c16k3-tanh-max2-c16k3-tanh", "--clusters", "64", "--patch-sample", "5000",
                  "--epochs-per-layer", "3", "--image-clusters", "20", "--final-hidden", "fc32-relu-drop0.2",
                  "--final-features", "all", "--no-final-mix"], 0.2),
])
def test_layerwise_methods_follow_the_run_contract_and_learn(tmp_path, method, args, floor):
    out = tmp_path / method
    result = CliRunner().invoke(main, ["train", "--method", method, *SMALL, "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    n_layers = len(summary["layers"])
    assert n_layers == len(split_blocks(args[1]))
    assert {e["layer"] for e in events if e["phase"] == "layer_done"} == set(range(n_layers))
    assert all({"method", "layer", "epoch", "phase", "seconds"} <= set(e) for e in events)
    assert all(0 <= layer["head_accuracy"] <= 1 for layer in summary["layers"])
    assert summary["test_accuracy"] > floor  # chance is 0.1
    assert summary["finetuned"] == ("--finetune-epochs" in args)
    last_head = method == "aux" and "retrain" not in args
    assert summary["final_classifier"] == ("last-head" if last_head else "retrain")
    assert ("retrained_classifier_accuracy" in summary) == last_head
    if "--final-hidden" in args:
        assert summary["arch"].endswith(args[args.index("--final-hidden") + 1] + "-fc10")
    if "--final-features" in args:  # both blocks give 16x16 maps; the classifier sees 2x2 quadrants
        assert "-max2-tap8-c16k3-tanh-avg8-cat-" in summary["arch"]
    result = CliRunner().invoke(main, ["evaluate", str(out), *SMALL[:6]])
    assert json.loads(result.output)["test_accuracy"] == pytest.approx(summary["test_accuracy"])


def test_last_head_keeps_the_trained_head_and_needs_a_method_that_has_one(tmp_path):
    args = ["--arch", "c8k3-bn-relu-max2-c8k3-bn-relu", "--layer-budget", "1e", "--final-classifier"]
    result = CliRunner().invoke(main, ["train", "--method", "aux", *SMALL, "--out", str(tmp_path / "a"), *args,
                                       "retrain"])
    assert result.exit_code == 0, result.output
    retrained = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert retrained["arch"].endswith("-bn-relu-avg8-fc10") and "retrained_classifier_accuracy" not in retrained
    result = CliRunner().invoke(main, ["train", "--method", "aux", *SMALL, "--out", str(tmp_path / "b"), *args,
                                       "last-head", "--aux-depth", "1"])
    assert result.exit_code == 0, result.output
    kept = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert kept["arch"].endswith("-bn-relu-c8k3-relu-avg8-fc10")  # the head's hidden conv is part of the model
    assert kept["retrained_classifier_accuracy"] == pytest.approx(retrained["test_accuracy"], abs=0.2)
    assert kept["test_accuracy"] == pytest.approx(kept["layers"][-1]["head_accuracy"])
    result = CliRunner().invoke(main, ["train", "--method", "cosine", *SMALL, "--out", str(tmp_path / "c"),
                                       *args, "last-head"])
    assert result.exit_code == 2 and "last-head" in result.output
    result = CliRunner().invoke(main, ["train", "--method", "aux", *SMALL, "--out", str(tmp_path / "d"),
                                       *args, "last-head", "--final-features", "all"])
    assert result.exit_code == 2 and "final-features" in result.output


def test_final_hidden_layers_are_refused_where_the_head_is_linear_by_design(tmp_path):
    for method, hidden in (("binary", "fc16-relu"), ("aux", "relu-fc16")):
        result = CliRunner().invoke(main, ["train", "--method", method, *SMALL, "--out", str(tmp_path / method),
                                           "--final-hidden", hidden])
        assert result.exit_code == 2 and "hidden" in result.output, result.output


def test_feature_augment_scales_the_shift_with_the_map():
    from greedy.methods.config import resolve
    from greedy.methods.objectives import AuxTrainer
    trainer = AuxTrainer(resolve("aux", "cifar10", 10, {"augment": True, "augment_flip": False}), 10)
    trainer.image_shape = (3, 32, 32)
    assert AuxTrainer(resolve("aux", "cifar10", 10, {"augment": False}), 10).augment((3, 32, 32)) is None
    from greedy.nn.augment import random_crop_flip
    for shape, pad in (((3, 32, 32), 4), ((64, 8, 8), 1), ((64, 4, 4), 1)):
        x = np.random.default_rng(1).standard_normal((6,) + shape).astype(np.float32)
        np.testing.assert_array_equal(trainer.augment(shape)(x, np.random.default_rng(2), np.arange(6), 1),
                                      random_crop_flip(x, np.random.default_rng(2), pad=pad, flip=False))
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8) + 1
    out = trainer.augment((3, 8, 8))(x, np.random.default_rng(0), np.arange(2), 1)
    assert out.shape == x.shape
    # a shift by at most one pixel: every row of the output is a row of the input moved by <= 1, or zero fill
    assert np.isin(out[out != 0], x).all() and (out == 0).sum() <= 2 * 3 * (8 + 8 - 1)


def test_compare_writes_markdown_and_json(tmp_path):
    result = CliRunner().invoke(main, ["compare", "--methods", "e2e,aux", *SMALL[:7], "--out", str(tmp_path),
                                       "--arch", "c8k3-bn-relu-max2", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["e2e", "aux"]
    assert "| e2e |" in (tmp_path / "compare.md").read_text()
    result = CliRunner().invoke(main, ["compare", "--methods", "e2e,nope", *SMALL[:7], "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output
