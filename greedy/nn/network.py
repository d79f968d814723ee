"""A trained network: a ``Sequential`` with its input normalisation, class names and model file.

Model file (``model.npz``, format ``greedy-sequential``, read with ``allow_pickle=False``):
arrays ``param/<layer index>/<name>`` and ``buffer/<layer index>/<name>``, plus ``meta``: a JSON
string with the spec, the input shape, the channel mean and std that normalise uint8 images, the
class names and the test-time augmentation (``tta``).

Test-time augmentation: a network whose ``tta`` is ``"flip"`` predicts the mean of its logits for
the image and for its mirror image (left-right), which suits datasets whose classes are
mirror-symmetric (CIFAR-10, not digits).
"""
import numpy as np

from greedy.errors import CheckpointError
from greedy.modelfile import TrainedModel
from greedy.nn.fit import predict
from greedy.nn.model import Sequential

TTA_MODES = ("none", "flip")


def mirror(x):
    """Images x (..., H, W) mirrored left-right: the second view of ``tta="flip"``."""
    return x[..., ::-1]


def flip_average(logits, mirrored_logits):
    """The output of ``tta="flip"``: the mean of the logits of the images and of their mirror images."""
    return 0.5 * (logits + mirrored_logits)


class Normalizer:
    """Per-channel standardisation of raw samples (N, C, ...): (x / 255 - mean) / std, float32."""

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)

    def fit(self, x):
        axes = (0,) + tuple(range(2, x.ndim))
        sample = x[:10000].astype(np.float32) / 255.0
        self.mean = sample.mean(axis=axes)
        self.std = sample.std(axis=axes) + 1e-6
        return self

    def __call__(self, x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        shift = (self.mean / self.std).astype(np.float32)
        return x.astype(np.float32) * scale.reshape(shape) - shift.reshape(shape)


class Network(TrainedModel):
    """``model`` (a built Sequential) applied to ``normalizer(x)``; ``tta`` "none" or "flip"."""
    FORMAT = "greedy-sequential"

    def __init__(self, model, normalizer, class_names=(), tta="none"):
        if tta not in TTA_MODES:
            raise CheckpointError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.model, self.normalizer = model, normalizer
        self.class_names, self.tta = list(class_names), tta
        self.in_shape = tuple(model.in_shape)

    def predict_logits(self, x, tta=None, batch_size=500):
        self.check_input(x)
        out = predict(self.model, x, self.normalizer, batch_size)
        if (self.tta if tta is None else tta) == "flip":
            out = flip_average(out, predict(self.model, x, lambda xb: mirror(self.normalizer(xb)), batch_size))
        return out

    def n_parameters(self):
        return self.model.n_parameters()

    def spec(self):
        return self.model.spec()

    def arrays(self):
        arrays = {}
        for i, layer in enumerate(self.model.layers):
            for k, v in layer.params.items():
                arrays[f"param/{i}/{k}"] = v
            for k, v in getattr(layer, "buffers", {}).items():
                arrays[f"buffer/{i}/{k}"] = v
        meta = {"spec": self.model.spec(), "in_shape": list(self.in_shape),
                "mean": np.asarray(self.normalizer.mean).tolist(), "std": np.asarray(self.normalizer.std).tolist(),
                "class_names": self.class_names, "tta": self.tta}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays, meta, path):
        model = Sequential.from_spec(meta["spec"]).build(meta["in_shape"], 0)
        for i, layer in enumerate(model.layers):
            for group, store in (("param", layer.params), ("buffer", getattr(layer, "buffers", {}))):
                for k in store:
                    key = f"{group}/{i}/{k}"
                    a = arrays.get(key)
                    if a is None or a.shape != store[k].shape or a.dtype != store[k].dtype:
                        raise CheckpointError(f"{path}: array {key} is missing or has the wrong shape or dtype "
                                              f"for architecture {meta['spec']}")
                    if not np.isfinite(a).all():
                        raise CheckpointError(f"{path}: array {key} holds NaN or infinite values")
                    store[k][...] = a
        channels = model.in_shape[0]
        mean, std = (np.asarray(meta[k], np.float32) for k in ("mean", "std"))
        if mean.shape != (channels,) or std.shape != (channels,) or not (std > 0).all():
            raise CheckpointError(f"{path}: input normalisation does not fit {channels} channels")
        if meta.get("tta", "none") not in TTA_MODES:
            raise CheckpointError(f"{path}: unknown test-time augmentation {meta['tta']!r}")
        return cls(model, Normalizer(mean, std), meta.get("class_names", []), meta.get("tta", "none"))


def save_model(path, model, normalizer, class_names=(), extra=None, tta="none"):
    """Save a built Sequential with its input normalisation as a ``Network`` file."""
    Network(model, normalizer, class_names, tta).save(path, extra)


def load_model(path):
    """(Sequential, Normalizer, meta) from a ``greedy-sequential`` model file."""
    from greedy.modelfile import read_npz
    arrays, meta = read_npz(path)
    net = Network.from_arrays(arrays, meta, path)
    return net.model, net.normalizer, meta
