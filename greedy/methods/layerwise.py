"""The layer-wise training loop shared by every greedy method, and the block-trainer protocol.

A network is a list of *blocks*. For each block in turn (``train_layerwise``):

1. the block's input is the cached output of the frozen blocks before it, computed once per
   block, never per step;
2. a method-specific ``BlockTrainer`` trains the block on that input with a per-block objective
   that never evaluates later blocks (an auxiliary classifier, cosine separation, KL divergence,
   patch-bag codes, or the gradient-free statistics of binary filters);
3. the trained block is frozen and applied to the real input to make the next block's input.

Then a softmax classifier is trained on features of the last cache (``greedy.methods.classifier``)
and the trainer assembles the blocks and the classifier into a ``TrainedModel``.

With evaluation data, the loop logs the run's time-to-accuracy curve (``greedy.plotting``): a
``curve`` event, ``{"phase": "curve", "layer": i, "seconds": s, "accuracy": a, "source": ...}`` (a: on
the evaluation data, the test set in a run folder),
after each block (``source`` "block": the blocks so far with that block's head, from
``BlockTrainer.block_accuracy``), after the classifier ("classifier") and after each fine-tuning
epoch ("finetune"). Its evaluation is never part of a block's ``train_seconds`` and draws no
random numbers.

``ConvBlockTrainer`` is the trainer of conv blocks (aux, cosine, kl, patchbag): its caches are
normalised float maps, its classifier sees the last block's pooled map (or every block's, with
``final_features="all"``), and its model is a plain ``Sequential`` in a ``Network``.
"""
import time

import numpy as np

from greedy.checkpoint import build_within, float_values
from greedy.errors import CheckpointError, ConfigError
from greedy.kernels.cast import as_float32
from greedy.memory import CacheStore, cache_fields
from greedy.methods.blocks import (augmentation, block_shapes, input_normalizer, normalize_cache, parse_budget,
                                   pool_maps, pooling_token, propagate, spec_ndim, tap_layer, tap_pool_sizes)
from greedy.methods.classifier import train_classifier
from greedy.methods.resume import (layerwise_state, restore_blocks, restore_classifier, restore_sequential,
                                   sequential_state)
from greedy.nn.fit import accuracy, fit, predict
from greedy.nn.model import Sequential, parse_spec
from greedy.nn.network import Network
from greedy.nn.optim import make_optimizer
from greedy.nn.pooling import Concat


class BlockTrainer:
    """How one kind of block is built, trained, applied and assembled: the loop's only dependency.

    ``config`` is the method's resolved config; ``n_classes`` the number of classes. The loop calls
    ``training_set`` and ``start``, then for each block ``build``, ``train``, ``propagate`` and
    ``after_block``, then ``features``, trains the classifier on them, and ends with ``assemble``. A run folder's
    checkpoints (``greedy.methods.resume``) save each finished block with ``block_state`` and
    rebuild it with ``restore_block``. ``store`` (``greedy.memory.CacheStore``) allocates caches.
    """
    trains_head = False  # True when train() returns the block's trained head under "head"
    n_originals = None  # set by a training_set that adds samples: the given ones are the first n_originals

    def __init__(self, config, n_classes):
        self.config, self.n_classes = config, n_classes
        self.store = CacheStore(getattr(config, "cache", "auto"))

    def classifier_is_final(self):
        """Whether the model ends with the classifier the loop trains: its accuracy is then the curve's
        point after the classifier."""
        return True

    def block_specs(self):
        return list(self.config.blocks)

    def budgets(self, n_blocks):
        """One (amount, unit) budget per block."""
        return parse_budget(self.config.layer_budget, n_blocks)

    def training_set(self, x, y):
        """(x, y): the raw samples (N', ...) and labels (N',) the loop trains on, from the given ones
        (N, ...), (N,). The default is them; a trainer may add to them (e.g. mirror images)."""
        return x, y

    def start(self, x, x_eval, rng):
        """The first block's input caches (training, evaluation or None) from raw samples."""
        raise NotImplementedError

    def build(self, layer, spec, rng):
        """An untrained block for ``spec`` on the current cache."""
        raise NotImplementedError

    def train(self, layer, block, x, y, x_eval, y_eval, budget, rng, monitor):
        """Train ``block`` in place on cache x (N, ...) and labels y; returns figures to log."""
        raise NotImplementedError

    def propagate(self, layer, block, x):
        """The next block's input cache: the frozen ``block`` applied to cache x. After the last block it
        may be None, when the classifier does not read that block's output (``features`` then gets None)."""
        raise NotImplementedError

    def after_block(self, layer, block, x, x_eval, rng):
        """Called with the new caches after each block (e.g. to keep pooled maps for the classifier)."""

    def block_accuracy(self, layer, block, x, y, x_eval, y_eval, info):
        """The test accuracy (a float in [0, 1], or None) of the blocks so far with block ``layer``'s head,
        for the run's curve. Called when there is evaluation data, after ``propagate``, with the block's output
        caches x (training) and x_eval (evaluation; None after a last block whose output is not made), labels
        y (N,) and y_eval, and ``info``, the figures ``train``
        returned. The default is the head accuracy ``train`` measured on the evaluation data (no extra
        work); a trainer whose ``train`` measures none overrides this with an evaluation of its own,
        in chunks, that draws no random numbers."""
        return info.get("head_accuracy")

    def block_state(self, layer, block, head):
        """(dict of arrays, JSON-ready dict) that ``restore_block`` rebuilds the finished block
        ``layer`` and its head (or None) from."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its blocks in a checkpoint")

    def restore_block(self, layer, spec, arrays, info, y, rng, where):
        """(block, head) from ``block_state`` output read from a file, called where ``build`` would be;
        y (N,) the training labels. Every array is checked against the block ``spec`` builds before
        use; CheckpointError naming ``where`` if one does not fit."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore its blocks from a checkpoint")

    def features(self, x, which, rng):
        """(N, D) float features for the classifier of the final cache x (or None, ``propagate``) of the
        ``which`` set ("train" or "eval"); None when x is None and nothing else feeds the classifier."""
        raise NotImplementedError

    def classifier_inputs(self, n_features):
        """The number of inputs of the final classifier trained on ``n_features`` features: the same,
        unless ``fit_classifier`` adds inputs of its own."""
        return n_features

    def fit_classifier(self, feats, y, feats_eval, y_eval, rng, on_epoch=None, progress=False):
        """(classifier layers, accuracy on the evaluation features or None): the final classifier trained
        on the features (N, D) of ``features`` (``train_classifier`` with ``classifier_options``)."""
        return train_classifier(feats, y, feats_eval, y_eval, self.n_classes, rng, on_epoch=on_epoch,
                                progress=progress, **self.classifier_options())

    def classifier_options(self):
        """Keyword arguments of ``train_classifier``."""
        c = self.config
        return {"hidden": c.final_hidden, "epochs": c.final_epochs, "lr": c.final_lr,
                "batch_size": c.final_batch_size, "weight_decay": c.final_weight_decay,
                "min_steps": c.final_min_steps}

    def assemble(self, blocks, classifier, state):
        """(TrainedModel, summary fields) from the trained blocks and the classifier's layers.

        ``state`` holds what the loop knows at the end: caches, heads, accuracies."""
        raise NotImplementedError


def train_layerwise(trainer, x, y, eval_set, monitor, rng):
    """Train ``trainer``'s blocks one at a time, then the classifier; returns (model, summary fields).

    x (N, ...) raw samples, y (N,) int labels; ``eval_set`` (x_eval, y_eval) or None: figures
    logged on the way (a block's head accuracy, the classifier's) are measured on it.
    ``rng`` (a Generator) is the run's one stream, drawn from in a fixed order.
    """
    x_eval, y_eval = eval_set if eval_set is not None else (None, None)
    x, y = trainer.training_set(x, y)
    cache, cache_eval = trainer.start(x, x_eval, rng)
    specs = trainer.block_specs()
    budgets = trainer.budgets(len(specs))
    blocks, per_layer, heads = [], [], []
    saved = monitor.resumed("layerwise")
    if saved is not None:
        cache, cache_eval, blocks, heads, per_layer = restore_blocks(trainer, saved, specs, (cache, cache_eval), y,
                                                                     rng, monitor)
    for layer in range(len(blocks), len(specs)):
        spec, budget = specs[layer], budgets[layer]
        block = trainer.build(layer, spec, rng)
        t = time.perf_counter()
        info = trainer.train(layer, block, cache, y, cache_eval, y_eval, budget, rng, monitor)
        heads.append(info.pop("head", None))
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        cache = trainer.propagate(layer, block, cache)
        cache_eval = None if cache_eval is None else trainer.propagate(layer, block, cache_eval)
        monitor.log("propagate", layer=layer, seconds_in_phase=time.perf_counter() - t,
                    out_shape=list(np.shape(cache)[1:]) if isinstance(cache, np.ndarray) else None,
                    **cache_fields(cache))
        if x_eval is not None:
            t = time.perf_counter()
            acc = trainer.block_accuracy(layer, block, cache, y, cache_eval, y_eval, info)
            if acc is not None:
                monitor.log("curve", layer=layer, accuracy=float(acc), source="block",
                            seconds_in_phase=round(time.perf_counter() - t, 3))
        budget_text = None if budget is None else f"{budget[0]:g}{budget[1]}"
        per_layer.append(dict(info, layer=layer, spec=spec, budget=budget_text, train_seconds=round(train_s, 3)))
        monitor.log("layer_done", layer=layer, **{k: v for k, v in per_layer[-1].items() if k != "layer"})
        blocks.append(block)
        trainer.after_block(layer, block, cache, cache_eval, rng)
        monitor.checkpoint(lambda: layerwise_state(trainer, specs, blocks, heads, per_layer, rng))

    feats = trainer.features(cache, "train", rng)
    feats_eval = None if x_eval is None else trainer.features(cache_eval, "eval", rng)
    t = time.perf_counter()

    def on_epoch(epoch, n_epochs, loss, train_acc):
        monitor.log("classifier_epoch", layer=len(blocks), epoch=epoch, n_epochs=n_epochs, train_loss=loss)

    if saved is not None and saved.classifier is not None:
        classifier, acc = restore_classifier(trainer, saved,
                                             trainer.classifier_inputs(feats.reshape(len(feats), -1).shape[1]), rng)
    else:
        classifier, acc = trainer.fit_classifier(feats.reshape(len(feats), -1), y,
                                                 None if feats_eval is None else feats_eval.reshape(len(feats_eval), -1),
                                                 y_eval, rng, on_epoch=on_epoch, progress=monitor.verbose)
        seconds = time.perf_counter() - t
        if acc is not None and trainer.classifier_is_final():
            monitor.log("curve", layer=len(blocks), accuracy=float(acc), source="classifier")
        monitor.log("classifier", layer=len(blocks), seconds_in_phase=seconds, classifier_accuracy=acc)
        monitor.checkpoint(lambda: layerwise_state(trainer, specs, blocks, heads, per_layer, rng, (classifier, acc)))
    state = {"cache_eval": cache_eval, "y_eval": y_eval, "heads": heads, "classifier_accuracy": acc,
             "monitor": monitor, "rng": rng, "x": x, "y": y, "x_eval": x_eval}
    model, extra = trainer.assemble(blocks, classifier, state)
    return model, dict(extra, layers=per_layer)


class ConvBlockTrainer(BlockTrainer):
    """Conv blocks on normalised image maps or sequences; the base of aux, cosine, kl and patchbag.

    Images (C, H, W) get 2-D blocks, sequences (C, L) 1-D ones. Byte sequences (uint8 (1, L)) are
    not normalised: the first block starts with the byte embedding that reads their codes.

    Subclasses implement ``train``. The model is ``Sequential(blocks + pooling + classifier)``:
    with ``final_features="all"`` each block but the last ends in a ``tap<k>`` and the classifier
    follows a ``cat`` of every block's pooled map. With ``final_classifier="last-head"`` the last
    block keeps the head it was trained with (a subclass with ``trains_head``).
    """

    def start(self, x, x_eval, rng):
        c = self.config
        if c.final_classifier == "last-head" and not self.trains_head:
            raise ConfigError("--final-classifier last-head needs a method whose blocks train a head (aux)")
        if x.ndim == 3 and x.dtype == np.uint8 and not self.block_specs()[0].startswith("emb"):
            raise ConfigError(f"byte sequences need a byte embedding first, e.g. emb16-{self.block_specs()[0]}")
        self.normalizer = input_normalizer(x[:self.n_originals])
        self.image_shape = tuple(x.shape[1:])
        self.shape = self.image_shape
        shapes = block_shapes(self.block_specs(), self.shape)
        self.pool = pooling_token(shapes[-1], c.final_pool)
        self.tap_sizes = tap_pool_sizes(shapes, self.pool) if c.final_features == "all" else None
        self.taps, self.tapped, self.tapped_eval, self.pooled = [], [], [], []
        return (normalize_cache(self.normalizer, x, self.store),
                None if x_eval is None else normalize_cache(self.normalizer, x_eval, self.store))

    def build(self, layer, spec, rng):
        return Sequential.from_spec(spec).build(self.shape, rng)

    def propagate(self, layer, block, x):
        """The block's output cache; with a tap after this block, its pooled map too, computed batch by
        batch as the output is written and kept for ``after_block``."""
        tap = self.tap_sizes[layer] if self.tap_sizes and layer < len(self.tap_sizes) else None
        if tap is None:
            return propagate(block, x, store=self.store)
        pooled = []

        def keep(i, rows):
            pooled.append(pool_maps(rows, tap))

        out = propagate(block, x, store=self.store, each_batch=keep)
        self.pooled.append((out, np.concatenate(pooled)))
        return out

    def block_state(self, layer, block, head):
        arrays, info = sequential_state(block, "block/")
        if head is not None:
            head_arrays, head_info = sequential_state(head, "head/")
            arrays.update(head_arrays)
            info["rngs"].update(head_info["rngs"])
        info["head"] = None if head is None else head.spec()
        return arrays, info

    def restore_block(self, layer, spec, arrays, info, y, rng, where):
        block = self.build(layer, spec, rng)
        restore_sequential(block, arrays, info, where, "block/")
        head, head_spec = None, info.get("head")
        if head_spec is not None:
            if not isinstance(head_spec, str):
                raise CheckpointError(f"{where}: the head's spec is not a string")
            try:
                head = Sequential.from_spec(head_spec)
            except ConfigError as e:
                raise CheckpointError(f"{where}: bad head spec ({e})") from None
            head = build_within(head, block.out_shape, rng, float_values(arrays), where)
            if tuple(head.out_shape) != (self.n_classes,):
                raise CheckpointError(f"{where}: the head {head_spec} has {head.out_shape} outputs, not "
                                      f"{self.n_classes} classes")
            restore_sequential(head, arrays, info, where, "head/")
        return block, head

    def after_block(self, layer, block, x, x_eval, rng):
        self.shape = tuple(block.out_shape) if x is None else x.shape[1:]
        if self.tap_sizes and layer < len(self.tap_sizes):
            self.taps.append(tap_layer(self.tap_sizes[layer], x.ndim))
            self.taps[-1].build(self.shape, rng)
            block.layers.append(self.taps[-1])
            self.tapped.append(self._pooled_of(x))
            if x_eval is not None:
                self.tapped_eval.append(self._pooled_of(x_eval))
        self.pooled = []

    def _pooled_of(self, cache):
        """The tap's pooled map of ``cache`` kept by ``propagate``."""
        return next(pooled for out, pooled in self.pooled if out is cache)

    def features(self, x, which, rng):
        if not hasattr(self, "pool_layers"):
            self.pool_layers = parse_spec(self.pool, spec_ndim(self.shape)) if self.pool else []
            self.pooler = Sequential(self.pool_layers).build(self.shape, rng) if self.pool_layers else None
            self.cat = []
            if self.taps:
                self.cat = [Concat()]
                self.cat[0].taps = self.taps
                pooled_shape = self.pooler.out_shape if self.pooler else self.shape
                self.cat[0].build(pooled_shape, rng)
        last = [] if x is None else [predict(self.pooler, x, as_float32) if self.pooler else x]
        if not self.taps:
            return last[0] if last else None
        tapped = self.tapped if which == "train" else self.tapped_eval
        return np.concatenate([as_float32(f).reshape(len(f), -1) for f in tapped + last], axis=1)

    def classifier_is_final(self):
        """With ``final_classifier="last-head"`` the model ends with the last block's head, whose point the
        curve already has, not with the retrained classifier."""
        return self.config.final_classifier == "retrain"

    def assemble(self, blocks, classifier, state):
        c = self.config
        body = [lay for b in blocks for lay in b.layers]
        acc = state["classifier_accuracy"]
        extra = {"final_classifier": c.final_classifier}
        if c.final_classifier == "last-head":
            head = state["heads"][-1]
            extra["retrained_classifier_accuracy"] = acc
            acc = None if state["cache_eval"] is None else accuracy(head, state["cache_eval"], state["y_eval"], as_float32)
            model = Sequential(body + head.layers)
        else:
            model = Sequential(body + self.pool_layers + self.cat + classifier)
        model.in_shape, model.out_shape = self.image_shape, (self.n_classes,)
        extra.update(arch=model.spec(), accuracy_before_finetune=acc, finetuned=False)
        network = Network(model, self.normalizer, tta=c.tta)
        if c.finetune_epochs:
            t = time.perf_counter()
            finetune(network, state["x"], state["y"], state["x_eval"], state["y_eval"], c, state["rng"],
                     state["monitor"])
            extra.update(finetuned=True, finetune_seconds=round(time.perf_counter() - t, 3))
        return network, extra


def finetune(network, x, y, x_eval, y_eval, config, rng, monitor):
    """Train the whole stack end to end for ``config.finetune_epochs`` epochs at a small rate."""
    model, normalizer = network.model, network.normalizer
    lr = config.finetune_lr or config.lr * 0.1
    opt = make_optimizer(config.optimizer, lr, "cosine", config.weight_decay)

    def on_epoch(epoch, loss, train_acc):
        fields = {"train_loss": loss}
        if x_eval is not None:
            fields["accuracy"] = accuracy(model, x_eval, y_eval, normalizer)
        monitor.log("finetune", epoch=epoch, **fields)
        if x_eval is not None:
            monitor.log("curve", epoch=epoch, accuracy=fields["accuracy"], source="finetune")

    fit(model, x, y, opt, epochs=config.finetune_epochs, batch_size=config.batch_size, prepare=normalizer,
        augment=augmentation(config, x.ndim - 2), rng=rng, on_epoch=on_epoch,
        progress=monitor.verbose, label="finetune")
