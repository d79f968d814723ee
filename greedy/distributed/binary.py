"""``--method binary`` across sites: the binary layers of ``greedy.methods.binary``, with every pass over the
training images run on the sites (``greedy.distributed.binary_ops``).

The coordinator plays the REDUCE of the binary trainer's map/reduce statistics:

- the image layer's thermometer levels from the sites' value histograms (and the colour feed's
  levels from histograms of the pooled images);
- per block: the sites sample their share of patches (kept on the site); the k-means filters come
  from k-means on the sites (``greedy.distributed.kmeans``: local k-means merged by weight, then
  Lloyd sums and counts); the split filters from the sites' per-class sums and counts; the
  thresholds from the sites' activation histograms; the fitted block goes to every site, which
  writes its bit map on its own disk;
- the nearest-class-mean classifier from per-site class sums of the head features; the linear
  classifier, which no sum can give, from the head features themselves: every image's region
  popcounts with its label (``--share codes``), or per site and class weighted prototypes of them
  (``--share prototypes``).

Random streams are the single-machine ones (``BinaryTrainer.stream``), with the sites' shards numbered
one after another; the k-means filters differ (merged local k-means instead of k-means++ on the
pooled sample). The model is the same ``BinaryNetwork`` a single-machine run makes.
"""
import time

import numpy as np

from greedy.distributed import binary_ops as bops
from greedy.distributed.kmeans import init_on_sites, lloyd_on_sites
from greedy.distributed.patchbag import SHARES
from greedy.errors import ConfigError
from greedy.methods.binary.filters import (binarize_centroids, class_partitions, n_split_filters, set_thresholds,
                                           split_centres, split_filters_from_sums)
from greedy.methods.binary.layers import head_features
from greedy.methods.binary.stats import (colour_levels_from_histogram, level_range, quantiles_from_histogram,
                                         reduce_sums, shard_ranges)
from greedy.methods.binary.trainer import (KMEANS_STREAM, SPLIT_STREAM, BinaryTrainer, Shard, layer_input)
from greedy.methods.classifier import train_classifier


class _NoPreprocessing:
    A_ = c_ = None  # k-means filters cluster the patch bits themselves


class SitesBinaryTrainer(BinaryTrainer):
    """The binary trainer whose training images are on sites: the colour feed's levels come from the sites."""

    def __init__(self, config, n_classes, sites):
        super().__init__(config, n_classes)
        self.sites = sites

    def feed_levels(self, pools):
        hists = self.sites.run("levels", bops.colour_histogram, (pools, self.config.shard_size))
        return colour_levels_from_histogram(reduce_sums(hists), self.config.colour_levels)


class SitesBinary:
    """Train a binary network on ``sites`` (``greedy.distributed.cluster.Sites``); ``config`` a resolved
    BinaryConfig, ``share`` "codes" or "prototypes" (``per_class`` prototypes per class and site),
    ``run_key`` names the caches on the sites."""

    def __init__(self, sites, config, n_classes, share, per_class, run_key):
        if share not in SHARES:
            raise ConfigError(f"--share must be one of {', '.join(SHARES)}, got {share!r}")
        self.sites, self.config, self.n_classes = sites, config, n_classes
        self.share, self.per_class, self.run_key = share, per_class, run_key
        self.trainer = SitesBinaryTrainer(config, n_classes, sites)

    def _traffic(self, monitor, step, layer):
        monitor.log("traffic", layer=layer, step=step, **self.sites.ledger.close_phase(step))

    def fit(self, image_shape, eval_set, monitor):
        """Returns (BinaryNetwork, summary fields) like ``Method.fit``; ``eval_set`` (x_test, y_test) on the
        coordinator, which propagates it itself."""
        c, t = self.config, self.trainer
        x_eval, y_eval = eval_set
        if len(image_shape) != 3 or x_eval.dtype != np.uint8:
            raise ConfigError("binary networks on sites train on uint8 images (N, C, H, W); sequences train "
                              "in one process (without --sites)")
        t.cpu0 = time.process_time()
        t.set_inputs(image_shape, x_eval.dtype)
        t.scale = None
        info = self.sites.run("levels", bops.site_info, (self.n_classes, c.shard_size))
        self.sizes = [r["n"] for r in info]
        self.offsets = [int(v) for v in np.cumsum([0] + [r["shards"] for r in info])[:-1]]
        n_total = sum(self.sizes)
        hist = reduce_sums(self.sites.run("levels", bops.level_histogram,
                                          (c.colour_norm, c.patch_sample, n_total, c.shard_size, c.seed),
                                          [(o,) for o in self.offsets]))
        lo, hi, _ = level_range(c.colour_norm)
        t.levels = quantiles_from_histogram(hist, lo, hi, c.levels)
        self._traffic(monitor, "levels", 0)
        cache_eval = [Shard(x_eval[a:b]) for a, b in shard_ranges(len(x_eval), c.shard_size)]
        blocks, per_layer = [], []
        for layer, spec in enumerate(t.block_specs()):
            block = t.build(layer, spec, None)
            self._traffic(monitor, "levels", layer)  # the colour feed's levels (no round for other layers)
            start = time.perf_counter()
            info = self.train_block(layer, block, n_total, monitor)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            out = self.sites.run("propagate", bops.propagate, (self.run_key, layer, block, c.shard_size))
            cache_eval = [Shard(s.images, block.forward(layer_input(block, s))) for s in cache_eval]
            monitor.log("propagate", layer=layer, seconds_in_phase=time.perf_counter() - start,
                        out_shape=list(out[0][1:]))
            self._traffic(monitor, "propagate", layer)
            per_layer.append(dict(info, layer=layer, spec=spec, budget=None, train_seconds=round(train_s, 3)))
            monitor.log("layer_done", layer=layer, **{k: v for k, v in per_layer[-1].items() if k != "layer"})
            blocks.append(block)
        classifier, acc, extra = self.train_head(blocks, cache_eval, y_eval, monitor)
        model, fields = t.assemble(blocks, classifier, {"y_eval": y_eval, "monitor": monitor})
        return model, dict(fields, layers=per_layer, classifier_accuracy=acc, **extra)

    def train_block(self, layer, block, n_total, monitor):
        """Filters and thresholds of ``block`` from the sites' statistics (as ``BinaryTrainer.train``)."""
        c, width, n_classes = self.config, self.trainer.specs[layer][0], self.n_classes
        src = {"binary": True, "run": self.run_key, "layer": layer, "block": block, "patch_sample": c.patch_sample,
               "n_total": n_total, "shard_size": c.shard_size, "seed": c.seed, "offsets": self.offsets}
        n_split = n_split_filters(width, c.split_fraction, n_classes)
        start = time.perf_counter()
        chosen, per_site = [], [(i,) for i in range(len(self.sizes))]
        if width - n_split:
            kseed = int(self.trainer.stream(KMEANS_STREAM, layer).integers(2**31))
            centres, variance = init_on_sites(self.sites, src, _NoPreprocessing(), list(range(len(self.sizes))),
                                              width - n_split, c.kmeans_iter, kseed)
            self._traffic(monitor, "kmeans_init", layer)
            centres, inertia, n_iter, _ = lloyd_on_sites(self.sites, src, list(range(len(self.sizes))), centres,
                                                         c.kmeans_iter, 1e-4 * variance)
            self._traffic(monitor, "kmeans_lloyd", layer)
            chosen.append(binarize_centroids(centres, c.binarize))
            monitor.log("fit_dictionary", layer=layer, seconds_in_phase=time.perf_counter() - start,
                        kmeans_iterations=n_iter, kmeans_inertia=inertia)
        if n_split:
            if c.split_context == "cluster" and not chosen:
                raise ConfigError("split_context 'cluster' needs k-means filters (split fraction below 1)")
            split_rng = self.trainer.stream(SPLIT_STREAM, layer)
            partitions = class_partitions(n_classes, n_split, c.partitions, split_rng)
            centres = split_centres(block, chosen[0]) if c.split_context == "cluster" else None
            parts = self.sites.run("split_sums", bops.split_sums,
                                   (src, c.split_context, n_classes, c.split_images, centres), per_site)
            sums = sum(p["sums"].astype(np.float64) for p in parts)
            counts = sum(p["counts"] for p in parts)
            chosen.append(split_filters_from_sums(block, c.split_context, sums, counts, partitions,
                                                  chosen[0] if chosen else None, n_classes, split_rng, c.split_keep))
            self._traffic(monitor, "split_sums", layer)
        block.filters = block.pack_filters(np.concatenate(chosen))
        hist = reduce_sums(self.sites.run("thresholds", bops.activation_histogram, (src, block), per_site))
        sampled_on = set_thresholds(block, hist, c.threshold, c.on_fraction)
        self._traffic(monitor, "thresholds", layer)
        monitor.log("train", layer=layer, seconds_in_phase=time.perf_counter() - start)
        return {"filters": width, "code_bits": block.n_code_bits, "fraction_on": round(sampled_on, 4)}

    def train_head(self, blocks, cache_eval, y_eval, monitor):
        """(classifier layers, its test accuracy, summary fields): class means from the sites' sums, the linear
        classifier on the head features the sites send."""
        c, t = self.config, self.trainer
        width, start = t.specs[-1][0], time.perf_counter()
        parts = self.sites.run("features", bops.head,
                               (self.run_key, len(blocks), width, c.regions, self.n_classes, self.share,
                                self.per_class, c.seed))
        t.class_means = (sum(p["class_sums"] for p in parts)
                         / np.maximum(sum(p["class_counts"] for p in parts), 1)[:, None])
        y = np.concatenate([p["y"] for p in parts])
        if self.share == "codes":
            if c.regions:
                feats = np.concatenate([p["counts"] for p in parts]) / parts[0]["area"]
            else:
                d = len(t.class_means[0])
                feats = np.unpackbits(np.concatenate([p["counts"] for p in parts]), axis=1)[:, :d]
        else:  # a prototype of weight w counts as w images
            repeats = np.concatenate([p["weights"] for p in parts]).astype(np.int64)
            feats = np.repeat(np.concatenate([p["features"] for p in parts]).astype(np.float32), repeats, axis=0)
            y = np.repeat(y, repeats)
        self._traffic(monitor, "features", len(blocks))
        t.eval_features = np.concatenate([head_features(s.bits, width, c.regions) for s in cache_eval])

        def on_epoch(epoch, n_epochs, loss, train_acc):
            monitor.log("classifier_epoch", layer=len(blocks), epoch=epoch, n_epochs=n_epochs, train_loss=loss)

        rng = np.random.default_rng(np.random.SeedSequence(c.seed))  # the loop's stream, as on one machine
        classifier, acc = train_classifier(feats, y, t.eval_features, y_eval, self.n_classes, rng,
                                           on_epoch=on_epoch, progress=monitor.verbose, **t.classifier_options())
        monitor.log("classifier", layer=len(blocks), seconds_in_phase=time.perf_counter() - start,
                    classifier_accuracy=acc)
        return classifier, acc, {"classifier_rows": len(y)}
