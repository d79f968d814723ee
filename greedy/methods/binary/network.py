"""A trained binary network (``TrainedModel`` of format ``greedy-binary``): popcount layers and a linear head.

Model file (npz, read with ``allow_pickle=False``; ``greedy.modelfile.load`` reads it):

- arrays ``image/levels`` (C, T) float64, ``image/filters`` (F0, ceil(9*C*T/64)) uint64,
  ``image/thresholds`` (F0,) float64; per conv layer i ``layer/<i>/filters`` (F, 9, ceil(n_bits/64))
  uint64, ``layer/<i>/thresholds`` (F,) float64 and, with colour feed, ``layer/<i>/colour_levels``
  (C, T') float64; ``head/w`` (D, K) and ``head/b`` (K,) float32; ``ncm/means`` (K, D) float64;
- ``meta``: arch, in_shape, n_classes, regions, class_names, ``image`` {colour_norm, pool},
  ``layers`` [{n_bits, pool, colour_pools, colour_feed}].

Filters are stored bit-packed, so a file is several times smaller than the same network with
float32 weights (``size_bytes``). Files written before model formats had names carry the loader
string ``greedy.binary:load_binary_model``, which ``greedy.modelfile`` maps to this format.
"""
import numpy as np

from greedy.errors import CheckpointError, ConfigError
from greedy.kernels.bitops import n_words
from greedy.methods.binary.layers import ConvLayer, ImageLayer, head_features
from greedy.modelfile import TrainedModel


class BinaryNetwork(TrainedModel):
    """An image layer, conv layers, and a linear head: ``forward(uint8 images) -> logits``.

    Takes uint8 images (N, *in_shape) as they are (no normaliser). head_w (D, K), head_b (K,)
    float32; class_means (K, D) float64 for the nearest-class-mean classifier (``ncm_scores``).
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
        """uint8 images (N, C, H, W) -> the last layer's bit map (N, H', W', w) uint64 (popcounts only)."""
        if getattr(x, "ndim", 0) < 1 or tuple(x.shape[1:]) != self.in_shape:
            raise ConfigError(f"this network takes images of shape {self.in_shape}, got "
                              f"{tuple(getattr(x, 'shape', ())[1:])}")
        m = self.image_layer.forward(x)
        bits = self.image_layer.n_filters
        for layer in self.layers:
            m = layer.forward(layer.inputs(m, bits, x))
            bits = layer.n_filters
        return m

    def last_bits(self):
        return (self.layers[-1] if self.layers else self.image_layer).n_filters

    def features(self, x, batch_size=1000):
        """Head input (N, D) of uint8 images x, in batches."""
        parts = [head_features(self.bit_map(x[i:i + batch_size]), self.last_bits(), self.regions)
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    def forward(self, x, train=False):
        """Logits float32 (N, K) of uint8 images (N, C, H, W)."""
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

    def head_size(self):
        """Number of head features D: the last map's bits, flattened or per region."""
        h, w = self.in_shape[1] >> self.n_pools(), self.in_shape[2] >> self.n_pools()
        return (self.regions ** 2 if self.regions else h * w) * self.last_bits()

    # ------------------------------------------------------------ file format

    def arrays(self):
        il = self.image_layer
        meta = {"arch": self.arch, "in_shape": list(self.in_shape), "n_classes": self.n_classes,
                "regions": self.regions, "class_names": list(self.class_names),
                "image": {"colour_norm": il.colour_norm, "pool": il.pool},
                "layers": [{"n_bits": la.n_bits, "pool": la.pool, "colour_pools": la.colour_pools,
                            "colour_feed": la.colour_levels is not None} for la in self.layers]}
        arrays = {"image/levels": il.levels, "image/filters": il.filters, "image/thresholds": il.thresholds,
                  "head/w": self.head_w, "head/b": self.head_b, "ncm/means": self.class_means}
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
        image = ImageLayer(get("image/levels"), im["colour_norm"], get("image/filters"), get("image/thresholds"),
                           im["pool"])
        layers = [ConvLayer(la["n_bits"], get(f"layer/{i}/filters"), get(f"layer/{i}/thresholds"), la["pool"],
                            get(f"layer/{i}/colour_levels") if la["colour_feed"] else None, la["colour_pools"])
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
    pools = (None, "or", "majority")
    if len(net.in_shape) != 3 or il.levels.ndim != 2 or il.levels.shape[0] != net.in_shape[0]:
        problems.append(f"image levels of shape {il.levels.shape} for inputs of shape {net.in_shape}")
    if il.filters.dtype != np.uint64 or il.filters.shape[1:] != (n_words(il.n_code_bits),):
        problems.append(f"image filters have shape {il.filters.shape}, dtype {il.filters.dtype}")
    bits = il.n_filters
    for i, la in enumerate(net.layers):
        if la.n_bits != bits + la.colour_bits or la.filters.dtype != np.uint64 \
                or la.filters.shape[1:] != (9, n_words(la.n_bits)):
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
    h, w = net.in_shape[1] >> net.n_pools(), net.in_shape[2] >> net.n_pools()
    if net.regions < 0 or net.regions > min(h, w):
        problems.append(f"{net.regions} regions on a last map of {h}x{w} pixels")
    d, k = net.head_size(), net.n_classes
    for name, a, shape in (("head weights", net.head_w, (d, k)), ("head bias", net.head_b, (k,)),
                           ("class means", net.class_means, (k, d))):
        if a.shape != shape or a.dtype.kind != "f":
            problems.append(f"{name} have dtype {a.dtype} and shape {a.shape}, expected {shape} floats")
    named = [("image levels", il.levels), ("head weights", net.head_w), ("head bias", net.head_b),
             ("class means", net.class_means)]
    named += [(f"layer {i} thresholds", la.thresholds) for i, la in enumerate([il] + net.layers)]
    named += [(f"layer {i} colour levels", la.colour_levels) for i, la in enumerate(net.layers)
              if la.colour_levels is not None]
    problems += [f"{name} hold NaN or infinite values" for name, a in named
                 if a.dtype.kind == "f" and not np.isfinite(a).all()]
    return problems
