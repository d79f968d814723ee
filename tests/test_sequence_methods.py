"""Every method on small slices of real sequences (FordA series, loghub:system bytes): run folder,
evaluate, compare and the estimator, as on images."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import greedy
from greedy.cli import main, run_training
from greedy.data import load_dataset
from greedy.errors import CheckpointError, ConfigError
from greedy.experiments.compare import compare
from greedy.modelfile import load as load_model
from greedy.methods import config as configs
from greedy.methods.blocks import pooling_token, split_blocks, tap_pool_sizes, block_shapes
from greedy.nn.augment1d import random_shift

# small, fast options per method; text blocks start with the byte embedding
SERIES = {"e2e": dict(arch="c8k7-bn-relu-max4-c16k5-bn-relu-gap-fc2", epochs=6, lr=3e-3, batch_size=32),
          "aux": dict(arch="c8k7-bn-relu-max4-c16k5-bn-relu-max2", layer_budget="2e"),
          "cosine": dict(arch="c8k7-bn-relu-max4-c16k5-bn-relu-max2", layer_budget="2e", final_features="all"),
          "kl": dict(arch="c8k7-bn-relu-max4-c16k5-bn-relu-max2", layer_budget="2e", augment=True,
                     augment_pad=20),
          "patchbag": dict(arch="c16k5-relu-max4-c16k3-relu-max2", clusters=32, patch_sample=5000,
                           layer_budget="3e"),
          "binary": dict(arch="c32k7-or2-c32k5-or2", patch_sample=5000, split_images=200, epochs=20.0)}
TEXT = {"e2e": dict(arch="c16k5-bn-relu-max2-c16k3-bn-relu-gap-fc16", epochs=6, lr=3e-3, batch_size=32),
        "aux": dict(arch="emb8-c16k5-bn-relu-max4-c16k3-bn-relu", layer_budget="2e"),
        "cosine": dict(arch="emb8-c16k5-bn-relu-max4-c16k3-bn-relu", layer_budget="2e"),
        "kl": dict(arch="emb8-c16k5-bn-relu-max4-c16k3-bn-relu", layer_budget="2e", kl_variance="shared"),
        "patchbag": dict(arch="emb8-c16k5-relu-max4-c16k3-relu", clusters=32, patch_sample=5000,
                         layer_budget="3e"),
        "binary": dict(arch="c64k5-or2-c32k3", patch_sample=5000, split_images=200, epochs=20.0)}
DATA = str(os.environ.get("GREEDY_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
FLOORS = {"ucr:FordA": 0.6, "loghub:system": 0.3}  # chance: 0.5 and 1/16
QUICK = dict(final_min_steps=200, final_epochs=5.0)


def strided(data, n_train, n_test):
    """Every k-th sample, so that a slice of loghub (stored system by system) holds every class."""
    a, b = len(data.x_train) // n_train, len(data.x_test) // n_test
    return data._replace(x_train=data.x_train[::a][:n_train], y_train=data.y_train[::a][:n_train],
                         x_test=data.x_test[::b][:n_test], y_test=data.y_test[::b][:n_test])


@pytest.fixture(scope="module")
def forda():
    return strided(load_dataset("ucr:FordA", data_dir=DATA), 300, 100)


@pytest.fixture(scope="module")
def system():
    return strided(load_dataset("loghub:system", data_dir=DATA, max_bytes=128), 320, 100)


def options(method, table):
    fields = {f.name for f in dataclasses.fields(configs.CONFIGS[method])}
    return dict(table[method], **{k: v for k, v in QUICK.items() if k in fields})


@pytest.mark.parametrize("method", sorted(SERIES))
@pytest.mark.parametrize("name", ["ucr:FordA", "loghub:system"])
def test_every_method_trains_on_a_slice_and_evaluate_agrees(tmp_path, forda, system, name, method):
    data, table = (forda, SERIES) if name == "ucr:FordA" else (system, TEXT)
    out = tmp_path / "run"
    summary = run_training(method, data, name, dict(options(method, table), seed=0), str(out), 2, verbose=False)
    # e2e normalises bytes like pixel values, so its text networks cannot start with the byte embedding
    floor = 0.1 if (name, method) == ("loghub:system", "e2e") else FLOORS[name]
    assert summary["test_accuracy"] > floor, summary
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == name and config["options"]["seed"] == 0
    model = load_model(str(out / "model.npz"))
    assert model.in_shape == data.x_test.shape[1:]
    logits = model.predict_logits(data.x_test)
    assert logits.shape == (len(data.x_test), data.n_classes)
    assert float((logits.argmax(axis=1) == data.y_test).mean()) == pytest.approx(summary["test_accuracy"])


def test_cli_trains_and_evaluates_a_text_run_with_its_byte_options(tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", "loghub:system", "--n-train", "200", "--n-test", "50", "--max-bytes", "64", "--keep",
            "tail", "--data-dir", DATA, "--quiet", "--out", str(out)]
    result = CliRunner().invoke(main, ["train", "--method", "aux", "--arch", "emb4-c8k5-bn-relu-max2",
                                       "--layer-budget", "1e", "--final-min-steps", "10", *args])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["options"]["blocks"] == ["emb4-c8k5-bn-relu-max2"]
    result = CliRunner().invoke(main, ["evaluate", str(out), "--max-bytes", "64", "--keep", "tail", "--data-dir", DATA])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test_accuracy"] == json.loads((out / "summary.json").read_text())[
        "test_accuracy"]


@pytest.mark.parametrize("args,message", [
    (["--dataset", "ucr/FordA"], "unknown dataset 'ucr/FordA'"),
    (["--dataset", "ucr:FordA", "--max-bytes", "64"], "--max-bytes applies to text datasets"),
    (["--dataset", "loghub:system", "--keep", "middle"], "'middle' is not one of 'head', 'tail'"),
])
def test_sequence_data_options_are_checked_in_one_line(args, message):
    result = CliRunner().invoke(main, ["train", "--method", "aux", "--data-dir", DATA, *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("name,values,message", [
    ("ucr:FordA", {"arch": "c8k5-maj2"}, "sequences pool with or2"),
    ("loghub:system", {"arch": "c8k5-or2-c8", "colour_feed": True}, "text bytes have no levels"),
    ("ucr:FordA", {"arch": "c8k4"}, "bad token 'c8k4'"),
])
def test_binary_refuses_what_does_not_fit_sequences_in_one_line(forda, system, tmp_path, name, values, message):
    data = forda if name == "ucr:FordA" else system
    with pytest.raises(ConfigError, match=message) as e:
        run_training("binary", data, name, values, str(tmp_path / "run"), 2, verbose=False)
    assert "\n" not in str(e.value)


def test_binary_series_network_refuses_other_inputs(tmp_path, forda):
    run_training("binary", forda, "ucr:FordA", dict(options("binary", SERIES), seed=0), str(tmp_path / "run"), 2,
                 verbose=False)
    model = load_model(str(tmp_path / "run" / "model.npz"))
    assert model.image_layer.window == (1, 7) and model.layers[0].window == (1, 5)
    with pytest.raises(ConfigError, match="takes float32 inputs, got uint8"):
        model.predict_logits(forda.x_test.astype(np.uint8))
    with pytest.raises(CheckpointError, match=r"expects samples of shape \(1, 500\), got \(1, 100\)"):
        model.predict_logits(forda.x_test[:, :, :100])


def test_compare_gives_every_method_the_same_1d_blocks(tmp_path, forda):
    rows = compare(run_training, forda, "ucr:FordA", ["e2e", "aux"], str(tmp_path), 0, 2,
                   arch="c8k7-bn-relu-max4-c8k5-bn-relu", epochs=2, verbose=False)
    assert [r["method"] for r in rows] == ["e2e", "aux"] and all(r["test_accuracy"] > 0.5 for r in rows)
    assert (tmp_path / "compare.md").read_text().count("| aux |") == 1


@pytest.mark.parametrize("name", ["series", "text"])
def test_estimator_fits_sequences_and_reloads(tmp_path, forda, system, name):
    data, table = (forda, SERIES) if name == "series" else (system, TEXT)
    clf = greedy.LayerwiseClassifier(method="aux", random_state=0, **options("aux", table))
    clf.fit(data.x_train, np.array(data.class_names)[data.y_train])
    assert clf.config_.blocks == split_blocks(table["aux"]["arch"])
    score = clf.score(data.x_test, np.array(data.class_names)[data.y_test])
    assert score > FLOORS["ucr:FordA" if name == "series" else "loghub:system"]
    clf.save(str(tmp_path / "m.npz"))
    assert (greedy.load(str(tmp_path / "m.npz")).predict(data.x_test) == clf.predict(data.x_test)).all()


def test_binary_estimator_fits_series_and_reloads(tmp_path, forda):
    clf = greedy.LayerwiseClassifier(method="binary", random_state=0, **options("binary", SERIES))
    clf.fit(forda.x_train, forda.y_train + 1)
    assert clf.score(forda.x_test, forda.y_test + 1) > FLOORS["ucr:FordA"]
    clf.save(str(tmp_path / "m.npz"))
    assert (greedy.load(str(tmp_path / "m.npz")).predict(forda.x_test) == clf.predict(forda.x_test)).all()


def test_families_tell_images_series_and_text_apart():
    assert configs.family_of((1, 28, 28), np.uint8) == "mnist" and configs.family_of((3, 32, 32)) == "cifar10"
    assert configs.family_of((1, 500), np.float32) == "series" and configs.family_of((1, 256), np.uint8) == "text"
    with pytest.raises(ConfigError, match="sequences"):
        configs.family_of((1, 500))
    for family in ("series", "text"):
        for method in ("e2e", "aux", "cosine", "kl", "patchbag", "binary"):
            assert configs.resolve(method, family, 16) is not None


def test_text_blocks_start_with_the_embedding_and_sequence_pooling_is_1d():
    assert split_blocks("emb16-c32k5-relu-max2-c64k3-relu") == ["emb16-c32k5-relu-max2", "c64k3-relu"]
    with pytest.raises(ConfigError, match="conv token"):
        split_blocks("emb16-relu")
    assert pooling_token((8, 50), "quadrant") == "avg25" and pooling_token((8, 50), "gmp") == "gmp"
    assert pooling_token((8, 6, 6), "gmp") == "max6"
    shapes = block_shapes(["c8k3-relu-max2", "c8k3-relu-max2", "c8k3"], (1, 100))
    assert shapes == [(8, 50), (8, 25), (8, 25)] and tap_pool_sizes(shapes, "avg12") == [25, 12]


def test_random_shift_moves_whole_sequences_with_zero_fill():
    x = np.arange(1, 25, dtype=np.float32).reshape(4, 2, 3)
    out = random_shift(x, np.random.default_rng(0), pad=1)
    for i in range(4):
        shifts = [d for d in (-1, 0, 1) if np.array_equal(out[i], np.roll(x[i], d, axis=1) * _kept(d, 3))]
        assert len(shifts) == 1
    with pytest.raises(ConfigError, match="sequences"):
        random_shift(x[0], np.random.default_rng(0))


def _kept(d, length):
    keep = np.ones(length, np.float32)
    if d > 0:
        keep[:d] = 0
    elif d < 0:
        keep[d:] = 0
    return keep
