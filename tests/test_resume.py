"""Resume: a run stopped after a block (SIGTERM, kill -9) or an epoch continues to the same model as a run
that was never stopped."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import greedy.runs as runs
from greedy.checkpoint import load as load_checkpoint
from greedy.cli import main

REPO = Path(__file__).parents[1]
MNIST = ["--dataset", "mnist", "--n-train", "2000", "--n-test", "500", "--threads", "2", "--quiet"]
SMALL = ["--dataset", "synthetic-grey", "--n-train", "300", "--n-test", "100", "--threads", "2", "--quiet"]
REAL = {  # three small blocks each, epoch budgets
    "aux": ["--method", "aux", "--arch", "c8k3-bn-relu-max2-c16k3-bn-relu-max2-c16k3-bn-relu", "--layer-budget", "1e",
            "--final-epochs", "2", "--final-min-steps", "100"],
    "patchbag": ["--method", "patchbag", "--arch", "c16k3-relu-max2-c16k3-relu-max2-c32k3-relu", "--clusters", "32",
                 "--patch-sample", "5000", "--layer-budget", "2e", "--final-epochs", "2", "--final-min-steps", "100"],
}
TINY = {
    "e2e": ["--method", "e2e", "--arch", "c4k3-relu-max2-fc16-relu-drop0.3-fc10", "--epochs", "3"],
    "binary": ["--method", "binary", "--arch", "c16-or2-c16", "--patch-sample", "2000", "--final-min-steps", "50"],
    "cosine": ["--method", "cosine", "--arch", "c8k3-bn-relu-max2-c8k3-bn-relu", "--final-min-steps", "50",
               "--final-hidden", "fc16-relu-drop0.3", "--final-features", "all"],
    "aux-last-head": ["--method", "aux", "--arch", "c8k3-bn-relu-max2-c8k3-bn-relu", "--final-min-steps", "50",
                      "--final-classifier", "last-head", "--finetune-epochs", "1"],
    "patchbag-final-mix": ["--method", "patchbag", "--arch", "c8k3-relu-max2-c16k3-relu", "--clusters", "16",
                           "--patch-sample", "2000", "--final-min-steps", "50", "--final-epochs", "2",
                           "--final-pool", "quadrant", "--final-features", "all", "--final-mix",
                           "--final-mix-epochs", "1"],
}
TINY["e2e-alternate-flips"] = [*TINY["e2e"], "--augment", "--alternate-flips"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def train(out, *args):
    result = invoke("train", *args, "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def same_model(a, b):
    with np.load(a / "model.npz") as fa, np.load(b / "model.npz") as fb:
        assert set(fa.files) == set(fb.files)
        return all(np.array_equal(fa[k], fb[k]) for k in fa.files if k != "meta")


def start(out, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "cli.py", "train", *args, "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process, out, timeout=300):
    """Block until the run logs its first checkpoint (a finished block)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(line)["phase"] == "checkpoint"
                                     for line in metrics.read_text().splitlines() if line.endswith("}")):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint within the timeout")


@pytest.mark.parametrize("method,how", [("aux", signal.SIGTERM), ("patchbag", signal.SIGKILL)])
def test_a_real_run_stopped_after_a_block_resumes_to_the_uninterrupted_model(tmp_path, method, how):
    args = MNIST + REAL[method]
    whole = train(tmp_path / "whole", *args)
    process = start(tmp_path / "cut", *args)
    wait_for_checkpoint(process, tmp_path / "cut")
    process.send_signal(how)
    _, err = process.communicate(timeout=300)
    cut = tmp_path / "cut"
    if how == signal.SIGTERM:
        assert process.returncode == 143
        last = err.strip().splitlines()[-1]
        assert last.startswith("SIGTERM: stopped with") and f"--resume {cut}" in last and "Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    state, _ = load_checkpoint(str(cut / "checkpoint.npz"))
    assert 1 <= len(state.blocks) <= 3 and not (cut / "summary.json").exists()
    result = invoke("evaluate", cut)
    assert result.exit_code == 2
    assert result.output.strip() == (f"Error: run unfinished: {state.progress()}; continue with "
                                     f"`python cli.py train --resume {cut}`")
    result = invoke("train", "--resume", cut)
    assert result.exit_code == 0, result.output
    resumed = json.loads((cut / "summary.json").read_text())
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["resumed_after"] == state.progress()
    assert same_model(tmp_path / "whole", cut)
    assert not (cut / "checkpoint.npz").exists() and not list(cut.glob(".*.tmp"))
    assert invoke("evaluate", cut).exit_code == 0


def stop_at(monkeypatch, n):
    """Make the n-th checkpoint of the next run stop it, as a SIGTERM just before it would."""
    original, calls = runs.Run.checkpoint, []

    def checkpoint(self, make_state):
        calls.append(1)
        if len(calls) == n:
            self.stop_signal = signal.SIGTERM
        return original(self, make_state)
    monkeypatch.setattr(runs.Run, "checkpoint", checkpoint)


@pytest.mark.parametrize("name,n", [("e2e", 1), ("e2e", 2), ("e2e-alternate-flips", 1), ("binary", 1), ("binary", 3),
                                    ("cosine", 1), ("aux-last-head", 3), ("patchbag-final-mix", 2),
                                    ("patchbag-final-mix", 3)])
def test_every_kind_of_run_resumes_after_each_kind_of_checkpoint(tmp_path, monkeypatch, name, n):
    whole = train(tmp_path / "whole", *SMALL, *TINY[name])
    with monkeypatch.context() as m:
        stop_at(m, n)
        result = invoke("train", *SMALL, *TINY[name], "--out", tmp_path / "cut")
    assert result.exit_code == 143 and "--resume" in result.output
    progress = load_checkpoint(str(tmp_path / "cut" / "checkpoint.npz"))[0].progress()
    expected = {"e2e": f"{n} of 3 epochs done", "binary": "1 of 2 blocks done" if n == 1 else
                "2 of 2 blocks and the final classifier done"}.get(name.removesuffix("-alternate-flips"))
    assert expected is None or progress == expected
    result = invoke("train", "--resume", tmp_path / "cut")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["test_accuracy"] == whole["test_accuracy"]
    assert same_model(tmp_path / "whole", tmp_path / "cut")


def test_resume_continues_the_metrics_and_the_clock(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        stop_at(m, 1)
        assert invoke("train", *SMALL, *TINY["e2e"], "--out", tmp_path).exit_code == 143
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["phase"] == "epoch"] == [1]
    assert invoke("train", "--resume", tmp_path).exit_code == 0
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["phase"] == "epoch"] == [1, 2, 3]
    resume = [e for e in events if e["phase"] == "resume"]
    assert len(resume) == 1 and resume[0]["progress"] == "1 of 3 epochs done"
    seconds = [e["seconds"] for e in events]
    cut = events.index(resume[0])
    before, after = seconds[:cut], seconds[cut:]
    assert before == sorted(before) and after == sorted(after)
    epoch_1 = next(e["seconds"] for e in events if e["phase"] == "epoch")
    assert min(after) >= epoch_1  # the resumed clock goes on from the checkpoint's, written after epoch 1


@pytest.mark.parametrize("extra", [["--epochs", "5"], ["--seed", "1"], ["--quiet"], ["--out", "elsewhere"],
                                   ["--overwrite"], ["--method", "aux"], ["--max-bytes", "9"]])
def test_resume_refuses_every_option_but_threads(tmp_path, monkeypatch, extra):
    with monkeypatch.context() as m:
        stop_at(m, 1)
        assert invoke("train", *SMALL, *TINY["e2e"], "--out", tmp_path).exit_code == 143
    result = invoke("train", "--resume", tmp_path, *extra)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "only --threads may be given" in result.output and extra[0] in result.output
    result = invoke("train", "--resume", tmp_path, "--threads", "2")
    assert result.exit_code == 0, result.output


def test_resume_refuses_a_finished_run_and_a_folder_without_a_run(tmp_path):
    train(tmp_path / "done", *SMALL, *TINY["e2e"])
    result = invoke("train", "--resume", tmp_path / "done")
    assert result.exit_code == 2 and "the run is finished" in result.output
    (tmp_path / "empty").mkdir()
    result = invoke("train", "--resume", tmp_path / "empty")
    assert result.exit_code == 2 and "no run config here" in result.output


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    whole = train(tmp_path / "whole", *SMALL, *TINY["binary"])
    cut = tmp_path / "cut"
    original = runs.Run.checkpoint

    def die(self, make_state):
        raise KeyboardInterrupt  # a second Ctrl-C before anything was saved
    monkeypatch.setattr(runs.Run, "checkpoint", die)
    result = invoke("train", *SMALL, *TINY["binary"], "--out", cut)
    assert result.exit_code == 130 and "SIGINT: stopped at once, with 0 of 2 blocks done" in result.output
    monkeypatch.setattr(runs.Run, "checkpoint", original)
    result = invoke("evaluate", cut)
    assert result.exit_code == 2 and "run unfinished: 0 of 2 blocks done; continue with" in result.output
    assert invoke("train", "--resume", cut).exit_code == 0
    assert json.loads((cut / "summary.json").read_text())["test_accuracy"] == whole["test_accuracy"]
