"""Sequential models, the architecture spec, and model files.

Architecture spec: layer tokens joined by ``-``, read left to right::

    c32k5-relu-max2-c64k5-relu-max2-fc1024-relu-drop0.4-fc10

=============  ==========================================================
token          layer
=============  ==========================================================
``c32k5``      Conv2d, 32 filters 5x5, stride 1, padding K//2 ("same")
``c64k3s2p0``  Conv2d with stride 2 and padding 0
``relu``       ReLU;  ``tanh``: tanh
``max2``       2x2 max pool, stride 2;  ``avg2``: average pool
``gap``        global average pool (N, C, H, W) -> (N, C)
``bn``         batch normalisation (per channel)
``fc1024``     Dense with 1024 units (flattens its input)
``drop0.4``    Dropout with rate 0.4
``tap2``       keeps the 2x2 max pool of the current map (``tap1``: the map)
``cat``        flattens the map and appends it to the kept taps: (N, D)
=============  ==========================================================

The last token is the classifier, ``fc<n_classes>``; ``build_model`` checks it.

Model file (``model.npz``, loadable with ``allow_pickle=False``): arrays
``param/<layer index>/<name>`` and ``buffer/<layer index>/<name>``, plus
``meta``: a JSON string with the spec, input shape, channel mean and std used
to normalise uint8 images, class names, and the test-time augmentation (``tta``).

Test-time augmentation: a model whose ``tta`` is ``"flip"`` predicts the mean of
its logits for the image and for its mirror image (left-right), which suits
datasets whose classes are mirror-symmetric (CIFAR-10, not digits).
"""
import json
import os
import re
import tempfile

import numpy as np

from greedy.nn import inference
from greedy.errors import CheckpointError, ConfigError
from greedy.nn.layers import (AvgPool2d, BatchNorm2d, Concat, Conv2d, Dense, Dropout, GlobalAvgPool, MaxPool2d,
                     ReLU, Tanh, Tap)

_TOKENS = [
    (re.compile(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?"),
     lambda m: Conv2d(int(m[1]), int(m[2]), int(m[3] or 1), None if m[4] is None else int(m[4]))),
    (re.compile(r"fc(\d+)|d(\d+)"), lambda m: Dense(int(m[1] or m[2]))),
    (re.compile(r"relu"), lambda m: ReLU()),
    (re.compile(r"tanh"), lambda m: Tanh()),
    (re.compile(r"max(\d+)"), lambda m: MaxPool2d(int(m[1]))),
    (re.compile(r"avg(\d+)"), lambda m: AvgPool2d(int(m[1]))),
    (re.compile(r"gap"), lambda m: GlobalAvgPool()),
    (re.compile(r"bn"), lambda m: BatchNorm2d()),
    (re.compile(r"drop(0?\.\d+|0)"), lambda m: Dropout(float(m[1]))),
    (re.compile(r"tap(\d+)"), lambda m: Tap(int(m[1]))),
    (re.compile(r"cat"), lambda m: Concat()),
]

TTA_MODES = ("none", "flip")


def mirror(x):
    """Images x (..., H, W) mirrored left-right: the second view of ``tta="flip"``."""
    return x[..., ::-1]


def flip_average(logits, mirrored_logits):
    """The output of ``tta="flip"``: the mean of the logits of the images and of their mirror images."""
    return 0.5 * (logits + mirrored_logits)


def check_tta(tta):
    if tta not in TTA_MODES:
        raise ConfigError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


def parse_spec(spec):
    """Turn an architecture string into a list of (unbuilt) layers."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("architecture spec is empty")
    layers = []
    for token in spec.strip().split("-"):
        for pattern, make in _TOKENS:
            m = pattern.fullmatch(token)
            if m:
                layer = make(m)
                if getattr(layer, "filters", 1) < 1 or getattr(layer, "units", 1) < 1 \
                        or getattr(layer, "kernel_size", 1) < 1 or getattr(layer, "size", 1) < 1 \
                        or getattr(layer, "stride", 1) < 1:
                    raise ConfigError(f"architecture token {token!r} has a zero width, size or stride")
                layers.append(layer)
                break
        else:
            raise ConfigError(f"unknown architecture token {token!r} in {spec!r} "
                              "(see greedy.model for the syntax, e.g. c32k5-relu-max2-fc10)")
    return layers


class Sequential:
    """A stack of layers applied in order.

    ``Sequential(layers).build(in_shape, seed)`` creates the parameters; then
    ``forward(x, train)`` / ``backward(dy)``; ``parameters()`` and ``gradients()``
    list the arrays in a fixed order for the optimisers.
    """

    def __init__(self, layers, tta="none"):
        self.layers = list(layers)
        self.in_shape = None
        self.tta = check_tta(tta)

    @classmethod
    def from_spec(cls, spec):
        return cls(parse_spec(spec))

    def spec(self):
        return "-".join(layer.spec() for layer in self.layers)

    def build(self, in_shape, seed=0, dtype=np.float32):
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.in_shape = tuple(int(s) for s in in_shape)
        shape = self.in_shape
        taps = []
        for layer in self.layers:
            if isinstance(layer, (Conv2d, MaxPool2d, BatchNorm2d, GlobalAvgPool, Tap)) and len(shape) != 3:
                raise ConfigError(f"layer {layer.spec()} needs an image input (C, H, W), got shape {shape}")
            if isinstance(layer, Tap):
                taps.append(layer)
            elif isinstance(layer, Concat):
                layer.taps, taps = taps, []
            shape = layer.build(shape, rng, dtype)
        if taps:
            raise ConfigError(f"{self.spec()}: every 'tap<k>' needs a 'cat' after it")
        self.out_shape = shape
        return self

    def forward(self, x, train=False):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, input_grad=True):
        """Back-propagate dy through all layers; returns the input gradient (None if not ``input_grad``)."""
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy, input_grad=input_grad or i > 0)
        return dy

    def parameters(self):
        return [layer.params[k] for layer in self.layers for k in sorted(layer.params)]

    def gradients(self):
        return [layer.grads[k] for layer in self.layers for k in sorted(layer.params)]

    def named_parameters(self):
        return [(f"{i}/{k}", layer.params[k]) for i, layer in enumerate(self.layers)
                for k in sorted(layer.params)]

    def n_parameters(self):
        return int(sum(p.size for p in self.parameters()))

    def predict_batch(self, x):
        """Inference output for one batch x (N, ...), with conv runs fused (``greedy.inference``); keeps
        nothing for backward. With ``tta == "flip"``: the mean over x and x mirrored left-right."""
        out = inference.forward(self.layers, x)
        if self.tta == "flip":
            out = flip_average(out, inference.forward(self.layers, mirror(x)))
        return out

    def predict_logits(self, x, batch_size=500):
        """Logits (N, K) for float inputs x (N, ...), in batches."""
        out = [self.predict_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) + tuple(self.out_shape), np.float32)


def build_model(spec, in_shape, n_classes, seed=0, dtype=np.float32):
    """Parse ``spec``, build it for per-sample ``in_shape``, and check the last layer has n_classes outputs."""
    model = Sequential.from_spec(spec)
    if not isinstance(model.layers[-1], Dense):
        raise ConfigError(f"the last token of {spec!r} must be the classifier fc{n_classes}")
    if model.layers[-1].units != n_classes:
        raise ConfigError(f"the last layer of {spec!r} has {model.layers[-1].units} outputs, "
                          f"the dataset has {n_classes} classes")
    return model.build(in_shape, seed, dtype)


class Normalizer:
    """Per-channel standardisation of uint8 images: (x / 255 - mean) / std, float32 NCHW."""

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)

    def fit(self, x):
        sample = x[:10000].astype(np.float32) / 255.0
        self.mean = sample.mean(axis=(0, 2, 3))
        self.std = sample.std(axis=(0, 2, 3)) + 1e-6
        return self

    def __call__(self, x):
        scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        shift = (self.mean / self.std).astype(np.float32)
        return x.astype(np.float32) * scale[None, :, None, None] - shift[None, :, None, None]


def atomic_save_npz(path, arrays):
    """Write arrays to ``path`` (npz) through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model(path, model, normalizer, class_names=(), extra=None):
    """Save a built model with its input normalisation and class names (see module docstring)."""
    meta = {"spec": model.spec(), "in_shape": list(model.in_shape),
            "mean": np.asarray(normalizer.mean).tolist(), "std": np.asarray(normalizer.std).tolist(),
            "class_names": list(class_names), "tta": model.tta, "extra": extra or {}}
    arrays = {"meta": np.array(json.dumps(meta))}
    for i, layer in enumerate(model.layers):
        for k, v in layer.params.items():
            arrays[f"param/{i}/{k}"] = v
        for k, v in getattr(layer, "buffers", {}).items():
            arrays[f"buffer/{i}/{k}"] = v
    atomic_save_npz(path, arrays)


def load_model(path):
    """Load ``(model, normalizer, meta)`` from a model file written by ``save_model``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        model = Sequential.from_spec(meta["spec"]).build(meta["in_shape"], 0)
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable greedy model file ({type(e).__name__}: {e})") from None
    for i, layer in enumerate(model.layers):
        for group, store in (("param", layer.params), ("buffer", getattr(layer, "buffers", {}))):
            for k in store:
                key = f"{group}/{i}/{k}"
                if key not in arrays or arrays[key].shape != store[k].shape:
                    raise CheckpointError(f"{path}: array {key} is missing or has the wrong shape "
                                          f"for architecture {meta['spec']}")
                store[k][...] = arrays[key]
    if meta.get("tta", "none") not in TTA_MODES:
        raise CheckpointError(f"{path}: unknown test-time augmentation {meta['tta']!r}")
    model.tta = meta.get("tta", "none")
    return model, Normalizer(meta["mean"], meta["std"]), meta
