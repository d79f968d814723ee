"""The per-layer objectives of seed 000, as block trainers for the layer-wise loop.

- ``aux``: the block, pooling, optional hidden convs and a linear softmax head
  are trained together with cross-entropy; the head is then discarded
  (Belilovsky et al. 2019).
- ``cosine``: the block's pooled features are trained with the stable
  class-centroid cosine loss of ``greedy.objectives.cosine_loss``.
- ``kl``: the block's pooled features are trained to maximise a Gaussian
  surrogate of the divergence between class-conditional distributions
  (``greedy.objectives.gaussian_kl_loss``); the divergence reached is measured
  with the k-nearest-neighbour estimator (``greedy.divergence``).

Each ``train_<method>`` has the CLI method signature
``(data, normalizer, opts, run) -> (model, extra summary fields)``.
"""
import functools

from greedy.nn import objectives
from greedy.nn.augment import random_crop_flip
from greedy.cluster.divergence import class_kl_matrix
from greedy.errors import ConfigError
from greedy.methods.layerwise import (Stack, _as32, blocks_from_widths, fit_block, head_layers, parse_spec,
                        pooling_token, split_blocks, train_layerwise)
from greedy.nn.model import Sequential
from greedy.nn.fit import accuracy, predict

COMMON = {"optimizer": "adam", "lr": 2e-3, "schedule": "onecycle", "weight_decay": 5e-4, "batch_size": 128,
          "aux_depth": 0, "aux_pool": "quadrant", "final_pool": "quadrant", "finetune_epochs": 0,
          "final_epochs": 10, "augment": False,
          "augment_pad": 4, "augment_flip": True}

METHOD_DEFAULTS = {
    "aux": {},
    "cosine": {"temperature": 0.01},
    "kl": {"kl_variance": "full", "batch_size": 512},
}

DATASET_DEFAULTS = {
    "mnist": {"blocks": ["c32k5-bn-relu-max2", "c64k3-bn-relu-max2", "c128k3-bn-relu"], "layer_budget": "1e,1e,2e",
              "final_pool": "none", "augment": True, "augment_flip": False, "augment_pad": 2},
    "cifar10": {"blocks": ["c128k3-bn-relu-max2", "c128k3-bn-relu-max2", "c256k3-bn-relu", "c256k3-bn-relu-max2",
                           "c512k3-bn-relu"], "layer_budget": "2e,2e,3e,2e,4e"},
}


# On CIFAR-10 the last block's own head beats a classifier retrained on the same frozen
# 2x2-pooled features (0.786 against 0.773 with five blocks, docs/layerwise.md); on MNIST the
# retrained classifier sees the whole map and wins (0.9925 against 0.9878).
METHOD_DATASET_DEFAULTS = {("aux", "cifar10"): {"final_classifier": "last-head"}}


def resolve_options(opts, dataset, method_defaults=None, method=None):
    """Merge user options (None = unset) over method and dataset defaults; build the block list."""
    base = dict(COMMON, **(method_defaults or {}))
    family = dataset if dataset in DATASET_DEFAULTS else \
        "cifar10" if dataset.startswith("synthetic") and "grey" not in dataset else "mnist"
    base.update(DATASET_DEFAULTS[family])
    base.update(METHOD_DATASET_DEFAULTS.get((method, family), {}))
    o = dict(base, **{k: v for k, v in opts.items() if v is not None})
    if opts.get("arch"):
        o["blocks"] = split_blocks(opts["arch"])
    elif opts.get("layers") or opts.get("width"):
        o["blocks"] = blocks_from_widths(opts.get("layers") or len(base["blocks"]), opts.get("width") or 128)
    if opts.get("epochs") is not None and opts.get("layer_budget") is None:
        o["layer_budget"] = f"{opts['epochs']}e"
    return o


def _epoch_logger(run, layer, model, x_test, y_test):
    """``on_epoch`` callback logging each epoch; with a model, also its test accuracy, kept as ``.last_accuracy``
    (``fit`` calls it after the last step, so that is the trained model's accuracy)."""
    def on_epoch(epoch, loss, train_acc):
        fields = {"train_loss": loss}
        if model is not None:
            fields["aux_test_accuracy"] = on_epoch.last_accuracy = accuracy(model, x_test, y_test, _as32)
        run.log("train_layer", layer=layer, epoch=epoch, **fields)
    on_epoch.last_accuracy = None
    return on_epoch


def feature_augment(opts, in_shape):
    """Random crops and flips of a block's input (N, C, H, W) when ``opts['augment']``, else None.

    The shift scales with the map: up to ``opts['augment_pad']`` pixels at image
    size, at least one pixel on smaller maps. On later blocks the cached maps
    are shifted and mirrored, an approximation of augmenting the image (a conv
    commutes with shifts, not with mirroring).
    """
    if not opts["augment"]:
        return None
    pad = max(1, round(opts["augment_pad"] * in_shape[1] / opts["image_size"]))
    return functools.partial(random_crop_flip, pad=pad, flip=opts["augment_flip"])


def aux_block_trainer(opts, n_classes):
    def train(layer, block, x, y, x_test, y_test, budget, rng, run):
        head = Sequential(head_layers(block.out_shape, n_classes, opts["aux_pool"], opts["aux_depth"])) \
            .build(block.out_shape, rng)
        model = Stack(block, head)
        logger = _epoch_logger(run, layer, model, x_test, y_test)
        fit_block(model, x, y, opts, budget, rng, label=f"aux layer {layer}", progress=run.verbose,
                  augment=feature_augment(opts, block.in_shape), on_epoch=logger)
        acc = logger.last_accuracy
        return {"aux_test_accuracy": accuracy(model, x_test, y_test, _as32) if acc is None else acc, "head": head}
    train.trains_head = True
    return train


def _feature_block_trainer(opts, n_classes, loss_name):
    """Block + pooling trained with a loss on pooled features; reports nearest-centroid accuracy and kNN KL."""
    def train(layer, block, x, y, x_test, y_test, budget, rng, run):
        token = pooling_token(block.out_shape, opts["aux_pool"])
        model = Stack(block, Sequential(parse_spec(token)).build(block.out_shape, rng)) if token else block

        def loss_fn(f, yb, w):
            flat = f.reshape(len(f), -1)
            if loss_name == "cosine":
                value, grad = objectives.cosine_loss(flat, yb, n_classes, temperature=opts["temperature"])
            else:
                value, grad = objectives.gaussian_kl_loss(flat, yb, n_classes,
                                                          variance=opts["kl_variance"])
            return value, grad.reshape(f.shape)

        fit_block(model, x, y, opts, budget, rng, loss_fn=loss_fn, label=f"{loss_name} layer {layer}",
                  progress=run.verbose, augment=feature_augment(opts, block.in_shape),
                  on_epoch=_epoch_logger(run, layer, None, x_test, y_test))
        f_train = predict(model, x[:10000], _as32).reshape(min(len(x), 10000), -1)
        f_test = predict(model, x_test, _as32).reshape(len(x_test), -1)
        centroids = objectives.class_centroids(f_train, y[:10000], n_classes)
        info = {"aux_test_accuracy": float((objectives.cosine_predict(f_test, centroids) == y_test).mean())}
        _, info["knn_kl_mean"] = class_kl_matrix(f_test, y_test, k=1, max_per_class=300)
        return info
    return train


def _train(method, data, normalizer, opts, run):
    o = resolve_options(opts, run.dataset, METHOD_DEFAULTS[method], method)
    o["image_size"] = data.x_train.shape[2]
    n_classes = len(data.class_names)
    if o["aux_depth"] < 0:
        raise ConfigError(f"--aux-depth must be >= 0, got {o['aux_depth']}")
    trainer = aux_block_trainer(o, n_classes) if method == "aux" else _feature_block_trainer(o, n_classes, method)
    run.log("options", blocks=o["blocks"], layer_budget=o["layer_budget"])
    return train_layerwise(data, normalizer, o, run, trainer)


def train_aux(data, normalizer, opts, run):
    """Layer-wise training with an auxiliary classifier per block."""
    return _train("aux", data, normalizer, opts, run)


def train_cosine(data, normalizer, opts, run):
    """Layer-wise training with the cosine class-separation objective per block."""
    return _train("cosine", data, normalizer, opts, run)


def train_kl(data, normalizer, opts, run):
    """Layer-wise training with the Gaussian KL class-divergence objective per block."""
    return _train("kl", data, normalizer, opts, run)

