"""The run contract: config.json, metrics.jsonl, summary.json and model.npz in one folder.

Every training method writes the same files so that scripts can read any run:

- ``config.json``: every option as resolved for the run (method and dataset defaults filled in),
  the dataset, the package versions, the seed and the threads; ``train --config`` and
  ``train --resume`` read it back;
- ``metrics.jsonl``: one JSON object per event (epoch or phase) with at least ``method``,
  ``layer`` (None for end-to-end), ``epoch``, ``phase``, ``seconds`` (since the start of
  training) and the phase's figures. Accuracy names: ``head_accuracy`` (a block's own head on the
  test set), ``classifier_accuracy`` (the final classifier on the test features, without
  test-time flips), ``accuracy`` (the whole model during end-to-end training or fine-tuning);
- ``summary.json``: ``method``, ``dataset``, ``test_accuracy`` (the final model, with its
  test-time augmentation), ``test_accuracy_without_tta``, ``train_seconds``, ``compile_seconds``,
  ``n_parameters``, ``peak_memory_mb`` (the process's peak resident memory) and method-specific
  figures; its presence marks a finished run;
- ``model.npz``: see ``greedy.modelfile``;
- ``checkpoint.npz`` while the run is unfinished (``greedy.checkpoint``): written after every
  finished block and after the final classifier (layer-wise), or after every epoch (end to
  end); ``train --resume`` continues from it; deleted when the run finishes;
- ``.lock``: a ``fcntl.flock`` lock held while a process trains in the folder.

Reliability: every file is written atomically (``greedy.atomic``); a write that fails is a
one-line ``WriteError`` naming the file; SIGINT and SIGTERM stop the run at its next checkpoint
(``stop_on_signals``), and a second SIGINT stops it at once.
"""
import contextlib
import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import re
import signal
import sys
import threading

from greedy import atomic, checkpoint
from greedy.checkpoint import writing
from greedy.errors import CheckpointError, ConfigError
from greedy.monitor import Monitor, plain

RESULT_FILES = ("summary.json", "model.npz", checkpoint.FILE)


def versions():
    import numba
    import numpy
    import scipy

    from greedy import __version__
    return {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "click": importlib.metadata.version("click"), "greedy": __version__}


def default_out_dir(method, dataset, root="runs"):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{method}-{dataset.replace(':', '-').replace('/', '-')}-{stamp}")


def resume_hint(out_dir):
    return f"continue with `python cli.py train --resume {out_dir}`"


class RunInterrupted(Exception):
    """A run stopped on a signal; ``exit_code`` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def lock_folder(folder):
    """An open file holding an exclusive ``flock`` on ``folder/.lock``; ConfigError if another process holds it.

    The lock dies with its process, however that process ends."""
    path = os.path.join(folder, ".lock")
    with writing(path):
        f = open(path, "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(f"{folder}: another greedy process is training in this folder (it holds {path}); "
                          f"wait for it to end or choose another --out") from None
    except OSError as e:
        f.close()
        raise checkpoint.write_error(path, e) from None
    return f


class Run(Monitor):
    """One training run's folder: a Monitor whose events also go to metrics.jsonl, and which writes
    the run's checkpoints.

    ``exist`` says what to do with a folder that already holds a run (a config.json):
    "replace" (start afresh: its summary, model and checkpoint are deleted), "refuse"
    (ConfigError) or "resume" (append to its metrics, keep its config.json, and hand its
    checkpoint to the method through ``resumed``). The folder is locked for the Run's life
    (``close``). The clock (``seconds``) starts at ``start()``, called once the data is loaded;
    a resumed run's clock goes on from the checkpoint's.
    """

    def __init__(self, out_dir, method, dataset, config, verbose=True, exist="replace"):
        super().__init__(verbose=verbose, method=method)
        self.out_dir, self.dataset, self.folder = out_dir, dataset, out_dir
        self.stop_signal, self.saved, self.saved_info, self.data = None, None, None, ""
        self.stop_at_once = False
        self._metrics = self._lock = None
        with writing(out_dir):
            os.makedirs(out_dir, exist_ok=True)
        self._lock = lock_folder(out_dir)
        try:
            self._open(config, exist)
        except BaseException:
            self.close()
            raise

    def _open(self, config, exist):
        config_path = self.path("config.json")
        with writing(self.out_dir):
            names = os.listdir(self.out_dir)
        for name in names:  # temporary files left by a writer that was killed; the lock says none is running
            if name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in RESULT_FILES + ("config.json",)):
                with writing(self.path(name)), contextlib.suppress(FileNotFoundError):
                    os.remove(self.path(name))
        if exist == "refuse" and os.path.exists(config_path):
            finished = os.path.exists(self.path("summary.json"))
            raise ConfigError(f"--out {self.out_dir} holds {'a finished' if finished else 'an unfinished'} run (its "
                              f"config.json); choose another folder or give --overwrite to replace it"
                              + ("" if finished else f", or {resume_hint(self.out_dir)}"))
        self.config = dict(config, method=self.method, dataset=self.dataset)
        if exist == "resume":
            if os.path.exists(self.path("summary.json")):
                raise ConfigError(f"{self.out_dir}: the run is finished (summary.json); there is nothing to resume")
            if os.path.exists(self.path(checkpoint.FILE)):
                self.saved, self.saved_info = checkpoint.load(self.path(checkpoint.FILE))
                if self.saved_info["method"] != self.method:
                    raise CheckpointError(f"{self.path(checkpoint.FILE)}: a checkpoint of method "
                                          f"{self.saved_info['method']}, the run's config.json says {self.method}")
        else:
            for name in RESULT_FILES:
                with writing(self.path(name)), contextlib.suppress(FileNotFoundError):
                    os.remove(self.path(name))
            self.config["versions"] = versions()
            with writing(config_path):
                atomic.write_json(config_path, plain(self.config))
        with writing(self.path("metrics.jsonl")):
            self._metrics = open(self.path("metrics.jsonl"), "a" if exist == "resume" else "w")

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def start(self):
        super().start()
        if self.saved_info is not None:
            self.t0 -= self.saved_info["seconds"]

    def expect_data(self, digest):
        """Record the training set's fingerprint; a resumed run must see the data its checkpoint saw."""
        if self.saved_info is not None and self.saved_info["data"] != digest:
            raise CheckpointError(f"{self.path(checkpoint.FILE)}: the checkpoint was written for other training "
                                  f"data (different files or sample counts) than this run loaded")
        self.data = digest

    def record(self, event):
        self._raise_if_stopped_at_once()
        with writing(self.path("metrics.jsonl")):
            self._metrics.write(json.dumps(event) + "\n")
            self._metrics.flush()

    def resumed(self, kind):
        if self.saved is None:
            return None
        if self.saved.kind != kind:
            raise CheckpointError(f"{self.path(checkpoint.FILE)}: a {self.saved.kind} checkpoint, but method "
                                  f"{self.method} writes {kind} checkpoints")
        return self.saved

    def checkpoint(self, make_state):
        """Write ``make_state()`` to checkpoint.npz; then, if a signal asked the run to stop, stop it."""
        self._raise_if_stopped_at_once()
        state = make_state()
        checkpoint.save(self.path(checkpoint.FILE), state,
                        {"method": self.method, "seconds": self.seconds(), "data": self.data})
        self.log("checkpoint", progress=state.progress())
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            raise RunInterrupted(self.stop_signal, f"{name}: stopped with {state.progress()} (checkpoint "
                                                   f"{self.path(checkpoint.FILE)}); {resume_hint(self.out_dir)}")

    def _raise_if_stopped_at_once(self):
        """Raise the second SIGINT's KeyboardInterrupt again at the run's own safe points: the code it first
        lands in may drop it (an exception in a weakref callback, such as a freed ThreadPoolExecutor's, or in
        a ``__del__`` is printed and ignored)."""
        if self.stop_at_once:
            raise KeyboardInterrupt

    def progress(self):
        """What the last checkpoint holds, e.g. '2 of 3 blocks done' ('nothing done yet' without one)."""
        return unfinished(self.out_dir) or "nothing done yet"

    def finish(self, summary):
        summary = dict({"method": self.method, "dataset": self.dataset}, **summary)
        path = self.path("summary.json")
        with writing(path):
            atomic.write_json(path, plain(summary))
        with writing(self.path(checkpoint.FILE)), contextlib.suppress(FileNotFoundError):
            os.remove(self.path(checkpoint.FILE))
        self.close()
        return summary

    def close(self):
        """Close metrics.jsonl and release the folder's lock (idempotent)."""
        for f in (self._metrics, self._lock):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._metrics = self._lock = None


@contextlib.contextmanager
def stop_on_signals(run):
    """While inside: SIGINT or SIGTERM asks ``run`` to stop at its next checkpoint (``Run.checkpoint``
    raises RunInterrupted there). A second SIGINT raises KeyboardInterrupt as soon as Python runs
    again (after the running kernel returns), and again at the run's next log or checkpoint should the
    code it landed in have dropped it; a second SIGTERM ends the process. Only in the main
    thread; elsewhere signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def at_once(signum, frame):
        run.stop_at_once = True
        raise KeyboardInterrupt

    def handler(signum, frame):
        run.stop_signal = signum
        signal.signal(signal.SIGINT, at_once)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(f"{signal.Signals(signum).name}: stopping at the next checkpoint (end of the block or epoch); "
              f"press Ctrl-C again to stop at once", file=sys.stderr, flush=True)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- reading a run folder

def _is_int(v, low=None):
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def read_run_config(path):
    """The checked dict of a run's config.json: method, dataset (str), seed (int), options (dict),
    threads, n_train, n_test (positive ints or None), data_dir (str or None); CheckpointError naming
    ``path`` if it is missing, unreadable or malformed."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no run config here (is this a run folder?)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read the run config ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]})") from None
    problems = []
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a greedy run config (not a JSON object)")
    for key, ok in (("method", isinstance(saved.get("method"), str)), ("dataset", isinstance(saved.get("dataset"), str)),
                    ("seed", _is_int(saved.get("seed"))), ("options", isinstance(saved.get("options", {}), dict)),
                    ("data_dir", saved.get("data_dir") is None or isinstance(saved.get("data_dir"), str))):
        if not ok:
            problems.append(key)
    for key in ("threads", "n_train", "n_test"):
        if saved.get(key) is not None and not _is_int(saved[key], 1):
            problems.append(key)
    if problems:
        raise CheckpointError(f"{path}: not a greedy run config (bad or missing {', '.join(problems)})")
    return saved


def unfinished(folder):
    """None when ``folder`` holds no run or a finished one (summary.json); else what is done, e.g.
    '2 of 3 blocks done', from its checkpoint (CheckpointError if that is damaged)."""
    if not os.path.isfile(os.path.join(folder, "config.json")) or os.path.exists(os.path.join(folder, "summary.json")):
        return None
    path = os.path.join(folder, checkpoint.FILE)
    if os.path.exists(path):
        return checkpoint.load(path)[0].progress()
    saved = read_run_config(os.path.join(folder, "config.json"))
    options = saved.get("options", {})
    if saved["method"] == "e2e" and isinstance(options.get("epochs"), (int, float)):
        return f"0 of {max(int(-(-options['epochs'] // 1)), 1)} epochs done"
    blocks = options.get("blocks")
    if not (isinstance(blocks, list) and blocks) and isinstance(options.get("arch"), str):
        blocks = re.findall(r"(?:^|-)c\d+", options["arch"])  # binary layers, c<filters> each
    return f"0 of {len(blocks)} blocks done" if isinstance(blocks, list) and blocks else "nothing done yet"


def check_options(cls, options, where):
    """Refuse recorded option values of the wrong type or outside their CLI range (config class ``cls``)."""
    import click
    for f in dataclasses.fields(cls):
        if f.name not in options or options[f.name] is None:
            continue
        v, kind = options[f.name], f.metadata.get("type")
        ok = {"int": _is_int(v), "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "bool": isinstance(v, bool), "str": isinstance(v, str),
              "list": isinstance(v, list) and all(isinstance(s, str) for s in v)}.get(
                  f.type if isinstance(f.type, str) else f.type.__name__, True)
        if ok and isinstance(kind, click.ParamType):
            try:
                kind.convert(v, None, None)
            except click.BadParameter:
                ok = False
        if not ok:
            raise CheckpointError(f"{where}: recorded option {f.name}={v!r:.60} is not a valid value")


def resolve_recorded(method, family, n_classes, options, tta_default, where):
    """The config of a run resumed from its recorded (resolved) ``options``; CheckpointError naming
    ``where`` unless they are valid and resolve to themselves."""
    from greedy.methods import config as configs
    cls = method.config_class
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise CheckpointError(f"{where}: {unknown[0]} is not an option of method {method.name}")
    check_options(cls, options, where)
    values = dict(options)
    if values.get("arch"):  # a recorded --arch names each block's activation itself
        values.pop("activation", None)
    try:
        config = method.resolve(family, n_classes, values, tta_default)
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{where}: the recorded options do not resolve ({e})") from None
    if plain(configs.to_dict(config)) != options:
        raise CheckpointError(f"{where}: the recorded options are not what they resolve to")
    return config
