"""``--method patchbag`` across sites: the patch-bag blocks of ``greedy.methods.patchbag``, with every pass
over the training images run on the sites.

For each block: the sites sample patches from their own input cache and send the patch moments
(the coordinator fits the whitening, ``PatchPreprocessor``); k-means runs on the sites
(``greedy.distributed.kmeans``); each site encodes its images and sends, with ``--share codes``,
every image's centroid counts and label, or with ``--share prototypes`` per class ``per_class``
weighted prototypes of them; the coordinator trains the block's ``CodeLayer`` on those exactly as
the single-machine trainer does and folds it into the conv; the frozen block goes to every site,
which writes the next block's input on its own disk. At the end the sites send the pooled
last-block features (or per-class prototypes of them) and the coordinator trains the final
classifier. The test split stays on the coordinator, which propagates it itself.
The model is the same ``Network`` a single-machine run makes.

Sequences (N, C, L) take the same path with windows of k positions. A text network's first block
(``emb<E>-c<F>k<k>``) sends its fixed byte embedding to the sites, which embed their bytes; with
``--byte-codes hash`` no dictionary is fitted: each site counts its sequences' hashed byte k-grams
and sends, per code, the sum of its preprocessed windows (``greedy.distributed.sequence_ops``).
"""
import time

import numpy as np

from greedy.cluster.bytecodes import hashed_codes
from greedy.cluster.codes import RegionCodes, encode
from greedy.cluster.patches import PatchPreprocessor
from greedy.distributed import ops, sequence_ops
from greedy.distributed.kmeans import init_on_sites, lloyd_on_sites
from greedy.errors import ConfigError
from greedy.methods.blocks import block_shapes, input_normalizer, normalize_cache, pool_maps, pooling_token, propagate
from greedy.methods.blocks import tap_layer, tap_pool_sizes
from greedy.methods.classifier import train_classifier
from greedy.methods.patchbag import PatchbagTrainer, block_activation, block_embedding
from greedy.nn.model import Sequential
from greedy.nn.network import Normalizer

SHARES = ("codes", "prototypes")


def normalizer_on_sites(sites, n_classes):
    """The per-channel ``Normalizer`` of all the sites' images from their moments, the class counts (n_classes,)
    and the sites' numbers of images."""
    m = sites.run("normalise", ops.input_moments, (n_classes,))
    values = sum(r["values"] for r in m)
    mean = sum(r["sum"] for r in m) / values
    std = np.sqrt(np.maximum(sum(r["sumsq"] for r in m) / values - mean * mean, 0)) + 1e-6
    classes = sum(r["classes"] for r in m)
    return Normalizer(mean.astype(np.float32), std.astype(np.float32)), classes, [r["n"] for r in m]


def preprocessor_from_moments(pre, moments):
    """``pre`` (an unfitted PatchPreprocessor) fitted to the pooled moments of the sites' patch samples."""
    n = sum(r["n"] for r in moments)
    mean = sum(r["sum"] for r in moments) / n
    n_cov = sum(r["n_cov"] for r in moments)
    s1 = sum(r["cov_sum"] for r in moments)
    outer = sum(r["outer"] for r in moments)
    cov = (outer - np.outer(mean, s1) - np.outer(s1, mean) + n_cov * np.outer(mean, mean)) / max(n_cov - 1, 1)
    return pre.fit_moments(mean, (cov + cov.T) / 2)


class SitesPatchbag:
    """Train a patch-bag network on ``sites`` (``greedy.distributed.cluster.Sites``).

    ``config`` a resolved PatchbagConfig; ``share`` "codes" or "prototypes" (``per_class``
    prototypes per class and site); ``run_key`` names the caches on the sites."""

    def __init__(self, sites, config, n_classes, share, per_class, run_key):
        if share not in SHARES:
            raise ConfigError(f"--share must be one of {', '.join(SHARES)}, got {share!r}")
        self.sites, self.config, self.n_classes = sites, config, n_classes
        self.share, self.per_class, self.run_key = share, per_class, run_key
        self.trainer = PatchbagTrainer(config, n_classes)  # builds blocks, pools, assembles the Network

    def fit(self, image_shape, eval_set, monitor):
        """Returns (Network, summary fields) like ``Method.fit``; ``eval_set`` (x_test, y_test) on the coordinator."""
        c, t = self.config, self.trainer
        rng = np.random.default_rng(np.random.SeedSequence(c.seed))
        x_eval, y_eval = eval_set
        if len(image_shape) not in (2, 3):
            raise ConfigError(f"patchbag on sites trains on images (C, H, W) or sequences (C, L), "
                              f"got samples of shape {tuple(image_shape)}")
        byte_input = len(image_shape) == 2 and x_eval.dtype == np.uint8
        if byte_input and not t.block_specs()[0].startswith("emb"):
            raise ConfigError(f"byte sequences need a byte embedding first, e.g. emb16-{t.block_specs()[0]}")
        normalizer, classes, sizes = normalizer_on_sites(self.sites, self.n_classes)
        if byte_input:  # the embedding looks the byte codes up: no standardisation (``input_normalizer``)
            normalizer = input_normalizer(x_eval[:1])
        self.sites.run("normalise", ops.normalise, (self.run_key, normalizer.mean, normalizer.std))
        self._traffic(monitor, "normalise", None)
        t.normalizer, t.image_shape, t.shape = normalizer, tuple(image_shape), tuple(image_shape)
        shapes = block_shapes(t.block_specs(), t.shape)
        t.pool = pooling_token(shapes[-1], c.final_pool)
        t.tap_sizes = tap_pool_sizes(shapes, t.pool) if c.final_features == "all" else None
        t.taps, t.tapped, t.tapped_eval = [], [], []
        cache_eval = normalize_cache(normalizer, x_eval)
        blocks, per_layer = [], []
        budgets = t.budgets(len(t.block_specs()))
        for layer, spec in enumerate(t.block_specs()):
            block = t.build(layer, spec, rng)
            start = time.perf_counter()
            info = self.train_block(layer, block, cache_eval, y_eval, budgets[layer], rng, sizes, monitor)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            tap = t.tap_sizes[layer] if t.tap_sizes and layer < len(t.tap_sizes) else 0
            out = self.sites.run("propagate", ops.propagate_block, (self.run_key, layer, block, tap))
            cache_eval = propagate(block, cache_eval)
            monitor.log("propagate", layer=layer, seconds_in_phase=time.perf_counter() - start,
                        out_shape=list(out[0][1:]))
            self._traffic(monitor, "propagate", layer)
            if tap:
                t.taps.append(tap_layer(tap, cache_eval.ndim))
                t.taps[-1].build(cache_eval.shape[1:], rng)
                block.layers.append(t.taps[-1])
                t.tapped_eval.append(pool_maps(cache_eval, tap))
            t.shape = cache_eval.shape[1:]
            per_layer.append(dict(info, layer=layer, spec=spec, budget=f"{budgets[layer][0]:g}{budgets[layer][1]}",
                                  train_seconds=round(train_s, 3)))
            monitor.log("layer_done", layer=layer, **{k: v for k, v in per_layer[-1].items() if k != "layer"})
            blocks.append(block)
        start = time.perf_counter()
        feats_eval = t.features(cache_eval, "eval", rng)
        feats_eval = feats_eval.reshape(len(feats_eval), -1)
        parts = self.sites.run("features", ops.final_features,
                               (self.run_key, len(blocks), t.pool, list(range(len(t.taps))), self.share,
                                self.per_class, self.n_classes, int(rng.integers(2**31))))
        feats = np.concatenate([p["features"] for p in parts]).astype(np.float32)
        y = np.concatenate([p["y"] for p in parts])
        if self.share == "prototypes":  # a prototype of weight w counts as w images
            repeats = np.concatenate([p["weights"] for p in parts]).astype(np.int64)
            feats, y = np.repeat(feats, repeats, axis=0), np.repeat(y, repeats)
        self._traffic(monitor, "features", len(blocks))

        def on_epoch(epoch, n_epochs, loss, train_acc):
            monitor.log("classifier_epoch", layer=len(blocks), epoch=epoch, n_epochs=n_epochs, train_loss=loss)

        classifier, acc = train_classifier(feats, y, feats_eval, y_eval, self.n_classes, rng, on_epoch=on_epoch,
                                           progress=monitor.verbose, **t.classifier_options())
        monitor.log("classifier", layer=len(blocks), seconds_in_phase=time.perf_counter() - start,
                    classifier_accuracy=acc)
        state = {"cache_eval": cache_eval, "y_eval": y_eval, "heads": [None] * len(blocks),
                 "classifier_accuracy": acc, "monitor": monitor, "rng": rng}
        if c.finetune_epochs:
            raise ConfigError("--finetune-epochs trains end to end on the raw images; not on sites")
        model, extra = t.assemble(blocks, classifier, state)
        return model, dict(extra, layers=per_layer, share=self.share, site_samples=sizes,
                           site_classes=classes)

    def train_block(self, layer, block, x_eval, y_eval, budget, rng, sizes, monitor):
        """Fit the dictionary and train the block's conv on the sites' codes (as ``PatchbagTrainer.train``).

        x_eval (N, C, H, W) or (N, C, L) float32: the block's input on the coordinator's test split."""
        c = self.config
        conv, activation = block_activation(block)
        embedding = block_embedding(block)
        src = {"run": self.run_key, "layer": layer, "size": conv.kernel_size, "seed": int(rng.integers(2**31))}
        raw_eval = x_eval
        start = time.perf_counter()
        if embedding is not None:
            self.sites.run("embed", sequence_ops.embed, (self.run_key, layer, embedding))
            self._traffic(monitor, "embed", layer)
            src["file"] = sequence_ops.embedded_name(layer)
            x_eval = propagate(Sequential([embedding]), x_eval)
        pre, counts = self.fit_preprocessor(layer, src, x_eval.shape[1], x_eval.ndim - 2, sizes, monitor)
        side = c.regions
        if embedding is not None and c.byte_codes == "hash":
            buckets, d = c.byte_buckets, pre.A_.shape[1]
            sums = self.sites.run("byte_sums", sequence_ops.byte_sums,
                                  (self.run_key, layer, pre, src["size"], buckets))
            centers, windows = sequence_ops.merge_byte_sums(sums, buckets, d)
            self._traffic(monitor, "byte_sums", layer)
            monitor.log("fit_dictionary", layer=layer, seconds_in_phase=time.perf_counter() - start,
                        codes_used=int((windows > 0).sum()), patch_dim=int(d),
                        explained_variance=pre.explained_variance_ratio_)
            start = time.perf_counter()
            parts = self.sites.run("encode", sequence_ops.byte_codes,
                                   (self.run_key, layer, src["size"], buckets, side, self.share, self.per_class,
                                    self.n_classes, int(rng.integers(2**31))))
            codes_eval = hashed_codes(raw_eval, src["size"], buckets, side)
            stats = {}
        else:
            centers, inertia = self.fit_centroids(layer, src, pre, counts, rng, monitor, start)
            start = time.perf_counter()
            parts = self.sites.run("encode", ops.encode_codes,
                                   (self.run_key, layer, pre, centers, side, self.share, self.per_class,
                                    self.n_classes, int(rng.integers(2**31)), src.get("file")))
            codes_eval = encode(x_eval, pre, centers, side)[0]
            stats = {"kmeans_inertia": inertia}
        codes = RegionCodes([_vstack([p["parts"][r] for p in parts]) for r in range(len(parts[0]["parts"]))])
        y = np.concatenate([p["y"] for p in parts])
        weights = None if self.share == "codes" else np.concatenate([p["weights"] for p in parts])
        n = sum(sizes)
        stats = dict({key: sum(p["stats"][key] * m for p, m in zip(parts, sizes)) / n for key in parts[0]["stats"]},
                     **stats, training_rows=len(y))
        monitor.log("encode", layer=layer, seconds_in_phase=time.perf_counter() - start, **stats)
        self._traffic(monitor, "encode", layer)
        acc = self.trainer.train_on_codes(layer, conv, activation, pre, centers, codes, y, (codes_eval, y_eval),
                                          budget, rng, monitor, weights)
        return dict(stats, head_accuracy=acc)

    def fit_preprocessor(self, layer, src, channels, ndim, sizes, monitor):
        """(the block's PatchPreprocessor fitted to the moments of the sites' patch samples, the number of
        patches each site samples: about ``patch_sample`` in all, shared out by the sites' sizes)."""
        c = self.config
        total = sum(sizes)
        counts = [max(1, round(c.patch_sample * n / total)) for n in sizes]
        pre = PatchPreprocessor(channels, src["size"], remove_mean=c.colour_norm and layer == 0,
                                whiten=None if c.whiten == "none" else c.whiten, n_components=c.n_components,
                                ndim=ndim)
        cov_rows = [max(2, round(pre.cov_samples * n / total)) for n in sizes]
        moments = self.sites.run("patch_moments", ops.patch_moments, (src,),
                                 [(r, n, i) for i, (r, n) in enumerate(zip(cov_rows, counts))])
        pre = preprocessor_from_moments(pre, moments)
        self._traffic(monitor, "patch_moments", layer)
        return pre, counts

    def fit_centroids(self, layer, src, pre, counts, rng, monitor, start):
        """k-means on the sites' preprocessed patch samples (``counts`` patches each): (centroids (k, d)
        float32, inertia per patch)."""
        c = self.config
        kseed = int(rng.integers(2**31))
        centers, variance = init_on_sites(self.sites, src, pre, counts, c.clusters, c.kmeans_iter, kseed)
        self._traffic(monitor, "kmeans_init", layer)
        centers, inertia, n_iter, _ = lloyd_on_sites(self.sites, src, counts, centers, c.kmeans_iter,
                                                     1e-4 * variance)
        self._traffic(monitor, "kmeans_lloyd", layer)
        inertia /= sum(counts)
        monitor.log("fit_dictionary", layer=layer, seconds_in_phase=time.perf_counter() - start,
                    kmeans_inertia=inertia, kmeans_iterations=n_iter, patch_dim=int(pre.A_.shape[1]),
                    explained_variance=pre.explained_variance_ratio_)
        return centers, inertia

    def _traffic(self, monitor, step, layer):
        monitor.log("traffic", layer=layer, step=step, **self.sites.ledger.close_phase(step))


def _vstack(mats):
    import scipy.sparse as sp
    return sp.vstack(mats, format="csr")
