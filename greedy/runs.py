"""The run contract: config.json, metrics.jsonl, summary.json and model.npz in one folder.

Every training method writes the same files so that scripts can read any run:

- ``config.json``: every resolved option, package versions, seed, threads;
- ``metrics.jsonl``: one JSON object per event (epoch or phase) with at least
  ``method``, ``layer`` (None for end-to-end), ``epoch``, ``phase``,
  ``seconds`` (since the start of training), ``train_loss`` and
  ``test_accuracy`` where measured;
- ``summary.json``: ``method``, ``dataset``, ``test_accuracy``,
  ``train_seconds``, ``n_parameters`` and method-specific figures;
- ``model.npz``: see ``greedy.model``.
"""
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time


def versions():
    import numba
    import numpy
    import scipy
    return {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "click": importlib.metadata.version("click"), "greedy": _greedy_version()}


def _greedy_version():
    from greedy import __version__
    return __version__


def atomic_write_text(path, text):
    """Write text to ``path`` through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def default_out_dir(method, dataset, root="runs"):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{method}-{dataset}-{stamp}")


class Run:
    """One training run's folder. ``log(**event)`` appends to metrics.jsonl and prints a line.

    The clock (``seconds``) starts at ``start()``, which methods call after the data is loaded.
    """

    def __init__(self, out_dir, method, dataset, config, verbose=True):
        self.out_dir = out_dir
        self.method = method
        self.dataset = dataset
        self.verbose = verbose
        os.makedirs(out_dir, exist_ok=True)
        self.config = dict(config, method=method, dataset=dataset, versions=versions())
        atomic_write_text(self.path("config.json"), json.dumps(self.config, indent=2, default=str))
        self._metrics = open(self.path("metrics.jsonl"), "w")
        self.t0 = time.perf_counter()

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def start(self):
        self.t0 = time.perf_counter()

    def seconds(self):
        return time.perf_counter() - self.t0

    def log(self, phase, layer=None, epoch=None, **fields):
        event = {"method": self.method, "layer": layer, "epoch": epoch, "phase": phase,
                 "seconds": round(self.seconds(), 3)}
        event.update({k: _plain(v) for k, v in fields.items()})
        self._metrics.write(json.dumps(event) + "\n")
        self._metrics.flush()
        if self.verbose:
            where = "" if layer is None else f"layer {layer} "
            when = "" if epoch is None else f"epoch {epoch} "
            rest = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if not isinstance(v, (list, dict)))
            print(f"[{event['seconds']:8.1f}s] {where}{when}{phase}: {rest}", file=sys.stderr, flush=True)
        return event

    def finish(self, summary):
        summary = dict({"method": self.method, "dataset": self.dataset}, **summary)
        atomic_write_text(self.path("summary.json"), json.dumps(_plain(summary), indent=2))
        self._metrics.close()
        return summary


def _plain(v):
    """Convert numpy scalars/arrays inside v to JSON-serialisable Python values."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
