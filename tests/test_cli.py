"""The CLI and the run contract, on small synthetic data."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from greedy.cli import main

DATA = ["--dataset", "synthetic", "--n-train", "300", "--n-test", "100"]
SMALL = DATA + ["--quiet"]


def train(tmp_path, name, *args):
    out = tmp_path / name
    result = CliRunner().invoke(main, ["train", *SMALL, "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_e2e_run_writes_the_contract_files_and_evaluate_agrees(tmp_path):
    out = train(tmp_path, "run", "--method", "e2e", "--arch", "c8k3-relu-max2-fc10", "--epochs", "2", "--seed", "3")
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["method"] == "e2e" and config["threads"] >= 1
    assert "numba" in config["versions"]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["phase"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["n_epochs"] == 2 for e in epochs)
    for e in epochs:
        assert {"method", "layer", "epoch", "phase", "seconds", "train_loss", "accuracy"} <= set(e)
        assert e["layer"] is None
    assert events[-1]["phase"] == "test" and "test_accuracy" in events[-1]
    # measured every third epoch (the cifar10 default) but the last, whose figure is the final test's
    assert [e["accuracy"] for e in epochs] == [None, None]
    options = config["options"]  # every option resolved: nothing the run used is null
    # synthetic colour images take the cifar10 family's e2e defaults
    assert options["lr"] == 0.2 and options["optimizer"] == "nesterov" and options["batch_size"] == 256
    assert options["init_gain"] == 0.408 and options["identity_init"] is True and options["eval_every"] == 3
    assert options["label_smoothing"] == 0.2 and options["augment"] and options["augment_pad"] == 2
    assert options["arch"] == "c8k3-relu-max2-fc10" and options["epochs"] == 2 and options["schedule"] == "onecycle"
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test_accuracy"] == events[-1]["test_accuracy"]
    assert summary["compile_seconds"] >= 0
    assert summary["train_seconds"] > 0 and summary["n_parameters"] == 8 * 27 + 8 + 8 * 256 * 10 + 10
    with np.load(out / "model.npz", allow_pickle=False) as f:
        assert "meta" in f.files
    result = CliRunner().invoke(main, ["evaluate", str(out), *DATA])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test_accuracy"] == pytest.approx(summary["test_accuracy"])


@pytest.mark.parametrize("every,measured", [(2, [2, 4]), (0, [])])
def test_eval_every_logs_the_test_accuracy_after_every_kth_epoch(tmp_path, every, measured):
    out = train(tmp_path, "run", "--method", "e2e", "--arch", "c8k3-relu-max2-fc10", "--epochs", "5",
                "--eval-every", str(every), "--batch-size", "100")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["phase"] == "epoch"]
    assert [e["epoch"] for e in epochs if e["accuracy"] is not None] == measured
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5] and events[-1]["phase"] == "test"


def test_flip_tta_is_recorded_and_evaluate_applies_it(tmp_path):
    out = train(tmp_path, "run", "--method", "e2e", "--arch", "c8k3-relu-max2-fc10", "--epochs", "2", "--tta", "flip")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta"] == "flip" and 0.0 <= summary["test_accuracy_without_tta"] <= 1.0
    result = CliRunner().invoke(main, ["evaluate", str(out), *DATA])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    plain = json.loads((train(tmp_path, "plain", "--method", "e2e", "--arch", "c8k3-relu-max2-fc10",
                              "--epochs", "2") / "summary.json").read_text())
    assert plain["tta"] == "none" and plain["test_accuracy_without_tta"] == plain["test_accuracy"]  # synthetic: no flips
    assert plain["test_accuracy"] == summary["test_accuracy_without_tta"]


def test_same_seed_same_accuracy_and_e2e_learns(tmp_path):
    args = ["--method", "e2e", "--arch", "c8k3-relu-max2-c16k3-relu-max2-fc10", "--epochs", "4", "--threads", "2",
            "--n-train", "1000", "--n-test", "200", "--batch-size", "32", "--lr", "5e-3",
            "--init-gain", "1"]  # He's scale: no batch norm here
    a = json.loads((train(tmp_path, "a", *args) / "summary.json").read_text())
    b = json.loads((train(tmp_path, "b", *args) / "summary.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["test_accuracy"] > 0.3  # ten classes: chance is 0.1


def test_whiten_first_takes_the_identity_filters_of_the_cifar10_defaults_after_its_conv(tmp_path):
    out = train(tmp_path, "white", "--method", "e2e", "--whiten-first", "--epochs", "1",
                "--arch", "c12k2p0-relu-c16k3-max2-bn-relu-fc10")
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["whiten_first"] and options["identity_init"]


def test_e2e_label_smoothing_and_augment_pad_are_options_of_the_run(tmp_path):
    args = ["--method", "e2e", "--arch", "c8k3-relu-max2-fc10", "--epochs", "1", "--augment", "--augment-pad", "1"]
    smooth = train(tmp_path, "smooth", *args, "--label-smoothing", "0.4")
    plain = train(tmp_path, "plain", *args)
    options = json.loads((smooth / "config.json").read_text())["options"]
    assert options["label_smoothing"] == 0.4 and options["augment_pad"] == 1 and options["augment"]

    def first_loss(out):
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return next(e for e in events if e["phase"] == "epoch")["train_loss"]

    # the same draws: only the loss differs
    assert first_loss(smooth) != first_loss(plain)
    assert first_loss(train(tmp_path, "plain2", *args)) == first_loss(plain)


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "nope"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--epochs", "-1"], "-1"),
    (["--width", "0"], "0"),
    (["--arch", "c8k3-blah-fc10"], "unknown architecture token"),
    (["--arch", "c8k3-fc7"], "10 classes"),
    (["--method", "aux", "--layer-budget", "lots"], "layer budget"),
    (["--method", "binary", "--tta", "flip"], "test-time augmentation"),
    (["--method", "e2e", "--label-smoothing", "1"], "label-smoothing"),
    (["--method", "e2e", "--init-gain", "0"], "init-gain"),
    (["--method", "aux", "--init-gain", "0.5"], "not an option of method aux"),
])
def test_bad_options_give_one_line_errors_with_exit_code_2(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", *SMALL, "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_evaluate_missing_or_corrupt_checkpoint(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), *DATA])
    assert result.exit_code == 2 and "not found" in result.output
    (tmp_path / "model.npz").write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), *DATA])
    assert result.exit_code == 2 and "not a readable" in result.output
