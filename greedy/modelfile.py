"""The protocol of trained models, and ``load`` for every model file greedy writes.

A trained model takes raw samples (uint8 images as the dataset gives them) and does its own input
normalisation. Every kind is a subclass of ``TrainedModel`` with a ``FORMAT`` name that its
files record; ``load`` reads the name and hands the arrays to that class. The kinds:

- ``greedy.nn.network.Network`` (``greedy-sequential``): every gradient-trained method;
- ``greedy.methods.binary.BinaryNetwork`` (``greedy-binary``): bit filters and popcounts.

Files are npz archives read with ``allow_pickle=False``, with a JSON ``meta`` entry.
"""
import json
import os
import zipfile

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


def read_npz(path):
    """(dict of arrays, meta dict) of an npz model file; CheckpointError if missing or unreadable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable greedy model file ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the model file's meta is not a JSON object")
    return arrays, meta


def load(path):
    """The TrainedModel saved in ``path``, whatever its kind."""
    arrays, meta = read_npz(path)
    fmt = meta.get("format") or _LEGACY_LOADERS.get(meta.get("loader")) or "greedy-sequential"
    kinds = formats()
    if fmt not in kinds:
        raise CheckpointError(f"{path}: unknown model format {fmt!r} (this greedy reads {', '.join(kinds)}); "
                              f"was it written by a newer version?")
    try:
        return kinds[fmt].from_arrays(arrays, meta, path)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: inconsistent {fmt} model file ({type(e).__name__}: {e})") from None
