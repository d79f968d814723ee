"""Frozen weight subsets: masks, mask schedules, and models narrowed to a subset of their kernels.

A mask is a list of boolean arrays shaped like ``model.parameters()`` (True =
trainable); the optimisers apply it through ``optimizer.masks`` and never move
frozen entries. A *kernel* is one output filter of a Conv2d layer, i.e. its
weights ``w[i]`` (C, K, K) and bias ``b[i]``; with ``include_dense`` the
output units of the hidden Dense layers (column ``w[:, j]`` and ``b[j]``)
count as kernels too. The classifier (last Dense layer) is never frozen.

Strategies (``fraction`` is the frozen fraction in each layer):

- ``none``: the baseline, everything trainable.
- ``first-half``: the first round(fraction * F) kernels of every layer frozen.
- ``random-kernels``: round(fraction * F) kernels per layer, drawn at random.
- ``random-weights``: round(fraction * size) individual entries of every
  kernel-layer tensor (weights and biases), drawn at random.
- ``schedule``: alternates between the ``first-half`` mask and its
  complement on the kernel layers every ``every`` steps.
- ``hessian``: kernels partitioned into groups by their Hessian interaction
  (``kernel_groups.hessian_groups``); group k is trained alone during phase k,
  phases cycle every ``every`` steps.

Time-varying strategies are ``MaskSchedule`` objects whose ``apply(optimizer,
step)`` installs the phase's masks; static strategies are one-phase schedules.
``MaskedBackward`` is the backward pass ``fit`` uses for them: it installs the
step's masks and skips the weight gradients of wholly frozen kernels.
"""
import copy

import numpy as np

from greedy import validate
from greedy.errors import ConfigError
from greedy.kernels import conv as ck
from greedy.nn.layers import Conv2d, Dense, _conv_input_grad
from greedy.nn.model import Sequential

STRATEGIES = ("none", "first-half", "random-kernels", "random-weights", "schedule", "hessian")
STATIC = ("none", "first-half", "random-kernels", "random-weights")


def parameter_index(model):
    """{(layer index, param name): position in model.parameters()}."""
    index, i = {}, 0
    for li, layer in enumerate(model.layers):
        for k in sorted(layer.params):
            index[(li, k)] = i
            i += 1
    return index


def kernel_layers(model, include_dense=False):
    """Indices of the layers whose kernels can be frozen: every Conv2d, and the hidden Dense layers if asked."""
    dense = [i for i, layer in enumerate(model.layers) if isinstance(layer, Dense)]
    last = dense[-1] if dense else None
    return [i for i, layer in enumerate(model.layers)
            if isinstance(layer, Conv2d) or (include_dense and isinstance(layer, Dense) and i != last)]


def n_kernels(layer):
    return layer.filters if isinstance(layer, Conv2d) else layer.units


def kernel_view(layer, array, key):
    """View of a weight/bias array of ``layer`` with the kernel axis first: (F, ...)."""
    if isinstance(layer, Dense) and key == "w":
        return array.T
    return array


def all_trainable(model):
    return [np.ones(p.shape, bool) for p in model.parameters()]


def kernel_tensor_masks(model, include_dense):
    """Masks that are True on every tensor of the kernel layers (``kernel_layers``)."""
    index = parameter_index(model)
    kernel = [np.zeros(p.shape, bool) for p in model.parameters()]
    for li in kernel_layers(model, include_dense):
        for k in ("w", "b"):
            kernel[index[(li, k)]][...] = True
    return kernel


def kernel_masks(model, trainable):
    """Masks from per-layer kernel flags: ``trainable`` maps layer index -> bool array (F,).

    Kernels flagged False are frozen (weights and bias); layers not in the dict stay trainable.
    """
    masks = all_trainable(model)
    index = parameter_index(model)
    for li, flags in trainable.items():
        layer = model.layers[li]
        flags = np.asarray(flags, bool)
        if flags.shape != (n_kernels(layer),):
            raise ConfigError(f"layer {li} ({layer.spec()}) has {n_kernels(layer)} kernels, got {flags.shape} flags")
        for k in ("w", "b"):
            view = kernel_view(layer, masks[index[(li, k)]], k)
            view[...] = flags.reshape((-1,) + (1,) * (view.ndim - 1))
    return masks


def make_masks(model, strategy, fraction=0.5, rng=None, include_dense=False):
    """Masks (list of bool arrays like ``model.parameters()``, True = trainable) of a static strategy.

    strategy: ``none``, ``first-half``, ``random-kernels`` or ``random-weights``
    (see the module docstring); ``fraction`` in [0, 1] is the frozen share of
    each kernel layer; ``rng`` a numpy Generator or seed for the random strategies.
    """
    fraction = validate.fraction(fraction, "fraction")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    layers = kernel_layers(model, include_dense)
    if strategy == "none":
        return all_trainable(model)
    if strategy in ("first-half", "random-kernels"):
        trainable = {}
        for li in layers:
            f = n_kernels(model.layers[li])
            frozen = rng.choice(f, round(fraction * f), replace=False) if strategy == "random-kernels" \
                else np.arange(round(fraction * f))
            flags = np.ones(f, bool)
            flags[frozen] = False
            trainable[li] = flags
        return kernel_masks(model, trainable)
    if strategy == "random-weights":
        masks = all_trainable(model)
        index = parameter_index(model)
        for li in layers:
            for k in ("w", "b"):
                m = masks[index[(li, k)]].reshape(-1)
                m[rng.choice(m.size, round(fraction * m.size), replace=False)] = False
        return masks
    if strategy in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} changes its masks over time; use make_mask_schedule")
    raise ConfigError(f"unknown freezing strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


class MaskSchedule:
    """Trainable subsets that change over time: phase k = (step // every) % len(phases).

    phases: list of mask lists (each like ``model.parameters()``); every: steps per phase.
    ``apply(optimizer, step)`` sets ``optimizer.masks`` to the phase's masks. When the
    phase changes, the first-moment state (SGD momentum, Adam's m) of entries that
    become frozen is zeroed so they stop at once; Adam's second moments are kept.
    """

    def __init__(self, phases, every=50, names=None):
        if not phases:
            raise ConfigError("a mask schedule needs at least one phase")
        self.phases = [[np.asarray(m, bool) for m in masks] for masks in phases]
        self.every = validate.positive_int(every, "steps per phase")
        self.names = list(names) if names is not None else [f"phase{k}" for k in range(len(phases))]

    def phase(self, step):
        return (step // self.every) % len(self.phases)

    def apply(self, optimizer, step):
        k = self.phase(step)
        masks = self.phases[k]
        if optimizer.masks is masks:
            return k
        if optimizer.state is not None:
            for state, m in zip(optimizer.state, masks):
                first = state[0] if isinstance(state, tuple) else state
                first[~m] = 0
        optimizer.masks = masks
        return k

    __call__ = apply

    def subsets(self):
        """Named disjoint parameter subsets, each a mask list.

        One phase: ``trainable`` and ``frozen``. Several: ``only_<phase name>``
        (entries trainable in that phase alone), ``always``, ``never`` and
        ``mixed`` (trainable in several but not all phases); empty subsets are left out.
        """
        stack = [np.stack([masks[i] for masks in self.phases]) for i in range(len(self.phases[0]))]
        count = [s.sum(axis=0) for s in stack]
        p = len(self.phases)
        if p == 1:
            out = {"trainable": [s[0] for s in stack], "frozen": [~s[0] for s in stack]}
        else:
            out = {f"only_{name}": [s[k] & (c == 1) for s, c in zip(stack, count)]
                   for k, name in enumerate(self.names)}
            out["always"] = [c == p for c in count]
            out["never"] = [c == 0 for c in count]
            out["mixed"] = [(c > 1) & (c < p) for c in count]
        return {name: m for name, m in out.items() if any(a.any() for a in m)}


def make_mask_schedule(model, strategy, fraction=0.5, rng=None, include_dense=False, every=50, groups=None):
    """A ``MaskSchedule`` for any strategy (static ones have one phase).

    ``schedule``: phase 0 freezes the first ``fraction`` of each kernel layer,
    phase 1 freezes the rest. ``hessian``: ``groups`` maps layer index ->
    group id per kernel (from ``hessian_groups``); phase k trains group k.
    """
    if strategy in STATIC:
        return MaskSchedule([make_masks(model, strategy, fraction, rng, include_dense)], every, [strategy])
    layers = kernel_layers(model, include_dense)
    if strategy == "schedule":
        fraction = validate.fraction(fraction, "fraction")
        first = {li: np.arange(n_kernels(model.layers[li])) >= round(fraction * n_kernels(model.layers[li]))
                 for li in layers}
        second = {li: ~flags for li, flags in first.items()}
        return MaskSchedule([kernel_masks(model, first), kernel_masks(model, second)], every,
                            ["second_part", "first_part"])
    if strategy == "hessian":
        if groups is None:
            raise ConfigError("the hessian strategy needs kernel groups (see hessian_groups)")
        n_groups = 1 + max(int(np.max(g)) for g in groups.values())
        phases = [kernel_masks(model, {li: np.asarray(g) == k for li, g in groups.items()})
                  for k in range(n_groups)]
        return MaskSchedule(phases, every, [f"group{k}" for k in range(n_groups)])
    raise ConfigError(f"unknown freezing strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def trainable_kernels(model, masks):
    """{layer index: indices (int64) of kernels with a trainable entry}, for each Conv2d/Dense layer
    in which at least one kernel is wholly frozen under ``masks``."""
    index = parameter_index(model)
    out = {}
    for li, layer in enumerate(model.layers):
        if not isinstance(layer, (Conv2d, Dense)):
            continue
        f = n_kernels(layer)
        live = np.zeros(f, bool)
        for k in ("w", "b"):
            live |= kernel_view(layer, masks[index[(li, k)]], k).reshape(f, -1).any(axis=1)
        if not live.all():
            out[li] = np.nonzero(live)[0]
    return out


def backward_skipping_frozen(model, dy, keep):
    """``model.backward(dy, input_grad=False)`` that computes weight gradients only for live kernels.

    keep: ``trainable_kernels(model, masks)``. In the listed layers only the kernels
    in ``keep[layer]`` get fresh gradients (the frozen kernels' ``grads`` entries are
    left as they were: the optimiser ignores them); the input gradient is exact.
    Saves the frozen share of each listed layer's weight-gradient product.
    """
    layers = model.layers
    first = next(i for i, layer in enumerate(layers) if layer.params)
    for i in range(len(layers) - 1, first - 1, -1):
        layer, input_grad, idx = layers[i], i > first, keep.get(i)
        if idx is None:
            dy = layer.backward(dy, input_grad=input_grad) if isinstance(layer, (Conv2d, Dense)) else layer.backward(dy)
            continue
        w = layer.params["w"]
        if isinstance(layer, Conv2d):
            if len(idx):
                _, dw, db = ck.conv2d_backward(layer.x, w[idx], np.ascontiguousarray(dy[:, idx]), layer.stride,
                                               layer.padding, input_grad=False)
                layer.grads["w"][idx] = dw
                layer.grads["b"][idx] = db
            dy = _conv_input_grad(dy, w, layer.x.shape, layer.stride, layer.padding) if input_grad else None
        else:
            part = dy[:, idx]
            layer.grads["w"][:, idx] = layer.x.T @ part
            layer.grads["b"][idx] = part.sum(axis=0)
            dy = (dy @ w.T).reshape(layer.x_shape) if input_grad else None
    return dy


class MaskedBackward:
    """The ``backward`` hook of ``fit`` for training under a ``MaskSchedule``.

    ``hook(d_outputs, step)`` installs the schedule's masks for ``step`` in
    ``optimizer`` (the phase is kept in ``phase``) and back-propagates; with
    ``skip_frozen`` the weight gradients of wholly frozen kernels are not
    computed (``backward_skipping_frozen``). Without a schedule: ``model.backward``.
    """

    def __init__(self, model, optimizer, schedule=None, skip_frozen=True):
        self.model, self.optimizer, self.schedule, self.skip_frozen = model, optimizer, schedule, skip_frozen
        self.phase = 0
        self.keep = {}

    def __call__(self, dy, step):
        if self.schedule is not None:
            self.phase = self.schedule.apply(self.optimizer, step)
            if self.skip_frozen and self.phase not in self.keep:
                self.keep[self.phase] = trainable_kernels(self.model, self.optimizer.masks)
        keep = self.keep.get(self.phase)
        if keep:
            backward_skipping_frozen(self.model, dy, keep)
        else:
            self.model.backward(dy, input_grad=False)


def sub_model(model, keep):
    """A narrower copy of ``model`` keeping only some kernels, with their initial weights copied.

    keep: {layer index: kernel indices} for Conv2d layers and hidden Dense layers
    (other layers keep all kernels). Each kept kernel keeps its weights on the
    kept input channels/features only: the result is the model with the other
    kernels removed (not frozen). Returns a built ``Sequential`` of the same dtype.
    """
    layers, selections = [], {}
    for li, layer in enumerate(model.layers):
        new = copy.copy(layer)
        new.params, new.grads = {}, {}
        if li in keep:
            idx = np.sort(np.asarray(keep[li], np.int64))
            if not len(idx) or idx[0] < 0 or idx[-1] >= n_kernels(layer) or len(np.unique(idx)) != len(idx):
                raise ConfigError(f"layer {li} ({layer.spec()}): kernels to keep must be distinct indices "
                                  f"in [0, {n_kernels(layer)}), got {list(idx)}")
            if isinstance(layer, Conv2d):
                new.filters = len(idx)
            elif isinstance(layer, Dense):
                new.units = len(idx)
            else:
                raise ConfigError(f"layer {li} ({layer.spec()}) has no kernels")
            selections[li] = idx
        layers.append(new)
    small = Sequential(layers).build(model.in_shape, 0, model.parameters()[0].dtype)
    channels = None                      # kept input channels (images) or features (vectors); None = all
    for li, (big, little) in enumerate(zip(model.layers, small.layers)):
        if not isinstance(big, (Conv2d, Dense)):
            continue                         # pools, activations, dropout keep the channel selection
        out_idx = selections.get(li, np.arange(n_kernels(big)))
        if isinstance(big, Conv2d):
            w = big.params["w"][out_idx]
            little.params["w"][...] = w if channels is None else w[:, channels]
        else:
            w = big.params["w"][:, out_idx]
            if channels is not None:
                per_channel = int(np.prod(big.in_shape[1:]))
                rows = (channels[:, None] * per_channel + np.arange(per_channel)).ravel()
                w = w[rows]
            little.params["w"][...] = w
        little.params["b"][...] = big.params["b"][out_idx]
        channels = selections.get(li)
    return small
