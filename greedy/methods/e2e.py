"""End-to-end training with back-propagation through the whole network: ``--method e2e``, the baseline.

A run folder's checkpoint (``greedy.checkpoint.EpochState``) is written after every epoch; a
resumed run continues after the last finished epoch.
"""
import time

import numpy as np

from greedy.checkpoint import epoch_state, restore_epoch_state
from greedy.methods.base import Method
from greedy.nn.augment import random_crop_flip
from greedy.nn.fit import accuracy, fit
from greedy.nn.model import build_model
from greedy.nn.network import Network, Normalizer
from greedy.nn.optim import make_optimizer


class E2E(Method):
    name = "e2e"
    summary = ("End to end (the baseline): the whole architecture (--arch, by default the TensorFlow tutorial's "
               "CNN) is trained with back-propagation through every layer, mini-batch by mini-batch.")

    def fit(self, x, y, n_classes, config, monitor, eval_set=None):
        c = config
        normalizer = Normalizer().fit(x)
        rng = np.random.default_rng(np.random.SeedSequence(c.seed))
        model = build_model(c.arch, x.shape[1:], n_classes, rng)
        opt = make_optimizer(c.optimizer, c.lr, c.schedule, c.weight_decay)
        n_epochs = int(np.ceil(c.epochs))
        saved, start_epoch, fit_seconds = monitor.resumed("e2e"), 0, 0.0
        if saved is not None:
            restore_epoch_state(saved, model, opt, rng, n_epochs)
            start_epoch, fit_seconds = saved.epochs_done, saved.fit_seconds
            monitor.log("resume", progress=saved.progress())
        t0 = time.perf_counter() - fit_seconds

        def on_epoch(epoch, loss, train_acc):
            fields = {"train_loss": loss, "train_accuracy": train_acc}
            if eval_set is not None:
                fields["accuracy"] = accuracy(model, eval_set[0], eval_set[1], normalizer)
            monitor.log("epoch", epoch=epoch, n_epochs=n_epochs, **fields)
            monitor.checkpoint(lambda: epoch_state(epoch, n_epochs, model, opt, rng, time.perf_counter() - t0))

        fit(model, x, y, opt, epochs=c.epochs, batch_size=c.batch_size, prepare=normalizer,
            augment=random_crop_flip if c.augment else None, rng=rng, time_budget=c.time_budget,
            on_epoch=on_epoch, progress=monitor.verbose, label="e2e", start_epoch=start_epoch, elapsed=fit_seconds)
        return Network(model, normalizer, tta=c.tta), {"arch": model.spec(), "epochs": c.epochs}


E2E_METHOD = E2E()
