"""Blocks of a layer-wise network: parsing them, their shapes, budgets, propagation and training.

A *block* is a conv and what follows it up to the next conv (``c128k3-bn-relu-max2``), built as a
``Sequential``; on byte sequences the first block starts with the byte embedding
(``emb16-c128k5-bn-relu-max2``). Blocks are image or sequence layers as their input is (C, H, W)
or (C, L). Feature caches are float32 up to ``CACHE_FLOAT32_BYTES`` and float16 above it, so
the training-set cache of a block needs at most N x C x H x W x 4 bytes, or half of that for
large blocks (about 3.3 GB for 50,000 images of 128 x 16 x 16).
"""
import re

import numpy as np

from greedy.errors import ConfigError
from greedy.kernels.cast import as_float32, cast_into
from greedy.nn.augment import augmenter
from greedy.nn.fit import fit, predict
from greedy.nn.losses import smoothed_cross_entropy
from greedy.nn.model import Sequential, parse_spec
from greedy.nn.layers1d import Tap1d
from greedy.nn.network import Normalizer
from greedy.nn.optim import make_optimizer
from greedy.nn.pooling import Tap

CACHE_FLOAT32_BYTES = 2 * 1024**3
# A propagation batch's float32 input or output stays below glibc's largest mmap threshold (32 MiB),
# so its arrays come back from the heap instead of fresh pages on every batch.
PROPAGATE_BATCH_BYTES = 24 * 1024**2
PROPAGATE_BATCH_MAX = 4096

EMBEDDING_TOKEN = r"emb\d+(?:v\d+)?"


def split_blocks(spec):
    """Split an architecture spec into block specs, one per conv: 'c8k3-relu-c16k3-max2' -> ['c8k3-relu', 'c16k3-max2'].

    A leading byte embedding (``emb16``) belongs to the first block."""
    tokens = spec.strip().split("-")
    first = 1 if tokens and re.fullmatch(EMBEDDING_TOKEN, tokens[0]) else 0
    if len(tokens) <= first or not re.fullmatch(r"c\d+k\d+.*", tokens[first]):
        raise ConfigError(f"a layer-wise architecture must start with a conv token (after emb<dim> on bytes), "
                          f"got {spec!r}")
    if any(re.fullmatch(r"(fc|d)\d+|gap|gmp", t) for t in tokens):
        raise ConfigError(f"a layer-wise architecture lists conv blocks only (no fc or gap; the classifier is "
                          f"added by the method), got {spec!r}")
    blocks, current = [], []
    for i, t in enumerate(tokens):
        if re.fullmatch(r"c\d+k\d+.*", t) and current and i > first:
            blocks.append("-".join(current))
            current = []
        current.append(t)
    blocks.append("-".join(current))
    Sequential.from_spec("-".join(blocks))
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
    """Token pooling a (C, H, W) map or a (C, L) sequence to what the classifier sees: 'gap' (global
    average), 'gmp' (global max), 'gapmax' (a sequence's channel means and maxima side by side),
    'quadrant' (average over 2x2 regions of a map, 2 halves of a sequence) or 'none'."""
    side = min(shape[1:])
    if mode == "gap":
        return "gap"
    if mode == "gapmax":
        if len(shape) != 2:
            raise ConfigError("pooling gapmax (channel means and maxima) is for sequences; images take gap, gmp, "
                              "quadrant or none")
        return "gapmax"
    if mode == "gmp":
        return "gmp" if len(shape) == 2 else f"max{side}"
    if mode == "quadrant":
        return f"avg{max(side // 2, 1)}"
    if mode == "none":
        return None
    raise ConfigError(f"unknown pooling {mode!r}; choose gap, gmp, gapmax, quadrant or none")


def spec_ndim(shape):
    """``parse_spec``'s ndim for a per-sample shape: 1 for sequences (C, L), else 2."""
    return 1 if len(shape) == 2 else 2


def input_normalizer(x):
    """The normaliser of a layer-wise network's input x (N, C, ...): per-channel standardisation, or the
    identity for byte sequences (uint8 (N, 1, L)), whose codes the byte embedding looks up."""
    if x.ndim == 3 and x.dtype == np.uint8:
        return Normalizer(np.zeros(x.shape[1], np.float32), np.full(x.shape[1], 1 / 255, np.float32))
    return Normalizer().fit(x)


def block_shapes(blocks_spec, in_shape):
    """Output shape of each block of ``blocks_spec`` for a per-sample input ``in_shape``."""
    shapes, rng = [], np.random.default_rng(0)
    for spec in blocks_spec:
        in_shape = Sequential.from_spec(spec).build(in_shape, rng).out_shape
        shapes.append(in_shape)
    return shapes


def tap_pool_sizes(shapes, pool):
    """The tap after each block but the last, for ``final_features="all"``: each block's map (``shapes``,
    from ``block_shapes``) max-pooled to about the side of the map the classifier sees (the last
    block's, after the ``pool`` token), as the pool size; with ``pool`` "gapmax", "gapmax" (channel
    means and maxima) for every block."""
    if pool == "gapmax":
        return ["gapmax"] * (len(shapes) - 1)
    last = Sequential.from_spec(pool).build(shapes[-1]).out_shape if pool else shapes[-1]
    side = last[1] if len(last) >= 2 else 1
    return [max(1, shape[1] // side) for shape in shapes[:-1]]


def tap_layer(tap, ndim):
    """The unbuilt tap layer of ``tap`` (a pool size or "gapmax", from ``tap_pool_sizes``) for maps of
    ``ndim`` dimensions with the batch: 4 (images) or 3 (sequences)."""
    if ndim == 4:
        return Tap(tap)
    return Tap1d(global_pool=True) if tap == "gapmax" else Tap1d(tap)


def pool_maps(x, tap, batch_size=500):
    """Maps x (N, C, H, W) or sequences (N, C, L), float32 or float16, pooled as the tap ``tap`` (a pool size
    or "gapmax", ``tap_layer``) keeps them, flattened: (N, D) float32."""
    pool = tap_layer(tap, x.ndim).pool
    if pool is None:
        return as_float32(x).reshape(len(x), -1)
    pooler = Sequential([pool]).build(x.shape[1:])
    return predict(pooler, x, as_float32, batch_size).reshape(len(x), -1)


def head_layers(shape, n_classes, pool, hidden_convs=0, width=None):
    """An auxiliary/final head for a (C, H, W) or (C, L) input: optional convs, pooling, then a linear
    classifier."""
    tokens = [f"c{width or shape[0]}k3-relu" for _ in range(hidden_convs)]
    token = pooling_token(shape, pool)
    tokens += [token] if token else []
    return parse_spec("-".join(tokens + [f"fc{n_classes}"]), spec_ndim(shape))


def propagate(block, x, batch_size=None, store=None, each_batch=None):
    """Apply a frozen block (a Sequential) to cached inputs x (N, C, H, W) or (N, C, L) -> outputs, stored
    float16 if large.

    Uses the fused inference pass (``greedy.inference``): no full-size conv map is written. The
    output comes from ``store`` (a ``greedy.memory.CacheStore``: in memory, or a memory-mapped file
    when it would not fit), or is an ordinary array without one. Each batch is converted to float32
    on the way in and to the cache's dtype on the way out on all cores (``greedy.kernels.cast``);
    a float32 cache is written by the block's last convolution itself. ``each_batch(i, rows)`` is called
    with the output rows [i, i + len(rows)) as stored, once written, while they are in cache memory.
    ``batch_size`` rows at a time, by default as many as keep a batch's float32 input and output
    each within ``PROPAGATE_BATCH_BYTES`` (24 MiB; at least one row, at most 4,096).
    """
    first = block.predict_batch(as_float32(x[:1]))
    n = len(x)
    if batch_size is None:
        row_bytes = 4 * max(first[0].size, int(np.prod(x.shape[1:])))
        batch_size = max(1, min(PROPAGATE_BATCH_MAX, PROPAGATE_BATCH_BYTES // row_bytes))
    dtype = np.float32 if n * first[0].size * 4 <= CACHE_FLOAT32_BYTES else np.float16
    shape = (n,) + first.shape[1:]
    out = np.empty(shape, dtype) if store is None else store.empty(shape, dtype)
    inputs = None if x.dtype == np.float32 else np.empty((min(n, batch_size),) + x.shape[1:], np.float32)
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        if inputs is not None:
            xb = cast_into(inputs[:len(xb)], xb)
        if out.dtype == np.float32:
            block.predict_batch(xb, out=out[i:i + batch_size])
        else:
            cast_into(out[i:i + batch_size], block.predict_batch(xb))
        if each_batch is not None:
            each_batch(i, out[i:i + batch_size])
    return out


def normalize_cache(normalizer, x, store=None, batch_size=4096):
    """The first block's input cache: ``normalizer(x)`` (float32, the shape of x), computed in batches
    into an array from ``store`` (see ``propagate``), so no full-size temporary is made."""
    out = np.empty(x.shape, np.float32) if store is None else store.empty(x.shape, np.float32)
    for i in range(0, len(x), batch_size):
        out[i:i + batch_size] = normalizer(x[i:i + batch_size])
    return out


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


def augmentation(config, ndim, pad=None):
    """The batch augmentation of ``config.augment`` (an ``OptimConfig``) for samples with ``ndim`` spatial
    axes (2: images, 1: sequences), shifting by up to ``pad`` (default ``config.augment_pad``), as a
    function of (x, rng, idx, epoch) (``greedy.nn.augment.augmenter``); None without ``augment``."""
    if not config.augment:
        return None
    flip = ("alternate" if config.alternate_flips else "random") if config.augment_flip else "none"
    return augmenter(ndim, config.augment_pad if pad is None else pad, flip, config.seed)


def fit_block(model, x, y, config, budget, rng, loss_fn=None, label="block", on_epoch=None, augment=None,
              sample_weight=None, progress=True):
    """Train ``model`` on cached features (or codes) with the block optimiser of ``config`` (an
    ``OptimConfig``) for an (amount, unit) budget; the loss is ``loss_fn``, by default the cross-entropy with
    the config's label smoothing."""
    amount, unit = budget
    opt = make_optimizer(config.optimizer, config.lr, config.schedule, config.weight_decay)
    loss_fn = smoothed_cross_entropy(config.label_smoothing) if loss_fn is None else loss_fn
    epochs = amount if unit == "e" else 1e6
    return fit(model, x, y, opt, epochs=epochs, batch_size=config.batch_size,
               prepare=as_float32 if isinstance(x, np.ndarray) else None, rng=rng, sample_weight=sample_weight,
               time_budget=amount if unit == "s" else None, on_epoch=on_epoch, progress=progress,
               label=label, augment=augment, loss_fn=loss_fn)
