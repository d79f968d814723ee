"""Runs that survive: signals, folders that hold a run, locks, failed writes, damaged files, and memory."""
import errno
import fcntl
import json
import mmap
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import greedy.atomic as atomic
import greedy.memory as memory
import greedy.runs as runs
from greedy.checkpoint import WriteError
from greedy.checkpoint import load as load_checkpoint
from greedy.cli import main
from greedy.errors import CheckpointError
from test_resume import stop_at

REPO = Path(__file__).parents[1]
SMALL = ["--dataset", "synthetic-grey", "--n-train", "300", "--n-test", "100", "--threads", "2", "--quiet"]
AUX = ["--method", "aux", "--arch", "c8k3-bn-relu-max2-c8k3-bn-relu", "--final-min-steps", "50"]
E2E = ["--method", "e2e", "--arch", "c4k3-relu-max2-fc10", "--epochs", "2"]
LONG = ["--dataset", "mnist", "--n-train", "2000", "--n-test", "200", "--threads", "2", "--quiet", "--method", "aux",
        "--arch", "c32k3-bn-relu-max2-c32k3-bn-relu-max2-c32k3-bn-relu", "--layer-budget", "8e"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code, *words):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp") or p.name.startswith(".cache"))


# ---------------------------------------------------------------- signals

def start(out, *args):
    return subprocess.Popen([sys.executable, "cli.py", "train", *args, "--out", str(out)], cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_phase(process, out, phase, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(line)["phase"] == phase
                                     for line in metrics.read_text().splitlines() if line.endswith("}")):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no {phase} event within the timeout")


def test_sigint_stops_at_the_end_of_the_block_and_says_how_to_resume(tmp_path):
    process = start(tmp_path, *LONG)
    wait_for_phase(process, tmp_path, "options")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert lines[0].startswith("SIGINT: stopping at the next checkpoint")
    assert lines[-1] == (f"SIGINT: stopped with 1 of 3 blocks done (checkpoint {tmp_path}/checkpoint.npz); "
                         f"continue with `python cli.py train --resume {tmp_path}`")
    assert load_checkpoint(str(tmp_path / "checkpoint.npz"))[0].progress() == "1 of 3 blocks done"
    assert leftovers(tmp_path) == []


def test_a_second_sigint_stops_at_once_and_leaves_no_half_written_file(tmp_path):
    process = start(tmp_path, *LONG)
    wait_for_phase(process, tmp_path, "options")
    process.send_signal(signal.SIGINT)
    assert process.stderr.readline().startswith("SIGINT: stopping at the next checkpoint")
    t = time.time()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 130 and time.time() - t < 60
    assert err.strip().splitlines()[-1] == ("SIGINT: stopped at once, with 0 of 3 blocks done in the last checkpoint; "
                                            f"continue with `python cli.py train --resume {tmp_path}`")
    assert not (tmp_path / "checkpoint.npz").exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.json", "metrics.jsonl"]


def test_a_second_sigint_dropped_by_the_code_it_landed_in_is_raised_at_the_next_log_or_checkpoint(tmp_path):
    run = runs.Run(str(tmp_path / "run"), "aux", "mnist", {"seed": 0})
    with runs.stop_on_signals(run):
        signal.raise_signal(signal.SIGINT)  # the first: stop at the next checkpoint
        assert run.stop_signal == signal.SIGINT and not run.stop_at_once

        def callback(*_):  # an exception in a weakref callback is printed and dropped
            signal.raise_signal(signal.SIGINT)

        class Executor:
            pass

        executor = Executor()
        ref = weakref.ref(executor, callback)
        del executor  # the callback runs here and swallows the second SIGINT's KeyboardInterrupt
        assert ref() is None and run.stop_at_once
        with pytest.raises(KeyboardInterrupt):
            run.log("epoch", layer=0)
        with pytest.raises(KeyboardInterrupt):
            run.checkpoint(lambda: pytest.fail("no state is made once the run stops at once"))
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    run.close()


def test_any_error_raised_where_a_second_sigint_landed_is_the_interrupt(tmp_path, monkeypatch):
    from greedy.methods.e2e import E2E as E2EMethod

    def fit(*args, **kwargs):  # e.g. llvmlite raises AttributeError when interrupted while compiling
        signal.raise_signal(signal.SIGINT)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise AttributeError("'OutputString' object has no attribute '_ptr'") from None
    monkeypatch.setattr(E2EMethod, "fit", fit)
    result = invoke("train", *SMALL, *E2E, "--out", tmp_path)
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"SIGINT: stopped at once, with 0 of 2 epochs done in the last checkpoint; continue with "
        f"`python cli.py train --resume {tmp_path}`")
    assert leftovers(tmp_path) == []


def test_what_the_interrupted_code_leaves_half_built_is_finalised_before_the_stop_message(tmp_path, monkeypatch):
    from greedy.methods.e2e import E2E as E2EMethod

    class HalfBuilt:  # as an llvmlite object whose constructor the second SIGINT cut short
        def __del__(self):  # as Python reports an error raised here (pytest's hook would keep it from the output)
            print("AttributeError: 'HalfBuilt' object has no attribute '_as_parameter_'", file=sys.stderr)

    def fit(*args, **kwargs):
        half_built = HalfBuilt()  # noqa: F841 (held by the interrupted frame, and by itself: only gc frees it)
        half_built.cycle = half_built
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(E2EMethod, "fit", fit)
    result = invoke("train", *SMALL, *E2E, "--out", tmp_path)
    assert result.exit_code == 130, result.output
    lines = result.output.strip().splitlines()
    assert any("'HalfBuilt' object has no attribute" in line for line in lines[:-1]), result.output
    assert lines[-1].startswith("SIGINT: stopped at once, with 0 of 2 epochs done"), result.output
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- folders that hold a run, and locks

def test_out_on_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path):
    assert invoke("train", *SMALL, *E2E, "--out", tmp_path).exit_code == 0
    before = (tmp_path / "summary.json").read_text()
    result = invoke("train", *SMALL, *E2E, "--seed", "1", "--out", tmp_path)
    line = one_line_error(result, 2, f"--out {tmp_path} holds a finished run", "--overwrite")
    assert "--resume" not in line
    assert (tmp_path / "summary.json").read_text() == before
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
    result = invoke("train", *SMALL, *E2E, "--seed", "1", "--overwrite", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 1


def test_overwrite_deletes_the_old_runs_results_before_training(tmp_path, monkeypatch):
    assert invoke("train", *SMALL, *E2E, "--out", tmp_path).exit_code == 0

    def fail(self, make_state):
        raise KeyboardInterrupt
    monkeypatch.setattr(runs.Run, "checkpoint", fail)
    assert invoke("train", *SMALL, *AUX, "--overwrite", "--out", tmp_path).exit_code == 130
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "model.npz").exists()
    one_line_error(invoke("evaluate", tmp_path), 2, "run unfinished: 0 of 2 blocks done")
    one_line_error(invoke("train", *SMALL, *AUX, "--out", tmp_path), 2, "holds an unfinished run",
                   f"--resume {tmp_path}`")


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["train", *SMALL, *E2E, "--out", tmp_path], ["train", *SMALL, *E2E, "--overwrite", "--out", tmp_path],
                     ["train", "--resume", tmp_path]):
            if args[1] == "--resume":
                (tmp_path / "config.json").write_text(json.dumps({"method": "e2e", "dataset": "synthetic-grey",
                                                                  "seed": 0, "options": {}}))
            result = invoke(*args)
            one_line_error(result, 2, "another greedy process is training in this folder")
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "config.json").unlink()
    assert invoke("train", *SMALL, *E2E, "--out", tmp_path).exit_code == 0  # the lock died with its process


def test_the_lock_is_held_while_training_and_released_after(tmp_path, monkeypatch):
    seen = []
    original = runs.Run.checkpoint

    def probe(self, make_state):
        with open(tmp_path / ".lock") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        return original(self, make_state)
    monkeypatch.setattr(runs.Run, "checkpoint", probe)
    assert invoke("train", *SMALL, *E2E, "--out", tmp_path).exit_code == 0
    assert seen == ["held", "held"]
    with open(tmp_path / ".lock") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---------------------------------------------------------------- write failures

def enospc_on_second_checkpoint(monkeypatch):
    """np.savez writes half a checkpoint, then the disk is full; the first checkpoint was written whole."""
    real, calls = np.savez, []

    def savez(f, **arrays):
        if "block/0/block/param/0/w" in arrays:
            calls.append(1)
            if len(calls) == 2:
                f.write(b"PK\x03\x04 half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)
    monkeypatch.setattr(atomic.np, "savez", savez)


@pytest.mark.parametrize("case", ["checkpoint-enospc", "config-eacces", "metrics-erofs", "folder-erofs",
                                  "model-enospc", "summary-enospc"])
def test_write_failures_are_one_line_and_keep_the_last_checkpoint(tmp_path, monkeypatch, case):
    out = tmp_path / "run"
    real_open, real_replace = open, os.replace
    if case == "checkpoint-enospc":
        enospc_on_second_checkpoint(monkeypatch)
        target, cause, code = out / "checkpoint.npz", "No space left on device (ENOSPC)", 1
    elif case == "config-eacces":
        def mkstemp(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
        target, cause, code = out / "config.json", "Permission denied (EACCES)", 1
    elif case == "metrics-erofs":
        def ro_open(path, *a, **k):
            if str(path).endswith("metrics.jsonl"):
                raise OSError(errno.EROFS, "Read-only file system")
            return real_open(path, *a, **k)
        monkeypatch.setattr(runs, "open", ro_open, raising=False)
        target, cause, code = out / "metrics.jsonl", "Read-only file system (EROFS)", 1
    elif case == "folder-erofs":
        def makedirs(path, *a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(runs.os, "makedirs", makedirs)
        target, cause, code = out, "Read-only file system (EROFS)", 1
    else:
        name = case.split("-")[0] + (".npz" if case.startswith("model") else ".json")

        def replace(src, dst):
            if str(dst).endswith(name):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(atomic.os, "replace", replace)
        target, cause, code = out / name, "No space left on device (ENOSPC)", 1
    result = invoke("train", *SMALL, *AUX, "--out", out)
    one_line_error(result, code, f"Error: cannot write {target}: {cause}")
    monkeypatch.undo()
    if out.is_dir():
        assert leftovers(out) == []
    if case in ("checkpoint-enospc", "model-enospc", "summary-enospc"):
        state, _ = load_checkpoint(str(out / "checkpoint.npz"))  # the last good checkpoint is whole
        assert state.progress() == ("1 of 2 blocks done" if case == "checkpoint-enospc"
                                    else "2 of 2 blocks and the final classifier done")
        result = invoke("train", "--resume", out)
        assert result.exit_code == 0, result.output
        assert not (out / "checkpoint.npz").exists() and leftovers(out) == []


def test_a_cache_that_cannot_be_reserved_on_disk_is_a_write_error(tmp_path, monkeypatch):
    def fallocate(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(memory.os, "posix_fallocate", fallocate)
    result = invoke("train", *SMALL, *AUX, "--cache", "disk", "--out", tmp_path)
    line = one_line_error(result, 1, f"Error: cannot write {tmp_path}/.cache.", "No space left on device (ENOSPC)")
    assert line.endswith(".bin: No space left on device (ENOSPC)")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- memory

def test_summary_records_the_peak_resident_memory(tmp_path):
    assert invoke("train", *SMALL, *E2E, "--out", tmp_path).exit_code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 50 < summary["peak_memory_mb"] <= memory.peak_rss_bytes() / 2**20 + 1


def test_caches_on_disk_train_the_same_model_and_leave_nothing_behind(tmp_path, monkeypatch):
    results = {}
    for cache in ("memory", "disk", "auto-small"):
        with monkeypatch.context() as m:
            if cache == "auto-small":
                m.setattr(memory, "available_bytes", lambda: 300 * 28 * 28 * 4)  # the image cache is 0.94 MB
            out = tmp_path / cache
            opts = ["--cache", cache] if cache != "auto-small" else []
            result = invoke("train", *SMALL, *AUX, "--final-features", "all", *opts, "--out", out)
            assert result.exit_code == 0, result.output
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results[cache] = (json.loads((out / "summary.json").read_text())["test_accuracy"],
                          [e["cache_on_disk"] for e in events if e["phase"] == "propagate"])
        assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json", "metrics.jsonl", "model.npz",
                                                          "summary.json"]
    assert results["memory"][1] == [False, False] and results["disk"][1] == [True, True]
    assert results["auto-small"][1] == [True, True]  # 300 x 8 x 14 x 14 x 4 bytes > 0.6 x 0.94 MB
    assert results["memory"][0] == results["disk"][0] == results["auto-small"][0]


def test_the_cache_store_spills_only_what_does_not_fit(tmp_path):
    store = memory.CacheStore("auto", str(tmp_path), available=lambda: 1000)
    small, large = store.empty((10, 10), np.float32), store.empty((100, 10), np.float16)
    assert not isinstance(small, np.memmap) and isinstance(large, np.memmap) and store.spilled == 1
    large[...] = 3.0
    assert large.dtype == np.float16 and float(large.sum()) == 3000.0 and list(tmp_path.iterdir()) == []
    assert not isinstance(memory.CacheStore("auto", available=lambda: None).empty((10**4,), np.float32), np.memmap)
    big = memory.CacheStore("memory").empty((memory.SMALL_PAGES_MIN_BYTES // 2 + 1, 2), np.float16)
    base = big
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base.obj, mmap.mmap) and not isinstance(big, np.memmap) and big.flags.writeable
    big[-1] = 5.0
    assert big.shape == (memory.SMALL_PAGES_MIN_BYTES // 2 + 1, 2) and float(big[-1].sum()) == 10.0
    with pytest.raises(Exception, match="cache must be one of"):
        memory.CacheStore("ram")
    assert memory.available_bytes() > 0


def test_mappings_of_dead_arrays_are_reused_smallest_first_and_released(monkeypatch):
    memory.release_free_areas()
    big, small = memory.memory_array((1 << 20,), np.float32), memory.memory_array((1 << 18,), np.float32)
    big[:], small[:] = 1.0, 2.0
    view = big[10:20]
    del big
    assert memory.free_area_bytes() == 0  # a view keeps the mapping in use
    del view, small
    assert memory.free_area_bytes() == (1 << 22) + (1 << 20)
    again = memory.memory_array((100, 100), np.float64)  # 80,000 bytes: the smaller free mapping
    assert again.shape == (100, 100) and memory.free_area_bytes() == 1 << 22
    again[:] = 5.0
    assert float(again.sum()) == 50000.0
    # what is kept for reuse counts as available when a cache's place is chosen
    store = memory.CacheStore("auto", available=lambda: 1 << 20)
    assert not store.on_disk(1 << 21) and store.on_disk(1 << 23)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 16)
    del again
    assert memory.free_area_bytes() == 0  # more than the system has available: nothing is kept
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 40)
    monkeypatch.setattr(memory, "KEEP_FREE_SHARE", 0.0)
    memory.memory_array((10,), np.float32)
    assert memory.free_area_bytes() == 0  # past the share: nothing is kept
    memory.memory_array((10,), np.float32)
    memory.release_free_areas()
    assert memory.free_area_bytes() == 0


def test_a_cache_that_cannot_be_mapped_in_memory_is_a_memory_error_naming_its_size(monkeypatch):
    def refuse(*args):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(memory.mmap, "mmap", refuse)
    with pytest.raises(MemoryError, match=r"cannot map 0\.50 GiB for a cache in memory .*--cache disk"):
        memory.CacheStore("memory").empty((2**27,), np.float32)


# ---------------------------------------------------------------- damaged files

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert invoke("train", *SMALL, *AUX, "--out", out).exit_code == 0
    return out


def rewrite(path, change):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    change(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


MODEL_DAMAGE = {
    "truncated": (None, "not a readable greedy model file (BadZipFile"),
    "nan weights": (lambda a, m: a["param/0/w"].__setitem__((0, 0), np.nan), "holds NaN"),
    "missing array": (lambda a, m: a.pop("param/0/b"), "param/0/b is missing"),
    "int dtype": (lambda a, m: a.__setitem__("param/0/w", a["param/0/w"].astype(np.int32)), "wrong shape or dtype"),
    "swapped arrays": (lambda a, m: a.update({"param/0/w": a["param/4/w"], "param/4/w": a["param/0/w"]}),
                       "wrong shape or dtype"),
    "huge layer": (lambda a, m: m.update(spec=m["spec"].replace("fc10", "fc100000000")), "would hold"),
    "bad input shape": (lambda a, m: m.update(in_shape=[1, 28, "x"]), "input shape is missing or malformed"),
    "meta not json": (lambda a, m: m.clear(), "spec or input shape"),
}


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
def test_evaluate_on_a_damaged_model_file_is_one_line(finished, tmp_path, damage):
    change, message = MODEL_DAMAGE[damage]
    for name in ("config.json", "model.npz", "summary.json"):
        (tmp_path / name).write_bytes((finished / name).read_bytes())
    model = tmp_path / "model.npz"
    if change is None:
        model.write_bytes(model.read_bytes()[:len(model.read_bytes()) // 2])
    else:
        rewrite(model, change)
    one_line_error(invoke("evaluate", tmp_path), 2, str(model), message)


def interrupted(tmp_path, monkeypatch, args=AUX, n=1):
    with monkeypatch.context() as m:
        stop_at(m, n)
        assert invoke("train", *SMALL, *args, "--out", tmp_path).exit_code == 143
    return tmp_path / "checkpoint.npz"


CHECKPOINT_DAMAGE = {
    "truncated": (None, "not a readable greedy checkpoint"),
    "nan weights": (lambda a, m: a["block/0/block/param/0/w"].__setitem__(0, np.nan), "holds NaN"),
    "wrong shape": (lambda a, m: a.__setitem__("block/0/block/param/0/w", np.zeros((3, 3), np.float32)),
                    "expected float"),
    "extra array": (lambda a, m: a.__setitem__("block/0/block/param/9/w", np.zeros(3, np.float32)),
                    "does not belong to the architecture"),
    "stray array": (lambda a, m: a.__setitem__("block/7/x", np.zeros(3, np.float32)), "belongs to no finished block"),
    "other blocks": (lambda a, m: m.update(specs=["c8k3-relu", "c8k3-relu"]), "are not the run's"),
    "bad random state": (lambda a, m: m.update(rng={"bit_generator": "PCG64", "state": 5}), "bad random state"),
    "negative time": (lambda a, m: m.update(seconds=-1), "bad training time"),
    "other data": (lambda a, m: m.update(data="0" * 24), "other training data"),
    "other method": (lambda a, m: m.update(method="kl"), "a checkpoint of method kl"),
    "newer version": (lambda a, m: m.update(version=2), "checkpoint version 2"),
    "rows missing": (lambda a, m: m.update(per_layer=[]), "per-layer rows"),
    "bad head": (lambda a, m: m["blocks"][0].update(head="fc100000000"), "would hold"),
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_resume_and_evaluate_on_a_damaged_checkpoint_are_one_line(tmp_path, monkeypatch, damage):
    change, message = CHECKPOINT_DAMAGE[damage]
    path = interrupted(tmp_path, monkeypatch)
    if change is None:
        path.write_bytes(path.read_bytes()[:-100])
    else:
        rewrite(path, change)
    one_line_error(invoke("train", "--resume", tmp_path), 2, message)
    result = invoke("evaluate", tmp_path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


CONFIG_DAMAGE = {
    "not json": (lambda text: text[:-5], "cannot read the run config"),
    "not an object": (lambda text: "[1, 2]", "not a JSON object"),
    "bad seed": (lambda text: text.replace('"seed": 0', '"seed": "zero"', 1), "bad or missing seed"),
    "unknown method": (lambda text: text.replace('"method": "aux"', '"method": "magic"'), "unknown method"),
    "bad option type": (lambda text: text.replace('"lr": 0.002', '"lr": "fast"'), "lr='fast' is not a valid value"),
    "option out of range": (lambda text: text.replace('"batch_size": 128', '"batch_size": -3'), "batch_size=-3"),
    "unknown option": (lambda text: text.replace('"options": {', '"options": {"warp": 9, '), "warp is not an option"),
    "other dataset size": (lambda text: text.replace('"n_train": 300', '"n_train": 299'), "other training data"),
}


@pytest.mark.parametrize("damage", sorted(CONFIG_DAMAGE))
def test_resume_on_a_damaged_run_config_is_one_line(tmp_path, monkeypatch, damage):
    change, message = CONFIG_DAMAGE[damage]
    interrupted(tmp_path, monkeypatch)
    config = tmp_path / "config.json"
    text = change(config.read_text())
    assert text != config.read_text()
    config.write_text(text)
    one_line_error(invoke("train", "--resume", tmp_path), 2, message)


def test_checkpoints_never_hand_wrong_shapes_to_a_kernel(tmp_path, monkeypatch):
    """A checkpoint's arrays are checked against blocks built from the run's own specs, then copied into them."""
    from greedy.methods import METHODS
    from greedy.methods import config as configs
    path = interrupted(tmp_path, monkeypatch)
    config = configs.resolve("aux", "mnist", 10, {"arch": "c8k3-bn-relu-max2-c8k3-bn-relu"})
    trainer = METHODS["aux"].trainer_class(config, 10)
    trainer.start(np.zeros((4, 1, 28, 28), np.uint8), None, np.random.default_rng(0))
    (arrays, info), y = load_checkpoint(str(path))[0].blocks[0], np.zeros(4, np.int64)
    block, head = trainer.restore_block(0, config.blocks[0], arrays, info, y, np.random.default_rng(0), "x")
    conv = block.layers[0].params["w"]
    assert conv.dtype == np.float32 and conv.flags.c_contiguous and np.array_equal(conv, arrays["block/param/0/w"])
    assert head is not None and head.out_shape == (10,)
    w = arrays["block/param/0/w"]
    for bad in (w[..., :2], w.astype(np.int64), w.T, w.astype(np.float16).astype(object).astype(np.str_)):
        with pytest.raises(CheckpointError, match="x: array block/param/0/w"):
            trainer.restore_block(0, config.blocks[0], dict(arrays, **{"block/param/0/w": bad}), info, y,
                                  np.random.default_rng(0), "x")
    assert WriteError.exit_code == 1


def test_atomic_files_get_the_mode_open_would_give_them(tmp_path):
    import stat
    from greedy import atomic
    atomic.write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:
        f.write("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == atomic.FILE_MODE
