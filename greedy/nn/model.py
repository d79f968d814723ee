"""Sequential models, the architecture spec, and model files.

Architecture spec: layer tokens joined by ``-``, read left to right::

    c32k5-relu-max2-c64k5-relu-max2-fc1024-relu-drop0.4-fc10

=============  ==========================================================
token          layer
=============  ==========================================================
``c32k5``      Conv2d, 32 filters 5x5, stride 1, padding K//2 ("same")
``c64k3s2p0``  Conv2d with stride 2 and padding 0
``relu``       ReLU;  ``gelu``: GELU;  ``tanh``: tanh
``max2``       2x2 max pool, stride 2;  ``avg2``: average pool
``gap``        global average pool (N, C, H, W) -> (N, C)
``bn``         batch normalisation (per channel)
``fc1024``     Dense with 1024 units (flattens its input)
``drop0.4``    Dropout with rate 0.4
``tap2``       keeps the 2x2 max pool of the current map (``tap1``: the map)
``cat``        flattens the map and appends it to the kept taps: (N, D)
=============  ==========================================================

Sequences (per-sample shape (C, L), ``greedy.nn.layers1d``) use the same tokens,
read as their 1-D layers, plus a few of their own::

    emb16-c64k7-bn-relu-max2-c128k5-relu-gap-fc16

=============  ==========================================================
token          layer on a sequence (C, L)
=============  ==========================================================
``c64k7``      Conv1d, 64 filters of width 7, padding dilation*(K-1)//2
``c64k3s2p0``  Conv1d with stride 2 and padding 0;  ``c64k3d4``: dilation 4
``max2``       max pool over 2 positions, stride 2;  ``max3s2``: stride 2
``avg2``       average pool (``avg3s2`` likewise)
``gap``        global average pool (N, C, L) -> (N, C);  ``gmp``: global max
``gapmax``     both: channel means then channel maxima (N, C, L) -> (N, 2C)
``tap2``       keeps the max pool of the current map, as for images;  ``tapgapmax``: its ``gapmax``
``emb16``      ByteEmbedding: bytes (N, 1, L) -> (N, 16, L); first layer only
=============  ==========================================================

``parse_spec(spec, ndim)`` reads conv, pool and tap tokens as image (2) or
sequence (1) layers. ``Sequential.from_spec(spec)`` takes the choice from the
input shape at ``build`` ((C, L): sequences), or reads sequence layers at once
when the spec holds a token that exists only for sequences.

The last token is the classifier, ``fc<n_classes>``; ``build_model`` checks it.

A trained network with its input normalisation and model file is ``greedy.nn.network.Network``.
"""
import re

import numpy as np

from greedy.errors import ConfigError
from greedy.nn import inference
from greedy.nn.activations import GELU, Dropout, ReLU, Tanh
from greedy.nn.batchnorm import BatchNorm2d
from greedy.nn.fused import training_runs
from greedy.nn.layers import Conv2d, Dense
from greedy.nn.layers1d import (SEQUENCE_LAYERS, AvgPool1d, ByteEmbedding, Conv1d, GlobalAvgMaxPool1d,
                                GlobalAvgPool1d, GlobalMaxPool1d, MaxPool1d, Tap1d)
from greedy.nn.pooling import AvgPool2d, Concat, GlobalAvgPool, MaxPool2d, Tap


class _SequenceOnlyToken(ConfigError):
    """A token that has no image layer (``Sequential.from_spec`` then reads the spec as a sequence network)."""


def _sequence_only(m):
    raise _SequenceOnlyToken(f"architecture token {m[0]!r} exists only for sequences (C, L); "
                             "parse the spec with ndim=1")


def _opt(group):
    return None if group is None else int(group)


# (pattern, layer for images and vectors, layer for sequences or None: the same)
_TOKENS = [
    (re.compile(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?(?:d(\d+))?"),
     lambda m: _sequence_only(m) if m[5] else Conv2d(int(m[1]), int(m[2]), int(m[3] or 1), _opt(m[4])),
     lambda m: Conv1d(int(m[1]), int(m[2]), int(m[3] or 1), _opt(m[4]), int(m[5] or 1))),
    (re.compile(r"fc(\d+)|d(\d+)"), lambda m: Dense(int(m[1] or m[2])), None),
    (re.compile(r"relu"), lambda m: ReLU(), None),
    (re.compile(r"tanh"), lambda m: Tanh(), None),
    (re.compile(r"gelu"), lambda m: GELU(), None),
    (re.compile(r"max(\d+)(?:s(\d+))?"), lambda m: _sequence_only(m) if m[2] else MaxPool2d(int(m[1])),
     lambda m: MaxPool1d(int(m[1]), _opt(m[2]))),
    (re.compile(r"avg(\d+)(?:s(\d+))?"), lambda m: _sequence_only(m) if m[2] else AvgPool2d(int(m[1])),
     lambda m: AvgPool1d(int(m[1]), _opt(m[2]))),
    (re.compile(r"gap"), lambda m: GlobalAvgPool(), lambda m: GlobalAvgPool1d()),
    (re.compile(r"gmp"), _sequence_only, lambda m: GlobalMaxPool1d()),
    (re.compile(r"gapmax"), _sequence_only, lambda m: GlobalAvgMaxPool1d()),
    (re.compile(r"bn"), lambda m: BatchNorm2d(), None),
    (re.compile(r"drop(0?\.\d+|0)"), lambda m: Dropout(float(m[1])), None),
    (re.compile(r"tap(\d+)"), lambda m: Tap(int(m[1])), lambda m: Tap1d(int(m[1]))),
    (re.compile(r"tapgapmax"), _sequence_only, lambda m: Tap1d(global_pool=True)),
    (re.compile(r"cat"), lambda m: Concat(), None),
    (re.compile(r"emb(\d+)(?:v(\d+))?"), _sequence_only, lambda m: ByteEmbedding(int(m[1]), int(m[2] or 256))),
]

_IMAGE_LAYERS = (Conv2d, MaxPool2d, GlobalAvgPool, Tap)  # Tap1d, a Tap, is a sequence layer


def parse_spec(spec, ndim=2):
    """Turn an architecture string into a list of (unbuilt) layers.

    ``ndim`` 2 reads conv, pool, gap and tap tokens as image layers (``Conv2d`` ...),
    1 as sequence layers (``Conv1d`` ...) and allows the sequence-only tokens
    (``emb``, ``gmp``, conv dilation ``d``, pool stride ``s``).
    """
    if isinstance(ndim, bool) or ndim not in (1, 2):
        raise ConfigError(f"ndim must be 1 (sequences) or 2 (images), got {ndim!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("architecture spec is empty")
    layers = []
    for token in spec.strip().split("-"):
        for pattern, make, make1d in _TOKENS:
            m = pattern.fullmatch(token)
            if m:
                layer = (make1d or make)(m) if ndim == 1 else make(m)
                if any(getattr(layer, a, 1) < 1 for a in ("filters", "units", "kernel_size", "size", "stride",
                                                          "dilation", "dim", "vocab")):
                    raise ConfigError(f"architecture token {token!r} has a zero width, size or stride")
                layers.append(layer)
                break
        else:
            raise ConfigError(f"unknown architecture token {token!r} in {spec!r} "
                              "(see greedy.model for the syntax, e.g. c32k5-relu-max2-fc10)")
    return layers


class Model:
    """The protocol of everything ``greedy.nn.fit.fit`` trains: a base class.

    ``forward(x, train=False) -> y``; ``backward(dy, input_grad=True)`` writes the gradients of
    ``parameters()`` into ``gradients()`` (two lists of arrays in the same fixed order) and
    returns dL/dx, or None when not ``input_grad``; ``predict_batch(x)`` is the inference output
    of one batch (by default ``forward(x)``), written into ``out`` when given (an array of its shape
    and dtype).
    """

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dy, input_grad=True):
        raise NotImplementedError

    def parameters(self):
        raise NotImplementedError

    def gradients(self):
        raise NotImplementedError

    def predict_batch(self, x, out=None):
        y = self.forward(x, train=False)
        if out is None:
            return y
        np.copyto(out, y)
        return out

    def n_parameters(self):
        return int(sum(p.size for p in self.parameters()))


class Sequential(Model):
    """A stack of layers applied in order.

    ``Sequential(layers).build(in_shape, seed)`` creates the parameters; then
    ``forward(x, train)`` / ``backward(dy)``; ``parameters()`` and ``gradients()``
    list the arrays in a fixed order for the optimisers.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.in_shape = None
        self._runs = {}  # the fused runs of the last forward: {index of the run's first layer: greedy.nn.fused run}

    @classmethod
    def from_spec(cls, spec, ndim=None):
        """A model from an architecture string (see the module docstring).

        ``ndim`` 2 (images), 1 (sequences), or None: 1 if the spec holds a token that
        exists only for sequences, else decided by the input shape at the first ``build``.
        """
        if ndim is not None:
            return cls(parse_spec(spec, ndim))
        try:
            model = cls(parse_spec(spec, 2))
        except _SequenceOnlyToken:
            return cls(parse_spec(spec, 1))
        model._pending_spec = spec
        return model

    def spec(self):
        return "-".join(layer.spec() for layer in self.layers)

    def build(self, in_shape, seed=0, dtype=np.float32):
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.in_shape = tuple(int(s) for s in in_shape)
        pending = getattr(self, "_pending_spec", None)
        if pending is not None:
            self._pending_spec = None
            if len(self.in_shape) == 2:
                self.layers = parse_spec(pending, 1)
        shape = self.in_shape
        taps = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, _IMAGE_LAYERS) and not isinstance(layer, SEQUENCE_LAYERS) and len(shape) != 3:
                hint = " (sequence layers come from parse_spec(spec, ndim=1))" if len(shape) == 2 else ""
                raise ConfigError(f"layer {layer.spec()} needs an image input (C, H, W), got shape {shape}{hint}")
            if isinstance(layer, BatchNorm2d) and len(shape) not in (2, 3):
                raise ConfigError(f"layer {layer.spec()} needs a map (C, H, W) or a sequence (C, L), "
                                  f"got shape {shape}")
            if isinstance(layer, ByteEmbedding) and i > 0:
                raise ConfigError(f"layer {layer.spec()} reads bytes and must be the first layer")
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
        """Apply the layers in order; in training, runs of conv or batch norm, ReLU, max pool as one (``greedy.nn.fused``)."""
        self._runs = training_runs(self.layers) if train else {}
        i = 0
        while i < len(self.layers):
            run = self._runs.get(i)
            if run is not None:
                x = run.forward(x)
                i += run.length
                continue
            x = self.layers[i].forward(x, train)
            i += 1
        return x

    def backward(self, dy, input_grad=True):
        """Back-propagate dy through all layers; returns the input gradient (None if not ``input_grad``)."""
        ends = {start + run.length - 1: (start, run) for start, run in self._runs.items()}
        i = len(self.layers) - 1
        while i >= 0:
            start, run = ends.get(i, (None, None))
            if run is not None:
                dy = run.backward(dy, input_grad=input_grad or start > 0)
                i = start - 1
                continue
            dy = self.layers[i].backward(dy, input_grad=input_grad or i > 0)
            i -= 1
        return dy

    def parameters(self):
        return [layer.params[k] for layer in self.layers for k in sorted(layer.params)]

    def gradients(self):
        return [layer.grads[k] for layer in self.layers for k in sorted(layer.params)]

    def named_parameters(self):
        return [(f"{i}/{k}", layer.params[k]) for i, layer in enumerate(self.layers)
                for k in sorted(layer.params)]

    def predict_batch(self, x, out=None):
        """Inference output for one batch x (N, ...), with conv runs fused (``greedy.nn.inference``);
        keeps nothing for backward. ``out`` (the output's shape and dtype) receives it, see
        ``inference.forward``."""
        return inference.forward(self.layers, x, out)

    def predict_logits(self, x, batch_size=500):
        """Logits (N, K) for float inputs x (N, ...), in batches."""
        out = [self.predict_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) + tuple(self.out_shape), np.float32)


class Stack(Model):
    """Models applied in turn and trained as one (a block and its head); only their parameters train."""

    def __init__(self, *parts):
        self.parts = parts

    def forward(self, x, train=False):
        for p in self.parts:
            x = p.forward(x, train)
        return x

    def backward(self, dy, input_grad=True):
        for i in range(len(self.parts) - 1, -1, -1):
            dy = self.parts[i].backward(dy, input_grad=input_grad or i > 0)
        return dy

    def predict_batch(self, x, out=None):
        """Inference output for one batch, with conv runs fused (``greedy.nn.inference``); ``out`` as in
        ``Sequential.predict_batch``."""
        return inference.forward([lay for p in self.parts for lay in p.layers], x, out)

    def parameters(self):
        return [q for p in self.parts for q in p.parameters()]

    def gradients(self):
        return [q for p in self.parts for q in p.gradients()]


def build_model(spec, in_shape, n_classes, seed=0, dtype=np.float32, init_gain=1.0, identity_init=False,
                first_set_elsewhere=False):
    """Parse ``spec``, build it for per-sample ``in_shape``, and check the last layer has n_classes outputs.
    The initial weights of its convs and dense layers are multiplied by ``init_gain``; with ``identity_init``
    the first min(F, C) filters of every conv (``identity_filters``) then pass their own input channel
    through, but for the first layer when ``first_set_elsewhere`` (the caller sets it, as ``--whiten-first``
    does)."""
    if not init_gain > 0:
        raise ConfigError(f"init_gain must be positive, got {init_gain}")
    model = Sequential.from_spec(spec)
    if not isinstance(model.layers[-1], Dense):
        raise ConfigError(f"the last token of {spec!r} must be the classifier fc{n_classes}")
    if model.layers[-1].units != n_classes:
        raise ConfigError(f"the last layer of {spec!r} has {model.layers[-1].units} outputs, "
                          f"the dataset has {n_classes} classes")
    model.build(in_shape, seed, dtype)
    if init_gain != 1.0:
        for layer in model.layers:
            if isinstance(layer, (Conv2d, Conv1d, Dense)):
                layer.params["w"] *= layer.params["w"].dtype.type(init_gain)
    if identity_init:
        for layer in model.layers[1:] if first_set_elsewhere else model.layers:
            if isinstance(layer, (Conv2d, Conv1d)):
                identity_filters(layer)
    return model


def identity_filters(conv):
    """Set the first n = min(F, C) filters of ``conv`` (weights (F, C, K, K) or (F, C, K), K odd) to the
    identity: filter i is 1 at the centre tap of input channel i and 0 elsewhere (airbench's dirac
    initialisation), so that at the start those outputs copy their input channels; the other filters keep
    their weights."""
    w = conv.params["w"]
    k = w.shape[2:]
    if any(side % 2 == 0 for side in k):
        raise ConfigError(f"identity initialisation needs odd kernels, conv {conv.spec()} has {k[0]} taps")
    n = min(w.shape[:2])
    w[:n] = 0
    w[(np.arange(n), np.arange(n)) + tuple(side // 2 for side in k)] = 1
