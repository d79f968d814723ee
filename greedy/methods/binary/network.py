"""A trained binary network (``TrainedModel`` of format ``greedy-binary``): popcount layers and a linear head.

Model file (npz, read with ``allow_pickle=False``; ``greedy.modelfile.load`` reads it):

- arrays ``image/levels`` (C, T) float64 (not on text), ``image/filters`` (F0, ceil(P*C*T/64)) uint64
  (on text, a byte layer's (F0, P, 4)), ``image/thresholds`` (F0,) float64; per conv layer i
  ``layer/<i>/filters`` (F, P, ceil(n_bits/64)) uint64, ``layer/<i>/thresholds`` (F,) float64 and,
  with colour feed, ``layer/<i>/colour_levels`` (C, T') float64; ``head/w`` (D, K) and ``head/b``
  (K,) float32; ``ncm/means`` (K, D) float64 (P = kh*kw, the pixels of a layer's window);
- ``meta``: arch, in_shape ((C, H, W) images, (C, L) sequences), n_classes, regions, class_names,
  ``image`` {colour_norm, pool, window, bytes}, ``layers`` [{n_bits, pool, colour_pools, colour_feed,
  window}]; a missing window is 3x3 and a missing ``bytes`` false (files of image-only versions).

Filters are stored bit-packed, so a file is several times smaller than the same network with
float32 weights (``size_bytes``). Files written before model formats had names carry the loader
string ``greedy.binary:load_binary_model``, which ``greedy.modelfile`` maps to this format.
"""
import numpy as np

from greedy.errors import CheckpointError, ConfigError
from greedy.kernels.bitops import check_window, n_words
from greedy.methods.binary.layers import (BYTE_BITS, ByteLayer, ConvLayer, ImageLayer, head_features, max_regions,
                                          pool_shape_of, region_grid)
from greedy.modelfile import TrainedModel


def as_map(x):
    """Inputs as a map: images (N, C, H, W) as they are, sequences (N, C, L) as (N, C, 1, L) (a view)."""
    return x[:, :, None, :] if x.ndim == 3 else x


class BinaryNetwork(TrainedModel):
    """A first layer (image or byte layer), conv layers, and a linear head: ``forward(inputs) -> logits``.

    Takes its inputs (N, *in_shape) as they are (no normaliser): uint8 images (C, H, W), float32
    series (C, L) or uint8 bytes (1, L). head_w (D, K), head_b (K,) float32; class_means (K, D)
    float64 for the nearest-class-mean classifier (``ncm_scores``).
    """
    FORMAT = "greedy-binary"
    tta = "none"

    def __init__(self, image_layer, layers, in_shape, n_classes, regions=0, head_w=None, head_b=None,
                 class_means=None, arch="", class_names=()):
        self.image_layer, self.layers = image_layer, list(layers)
        self.in_shape, self.n_classes, self.regions = tuple(int(s) for s in in_shape), int(n_classes), int(regions)
        self.head_w, self.head_b, self.class_means, self.arch = head_w, head_b, class_means, arch
        self.class_names = list(class_names)

    # ------------------------------------------------------------ inference

    def bit_map(self, x):
        """Inputs (N, *in_shape) -> the last layer's bit map (N, H', W', w) uint64 (popcounts only)."""
        if getattr(x, "ndim", 0) < 1 or tuple(x.shape[1:]) != self.in_shape:
            raise ConfigError(f"this network takes inputs of shape {self.in_shape}, got "
                              f"{tuple(getattr(x, 'shape', ())[1:])}")
        if x.dtype != self.input_dtype():
            raise ConfigError(f"this network takes {self.input_dtype()} inputs, got {x.dtype}")
        x = as_map(x)
        m = self.image_layer.forward(self.image_layer.inputs(None, 0, x))
        bits = self.image_layer.n_filters
        for layer in self.layers:
            m = layer.forward(layer.inputs(m, bits, x))
            bits = layer.n_filters
        return m

    def input_dtype(self):
        """float32 for series (thermometer-coded sequences), uint8 for images and text bytes."""
        series = len(self.in_shape) == 2 and not isinstance(self.image_layer, ByteLayer)
        return np.dtype(np.float32 if series else np.uint8)

    def last_bits(self):
        return (self.layers[-1] if self.layers else self.image_layer).n_filters

    def features(self, x, batch_size=1000):
        """Head input (N, D) of inputs x (N, *in_shape), in batches."""
        parts = [head_features(self.bit_map(x[i:i + batch_size]), self.last_bits(), self.regions)
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    def forward(self, x, train=False):
        """Logits float32 (N, K) of inputs (N, *in_shape)."""
        f = head_features(self.bit_map(x), self.last_bits(), self.regions)
        return f.astype(np.float32) @ self.head_w + self.head_b

    def predict_logits(self, x, tta=None, batch_size=1000):
        self.check_input(x)
        if tta not in (None, "none"):
            raise ConfigError("binary models do not support test-time augmentation")
        out = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), np.float32)

    def ncm_scores(self, f):
        """Nearest-class-mean scores (N, K) of head features f: minus the squared distance up to a per-row constant."""
        m = self.class_means
        return 2.0 * f.astype(np.float64) @ m.T - (m * m).sum(axis=1)

    # ------------------------------------------------------------ sizes

    def filter_bits(self):
        return sum(layer.n_filters * layer.n_code_bits for layer in [self.image_layer] + self.layers)

    def n_parameters(self):
        """Filter bits + thresholds + head weights."""
        n_thr = sum(layer.n_filters for layer in [self.image_layer] + self.layers)
        return int(self.filter_bits() + n_thr + self.head_w.size + self.head_b.size)

    def size_bytes(self):
        """(bytes of this model's parameters with bit-packed filters, bytes with float32 filters)."""
        layers = [self.image_layer] + self.layers
        n_thr = sum(layer.n_filters for layer in layers)
        head = 4 * (self.head_w.size + self.head_b.size)
        packed = sum(layer.filters.nbytes for layer in layers)
        return int(packed + 4 * n_thr + head), int(4 * self.filter_bits() + 4 * n_thr + head)

    def n_pools(self):
        return sum(layer.pool is not None for layer in [self.image_layer] + self.layers)

    def last_map_size(self):
        """(H', W') of the last bit map."""
        pools = self.n_pools()
        if len(self.in_shape) == 2:
            return 1, self.in_shape[1] >> pools
        return self.in_shape[1] >> pools, self.in_shape[2] >> pools

    def head_size(self):
        """Number of head features D: the last map's bits, flattened or per region."""
        h, w = self.last_map_size()
        rh, rw = region_grid(h, w, self.regions) if self.regions else (h, w)
        return rh * rw * self.last_bits()

    # ------------------------------------------------------------ file format

    def arrays(self):
        il = self.image_layer
        byte = isinstance(il, ByteLayer)
        meta = {"arch": self.arch, "in_shape": list(self.in_shape), "n_classes": self.n_classes,
                "regions": self.regions, "class_names": list(self.class_names),
                "image": {"colour_norm": getattr(il, "colour_norm", False), "pool": il.pool,
                          "window": list(il.window), "bytes": byte},
                "layers": [{"n_bits": la.n_bits, "pool": la.pool, "colour_pools": la.colour_pools,
                            "colour_feed": la.colour_levels is not None, "window": list(la.window)}
                           for la in self.layers]}
        arrays = {"image/filters": il.filters, "image/thresholds": il.thresholds,
                  "head/w": self.head_w, "head/b": self.head_b, "ncm/means": self.class_means}
        if not byte:
            arrays["image/levels"] = il.levels
        for i, la in enumerate(self.layers):
            arrays[f"layer/{i}/filters"] = la.filters
            arrays[f"layer/{i}/thresholds"] = la.thresholds
            if la.colour_levels is not None:
                arrays[f"layer/{i}/colour_levels"] = la.colour_levels
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays, meta, path):
        def get(key):
            if key not in arrays:
                raise CheckpointError(f"{path}: binary model file has no array {key!r}")
            return arrays[key]

        im = meta["image"]
        window = tuple(im.get("window", (3, 3)))
        pool_shape = pool_shape_of(len(meta["in_shape"]) == 2)
        if im.get("bytes", False):
            image = ByteLayer(get("image/filters"), get("image/thresholds"), im["pool"], window)
        else:
            image = ImageLayer(get("image/levels"), im["colour_norm"], get("image/filters"), get("image/thresholds"),
                               im["pool"], window, pool_shape)
        layers = [ConvLayer(la["n_bits"], get(f"layer/{i}/filters"), get(f"layer/{i}/thresholds"), la["pool"],
                            get(f"layer/{i}/colour_levels") if la["colour_feed"] else None, la["colour_pools"],
                            tuple(la.get("window", (3, 3))), pool_shape)
                  for i, la in enumerate(meta["layers"])]
        net = cls(image, layers, meta["in_shape"], meta["n_classes"], meta["regions"], get("head/w"), get("head/b"),
                  get("ncm/means"), meta["arch"], meta.get("class_names", []))
        problems = check_network(net)
        if problems:
            raise CheckpointError(f"{path}: inconsistent binary model: {'; '.join(problems)}")
        return net


def check_network(net):
    """What does not fit together in a network's arrays: a list of one-line problems (empty if none)."""
    il = net.image_layer
    problems = []
    sequence = len(net.in_shape) == 2
    pools = (None, "or") if sequence else (None, "or", "majority")
    for i, la in enumerate([il] + net.layers):
        try:
            kh, kw = check_window(la.window)
        except ConfigError as e:
            problems.append(f"layer {i}: {e}")
            continue
        if (kh != 1) if sequence else (kh != kw):
            problems.append(f"layer {i} has a {kh}x{kw} window for inputs of shape {net.in_shape}")
    if problems:
        return problems
    if isinstance(il, ByteLayer):
        if not sequence or net.in_shape[0] != 1 or il.filters.dtype != np.uint64 \
                or il.filters.shape[1:] != (il.n_pixels, BYTE_BITS // 64):
            problems.append(f"byte filters have shape {il.filters.shape}, dtype {il.filters.dtype} for inputs of "
                            f"shape {net.in_shape}")
    else:
        if len(net.in_shape) not in (2, 3) or il.levels.ndim != 2 or il.levels.shape[0] != net.in_shape[0]:
            problems.append(f"image levels of shape {il.levels.shape} for inputs of shape {net.in_shape}")
        if il.filters.dtype != np.uint64 or il.filters.shape[1:] != (n_words(il.n_code_bits),):
            problems.append(f"image filters have shape {il.filters.shape}, dtype {il.filters.dtype}")
    bits = il.n_filters
    for i, la in enumerate(net.layers):
        if la.n_bits != bits + la.colour_bits or la.filters.dtype != np.uint64 \
                or la.filters.shape[1:] != (la.n_pixels, n_words(la.n_bits)):
            problems.append(f"layer {i} filters have shape {la.filters.shape}, dtype {la.filters.dtype} for "
                            f"{bits} + {la.colour_bits} input bits")
        bits = la.n_filters
    for i, la in enumerate([il] + net.layers):
        if la.pool not in pools:
            problems.append(f"layer {i} has unknown pooling {la.pool!r}")
        if la.thresholds.shape != (la.n_filters,) or la.thresholds.dtype.kind != "f":
            problems.append(f"layer {i} has {la.thresholds.dtype} thresholds of shape {la.thresholds.shape} "
                            f"for {la.n_filters} filters")
    if problems:
        return problems
    h, w = net.last_map_size()
    if net.regions < 0 or net.regions > max_regions(h, w):
        problems.append(f"{net.regions} regions on a last map of {h}x{w} pixels")
        return problems
    d, k = net.head_size(), net.n_classes
    for name, a, shape in (("head weights", net.head_w, (d, k)), ("head bias", net.head_b, (k,)),
                           ("class means", net.class_means, (k, d))):
        if a.shape != shape or a.dtype.kind != "f":
            problems.append(f"{name} have dtype {a.dtype} and shape {a.shape}, expected {shape} floats")
    named = [("head weights", net.head_w), ("head bias", net.head_b), ("class means", net.class_means)]
    named += [] if isinstance(il, ByteLayer) else [("image levels", il.levels)]
    named += [(f"layer {i} thresholds", la.thresholds) for i, la in enumerate([il] + net.layers)]
    named += [(f"layer {i} colour levels", la.colour_levels) for i, la in enumerate(net.layers)
              if la.colour_levels is not None]
    problems += [f"{name} hold NaN or infinite values" for name, a in named
                 if a.dtype.kind == "f" and not np.isfinite(a).all()]
    return problems
