"""The run contract: config.json, metrics.jsonl, summary.json and model.npz in one folder.

Every training method writes the same files so that scripts can read any run:

- ``config.json``: every option as resolved for the run (method and dataset defaults filled in),
  the dataset, the package versions, the seed and the threads; ``train --config`` reads it back;
- ``metrics.jsonl``: one JSON object per event (epoch or phase) with at least ``method``,
  ``layer`` (None for end-to-end), ``epoch``, ``phase``, ``seconds`` (since the start of
  training) and the phase's figures. Accuracy names: ``head_accuracy`` (a block's own head on the
  test set), ``classifier_accuracy`` (the final classifier on the test features, without
  test-time flips), ``accuracy`` (the whole model during end-to-end training or fine-tuning);
- ``summary.json``: ``method``, ``dataset``, ``test_accuracy`` (the final model, with its
  test-time augmentation), ``test_accuracy_without_tta``, ``train_seconds``, ``compile_seconds``,
  ``n_parameters`` and method-specific figures;
- ``model.npz``: see ``greedy.modelfile``.
"""
import datetime
import importlib.metadata
import json
import os
import platform

from greedy import atomic
from greedy.monitor import Monitor, plain


def versions():
    import numba
    import numpy
    import scipy

    from greedy import __version__
    return {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "click": importlib.metadata.version("click"), "greedy": __version__}


def default_out_dir(method, dataset, root="runs"):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{method}-{dataset}-{stamp}")


class Run(Monitor):
    """One training run's folder: a Monitor whose events also go to metrics.jsonl.

    The clock (``seconds``) starts at ``start()``, called once the data is loaded.
    """

    def __init__(self, out_dir, method, dataset, config, verbose=True):
        super().__init__(verbose=verbose, method=method)
        self.out_dir, self.dataset = out_dir, dataset
        os.makedirs(out_dir, exist_ok=True)
        self.config = dict(config, method=method, dataset=dataset, versions=versions())
        atomic.write_json(self.path("config.json"), plain(self.config))
        self._metrics = open(self.path("metrics.jsonl"), "w")

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def record(self, event):
        self._metrics.write(json.dumps(event) + "\n")
        self._metrics.flush()

    def finish(self, summary):
        summary = dict({"method": self.method, "dataset": self.dataset}, **summary)
        atomic.write_json(self.path("summary.json"), plain(summary))
        self._metrics.close()
        return summary
