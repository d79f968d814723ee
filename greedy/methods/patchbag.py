"""Patch-bag layer-wise training (seed 001): ``--method patchbag``.

Inside a block an image is an unordered bag of 3x3 patches. The patches are preprocessed
(``greedy.cluster.patches``), clustered with k-means into k centroids, and every image becomes
its centroid counts (``greedy.cluster.codes``). The block's conv, activation, regional pooling
and a softmax head are trained on those codes (``greedy.nn.codelayer.CodeLayer``); the trained
filters are folded back into an ordinary 3x3 conv, which is applied to the *real* input to make
the next block's input: every block is trained on a proxy of real data, never on a proxy of a
proxy. Optionally (``image_clusters=m``) each class's codes are clustered into m weighted
prototypes and the block trains on those. With ``mirrors`` the training set also holds every
image's mirror image: the dictionaries and codes are of the given images, and the mirror images
are propagated with them and seen by the final classifier.

Sequences (N, C, L) work the same way with windows of k consecutive positions (the block's
``c<F>k<k>`` Conv1d) counted per segment of the sequence. On byte sequences the first block
starts with a byte embedding (``emb16-c64k5-relu-max4``): its table stays as initialised (random
Gaussian vectors, one per byte value, so that distinct bytes are about equally far apart, as in a
one-hot code), the bytes are embedded, and the block's conv is trained on the embedded windows,
each coded by its hashed byte k-gram (``greedy.cluster.bytecodes`` says why) or, with
``byte_codes="kmeans"``, by its nearest centroid like any other window.
"""
import time

import numpy as np

from greedy.cluster.bytecodes import bucket_centroids, hashed_codes
from greedy.cluster.codes import cluster_images, encode
from greedy.cluster.kmeans import KMeans
from greedy.cluster.patches import PatchPreprocessor, conv_factors, sample_patches
from greedy.errors import CheckpointError, ConfigError
from greedy.kernels.cast import to_channels_last
from greedy.kernels.lowrank import basis_maps, compose
from greedy.methods.base import LayerwiseMethod
from greedy.methods.blocks import fit_block, propagate
from greedy.methods.classifier import train_classifier
from greedy.methods.layerwise import ConvBlockTrainer
from greedy.nn.activations import ReLU, Tanh
from greedy.nn.basismix import BasisMix
from greedy.nn.codelayer import CodeLayer
from greedy.nn.fit import label_accuracy
from greedy.nn.model import Sequential
from greedy.nn.network import mirror
from greedy.nn.layers import Conv2d
from greedy.nn.layers1d import AvgPool1d, ByteEmbedding, Conv1d, MaxPool1d
from greedy.nn.pooling import AvgPool2d, MaxPool2d


def block_activation(block):
    """(conv, 'tanh' | 'relu') of a patch-bag block: a 3x3 stride-1 conv (on sequences a Conv1d of odd
    width k, stride 1, "same" padding, no dilation), its activation, then only pooling. A leading byte
    embedding is skipped (``block_embedding``).

    The codes train the conv through that activation, so a block with anything else
    (batch norm, a second conv) would not compute what was trained; it is refused.
    """
    layers = block.layers[1:] if block_embedding(block) else block.layers
    conv = layers[0]
    if isinstance(conv, Conv1d):
        if conv.kernel_size % 2 != 1 or conv.stride != 1 or conv.dilation != 1 \
                or conv.padding != conv.kernel_size // 2:
            raise ConfigError(f"patch-bag sequence blocks start with a stride-1 conv of odd width, \"same\" "
                              f"padding and no dilation (e.g. c128k5), got {conv.spec()}")
        pools = (MaxPool1d, AvgPool1d)
    elif not isinstance(conv, Conv2d) or conv.kernel_size != 3 or conv.stride != 1 or conv.padding != 1:
        raise ConfigError(f"patch-bag blocks start with a 3x3 stride-1 conv, got {conv.spec()}")
    else:
        pools = (MaxPool2d, AvgPool2d)
    if len(layers) < 2 or not isinstance(layers[1], (Tanh, ReLU)) \
            or not all(isinstance(lay, pools) for lay in layers[2:]):
        raise ConfigError(f"a patch-bag block is a conv, tanh or relu, then optional pooling "
                          f"(e.g. c128k3-tanh-max2), got {block.spec()}")
    return conv, "tanh" if isinstance(layers[1], Tanh) else "relu"


def block_conv(block):
    """The block's conv (a Conv2d or Conv1d), after a leading byte embedding if there is one."""
    return next(lay for lay in block.layers if isinstance(lay, (Conv2d, Conv1d)))


def block_embedding(block):
    """The block's leading ByteEmbedding, or None."""
    return block.layers[0] if isinstance(block.layers[0], ByteEmbedding) else None


def code_rows(n, code_images, rng):
    """Sorted indices of ``code_images`` of n images drawn without replacement from rng, or None (all
    images, and nothing drawn) when ``code_images`` is 0 or at least n."""
    if not code_images or code_images >= n:
        return None
    return np.sort(rng.choice(n, code_images, replace=False))


class PatchbagTrainer(ConvBlockTrainer):
    """Fit a dictionary of the block's input patches, encode, train on codes, fold into the conv."""

    basis_maps = ()

    def start(self, x, x_eval, rng):
        self.basis_maps = []
        return super().start(x, x_eval, rng)

    def training_set(self, x, y):
        """The images and, with ``mirrors``, their mirror images after them: (2N, C, H, W), (2N,)."""
        if not self.config.mirrors:
            return x, y
        self.n_originals = len(x)
        return np.concatenate([x, mirror(x)]), np.concatenate([y, y])

    def train(self, layer, block, x, y, x_eval, y_eval, budget, rng, monitor):
        c = self.config
        conv, activation = block_activation(block)
        embedding = block_embedding(block)
        if self.n_originals is not None:
            x, y = x[:self.n_originals], y[:self.n_originals]
        raw, raw_eval = x, x_eval
        if embedding is not None:
            x, x_eval = (None if a is None else propagate(Sequential([embedding]), a) for a in (x, x_eval))
        channels, size = x.shape[1], conv.kernel_size
        ndim = x.ndim - 2
        t = time.perf_counter()
        sample = sample_patches(x, c.patch_sample, rng, size)
        pre = PatchPreprocessor(channels, size, remove_mean=c.colour_norm and layer == 0,
                                whiten=None if c.whiten == "none" else c.whiten,
                                n_components=c.n_components, ndim=ndim).fit(sample)
        side = c.regions
        rows = code_rows(len(x), c.code_images, rng)
        y_codes = y if rows is None else y[rows]
        if embedding is not None and c.byte_codes == "hash":
            centers, counts = bucket_centroids(raw, x, pre, size, c.byte_buckets)
            monitor.log("fit_dictionary", layer=layer, seconds_in_phase=time.perf_counter() - t,
                        codes_used=int((counts > 0).sum()), patch_dim=int(pre.A_.shape[1]),
                        explained_variance=pre.explained_variance_ratio_)
            t = time.perf_counter()
            codes = hashed_codes(raw if rows is None else raw[rows], size, c.byte_buckets, side)
            codes_eval = None if raw_eval is None else hashed_codes(raw_eval, size, c.byte_buckets, side)
            stats = {"codes_per_sequence": codes.nnz / len(codes),
                     "code_density": codes.nnz / (len(codes) * side * c.byte_buckets)}
        else:
            km = KMeans(c.clusters, max_iter=c.kmeans_iter, random_state=int(rng.integers(2**31)))
            km.fit(pre.transform(sample))
            centers = km.cluster_centers_
            monitor.log("fit_dictionary", layer=layer, seconds_in_phase=time.perf_counter() - t,
                        kmeans_inertia=float(km.inertia_) / len(sample), kmeans_iterations=int(km.n_iter_),
                        patch_dim=int(pre.A_.shape[1]), explained_variance=pre.explained_variance_ratio_)
            t = time.perf_counter()
            codes, stats = encode(x, pre, centers, side, rows=rows)
            codes_eval = None if x_eval is None else encode(x_eval, pre, centers, side)[0]
            stats["kmeans_inertia"] = float(km.inertia_) / len(sample)
        monitor.log("encode", layer=layer, seconds_in_phase=time.perf_counter() - t, **stats)
        acc = self.train_on_codes(layer, conv, activation, pre, centers, codes, y_codes,
                                  None if codes_eval is None else (codes_eval, y_eval), budget, rng, monitor)
        return dict(stats, head_accuracy=acc)

    def train_on_codes(self, layer, conv, activation, pre, centers, codes, y, eval_codes, budget, rng, monitor,
                       weights=None):
        """Train the block's conv on codes and fold it in: a ``CodeLayer`` on ``codes`` (RegionCodes of the
        images, or weighted prototypes when ``weights`` (M,) is given; else with ``image_clusters`` each
        class's codes are clustered first) and labels y, folded through the fitted ``pre`` into ``conv``'s
        weights. ``eval_codes`` (codes, labels) or None; returns the head's accuracy on them (or None)."""
        c, n_classes = self.config, self.n_classes
        t = time.perf_counter()
        model = CodeLayer(centers, conv.filters, n_classes, c.regions ** pre.ndim, activation, rng)
        if weights is None and c.image_clusters:
            codes, y, weights = cluster_images(codes, y, n_classes, c.image_clusters, int(rng.integers(2**31)))
        n_epochs = budget[0] if budget[1] == "e" else None

        def head_accuracy():
            return None if eval_codes is None else label_accuracy(model.forward(eval_codes[0]), eval_codes[1])

        def on_epoch(epoch, loss, train_acc):
            monitor.log("train_codes", layer=layer, epoch=epoch, n_epochs=n_epochs, train_loss=loss,
                        head_accuracy=head_accuracy())

        fit_block(model, codes, y, c, budget, rng, label=f"patchbag layer {layer}", progress=monitor.verbose,
                  on_epoch=on_epoch, sample_weight=weights)
        acc = head_accuracy()
        factors = conv_factors(pre, model.params["w"], model.params["b"])
        if isinstance(conv, Conv2d):
            conv.set_low_rank(*factors)
        else:
            conv.params["w"][...], conv.params["b"][...] = compose(*factors)
        monitor.log("train", layer=layer, seconds_in_phase=time.perf_counter() - t, head_accuracy=acc)
        return acc

    def propagate(self, layer, block, x):
        """The block's output cache. With ``final_mix``, after the last block (a conv and its ReLU), the
        basis maps of its input are made instead, kept channels last (N, H*W*d) float32 for
        ``fit_classifier``, and None is returned: the classifier reads the block's output through its mix
        of those maps, not from a cache."""
        if not (self.config.final_mix and layer == len(self.block_specs()) - 1):
            return super().propagate(layer, block, x)
        conv = block.layers[0]
        factors = conv.low_rank(np.float32, cheaper_only=False) if isinstance(conv, Conv2d) else None
        if factors is None or len(block.layers) != 2:
            raise ConfigError(f"--final-mix trains the mix of a low-rank conv followed by its ReLU alone; the "
                              f"last block is {block.spec()}")
        basis, basis_bias, _, _ = factors
        maps = basis_maps(x, basis, basis_bias, conv.padding)
        self.mix_conv = conv
        flat = np.empty((len(maps),) + maps.shape[2:] + maps.shape[1:2], np.float32)
        self.basis_maps.append(to_channels_last(maps, flat).reshape(len(maps), -1))
        return None

    def features(self, x, which, rng):
        """As ``ConvBlockTrainer.features``; with ``final_mix`` and no taps, no columns (N, 0): the classifier
        reads the last block through its mix alone."""
        feats = super().features(x, which, rng)
        if feats is None:
            return np.zeros((len(self.basis_maps[0 if which == "train" else 1]), 0), np.float32)
        return feats

    def classifier_inputs(self, n_features):
        """With ``final_mix`` the classifier also reads the ``BasisMix`` outputs: the last block's filters
        pooled in the quadrants of its map."""
        return n_features + (self.mix_conv.filters * 4 if self.config.final_mix else 0)

    def fit_classifier(self, feats, y, feats_eval, y_eval, rng, on_epoch=None, progress=False):
        """With ``final_mix`` the classifier reads the taps and the last block's basis maps, through a
        ``BasisMix`` of the block's mix trained with it; the trained mix goes back into the block's conv."""
        if not self.config.final_mix:
            return super().fit_classifier(feats, y, feats_eval, y_eval, rng, on_epoch, progress)
        conv = self.mix_conv
        basis, basis_bias, mix, mix_bias = conv.low_rank(cheaper_only=False)
        maps, *rest = self.basis_maps
        lead = BasisMix(mix, mix_bias, feats.shape[1], self.shape[1], self.shape[2], self.shape[1] // 2)
        layers, acc = train_classifier(feats, y, feats_eval, y_eval, self.n_classes, rng, on_epoch=on_epoch,
                                       progress=progress, lead=lead,
                                       lead_maps=(maps, rest[0] if rest else None),
                                       lead_epochs=self.config.final_mix_epochs, lead_lr=self.config.final_mix_lr,
                                       **self.classifier_options())
        conv.set_low_rank(basis, basis_bias, lead.params["w"], lead.params["b"])
        self.basis_maps = []
        return layers, acc

    def block_state(self, layer, block, head):
        """The block's arrays, with its conv's low-rank factors (``Conv2d.set_low_rank``) under ``lowrank/``:
        a resumed run applies the conv as the first run did."""
        arrays, info = super().block_state(layer, block, head)
        conv = block_conv(block)
        factors = conv.low_rank(cheaper_only=False) if isinstance(conv, Conv2d) else None
        if factors is not None:
            arrays.update(zip(LOW_RANK_ARRAYS, factors))
        return arrays, info

    def restore_block(self, layer, spec, arrays, info, y, rng, where):
        block, head = super().restore_block(layer, spec, arrays, info, y, rng, where)
        saved = [arrays.get(name) for name in LOW_RANK_ARRAYS]
        if all(a is None for a in saved):
            return block, head
        conv = block_conv(block)
        w, b = conv.params["w"].copy(), conv.params["b"].copy()
        if any(a is None for a in saved) or not isinstance(conv, Conv2d):
            raise CheckpointError(f"{where}: the low-rank factors are incomplete or not of a 2-D conv")
        try:
            conv.set_low_rank(*saved)
        except (ConfigError, ValueError, TypeError) as e:
            raise CheckpointError(f"{where}: bad low-rank factors ({e})") from None
        if not (np.array_equal(w, conv.params["w"]) and np.array_equal(b, conv.params["b"])):
            raise CheckpointError(f"{where}: the low-rank factors do not make the saved conv weights")
        return block, head


LOW_RANK_ARRAYS = ("lowrank/basis", "lowrank/basis_bias", "lowrank/mix", "lowrank/mix_bias")


class Patchbag(LayerwiseMethod):
    name = "patchbag"
    summary = ("Patch bags (seed 001): each block's 3x3 input patches are clustered with k-means, every image "
               "becomes its centroid counts per region, and the block's conv is trained on those counts "
               "(cheap: the cost does not grow with the image), then applied to the real maps to feed the next "
               "block. A softmax classifier with one hidden layer is trained on the last block's map.")
    trainer_class = PatchbagTrainer


PATCHBAG = Patchbag()
