"""Patch-bag layer-wise training (seed 001).

Inside a layer an image is an unordered bag of 3x3 patches. The patches are
preprocessed (``greedy.patches``), clustered with k-means into k centroids,
and every image becomes its centroid counts (optionally per region, e.g. the
four quadrants). A layer of F filters with activation ``act``, global (or
regional) average pooling and a softmax head then sees, for image i,

    pooled_i = (counts_i / n_positions) @ act(centroids @ W + b)

so a training step costs O(nnz x F + k x d x F), whatever the image size.
The trained filters are folded back into an ordinary 3x3 conv, which is
applied to the *real* input to make the next layer's input: every layer is
trained on a proxy of real data, never on a proxy of a proxy.

Optionally (``image_clusters=m``) each class's codes are clustered into m
weighted prototypes and the layer trains on those.
"""
import time

import numpy as np
import scipy.sparse as sp

from greedy.errors import ConfigError
from greedy.kernels.codes import count_codes as _count_codes
from greedy.cluster.kmeans import KMeans, assign
from greedy.nn.layers import AvgPool2d, Conv2d, MaxPool2d, ReLU, Tanh, glorot_uniform
from greedy.methods.layerwise import blocks_from_widths, fit_block, split_blocks, train_layerwise
from greedy.cluster.patches import PatchPreprocessor, fold_into_conv, sample_patches
from greedy.nn.fit import label_accuracy

ENCODE_CHUNK_BYTES = 64 * 1024**2
DENSE_BATCH_DENSITY = 0.02


def region_sizes(h, w, side):
    """Number of positions in each of the side x side regions of an h x w map (same split as _count_codes)."""
    rows = np.bincount(np.minimum(np.arange(h) * side // h, side - 1), minlength=side)
    cols = np.bincount(np.minimum(np.arange(w) * side // w, side - 1), minlength=side)
    return np.outer(rows, cols).reshape(-1)


class RegionCodes:
    """Centroid frequencies of N images in R regions: ``parts`` is a list of R CSR matrices (N, k), float32.

    Row i of part r holds image i's centroid counts in region r divided by the number of
    positions in that region, so each row sums to one. Indexable by an index array.
    """

    def __init__(self, parts, weights=None):
        self.parts = parts
        self.weights = weights

    def __len__(self):
        return self.parts[0].shape[0]

    def __getitem__(self, idx):
        return RegionCodes([p[idx] for p in self.parts])

    @property
    def nnz(self):
        return sum(p.nnz for p in self.parts)

    def dense(self):
        """(N, R*k) dense array of all regions side by side."""
        return np.hstack([p.toarray() for p in self.parts])


def encode(x, pre, centers, side=1, chunk_bytes=ENCODE_CHUNK_BYTES, dtype=np.float32):
    """Assign every patch of every image to its nearest centroid, streamed in image chunks.

    x (N, C, H, W) float; pre a fitted PatchPreprocessor; centers (k, d) float32.
    Chunks hold images whose 3x3 patches would take ``chunk_bytes``; the patches
    are projected by a convolution (``PatchPreprocessor.transform_images``), so
    at most that much (d/9C of it for the projections, plus the distance blocks
    of ``assign``) is in memory at once.
    Returns (RegionCodes of ``dtype``, stats dict with inertia per patch and mean distinct centroids per image).
    """
    n, c, h, w = x.shape
    k = len(centers)
    sizes = region_sizes(h, w, side).astype(dtype)
    per_image = h * w * 9 * c * 4
    step = max(1, chunk_bytes // per_image)
    sq = (centers.astype(np.float32) ** 2).sum(axis=1)
    parts = [[] for _ in range(side * side)]
    inertia, distinct = 0.0, 0
    for start in range(0, n, step):
        xb = x[start:start + step]
        labels, dist = assign(pre.transform_images(xb), centers, sq)
        counts = np.zeros((len(xb), side * side, k), dtype)
        _count_codes(labels.astype(np.int64), len(xb), h, w, side, k, counts)
        inertia += float(dist.sum())
        distinct += int((counts.sum(axis=1) > 0).sum())
        counts /= sizes[None, :, None]
        for r in range(side * side):
            parts[r].append(sp.csr_matrix(counts[:, r]))
    codes = RegionCodes([sp.vstack(p, format="csr") for p in parts])
    stats = {"inertia_per_patch": inertia / (n * h * w), "distinct_centroids_per_image": distinct / n,
             "code_density": codes.nnz / (n * side * side * k)}
    return codes, stats


class CodeLayer:
    """A conv layer + regional average pooling + softmax head, evaluated on centroid codes.

    centroids (k, d) float32 (preprocessed patch space); parameters ``w`` (d, F), ``b`` (F,),
    ``v`` (R*F, n_classes), ``a`` (n_classes,). ``forward(codes: RegionCodes) -> logits (N, n_classes)``.
    """

    def __init__(self, centroids, filters, n_classes, n_regions=1, activation="tanh", rng=None, dtype=np.float32):
        if activation not in ("tanh", "relu"):
            raise ConfigError(f"activation must be tanh or relu, got {activation!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        d = centroids.shape[1]
        self.centroids = centroids.astype(dtype)
        self.activation = activation
        self.n_regions = n_regions
        self.params = {"w": glorot_uniform(rng, (d, filters), d, filters, dtype), "b": np.zeros(filters, dtype),
                       "v": glorot_uniform(rng, (n_regions * filters, n_classes), n_regions * filters, n_classes,
                                           dtype),
                       "a": np.zeros(n_classes, dtype)}
        self.grads = {key: np.zeros_like(p) for key, p in self.params.items()}

    def parameters(self):
        return [self.params[k] for k in ("w", "b", "v", "a")]

    def gradients(self):
        return [self.grads[k] for k in ("w", "b", "v", "a")]

    def centroid_activations(self):
        pre = self.centroids @ self.params["w"] + self.params["b"]
        return np.tanh(pre) if self.activation == "tanh" else np.maximum(pre, 0)

    def pooled(self, parts):
        """Regional average-pooled features (N, R*F) of the layer on code parts."""
        self.act = self.centroid_activations()
        return np.hstack([np.asarray(part @ self.act) for part in parts])

    def forward(self, codes, train=False):
        # a batch denser than a few percent multiplies faster as a dense BLAS product
        self.parts = [p.toarray() if sp.issparse(p) and p.nnz > DENSE_BATCH_DENSITY * p.shape[0] * p.shape[1]
                      else p for p in codes.parts]
        self.g = self.pooled(self.parts)
        return self.g @ self.params["v"] + self.params["a"]

    def backward(self, dlogits, input_grad=False):
        f = self.act.shape[1]
        self.grads["v"][...] = self.g.T @ dlogits
        self.grads["a"][...] = dlogits.sum(axis=0)
        dg = dlogits @ self.params["v"].T
        dact = sum(np.asarray(part.T @ dg[:, r * f:(r + 1) * f]) for r, part in enumerate(self.parts))
        dpre = dact * (1 - self.act * self.act) if self.activation == "tanh" else dact * (self.act > 0)
        self.grads["w"][...] = self.centroids.T @ dpre
        self.grads["b"][...] = dpre.sum(axis=0)
        return None


def cluster_images(codes, y, n_classes, per_class, seed):
    """Cluster each class's codes into ``per_class`` prototypes; returns (RegionCodes with weights, labels)."""
    dense = codes.dense()
    protos, labels, weights = [], [], []
    for cls in range(n_classes):
        rows = dense[y == cls]
        if len(rows) == 0:
            continue
        m = min(per_class, len(rows))
        km = KMeans(m, max_iter=20, random_state=seed).fit(rows)
        protos.append(km.cluster_centers_)
        weights.append(np.bincount(km.labels_, minlength=m).astype(np.float32))
        labels.append(np.full(m, cls))
    protos = np.concatenate(protos).astype(np.float32)
    k = codes.parts[0].shape[1]
    parts = [sp.csr_matrix(protos[:, r * k:(r + 1) * k]) for r in range(len(codes.parts))]
    return RegionCodes(parts), np.concatenate(labels), np.concatenate(weights)


DEFAULTS = {"clusters": 512, "patch_sample": 200_000, "regions": 2, "activation": "relu", "image_clusters": 0,
            "optimizer": "adam", "lr": 3e-3, "schedule": "onecycle", "weight_decay": 1e-4, "batch_size": 256,
            "layer_budget": "10e", "final_pool": "quadrant", "final_hidden": "fc512-relu-drop0.4",
            "final_epochs": 8, "final_lr": 3e-3, "kmeans_iter": 20,
            "whiten": "pca", "colour_norm": True, "n_components": 32, "finetune_epochs": 0}

# {act} is --activation, ReLU by default (perf/README.md: CIFAR-10 71.0 % against 58.8 % for tanh,
# MNIST 98.3 % against 96.8 %). The final classifier has a hidden layer (CIFAR-10: 75.4 %
# against 70.4 % for a linear one on the same features, without flips). On MNIST the patch
# mean (stroke or background) is kept, the dictionaries are smaller (k=128 over 16
# components), and the classifier, one hidden layer of 256, sees every block's map
# max-pooled to 3x3 (perf/README.md, "MNIST").
DATASET_DEFAULTS = {
    "cifar10": {"blocks": ["c128k3-{act}-max2", "c256k3-{act}-max2", "c256k3-{act}"]},
    "mnist": {"blocks": ["c32k3-{act}-max2", "c64k3-{act}-max2", "c128k3-{act}-max2"], "clusters": 128,
              "n_components": 16, "colour_norm": False, "final_pool": "none", "final_features": "all",
              "final_hidden": "fc256-relu-drop0.4", "final_epochs": 5, "final_lr": 2e-3,
              "final_min_steps": 1000},
}


def block_activation(block):
    """(conv, 'tanh' | 'relu') of a patch-bag block: a 3x3 stride-1 conv, its activation, then only pooling.

    The codes train the conv through that activation, so a block with anything else
    (batch norm, a second conv) would not compute what was trained; it is refused.
    """
    layers = block.layers
    conv = layers[0]
    if not isinstance(conv, Conv2d) or conv.kernel_size != 3 or conv.stride != 1 or conv.padding != 1:
        raise ConfigError(f"patch-bag blocks start with a 3x3 stride-1 conv, got {conv.spec()}")
    if len(layers) < 2 or not isinstance(layers[1], (Tanh, ReLU)) \
            or not all(isinstance(lay, (MaxPool2d, AvgPool2d)) for lay in layers[2:]):
        raise ConfigError(f"a patch-bag block is a 3x3 conv, tanh or relu, then optional pooling "
                          f"(e.g. c128k3-tanh-max2), got {block.spec()}")
    return conv, "tanh" if isinstance(layers[1], Tanh) else "relu"


def patchbag_block_trainer(opts, n_classes):
    """Block trainer for ``train_layerwise``: fit dictionary, encode, train on codes, fold into the conv."""
    def train(layer, block, x, y, x_test, y_test, budget, rng, run):
        conv, activation = block_activation(block)
        c = x.shape[1]
        t = time.perf_counter()
        sample = sample_patches(x, opts["patch_sample"], rng)
        pre = PatchPreprocessor(c, remove_mean=opts["colour_norm"] and layer == 0, whiten=opts["whiten"],
                                n_components=opts["n_components"]).fit(sample)
        km = KMeans(opts["clusters"], max_iter=opts["kmeans_iter"], random_state=int(rng.integers(2**31)))
        km.fit(pre.transform(sample))
        run.log("fit_dictionary", layer=layer, seconds_in_phase=time.perf_counter() - t,
                kmeans_inertia=float(km.inertia_) / len(sample), kmeans_iterations=int(km.n_iter_),
                patch_dim=int(pre.A_.shape[1]), explained_variance=pre.explained_variance_ratio_)
        t = time.perf_counter()
        side = opts["regions"]
        codes, stats = encode(x, pre, km.cluster_centers_, side)
        codes_test, _ = encode(x_test, pre, km.cluster_centers_, side)
        run.log("encode", layer=layer, seconds_in_phase=time.perf_counter() - t, **stats)
        t = time.perf_counter()
        model = CodeLayer(km.cluster_centers_, conv.filters, n_classes, side * side, activation, rng)
        train_codes, train_y, weights = codes, y, None
        if opts["image_clusters"]:
            train_codes, train_y, weights = cluster_images(codes, y, n_classes, opts["image_clusters"],
                                                           int(rng.integers(2**31)))

        def on_epoch(epoch, loss, train_acc):
            acc = label_accuracy(model.forward(codes_test), y_test)
            run.log("train_codes", layer=layer, epoch=epoch, train_loss=loss, aux_test_accuracy=acc)

        fit_block(model, train_codes, train_y, opts, budget, rng, label=f"patchbag layer {layer}",
                  progress=run.verbose,
                  on_epoch=on_epoch, sample_weight=weights)
        aux_acc = label_accuracy(model.forward(codes_test), y_test)
        w, b = fold_into_conv(pre, model.params["w"].astype(np.float64), model.params["b"], c)
        conv.params["w"][...] = w
        conv.params["b"][...] = b
        run.log("train", layer=layer, seconds_in_phase=time.perf_counter() - t, aux_test_accuracy=aux_acc)
        return dict(stats, aux_test_accuracy=aux_acc, kmeans_inertia=float(km.inertia_) / len(sample))
    return train


def resolve_options(opts, dataset):
    """User options (None = unset) over the dataset family's defaults over DEFAULTS; builds the block list."""
    family = DATASET_DEFAULTS["mnist" if dataset in ("mnist", "fashion-mnist", "synthetic-grey") else "cifar10"]
    o = dict(DEFAULTS, **family)
    o.update({k: v for k, v in opts.items() if v is not None})
    base = family["blocks"]
    if opts.get("arch") and opts.get("activation"):
        raise ConfigError("--activation sets the default blocks' activation; with --arch each block names its own")
    if opts.get("arch"):
        o["blocks"] = split_blocks(opts["arch"])
    elif opts.get("layers") or opts.get("width"):
        o["blocks"] = blocks_from_widths(opts.get("layers") or len(base), opts.get("width") or 256,
                                         activation=o["activation"], batchnorm=False)
    else:
        o["blocks"] = [b.format(act=o["activation"]) for b in base]
    if opts.get("epochs_per_layer") is not None:
        o["layer_budget"] = f"{opts['epochs_per_layer']}e"
    for name in ("clusters", "patch_sample", "regions"):
        if o[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {o[name]}")
    return o


def train_patchbag(data, normalizer, opts, run):
    """Patch-bag layer-wise training; CLI method ``patchbag``."""
    o = resolve_options(opts, run.dataset)
    run.log("options", blocks=o["blocks"], layer_budget=o["layer_budget"], clusters=o["clusters"])
    return train_layerwise(data, normalizer, o, run, patchbag_block_trainer(o, len(data.class_names)))

