"""The layer-wise training loop shared by every greedy method.

A network is a list of *blocks* (a conv and what follows it up to the next
conv, e.g. ``c128k3-bn-relu-max2``). For each block in turn:

1. the block's input is the cached output of the frozen blocks before it,
   computed once per layer, never per step;
2. a method-specific *block trainer* trains the block on that input with a
   per-layer objective that never evaluates later blocks (an auxiliary
   classifier, cosine separation, KL divergence, or patch-bag codes);
3. the trained block is frozen and applied to the real input to make the next
   block's input.

Then a softmax classifier is trained on the last block's pooled features: linear,
or with the hidden layers of ``final_hidden``; with ``final_features="all"`` it
also sees every earlier block's map, pooled to the same side. (With
``final_classifier="last-head"`` the last block keeps the head it was trained
with instead.) Optionally, the whole stack is then fine-tuned end to end. The
result is an ordinary ``Sequential`` CNN (blocks, pooling, classifier).

Feature caches are float32 up to ``CACHE_FLOAT32_BYTES`` and float16 above
it, so the training-set cache of a layer needs at most
N x C x H x W x 4 bytes, or half of that for large layers (about 3.3 GB for
50,000 images of 128 x 16 x 16).
"""
import re
import time

import numba
import numpy as np

from greedy.nn import inference
from greedy.errors import ConfigError
from greedy.nn.layers import Concat, Dense, Dropout, MaxPool2d, ReLU, Tanh, Tap
from greedy.nn.model import Sequential, parse_spec
from greedy.nn.optim import make_optimizer
from greedy.kernels.pointwise import channel_normalise, column_sums
from greedy.nn.fit import accuracy, fit, predict

CACHE_FLOAT32_BYTES = 2 * 1024**3


def split_blocks(spec):
    """Split an architecture spec into block specs, one per conv: 'c8k3-relu-c16k3-max2' -> ['c8k3-relu', 'c16k3-max2']."""
    tokens = spec.strip().split("-")
    if not tokens or not re.fullmatch(r"c\d+k\d+.*", tokens[0]):
        raise ConfigError(f"a layer-wise architecture must start with a conv token, got {spec!r}")
    if any(re.fullmatch(r"(fc|d)\d+|gap", t) for t in tokens):
        raise ConfigError(f"a layer-wise architecture lists conv blocks only (no fc or gap; the classifier is "
                          f"added by the method), got {spec!r}")
    blocks, current = [], []
    for t in tokens:
        if re.fullmatch(r"c\d+k\d+.*", t) and current:
            blocks.append("-".join(current))
            current = []
        current.append(t)
    blocks.append("-".join(current))
    parse_spec("-".join(blocks))
    return blocks


def blocks_from_widths(layers, width, pool_every=1, first_pool=True, activation="relu", batchnorm=True,
                       kernel=3, widen_after=None):
    """A conv stack of ``layers`` blocks of ``width`` filters (doubling at ``widen_after``) with 2x2 max pools."""
    if layers < 1 or width < 1:
        raise ConfigError(f"need at least one layer of width >= 1, got layers={layers} width={width}")
    blocks = []
    for i in range(layers):
        w = width * (2 if widen_after is not None and i >= widen_after else 1)
        tokens = [f"c{w}k{kernel}"] + (["bn"] if batchnorm else []) + [activation]
        if (i == 0 and first_pool) or (i > 0 and pool_every and (i + 1) % pool_every == 0):
            tokens.append("max2")
        blocks.append("-".join(tokens))
    return blocks


def pooling_token(shape, mode):
    """Token pooling a (C, H, W) map to what the classifier sees: 'gap', 'quadrant' (2x2 regions) or 'none'."""
    c, h, w = shape
    if mode == "gap":
        return "gap"
    if mode == "quadrant":
        return f"avg{max(min(h, w) // 2, 1)}"
    if mode == "none":
        return None
    raise ConfigError(f"unknown pooling {mode!r}; choose gap, quadrant or none")


def block_shapes(blocks_spec, in_shape):
    """Output shape of each block of ``blocks_spec`` for a per-sample input ``in_shape``."""
    shapes, rng = [], np.random.default_rng(0)
    for spec in blocks_spec:
        in_shape = Sequential.from_spec(spec).build(in_shape, rng).out_shape
        shapes.append(in_shape)
    return shapes


def tap_pool_sizes(shapes, pool):
    """Max-pool size of the tap after each block but the last, for ``final_features="all"``: each
    block's map (``shapes``, from ``block_shapes``) pooled to about the side of the map the
    classifier sees (the last block's, after the ``pool`` token)."""
    last = Sequential(parse_spec(pool)).build(shapes[-1]).out_shape if pool else shapes[-1]
    side = last[1] if len(last) == 3 else 1
    return [max(1, shape[1] // side) for shape in shapes[:-1]]


def pool_maps(x, size, batch_size=500):
    """Maps x (N, C, H, W), float32 or float16, max-pooled ``size`` x ``size`` and flattened: (N, D) float32."""
    if size == 1:
        return _as32(x).reshape(len(x), -1)
    pooler = Sequential([MaxPool2d(size)]).build(x.shape[1:])
    return predict(pooler, x, _as32, batch_size).reshape(len(x), -1)


def head_layers(shape, n_classes, pool, hidden_convs=0, width=None):
    """An auxiliary/final head for a (C, H, W) input: optional convs, pooling, then a linear classifier."""
    tokens = [f"c{width or shape[0]}k3-relu" for _ in range(hidden_convs)]
    token = pooling_token(shape, pool)
    tokens += [token] if token else []
    return parse_spec("-".join(tokens + [f"fc{n_classes}"]))


def propagate(block, x, batch_size=256):
    """Apply a frozen block (a Sequential) to cached inputs x (N, C, H, W) -> outputs, stored float16 if large.

    Uses the fused inference pass (``greedy.inference``): no full-size conv map is written.
    """
    first = block.predict_batch(_as32(x[:1]))
    n = len(x)
    dtype = np.float32 if n * first[0].size * 4 <= CACHE_FLOAT32_BYTES else np.float16
    out = np.empty((n,) + first.shape[1:], dtype)
    for i in range(0, n, batch_size):
        out[i:i + batch_size] = block.predict_batch(_as32(x[i:i + batch_size]))
    return out


def _as32(xb):
    return xb if xb.dtype == np.float32 else xb.astype(np.float32)


def parse_budget(text, n_layers):
    """Per-layer training budgets from a string.

    ``2`` or ``2e``: two epochs per layer; ``90s``: 90 seconds per layer;
    ``4e*0.5``: geometric, 4, 2, 1, ... epochs (front-loaded); ``3e,2e,1e``: one
    value per layer (the last repeats). Returns a list of (amount, unit) with
    unit 'e' (epochs) or 's' (seconds).
    """
    text = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([es]?)\*(\d+(?:\.\d+)?)", text)
    if m:
        base, unit, ratio = float(m[1]), m[2] or "e", float(m[3])
        budgets = [(base * ratio**i, unit) for i in range(n_layers)]
    else:
        budgets = []
        for part in text.split(","):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)([es]?)", part.strip())
            if not m:
                raise ConfigError(f"cannot read layer budget {text!r}; use e.g. 2e, 90s, 4e*0.5 or 3e,2e,1e")
            budgets.append((float(m[1]), m[2] or "e"))
        budgets += [budgets[-1]] * (n_layers - len(budgets))
    if any(a <= 0 for a, _ in budgets):
        raise ConfigError(f"layer budgets must be positive, got {text!r}")
    return budgets[:n_layers]


class Stack:
    """A model made of a body and a head, trained as one by ``fit`` (only its listed parts get gradients)."""

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

    def predict_batch(self, x):
        """Inference output for one batch, with conv runs fused (``greedy.inference``)."""
        return inference.forward([lay for p in self.parts for lay in p.layers], x)

    def parameters(self):
        return [q for p in self.parts for q in p.parameters()]

    def gradients(self):
        return [q for p in self.parts for q in p.gradients()]


def fit_block(model, x, y, opts, budget, rng, loss_fn=None, label="block", on_epoch=None, augment=None,
              sample_weight=None, progress=True):
    """Train ``model`` on cached features (or codes) with the block optimiser options and an (amount, unit) budget."""
    amount, unit = budget
    opt = make_optimizer(opts["optimizer"], opts["lr"], opts["schedule"], opts["weight_decay"])
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    epochs = amount if unit == "e" else 1e6
    return fit(model, x, y, opt, epochs=epochs, batch_size=opts["batch_size"],
               prepare=_as32 if isinstance(x, np.ndarray) else None, rng=rng, sample_weight=sample_weight,
               time_budget=amount if unit == "s" else None, on_epoch=on_epoch, progress=progress,
               label=label, augment=augment, **kwargs)


STANDARDIZE_CHUNK_BYTES = 256 * 1024**2


def _row_chunks(x):
    rows = max(1, STANDARDIZE_CHUNK_BYTES // (4 * x[0].size))
    for i in range(0, len(x), rows):
        yield i, _as32(np.ascontiguousarray(x[i:i + rows]).reshape(min(rows, len(x) - i), -1))


def column_mean_std(x):
    """Per-column mean and standard deviation (float64, (D,)) of x (N, D), float32 or float16.

    Streams float32 row chunks of at most ``STANDARDIZE_CHUNK_BYTES``; sums in float64 around the first row.
    """
    shift = _as32(x[:1]).reshape(-1).astype(np.float64)
    total, total2 = np.zeros_like(shift), np.zeros_like(shift)
    for _, chunk in _row_chunks(x):
        s, s2 = column_sums(chunk, shift, numba.get_num_threads())
        total += s
        total2 += s2
    m = total / len(x)
    return shift + m, np.sqrt(np.maximum(total2 / len(x) - m * m, 0.0))


def standardize(x, mean, std):
    """(x - mean) / std as float32 (N, D), for x (N, D) float32 or float16 and per-column mean, std (D,)."""
    if x.ndim != 2 or x.shape[1] != len(mean) or len(std) != len(mean):
        raise ConfigError(f"standardize: features {x.shape} do not match statistics of {len(mean)} columns")
    z = np.empty((len(x), len(mean)), np.float32)
    inv, zero = 1.0 / std, np.zeros_like(mean)
    for i, chunk in _row_chunks(x):
        m = len(chunk)
        channel_normalise(chunk.reshape(m, -1, 1), mean, inv, zero, z[i:i + m].reshape(m, -1, 1))
    return z


def classifier_layers(hidden, n_classes):
    """Unbuilt layers of the final classifier: the ``hidden`` spec (e.g. 'fc512-relu-drop0.4'; None, ''
    or 'none' for none) followed by a linear ``fc<n_classes>``."""
    layers = parse_spec(hidden) if hidden and hidden != "none" else []
    if layers and (not isinstance(layers[0], Dense)
                   or not all(isinstance(lay, (Dense, ReLU, Tanh, Dropout)) for lay in layers)):
        raise ConfigError(f"the final classifier's hidden layers are fc<units> layers with relu, tanh or "
                          f"drop<p> between them, starting with fc (e.g. fc512-relu-drop0.4), got {hidden!r}")
    return layers + [Dense(n_classes, init="glorot")]


def train_classifier(features, y, test_features, y_test, n_classes, opts, rng, progress=False):
    """Fit the final softmax classifier on pooled features (N, D); returns (list of layers, test accuracy).

    Linear unless ``opts['final_hidden']`` names hidden layers (``classifier_layers``).
    Features are standardised for training and the standardisation is folded into the
    first layer's weights, so the returned layers apply to raw pooled features. Trains
    for ``opts['final_epochs']`` epochs at rate ``opts['final_lr']``, or
    ``opts['final_min_steps']`` (default 2000) steps if that is more: small training sets
    still get enough steps.
    """
    layers = classifier_layers(opts.get("final_hidden"), n_classes)
    if features.ndim != 2 or test_features.ndim != 2 or features.shape[1] != test_features.shape[1]:
        raise ConfigError(f"classifier features must be (N, D) for training and test alike, got "
                          f"{features.shape} and {test_features.shape}")
    mean, std = column_mean_std(features)
    std += 1e-6
    z, z_test = standardize(features, mean, std), standardize(test_features, mean, std)
    batch = opts.get("final_batch_size", 256)
    epochs = max(opts.get("final_epochs", 10), opts.get("final_min_steps", 2000) * batch / len(z))
    head = Sequential(layers).build(z.shape[1:], rng)
    opt = make_optimizer("adam", opts.get("final_lr", 1e-2), "cosine", opts.get("final_weight_decay", 5e-4))
    fit(head, z, y, opt, epochs=epochs, batch_size=batch, rng=rng, label="classifier", progress=progress)
    acc = accuracy(head, z_test, y_test)
    first = layers[0]
    w = first.params["w"] / std[:, None]
    first.params["b"][...] = first.params["b"] - mean @ w
    first.params["w"][...] = w
    return layers, acc


def train_layerwise(data, normalizer, opts, run, block_trainer):
    """Train blocks one at a time with ``block_trainer``, then the classifier; returns (model, summary fields).

    ``block_trainer(layer, block, x, y, x_test, y_test, budget, rng, run) -> dict`` trains the
    already built ``block`` (a Sequential) in place on cached inputs and returns figures to log
    (e.g. its auxiliary test accuracy); a trainer with the attribute ``trains_head = True``
    returns its trained head (a Sequential on the block's output) under ``"head"``.

    ``opts['final_classifier']``: ``"retrain"`` (default) ends the model with the linear
    classifier trained on the frozen last block; ``"last-head"`` ends it with the last block's
    own head, trained together with the block (the retrained classifier's accuracy is still
    reported, as ``retrained_classifier_accuracy``).

    ``opts['final_features']``: ``"last"`` (default) feeds the classifier the last block's
    pooled map; ``"all"`` also every earlier block's map, max-pooled to about the same side,
    through ``tap<k>`` layers and a ``cat`` (multi-scale features; ``greedy.layers.Tap``).
    """
    n_classes = len(data.class_names)
    blocks_spec = opts["blocks"]
    budgets = parse_budget(opts["layer_budget"], len(blocks_spec))
    rng = np.random.default_rng(opts["seed"])
    x, x_test = normalizer(data.x_train), normalizer(data.x_test)
    y, y_test = data.y_train, data.y_test
    shape = x.shape[1:]
    final_classifier = opts.get("final_classifier", "retrain")
    if final_classifier not in ("retrain", "last-head"):
        raise ConfigError(f"final classifier must be 'retrain' or 'last-head', got {final_classifier!r}")
    if final_classifier == "last-head" and not getattr(block_trainer, "trains_head", False):
        raise ConfigError("--final-classifier last-head needs a method whose blocks train a head (aux)")
    classifier_layers(opts.get("final_hidden"), n_classes)  # a bad spec fails now, not after the blocks
    shapes = block_shapes(blocks_spec, shape)
    pool = pooling_token(shapes[-1], opts.get("final_pool", "quadrant"))
    final_features = opts.get("final_features", "last")
    if final_features not in ("last", "all"):
        raise ConfigError(f"final features must be 'last' or 'all', got {final_features!r}")
    if final_features == "all" and final_classifier == "last-head":
        raise ConfigError("--final-features all feeds a retrained classifier; it cannot go with last-head")
    tap_sizes = tap_pool_sizes(shapes, pool) if final_features == "all" else None
    blocks, per_layer, head, taps, tapped, tapped_test = [], [], None, [], [], []
    for layer, (spec, budget) in enumerate(zip(blocks_spec, budgets)):
        block = Sequential.from_spec(spec).build(shape, rng)
        t = time.perf_counter()
        info = block_trainer(layer, block, x, y, x_test, y_test, budget, rng, run)
        head = info.pop("head", None)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        x, x_test = propagate(block, x), propagate(block, x_test)
        run.log("propagate", layer=layer, seconds_in_phase=time.perf_counter() - t, out_shape=list(x.shape[1:]))
        per_layer.append(dict(info, layer=layer, spec=spec, budget=f"{budget[0]:g}{budget[1]}",
                              train_seconds=round(train_s, 3)))
        run.log("layer_done", layer=layer, **{k: v for k, v in per_layer[-1].items() if k != "layer"})
        blocks.append(block)
        shape = x.shape[1:]
        if tap_sizes and layer < len(blocks_spec) - 1:
            taps.append(Tap(tap_sizes[layer]))
            taps[-1].build(shape, rng)
            block.layers.append(taps[-1])
            tapped.append(pool_maps(x, tap_sizes[layer]))
            tapped_test.append(pool_maps(x_test, tap_sizes[layer]))

    pool_layers = parse_spec(pool) if pool else []
    pooler = Sequential(pool_layers).build(shape, rng) if pool_layers else None
    feats = predict(pooler, x, _as32) if pooler else x
    feats_test = predict(pooler, x_test, _as32) if pooler else x_test
    cat = []
    if taps:
        cat = [Concat()]
        cat[0].taps = taps
        cat[0].build(feats.shape[1:], rng)
        feats, feats_test = (np.concatenate([_as32(f) for f in fs] + [_as32(last).reshape(len(last), -1)], axis=1)
                             for fs, last in ((tapped, feats), (tapped_test, feats_test)))
    t = time.perf_counter()
    classifier, final_acc = train_classifier(feats.reshape(len(feats), -1), y,
                                             feats_test.reshape(len(feats_test), -1), y_test, n_classes, opts,
                                             rng, progress=run.verbose)
    run.log("classifier", layer=len(blocks), seconds_in_phase=time.perf_counter() - t, test_accuracy=final_acc)

    body = [lay for b in blocks for lay in b.layers]
    extra = {"layers": per_layer, "final_classifier": final_classifier}
    if final_classifier == "last-head":
        extra["retrained_classifier_accuracy"] = final_acc
        final_acc = accuracy(head, x_test, y_test, _as32)
        model = Sequential(body + head.layers)
    else:
        model = Sequential(body + pool_layers + cat + classifier)
    model.in_shape, model.out_shape = tuple(data.x_train.shape[1:]), (n_classes,)
    extra.update(arch=model.spec(), accuracy_before_finetune=final_acc, finetuned=False)
    if opts.get("finetune_epochs"):
        t = time.perf_counter()
        finetune(model, data, normalizer, opts, rng, run)
        extra.update(finetuned=True, finetune_seconds=round(time.perf_counter() - t, 3))
    return model, extra


def finetune(model, data, normalizer, opts, rng, run):
    """Train the whole stack end to end for ``opts['finetune_epochs']`` epochs at a small rate."""
    from greedy.nn.augment import random_crop_flip
    opt = make_optimizer(opts["optimizer"], opts.get("finetune_lr", opts["lr"] * 0.1), "cosine",
                         opts["weight_decay"])

    def on_epoch(epoch, loss, train_acc):
        run.log("finetune", epoch=epoch, train_loss=loss,
                test_accuracy=accuracy(model, data.x_test, data.y_test, normalizer))

    fit(model, data.x_train, data.y_train, opt, epochs=opts["finetune_epochs"], batch_size=opts["batch_size"],
        prepare=normalizer, augment=random_crop_flip if opts.get("augment") else None, rng=rng,
        on_epoch=on_epoch, progress=run.verbose, label="finetune")


