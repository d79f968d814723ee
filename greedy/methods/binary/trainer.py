"""The binary block trainer: gradient-free binary layers, one block each, in the one layer-wise loop.

``BinaryTrainer`` plugs into ``greedy.methods.layerwise.train_layerwise``. Its caches are lists of
``Shard``: the shard's inputs (block 0's input, and the colour feed of later blocks) and the
last block's bit map. Inputs are uint8 images (N, C, H, W), float32 series (N, C, L) or uint8 text
bytes (N, 1, L); sequences are kept as maps one row high, (N, C, 1, L), and their layers have
1 x k windows and 1 x 2 pooling. For each block the loop calls

- ``build``: the layer of one spec (``c128-or2``): an ``ImageLayer`` for block 0 on images and
  series (thermometer levels from the inputs, ``start``), a ``ByteLayer`` on text, a ``ConvLayer``
  after it (with colour levels when the block follows a pooling and ``colour_feed`` is on);
- ``train``: every shard samples its share of patches (MAP); filters are chosen from the merged
  sample and per-shard statistics (``choose_filters``), thresholds from merged activation
  histograms (REDUCE);
- ``propagate``: the frozen layer applied to every shard (a MAP with no reduce).

The classifier sees ``head_features`` of the last bit maps; the nearest-class-mean classifier is
fitted from per-shard class sums (MAP, then REDUCE) and both end in a ``BinaryNetwork``.

Random streams: every draw of this trainer comes from a named child of the run's seed,
``SeedSequence(config.seed, spawn_key=(STREAM, layer, shard))``, so a shard's map step can
recreate its stream from the seed and its own indices wherever it runs. The loop's generator
``rng`` is not drawn from here; it drives only the final classifier.
"""
import time
from typing import NamedTuple

import numpy as np

from greedy import validate
from greedy.errors import ConfigError
from greedy.methods.base import LayerwiseMethod
from greedy.methods.binary.filters import (BINARIZE, PARTITIONS, SPLIT_CONTEXTS, THRESHOLDS, activation_histogram,
                                           choose_filters, flat_sample, map_patch_sample, set_thresholds)
from greedy.methods.binary.layers import (ByteLayer, ConvLayer, ImageLayer, head_features, layer_spec, parse_arch,
                                          max_regions, pool_shape_of, window_of)
from greedy.methods.binary.network import BinaryNetwork, as_map
from greedy.methods.binary.stats import colour_levels, fit_ncm, image_levels, series_scale, shard_ranges
from greedy.methods.layerwise import BlockTrainer
from greedy.methods.resume import binary_block_state, restore_binary_block

# Named random streams (the first entry of a stream's spawn key).
LEVELS_STREAM = 1  # per shard: positions sampled for the image layer's levels
PATCHES_STREAM = 2  # per layer and shard: positions of the sampled patches
KMEANS_STREAM = 3  # per layer: k-means initialisation
SPLIT_STREAM = 4  # per layer: class partitions, and the clusters or positions of split filters
POSITIONS_STREAM = 5  # per layer and shard: images whose position sums make split filters
CURVE_REGIONS = 4  # the curve's region grid when --regions is 0 (flattened bits would not fit in memory)
CURVE_TRAIN_IMAGES = 10_000  # the class means of a block's curve point come from the first shards holding these


def stream(seed, name, layer=0, shard=0):
    """The Generator of one named random stream of a run: ``SeedSequence(seed, spawn_key=(name, layer, shard))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(name, layer, shard)))


class Shard(NamedTuple):
    """One shard of a binary cache: inputs (n, C, H, W) (uint8 images, float32 series or uint8 bytes one row
    high) and the last block's bit map (n, H', W', w) uint64, None before block 0."""
    images: np.ndarray
    bits: np.ndarray = None


def check_config(c):
    """Refuse BinaryConfig values that no click type caught (library use); returns the parsed arch."""
    validate.one_of(c.threshold, "threshold", THRESHOLDS)
    validate.one_of(c.binarize, "binarize", BINARIZE)
    validate.one_of(c.partitions, "partitions", PARTITIONS)
    validate.one_of(c.split_context, "split_context", SPLIT_CONTEXTS)
    validate.number(c.on_fraction, "on_fraction", 0.0, 1.0, low_open=True, high_open=True)
    validate.fraction(c.split_fraction, "split_fraction")
    validate.number(c.split_keep, "split_keep", 0.0, 1.0, low_open=True)
    validate.integer(c.regions, "regions", 0)
    for name in ("levels", "colour_levels", "patch_sample", "shard_size", "split_images", "kmeans_iter"):
        validate.positive_int(getattr(c, name), name)
    return parse_arch(c.arch)


def check_inputs(x, name):
    """uint8 images (N, C, H, W), float32 series (N, C, L) or uint8 bytes (N, 1, L) -> the inputs as a map
    (N, C, H, W), sequences one row high (a view); ConfigError naming ``name`` for anything else."""
    ok = isinstance(x, np.ndarray) and ((x.ndim == 4 and x.dtype == np.uint8) or (
        x.ndim == 3 and (x.dtype == np.float32 or (x.dtype == np.uint8 and x.shape[1] == 1))))
    if not ok:
        raise ConfigError(f"binary networks train on uint8 images (N, C, H, W), float32 series (N, C, L) or uint8 "
                          f"bytes (N, 1, L); the {name} are {getattr(x, 'dtype', type(x).__name__)} of shape "
                          f"{getattr(x, 'shape', None)}")
    return as_map(x)


def layer_input(block, shard):
    """The input map of ``block`` on one ``Shard``: its inputs for the first layer, else the previous bit map
    with the colour feed appended."""
    if isinstance(block, (ImageLayer, ByteLayer)):
        return block.inputs(None, 0, shard.images)
    return block.inputs(shard.bits, block.n_bits - block.colour_bits, shard.images)


class BinaryTrainer(BlockTrainer):
    """Binary layers chosen from map/reduce statistics of per-shard patches; no gradient, no budget."""

    def __init__(self, config, n_classes):
        super().__init__(config, n_classes)
        self.specs = check_config(config)

    def block_specs(self):
        return [layer_spec(width, k, pool) for width, k, pool in self.specs]

    def budgets(self, n_blocks):
        return [None] * n_blocks

    def stream(self, name, layer=0, shard=0):
        return stream(self.config.seed, name, layer, shard)

    def start(self, x, x_eval, rng):
        c = self.config
        self.cpu0 = time.process_time()
        x, in_shape = check_inputs(x, "training inputs"), x.shape[1:]
        self.set_inputs(in_shape, x.dtype)
        if x_eval is not None:
            x_eval = check_inputs(x_eval, "evaluation inputs")
            if x_eval.shape[1:] != x.shape[1:] or x_eval.dtype != x.dtype:
                raise ConfigError(f"the evaluation inputs are {x_eval.dtype} {x_eval.shape[1:]}, the training "
                                  f"inputs {x.dtype} {x.shape[1:]}")
        self.ranges = shard_ranges(len(x), c.shard_size)
        self.images = [x[a:b] for a, b in self.ranges]
        self.scale = series_scale(self.images)
        self.levels = None if self.bytes else image_levels(
            self.images, c.levels, c.colour_norm, c.patch_sample,
            [self.stream(LEVELS_STREAM, 0, s) for s in range(len(self.images))], self.window(0), self.scale)
        self.class_means, self.eval_features, self.prepared = None, None, None
        cache_eval = None
        if x_eval is not None:
            cache_eval = [Shard(x_eval[a:b]) for a, b in shard_ranges(len(x_eval), c.shard_size)]
        return [Shard(im) for im in self.images], cache_eval

    def set_inputs(self, in_shape, dtype):
        """The kind of inputs of one sample, (C, H, W) images or (C, L) sequences (bytes if uint8); refuses
        options that do not fit them: majority pooling on sequences, the colour feed on bytes."""
        self.in_shape = tuple(in_shape)
        self.sequence = len(self.in_shape) == 2
        self.bytes = self.sequence and np.dtype(dtype) == np.uint8
        c = self.config
        if self.sequence and any(p == "majority" for _, _, p in self.specs):
            raise ConfigError(f"arch {c.arch!r}: maj2 pools 2x2 windows of images; sequences pool with or2")
        if self.bytes and c.colour_feed and any(p is not None for _, _, p in self.specs[:-1]):
            raise ConfigError("--colour-feed thermometer-codes pooled inputs; text bytes have no levels "
                              "(use --no-colour-feed)")

    def window(self, layer):
        """The (kh, kw) window of a layer: (1, k) on sequences, (k, k) on images."""
        return window_of(self.specs[layer][1], self.sequence)

    def build(self, layer, spec, rng):
        c = self.config
        ((width, k, pool),) = parse_arch(spec)
        window = window_of(k, self.sequence)
        if layer == 0:
            if self.bytes:
                return ByteLayer(pool=pool, window=window)
            return ImageLayer(self.levels, c.colour_norm, pool=pool, window=window,
                              pool_shape=pool_shape_of(self.sequence))
        pools = sum(p is not None for _, _, p in self.specs[:layer])
        feed = c.colour_feed and self.specs[layer - 1][2] is not None
        levels = self.feed_levels(pools) if feed else None
        return ConvLayer(self.specs[layer - 1][0] + (0 if levels is None else levels.size), pool=pool,
                         colour_levels=levels, colour_pools=pools, window=window,
                         pool_shape=pool_shape_of(self.sequence))

    def feed_levels(self, pools):
        """Thermometer levels (C, colour_levels) of the training inputs pooled ``pools`` times (the colour feed)."""
        return colour_levels(self.images, pools, self.config.colour_levels, pool_shape_of(self.sequence),
                             self.scale)

    def layer_input(self, block, shard):
        return layer_input(block, shard)

    def train(self, layer, block, x, y, x_eval, y_eval, budget, rng, monitor):
        c, width = self.config, self.specs[layer][0]
        self.labels = [y[a:b] for a, b in self.ranges]
        inputs = [self.layer_input(block, shard) for shard in x]  # MAP
        n_total = sum(len(inp) for inp in inputs)
        parts = [map_patch_sample(block, inp, lab, c.patch_sample, n_total, self.stream(PATCHES_STREAM, layer, s))
                 for s, (inp, lab) in enumerate(zip(inputs, self.labels))]  # MAP: each shard samples its share
        bits = choose_filters(block, inputs, self.labels, [flat_sample(p) for p in parts], self.n_classes, width, c,
                              self.stream(KMEANS_STREAM, layer), self.stream(SPLIT_STREAM, layer),
                              [self.stream(POSITIONS_STREAM, layer, s) for s in range(len(inputs))])
        block.filters = block.pack_filters(bits)
        hist = activation_histogram(block, parts)  # MAP and REDUCE
        sampled_on = set_thresholds(block, hist, c.threshold, c.on_fraction)
        self.prepared = (x, inputs)  # propagate() on the same cache reuses the inputs (colour feed appended)
        return {"filters": width, "code_bits": block.n_code_bits, "fraction_on": round(sampled_on, 4)}

    def propagate(self, layer, block, x):
        inputs = self.prepared[1] if self.prepared is not None and self.prepared[0] is x else None
        self.prepared = None
        if inputs is None:
            inputs = [self.layer_input(block, shard) for shard in x]
        return [Shard(shard.images, block.forward(inp)) for shard, inp in zip(x, inputs)]  # MAP

    def features(self, x, which, rng):
        feats = [head_features(shard.bits, self.specs[-1][0], self.config.regions) for shard in x]  # MAP
        if which == "train":
            self.class_means = fit_ncm(feats, self.labels, self.n_classes)  # MAP and REDUCE
            return np.concatenate(feats)
        self.eval_features = np.concatenate(feats)
        return self.eval_features

    def block_accuracy(self, layer, block, x, y, x_eval, y_eval, info):
        """Nearest-class-mean test accuracy on the set-bit fractions of this block's bit map in a grid of regions;
        the class means from the first training shards holding CURVE_TRAIN_IMAGES images (MAP, REDUCE); the test
        shards one at a time; no random draws. None after the last block: the classifier's point follows."""
        if layer == len(self.specs) - 1:
            return None
        n_bits, (h, w) = self.specs[layer][0], x[0].bits.shape[1:3]
        regions = min(self.config.regions or CURVE_REGIONS, max_regions(h, w))
        n_shards = int(np.searchsorted(np.cumsum([len(s.images) for s in x]), CURVE_TRAIN_IMAGES)) + 1
        means = fit_ncm((head_features(s.bits, n_bits, regions) for s in x[:n_shards]), self.labels[:n_shards],
                        self.n_classes)
        offset = 0.5 * (means * means).sum(axis=1)
        right, start = 0, 0
        for shard in x_eval:
            f = head_features(shard.bits, n_bits, regions).astype(np.float64)
            right += int(((f @ means.T - offset).argmax(1) == y_eval[start:start + len(f)]).sum())
            start += len(f)
        return right / len(y_eval)

    def classifier_options(self):
        c = self.config
        return {"hidden": "none", "epochs": c.epochs, "lr": c.lr, "batch_size": c.batch_size,
                "weight_decay": c.weight_decay, "min_steps": c.final_min_steps}

    def assemble(self, blocks, classifier, state):
        (dense,) = classifier
        net = BinaryNetwork(blocks[0], blocks[1:], self.in_shape, self.n_classes, self.config.regions,
                            dense.params["w"], dense.params["b"], self.class_means, self.config.arch)
        ncm = None
        if self.eval_features is not None:
            ncm = float((net.ncm_scores(self.eval_features).argmax(1) == state["y_eval"]).mean())
        self.eval_features = None
        state["monitor"].log("ncm", ncm_accuracy=ncm)
        packed, float32 = net.size_bytes()
        # CPU seconds of all threads: a steadier figure than wall time on a shared machine
        return net, {"arch": self.config.arch, "ncm_accuracy": ncm,
                     "cpu_seconds": round(time.process_time() - self.cpu0, 1), "model_bytes": packed,
                     "float32_model_bytes": float32, "filter_bits": net.filter_bits()}

    def block_state(self, layer, block, head):
        return binary_block_state(block)

    def restore_block(self, layer, spec, arrays, info, y, rng, where):
        block = self.build(layer, spec, rng)
        restore_binary_block(block, self.specs[layer][0], arrays, where)
        self.labels = [y[a:b] for a, b in self.ranges]
        return block, None


class Binary(LayerwiseMethod):
    name = "binary"
    summary = ("Binary features (seed 003): every feature is a bit and every filter a bit string; each layer's "
               "filters come from k-means on its input patches and from class splits (no gradients), its "
               "thresholds from activation quantiles, and inference is popcounts up to a linear head.")
    trainer_class = BinaryTrainer


BINARY = Binary()
