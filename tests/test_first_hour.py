"""What a new user meets first: complete run records, help that explains, names that mean one thing."""
import json

import pytest
from click.testing import CliRunner

from greedy.cli import main

SMALL = ["--dataset", "synthetic-grey", "--n-train", "200", "--n-test", "60", "--quiet"]
TINY = {"e2e": ["--arch", "c4k3-relu-max2-fc10", "--epochs", "1"],
        "aux": ["--arch", "c4k3-bn-relu-max2-c4k3-bn-relu", "--layer-budget", "1e", "--final-min-steps", "50"],
        "cosine": ["--arch", "c4k3-bn-relu-max2", "--layer-budget", "1e", "--final-min-steps", "50"],
        "kl": ["--arch", "c4k3-bn-relu-max2", "--layer-budget", "1e", "--final-min-steps", "50"],
        "patchbag": ["--arch", "c8k3-relu-max2", "--clusters", "16", "--patch-sample", "3000",
                     "--final-min-steps", "50"],
        "binary": ["--arch", "c16", "--patch-sample", "2000", "--final-min-steps", "50"]}
# shorthands folded into other fields, and options that only matter when another is set
UNUSED_WHEN_NULL = {"arch", "layers", "width", "epochs", "epochs_per_layer", "time_budget", "finetune_lr",
                    "final_mix_epochs"}


def train(out, method, *extra):
    result = CliRunner().invoke(main, ["train", *SMALL, "--method", method, "--out", str(out), *TINY[method], *extra])
    assert result.exit_code == 0, result.output
    return (json.loads((out / name).read_text()) for name in ("config.json", "summary.json"))


@pytest.mark.parametrize("method", sorted(TINY))
def test_config_json_holds_every_option_as_resolved(tmp_path, method):
    config, summary = train(tmp_path / method, method)
    nulls = {k for k, v in config["options"].items() if v is None}
    assert nulls <= UNUSED_WHEN_NULL, nulls
    assert config["options"]["seed"] == 0 and config["dataset"] == "synthetic-grey"
    assert summary["arch"] and summary["compile_seconds"] >= 0


def test_train_config_repeats_a_run(tmp_path):
    config, summary = train(tmp_path / "a", "patchbag", "--regions", "1", "--seed", "5")
    result = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "a" / "config.json"), "--quiet",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["options"] == config["options"] and again["options"]["regions"] == 1 and again["seed"] == 5
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_accuracy_names_mean_one_thing_in_log_metrics_and_summary(tmp_path):
    out = tmp_path / "run"
    _, summary = train(out, "aux", "--tta", "flip")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    test = [e for e in events if "test_accuracy" in e]
    assert [e["phase"] for e in test] == ["test"]  # only the final model's accuracy is called test_accuracy
    assert test[0]["test_accuracy"] == summary["test_accuracy"]
    assert test[0]["test_accuracy_without_tta"] == summary["test_accuracy_without_tta"]
    heads = [e["head_accuracy"] for e in events if e["phase"] == "layer_done"]
    assert heads == [layer["head_accuracy"] for layer in summary["layers"]]
    assert all("n_epochs" in e for e in events if e["phase"] in ("train_layer", "classifier_epoch"))


def test_evaluate_reads_the_dataset_from_the_run_and_refuses_another(tmp_path):
    out = tmp_path / "run"
    _, summary = train(out, "e2e")
    result = CliRunner().invoke(main, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dataset"] == "synthetic-grey"
    assert json.loads(result.output)["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    result = CliRunner().invoke(main, ["evaluate", str(out), "--dataset", "mnist"])
    assert result.exit_code == 2 and "mnist" in result.output and "synthetic-grey" in result.output


def test_help_groups_options_and_shows_per_method_defaults():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for group in ("data", "model", "layer-wise", "patch bags", "binary", "optimisation", "output"):
        assert f"Options: {group}" in result.output
    assert "patchbag: 0.003" in result.output.replace("\n", " ").replace("  ", " ") or "patchbag: 0.003" in \
        " ".join(result.output.split())
    text = " ".join(result.output.split())
    for name, words in (("--batch-size", "Mini-batch size"), ("--optimizer", "Optimiser"),
                        ("--schedule", "Learning-rate schedule"), ("--weight-decay", "weight decay")):
        assert words in text.split(" " + name + " ", 1)[1][:120], name  # each has a description
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    for method in ("aux", "cosine", "kl", "patchbag", "binary", "e2e"):
        assert f"\n{method}\n" in "\n" + result.output


def test_importing_numpy_before_greedy_warns_that_openblas_threads_spin():
    import os
    import subprocess
    import sys

    # thread settings of the test process (dask's workers set some) would change the child's OpenBLAS
    thread_vars = ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in thread_vars}
    threaded = ("from threadpoolctl import threadpool_info; print(any(p.get('internal_api') == 'openblas' and "
                "p.get('num_threads', 1) > 1 for p in threadpool_info()))")

    def run(code):
        done = subprocess.run([sys.executable, "-W", "always", "-c", f"{code}; {threaded}"], env=env,
                              capture_output=True, text=True, check=True)
        return done.stderr, done.stdout.strip() == "True"

    late, threaded_openblas = run("import numpy; import greedy")
    assert ("NumPy was imported before greedy" in late and "OPENBLAS_THREAD_TIMEOUT=4" in late) == threaded_openblas
    assert "NumPy was imported before greedy" not in run("import greedy; import numpy")[0]
    env["OPENBLAS_THREAD_TIMEOUT"] = "4"
    assert "NumPy was imported before greedy" not in run("import numpy; import greedy")[0]
