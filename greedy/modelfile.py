"""The protocol of trained models, and ``load`` for every model file greedy writes.

A trained model takes raw samples (uint8 images as the dataset gives them) and does its own input
normalisation. Every kind is a subclass of ``TrainedModel`` with a ``FORMAT`` name that its
files record; ``load`` reads the name and hands the arrays to that class. The kinds:

- ``greedy.nn.network.Network`` (``greedy-sequential``): every gradient-trained method;
- ``greedy.methods.binary.BinaryNetwork`` (``greedy-binary``): bit filters and popcounts.

Files are npz archives read with ``allow_pickle=False``, with a JSON ``meta`` entry.
"""
import json
import math
import os

import numpy as np

from greedy.errors import CheckpointError


class TrainedModel:
    """Base class of trained models: predict on raw samples, count parameters, save.

    Attributes: ``in_shape`` (per-sample input shape), ``class_names`` (list of str), ``tta``
    ("none" or "flip": the logits averaged over each image and its mirror image).
    """
    FORMAT = None

    def predict_logits(self, x, tta=None, batch_size=500):
        """Logits (N, K) float32 of raw samples x (N, *in_shape); ``tta`` overrides the model's own."""
        raise NotImplementedError

    def n_parameters(self):
        raise NotImplementedError

    def arrays(self):
        """(dict of arrays, meta dict) to save; ``meta`` gets the format added by ``save``."""
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, arrays, meta, path):
        """The model from a file's arrays and meta; CheckpointError (naming ``path``) if they do not fit."""
        raise NotImplementedError

    def save(self, path, info=None):
        """Write the model to ``path`` (npz, atomically); ``info`` (a JSON-ready dict) is kept as meta['extra']."""
        from greedy import atomic
        arrays, meta = self.arrays()
        meta = dict(meta, format=self.FORMAT, extra=info or {})
        atomic.save_npz(path, dict(arrays, meta=np.array(json.dumps(meta))))

    def check_input(self, x):
        """Refuse raw samples whose per-sample shape is not ``in_shape``."""
        if not isinstance(x, np.ndarray) or x.ndim < 1 or tuple(x.shape[1:]) != tuple(self.in_shape):
            shape = getattr(x, "shape", None)
            raise CheckpointError(f"the model expects samples of shape {tuple(self.in_shape)}, got "
                                  f"{None if shape is None else tuple(shape[1:])}")


def formats():
    """{format name: TrainedModel subclass} of every model kind."""
    from greedy.methods.binary import BinaryNetwork
    from greedy.nn.network import Network
    return {Network.FORMAT: Network, BinaryNetwork.FORMAT: BinaryNetwork}


# Files written before formats were named: a Sequential file had no format, a binary file a loader string.
_LEGACY_LOADERS = {"greedy.binary:load_binary_model": "greedy-binary"}


def read_npz(path, what="model file"):
    """(dict of arrays, meta dict) of an npz file with a JSON ``meta`` entry (a model file or a
    checkpoint); CheckpointError naming ``path`` if it is missing, unreadable or not such a file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            arrays = {k: f[k] for k in f.files}
        meta = arrays.pop("meta")
        if meta.dtype.kind != "U" or meta.ndim != 0:
            raise ValueError(f"meta is {meta.dtype} {meta.shape}, not a JSON string")
        meta = json.loads(str(meta))
    except Exception as e:  # noqa: BLE001 - any failure to parse untrusted bytes (zip, npy header, JSON) means damage
        text = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: not a readable greedy {what} ({type(e).__name__}: {text})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the {what}'s meta is not a JSON object")
    return arrays, meta


def load(path):
    """The TrainedModel saved in ``path``, whatever its kind; CheckpointError if the file is damaged or
    its arrays do not fit its architecture."""
    arrays, meta = read_npz(path)
    loader = meta.get("loader")
    fmt = meta.get("format") or (_LEGACY_LOADERS.get(loader) if isinstance(loader, str) else None) \
        or "greedy-sequential"
    kinds = formats()
    if not isinstance(fmt, str) or fmt not in kinds:
        raise CheckpointError(f"{path}: unknown model format {fmt!r:.40} (this greedy reads {', '.join(kinds)}); "
                              f"was it written by a newer version?")
    try:
        if fmt == "greedy-sequential":
            check_sequential_meta(arrays, meta, path)
        elif fmt == "greedy-binary":
            check_binary_meta(meta, path)
        return kinds[fmt].from_arrays(arrays, meta, path)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError, MemoryError) as e:
        text = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: inconsistent {fmt} model file ({type(e).__name__}: {text})") from None


def check_sequential_meta(arrays, meta, path):
    """Refuse a ``greedy-sequential`` meta whose spec or input shape is not what it should be, or would
    build a model larger than the file's arrays, before ``Network.from_arrays`` allocates it."""
    from greedy.checkpoint import build_within, fits_float, float_values
    from greedy.nn.model import Sequential
    spec, in_shape = meta.get("spec"), meta.get("in_shape")
    if not isinstance(spec, str) or not isinstance(in_shape, list) or not 1 <= len(in_shape) <= 3 \
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 16 for d in in_shape):
        raise CheckpointError(f"{path}: the model's spec or input shape is missing or malformed")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              and math.isfinite(x) and abs(x) < 1e30 for x in v):
            raise CheckpointError(f"{path}: the input normalisation's {key} is not a list of finite numbers")
    for key, a in arrays.items():
        if a.dtype.kind == "f" and np.isfinite(a).all() and (not fits_float(a, np.float32) or (
                key.startswith("buffer/") and key.endswith("/var") and (a < 0).any())):
            raise CheckpointError(f"{path}: array {key} holds values out of range")
    build_within(Sequential.from_spec(spec), in_shape, 0, float_values(arrays), path)


def _small_int(v, low, high):
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def check_binary_meta(meta, path):
    """Refuse a ``greedy-binary`` meta whose integers are out of bounds or whose colour feed pools the
    image another number of times than the layers before it pool, before ``BinaryNetwork.from_arrays``
    builds it (a damaged count would loop or allocate without bound)."""
    image, layers, in_shape = meta.get("image"), meta.get("layers"), meta.get("in_shape")

    def window_ok(d):
        w = d.get("window", [3, 3])
        return isinstance(w, list) and len(w) == 2 and all(_small_int(v, 1, 255) for v in w)

    ok = (isinstance(image, dict) and isinstance(layers, list) and all(isinstance(la, dict) for la in layers)
          and isinstance(in_shape, list) and len(in_shape) in (2, 3)
          and all(_small_int(d, 1, 1 << 16) for d in in_shape) and window_ok(image)
          and isinstance(image.get("bytes", False), bool)
          and _small_int(meta.get("n_classes"), 1, 1 << 20) and _small_int(meta.get("regions"), 0, 1 << 16))
    pools = int(ok and image.get("pool") is not None)
    for la in layers if ok else ():
        ok = ok and _small_int(la.get("n_bits"), 1, 1 << 24) and isinstance(la.get("colour_feed"), bool) \
            and (not la["colour_feed"] or la.get("colour_pools") == pools) and window_ok(la)
        pools += la.get("pool") is not None
    if not ok:
        raise CheckpointError(f"{path}: the binary model's meta (input shape, classes, regions or layers) is "
                              f"malformed or inconsistent")
