"""Checkpoints of the layer-wise loop: what ``train_layerwise`` saves at its safe points and how it
continues from them.

After each finished block the loop saves every block so far (each trainer's ``block_state``),
the summary rows and the run generator's state; after the final classifier, the classifier too
(``greedy.checkpoint.LayerwiseState``). A resumed loop rebuilds the finished blocks
(``restore_block``), re-creates the caches by propagating the data through them exactly as the
first run did, sets the generator to its saved state and goes on with the next block; so with
epoch budgets and the same threads it ends with the same model as an uninterrupted run.
"""
import time

from greedy.checkpoint import (LayerwiseState, build_within, float_values, layer_arrays, load_layer_arrays,
                               rng_state, set_rng_state)
from greedy.errors import CheckpointError
from greedy.methods.classifier import classifier_layers
from greedy.nn.model import Sequential


def layerwise_state(trainer, specs, blocks, heads, per_layer, rng, classifier=None):
    """The loop's state after ``len(blocks)`` blocks (and the classifier's (layers, accuracy) if given)."""
    saved = [trainer.block_state(k, block, head) for k, (block, head) in enumerate(zip(blocks, heads))]
    final = None
    if classifier is not None:
        layers, acc = classifier
        arrays, rngs = layer_arrays(layers)
        final = (arrays, {"accuracy": acc, "rngs": rngs})
    return LayerwiseState(list(specs), saved, list(per_layer), rng_state(rng), final)


def restore_blocks(trainer, saved, specs, caches, y, rng, monitor):
    """(cache, cache_eval, blocks, heads, per_layer) after the saved blocks: each rebuilt from its
    arrays, the caches propagated through it and ``after_block`` called, as the first run did; the
    generator ends in its saved state."""
    where = saved.where
    if list(saved.specs) != list(specs):
        raise CheckpointError(f"{where}: its blocks {'-'.join(saved.specs)[:120]} are not the run's "
                              f"{'-'.join(specs)[:120]}")
    t = time.perf_counter()
    cache, cache_eval = caches
    blocks, heads = [], []
    for layer, (arrays, info) in enumerate(saved.blocks):
        block, head = trainer.restore_block(layer, specs[layer], arrays, info, y, rng, f"{where}: block {layer}")
        cache = trainer.propagate(layer, block, cache)
        cache_eval = None if cache_eval is None else trainer.propagate(layer, block, cache_eval)
        blocks.append(block)
        heads.append(head)
        trainer.after_block(layer, block, cache, cache_eval, rng)
    set_rng_state(rng, saved.rng, where)
    monitor.log("resume", progress=saved.progress(), seconds_in_phase=time.perf_counter() - t)
    return cache, cache_eval, blocks, heads, list(saved.per_layer)


def restore_classifier(trainer, saved, n_features, rng):
    """(classifier layers, accuracy) of the saved final classifier on ``n_features`` features; the
    generator ends in its saved state."""
    where = f"{saved.where}: final classifier"
    arrays, info = saved.classifier
    acc = info.get("accuracy")
    if acc is not None and (not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 1):
        raise CheckpointError(f"{where}: bad accuracy {acc!r:.40}")
    layers = classifier_layers(trainer.classifier_options().get("hidden", "none"), trainer.n_classes)
    build_within(Sequential(layers), (n_features,), rng, float_values(arrays), where)
    load_layer_arrays(layers, arrays, info.get("rngs"), where)
    set_rng_state(rng, saved.rng, saved.where)
    return layers, acc


def restore_sequential(block, arrays, info, where, prefix="block/"):
    """Load a built Sequential block's arrays and random states saved by ``sequential_state``."""
    rngs = info.get("rngs")
    load_layer_arrays(block.layers, {k: a for k, a in arrays.items() if k.startswith(prefix)},
                      rngs.get(prefix) if isinstance(rngs, dict) else None, where, prefix)


def sequential_state(block, prefix="block/"):
    """(arrays, {"rngs": {prefix: layer rng states}}) of a Sequential block."""
    arrays, rngs = layer_arrays(block.layers, prefix)
    return arrays, {"rngs": {prefix: rngs}}


def binary_block_state(block):
    """(arrays, info) of a trained binary layer (``greedy.methods.binary``): its filters and thresholds."""
    return {"filters": block.filters, "thresholds": block.thresholds}, {}


def restore_binary_block(block, width, arrays, where):
    """Set a freshly built binary layer's filters (uint64, (width, words) for the image layer or
    (width, P, words) for a conv or byte layer of P window pixels) and thresholds ((width,) finite float64)
    from saved arrays."""
    import numpy as np

    from greedy.kernels.bitops import n_words
    conv = hasattr(block, "n_bits")  # a ConvLayer (or ByteLayer); the ImageLayer codes whole windows
    shape = (width, block.n_pixels, n_words(block.n_bits)) if conv else (width, n_words(block.n_code_bits))
    filters, thresholds = arrays.get("filters"), arrays.get("thresholds")
    if filters is None or filters.dtype != np.uint64 or filters.shape != shape:
        raise CheckpointError(f"{where}: filters are {'missing' if filters is None else f'{filters.dtype} {filters.shape}'}"
                              f", expected uint64 {shape}")
    if thresholds is None or thresholds.dtype.kind != "f" or thresholds.shape != (width,) \
            or not np.isfinite(thresholds).all():
        raise CheckpointError(f"{where}: thresholds are missing, not {width} finite floats")
    if set(arrays) != {"filters", "thresholds"}:
        raise CheckpointError(f"{where}: unexpected arrays {sorted(set(arrays) - {'filters', 'thresholds'})}")
    block.filters = np.ascontiguousarray(filters)
    block.thresholds = np.ascontiguousarray(thresholds, np.float64)
