"""Time to accuracy: the curve records of layer-wise runs, the plot command, and compare's plot."""
import json
import sys

import pytest
from click.testing import CliRunner

from greedy import plotting
from greedy.cli import main
from greedy.cli_plot import plot
from greedy.methods.binary.trainer import BinaryTrainer
from greedy.methods.layerwise import BlockTrainer

PNG = b"\x89PNG\r\n\x1a\n"
MNIST = ["--dataset", "mnist", "--n-train", "2000", "--n-test", "500", "--threads", "2", "--quiet"]
SMALL = ["--dataset", "synthetic-grey", "--n-train", "300", "--n-test", "100", "--threads", "2", "--quiet"]
RUNS = {  # two blocks each, then the final classifier
    "aux": MNIST + ["--method", "aux", "--arch", "c8k3-bn-relu-max2-c16k3-bn-relu-max2", "--layer-budget", "1e",
                    "--final-epochs", "1", "--final-min-steps", "50"],
    "patchbag": MNIST + ["--method", "patchbag", "--arch", "c16k3-relu-max2-c16k3-relu-max2", "--clusters", "32",
                         "--patch-sample", "5000", "--layer-budget", "2e", "--final-epochs", "1",
                         "--final-min-steps", "50"],
    "binary": SMALL + ["--method", "binary", "--arch", "c16-or2-c16", "--patch-sample", "2000",
                       "--final-min-steps", "50"],
}


def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


def events(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name in ("aux", "patchbag"):
        result = invoke(main, "train", *RUNS[name], "--out", root / name)
        assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("name", ["aux", "patchbag"])
def test_a_layerwise_run_logs_a_test_accuracy_point_per_block(runs, name):
    log = events(runs / name)
    curve = [e for e in log if e["phase"] == "curve"]
    assert [(e["layer"], e["source"]) for e in curve] == [(0, "block"), (1, "block"), (2, "classifier")]
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in curve)
    seconds = [e["seconds"] for e in curve] + [next(e["seconds"] for e in log if e["phase"] == "test")]
    assert seconds == sorted(seconds) and len(set(seconds)) == len(seconds)
    done = {e["layer"]: e for e in log if e["phase"] == "layer_done"}
    for e in curve[:2]:  # the block's head accuracy on the test set, logged after its training
        assert e["accuracy"] == done[e["layer"]]["head_accuracy"]
        assert e["seconds"] >= done[e["layer"]]["train_seconds"]
    classifier = next(e for e in log if e["phase"] == "classifier")
    assert curve[2]["accuracy"] == classifier["classifier_accuracy"]
    assert curve[2]["accuracy"] > 0.5  # the run learned: 10 classes, real digits


def test_a_run_that_ends_with_its_last_blocks_head_ends_its_curve_there(tmp_path):
    result = invoke(main, "train", *RUNS["aux"], "--final-classifier", "last-head", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    log = events(tmp_path)
    curve = [e for e in log if e["phase"] == "curve"]
    assert [(e["layer"], e["source"]) for e in curve] == [(0, "block"), (1, "block")]
    test = next(e for e in log if e["phase"] == "test")
    assert curve[-1]["accuracy"] == test["test_accuracy_without_tta"]  # the model is blocks 0-1 and that head
    points = plotting.read_run(str(tmp_path)).points
    assert [a for _, a in points] == [curve[0]["accuracy"], curve[1]["accuracy"], test["test_accuracy_without_tta"]]


def test_fine_tuning_epochs_are_points_too(tmp_path):
    result = invoke(main, "train", *SMALL, "--method", "aux", "--arch", "c8k3-bn-relu-max2", "--final-min-steps",
                    "50", "--finetune-epochs", "2", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    log = events(tmp_path)
    curve = [e for e in log if e["phase"] == "curve"]
    assert [e["source"] for e in curve] == ["block", "classifier", "finetune", "finetune"]
    assert [e["accuracy"] for e in curve[2:]] == [e["accuracy"] for e in log if e["phase"] == "finetune"]


@pytest.mark.skipif(BinaryTrainer.block_accuracy is BlockTrainer.block_accuracy,
                    reason="BinaryTrainer does not define block_accuracy yet")
def test_a_binary_run_logs_a_point_per_block(tmp_path):
    result = invoke(main, "train", *RUNS["binary"], "--out", tmp_path)
    assert result.exit_code == 0, result.output
    curve = [e for e in events(tmp_path) if e["phase"] == "curve"]
    assert {e["layer"] for e in curve} >= {0, 2} and curve[-1]["source"] == "classifier"
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in curve)
    assert [e["seconds"] for e in curve] == sorted(e["seconds"] for e in curve)


def test_plot_writes_a_png_and_the_points_of_every_curve(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "t2a.png"
    result = invoke(plot, runs / "aux", runs / "patchbag", "--out", out, "--reference", "pytorch-cifar10")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    data = json.loads((tmp_path / "t2a.json").read_text())
    assert [c["label"] for c in data["curves"]] == ["aux/mnist", "patchbag/mnist"]
    for c, name in zip(data["curves"], ("aux", "patchbag")):
        log = events(runs / name)
        test = next(e for e in log if e["phase"] == "test")
        assert c["points"][:-1] == [[e["seconds"], e["accuracy"]] for e in log if e["phase"] == "curve"]
        assert c["points"][-1] == [test["seconds"], test["test_accuracy_without_tta"]] and c["finished"]
    (ref,) = data["references"]
    assert len(ref["points"]) == 10 and ref["points"][-1] == [543, 0.85] and ref["points"][4] == [260, 0.807]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_reference_curve_from_a_json_file(runs, tmp_path):
    pytest.importorskip("matplotlib")
    ref = tmp_path / "mine.json"
    ref.write_text(json.dumps({"label": "mine", "points": [[10, 0.5], [5, 0.25]]}))
    result = invoke(plot, runs / "aux", "--out", tmp_path / "p.png", "--reference", ref)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["references"][0]["points"] == [[5, 0.25], [10, 0.5]]
    ref.write_text(json.dumps({"label": "bad", "points": [[10, 50.0]]}))  # a percentage, not a fraction
    result = invoke(plot, runs / "aux", "--out", tmp_path / "p.png", "--reference", ref)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "accuracy in [0, 1]" in result.output


def test_without_matplotlib_plot_says_how_to_install_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = invoke(plot, runs / "aux", "--out", tmp_path / "p.png")
    assert result.exit_code == 2
    assert result.output == 'Error: plot needs matplotlib: pip install "greedy[plot]"\n'
    assert list(tmp_path.iterdir()) == []


def test_folders_without_test_points_give_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nopoints").mkdir()
    (tmp_path / "nopoints" / "metrics.jsonl").write_text('{"phase": "train", "seconds": 1.0}\n{"phase": "cur')
    for folder, message in (("empty", "no metrics.jsonl"), ("nopoints", "no test-accuracy points"),
                            ("missing", "no such directory")):
        result = invoke(plot, tmp_path / folder, "--out", tmp_path / "p.png")
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"Error: {tmp_path / folder}") and message in result.output
    assert not (tmp_path / "p.png").exists()


def test_an_unfinished_run_ends_at_its_last_point(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in (
        {"phase": "epoch", "seconds": 2.0, "accuracy": 0.6}, {"phase": "epoch", "seconds": 1.0, "accuracy": 0.4},
        {"phase": "curve", "seconds": 3.0, "accuracy": 1.5})))  # out of range: skipped
    curve = plotting.read_run(str(tmp_path))
    assert curve.points == [(1.0, 0.4), (2.0, 0.6)] and not curve.finished and curve.label.endswith("(unfinished)")


@pytest.mark.parametrize("with_matplotlib", [True, False])
def test_compare_draws_the_curves_next_to_compare_md(tmp_path, monkeypatch, with_matplotlib):
    if with_matplotlib:
        pytest.importorskip("matplotlib")
    else:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke(main, "compare", "--methods", "e2e,aux", *SMALL, "--out", tmp_path, "--arch",
                    "c8k3-bn-relu-max2", "--epochs", "3")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "compare.md").read_text()
    assert "| e2e |" in md and [r["method"] for r in json.loads((tmp_path / "compare.json").read_text())] == \
        ["e2e", "aux"]
    if with_matplotlib:
        assert (tmp_path / "compare.png").read_bytes()[:8] == PNG and "](compare.png)" in md
        curves = json.loads((tmp_path / "compare-curves.json").read_text())["curves"]
        assert [c["method"] for c in curves] == ["e2e", "aux"] and all(len(c["points"]) >= 3 for c in curves)
    else:
        assert not (tmp_path / "compare.png").exists()
        assert 'plot needs matplotlib: pip install "greedy[plot]"' in md


def test_a_log_without_curve_events_gives_its_blocks_head_accuracies(tmp_path):
    from greedy.plotting import read_run
    events = [{"phase": "layer_done", "seconds": 10.0, "head_accuracy": 0.5},
              {"phase": "layer_done", "seconds": 20.0, "head_accuracy": 0.7},
              {"phase": "test", "seconds": 25.0, "test_accuracy": 0.8, "test_accuracy_without_tta": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert read_run(str(tmp_path)).points == [(10.0, 0.5), (20.0, 0.7), (25.0, 0.75)]


def test_speed_factor_scales_the_runs_seconds_only(tmp_path):
    pytest.importorskip("matplotlib")
    from click.testing import CliRunner
    from greedy.cli_plot import plot
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"phase": "test", "seconds": 100.0, "test_accuracy": 0.8,
                                                   "test_accuracy_without_tta": 0.7}) + "\n")
    out = tmp_path / "c.png"
    result = CliRunner().invoke(plot, [str(run), "--out", str(out), "--speed-factor", "1.5",
                                       "--reference", "pytorch-cifar10"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["curves"][0]["points"] == [[150.0, 0.7]]
    assert data["references"][0]["points"][0] == [52, 0.564]
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    result = CliRunner().invoke(plot, [str(run), str(other), "--out", str(out), "--speed-factor", "1.5",
                                       "--speed-factor", "2"])
    assert result.exit_code == 0, result.output
    assert [c["points"] for c in json.loads((tmp_path / "c.json").read_text())["curves"]] == [[[150.0, 0.7]],
                                                                                            [[200.0, 0.7]]]
    result = CliRunner().invoke(plot, [str(run), str(other), "--out", str(out), "--speed-factor", "1.5",
                                       "--speed-factor", "2", "--speed-factor", "3"])
    assert result.exit_code == 2 and "once for each of the 2 runs; got 3" in result.output
