"""End-to-end training with back-propagation through the whole network: ``--method e2e``, the baseline.

A run folder's checkpoint (``greedy.checkpoint.EpochState``) is written after every epoch; a
resumed run continues after the last finished epoch.
"""
import time

import numpy as np

from greedy.checkpoint import epoch_state, restore_epoch_state
from greedy.cluster.patches import PatchPreprocessor, sample_patches
from greedy.errors import ConfigError
from greedy.methods.base import Method
from greedy.methods.blocks import augmentation
from greedy.nn.fit import accuracy, fit
from greedy.nn.losses import smoothed_cross_entropy
from greedy.nn.layers import Conv2d
from greedy.nn.model import build_model
from greedy.nn.network import Network, Normalizer
from greedy.nn.optim import make_optimizer


# patches sampled for the whitening of the first conv (``whiten_first``), from at most this many images
WHITEN_PATCHES, WHITEN_IMAGES = 100_000, 10_000


def whiten_first_conv(model, x, normalizer, rng):
    """Set the first layer of ``model``, a Conv2d of F filters (F even) of size k over C channels, to the
    whitened top F / 2 principal directions of the k x k patches of ``normalizer(x)`` (x (N, C, H, W)),
    each with its sign flipped as the second half of the filters; the biases centre them. Returns boolean
    masks (all False) for the conv's parameters, in the order of ``model.parameters()``: the optimiser
    keeps them fixed (airbench's patch-whitening layer)."""
    conv = model.layers[0]
    if not isinstance(conv, Conv2d) or x.ndim != 4:
        raise ConfigError("--whiten-first needs images and an architecture that starts with a conv, e.g. c24k3-...")
    w = conv.params["w"]
    f, c, k, _ = w.shape
    if f % 2 or f // 2 > c * k * k:
        raise ConfigError(f"--whiten-first sets the first conv to plus and minus principal directions of its "
                          f"{c * k * k}-value patches: it needs an even number of filters up to {2 * c * k * k}, "
                          f"got {f}")
    images = rng.choice(len(x), size=min(len(x), WHITEN_IMAGES), replace=False)
    sample = sample_patches(normalizer(x[np.sort(images)]), WHITEN_PATCHES, rng, k)
    pre = PatchPreprocessor(c, k, remove_mean=False, n_components=f // 2).fit(sample)
    w[...] = np.concatenate([pre.A_.T, -pre.A_.T]).reshape(w.shape)
    conv.params["b"][...] = np.concatenate([pre.c_, -pre.c_])
    return [np.zeros(conv.params[key].shape, bool) for key in sorted(conv.params)]


class E2E(Method):
    name = "e2e"
    summary = ("End to end (the baseline): the whole architecture (--arch; by default the TensorFlow tutorial's "
               "CNN on MNIST, an airbench-style network on CIFAR-10) is trained with back-propagation through "
               "every layer, mini-batch by mini-batch.")

    def fit(self, x, y, n_classes, config, monitor, eval_set=None):
        c = config
        normalizer = Normalizer().fit(x)
        rng = np.random.default_rng(np.random.SeedSequence(c.seed))
        model = build_model(c.arch, x.shape[1:], n_classes, rng, init_gain=c.init_gain,
                            identity_init=c.identity_init, first_set_elsewhere=c.whiten_first)
        opt = make_optimizer(c.optimizer, c.lr, c.schedule, c.weight_decay)
        if c.whiten_first:
            frozen = whiten_first_conv(model, x, normalizer, rng)
            opt.masks = frozen + [None] * (len(model.parameters()) - len(frozen))
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
                due = c.eval_every and epoch % c.eval_every == 0 and epoch < n_epochs
                fields["accuracy"] = accuracy(model, eval_set[0], eval_set[1], normalizer) if due else None
            monitor.log("epoch", epoch=epoch, n_epochs=n_epochs, **fields)
            monitor.checkpoint(lambda: epoch_state(epoch, n_epochs, model, opt, rng, time.perf_counter() - t0))

        fit(model, x, y, opt, epochs=c.epochs, batch_size=c.batch_size, prepare=normalizer,
            augment=augmentation(c, x.ndim - 2), loss_fn=smoothed_cross_entropy(c.label_smoothing), rng=rng,
            time_budget=c.time_budget, on_epoch=on_epoch, progress=monitor.verbose, label="e2e",
            start_epoch=start_epoch, elapsed=fit_seconds)
        return Network(model, normalizer, tta=c.tta), {"arch": model.spec(), "epochs": c.epochs}


E2E_METHOD = E2E()
