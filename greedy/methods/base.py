"""The protocol of a training method: its name, its config class, and ``fit``.

A method turns raw training samples into a ``TrainedModel``. The registry
(``greedy.methods.METHODS``) holds the method objects themselves, so a reader can follow a run
from the CLI or the estimator straight into ``Method.fit``.
"""
import numpy as np

from greedy.memory import release_free_areas
from greedy.methods import config as configs
from greedy.methods.layerwise import train_layerwise


class Method:
    """A training method. ``name`` is its CLI name; ``summary`` explains it in two or three sentences."""
    name = None
    summary = ""

    @property
    def config_class(self):
        return configs.CONFIGS[self.name]

    def resolve(self, family, n_classes, values=None, tta_default="none"):
        """The method's config for a dataset family, with ``values`` (a dict, None = unset) applied."""
        return configs.resolve(self.name, family, n_classes, values, tta_default)

    def fit(self, x, y, n_classes, config, monitor, eval_set=None):
        """Train on raw samples x (N, ...) with int labels y (N,) in [0, n_classes).

        ``eval_set`` (x_eval, y_eval) or None: figures logged during training are measured on it.
        Returns (TrainedModel, dict of summary fields)."""
        raise NotImplementedError


class LayerwiseMethod(Method):
    """A greedy method: a ``BlockTrainer`` class driven by the one layer-wise loop."""
    trainer_class = None

    def fit(self, x, y, n_classes, config, monitor, eval_set=None):
        rng = np.random.default_rng(np.random.SeedSequence(config.seed))
        trainer = self.trainer_class(config, n_classes)
        trainer.store.folder = monitor.folder
        monitor.log("options", blocks=trainer.block_specs(), layer_budget=getattr(config, "layer_budget", None))
        try:
            return train_layerwise(trainer, x, y, eval_set, monitor, rng)
        finally:
            trainer = None
            release_free_areas()
