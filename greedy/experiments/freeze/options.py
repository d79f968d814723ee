"""The freezing experiment's options, its optimiser, and its named random streams."""
import numpy as np

from greedy import validate
from greedy.experiments.freeze.masks import STRATEGIES
from greedy.nn.optim import make_optimizer

HALF_STRATEGIES = ("two-halves", "elastic", "soft-share")        # two half-width models (train_halves)
EXPERIMENT_STRATEGIES = STRATEGIES[1:] + HALF_STRATEGIES

DEFAULTS = {
    "arch": "c16k5-relu-max2-c32k5-relu-max2-fc128-relu-fc{n_classes}",
    "steps": 200, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "constant",
    "warmup": 0.1,
    "weight_decay": 0.0, "fraction": 0.5, "include_dense": False, "every": 25, "eval_every": 25,
    "n_groups": 2, "n_probes": 32, "hessian_batch": 256, "target_loss": None, "smooth": 20,
    "skip_frozen_grads": True, "sample_weights": 16, "coupling": 0.03, "seed": 0,
}

# Spawn keys of the named children of np.random.SeedSequence(seed), one per purpose. Every run of an experiment
# draws a fresh generator from the same child, so all runs start from the same weights and see the same batches.
INIT, BATCHES, HESSIAN, MASKS, WEIGHT_SAMPLE, FUSE = range(6)


def seed_sequence(seed, key):
    """The named child ``key`` of ``np.random.SeedSequence(seed)`` (equal to its ``spawn()`` child number key)."""
    return np.random.SeedSequence(seed, spawn_key=(key,))


def stream(seed, key):
    """A new Generator on the named child ``key`` of the experiment's seed."""
    return np.random.default_rng(seed_sequence(seed, key))


def resolve_options(opts):
    """``DEFAULTS`` overridden by the entries of ``opts`` that are not None; raises ConfigError on a bad value."""
    o = dict(DEFAULTS, **{k: v for k, v in opts.items() if v is not None})
    for key in ("steps", "batch_size", "every", "eval_every", "n_groups", "hessian_batch", "smooth"):
        o[key] = validate.positive_int(o[key], key.replace("_", "-"))
    o["n_probes"] = validate.integer(o["n_probes"], "n-probes (0: exact)", 0, allow_none=True)
    o["warmup"] = validate.number(o["warmup"], "warmup (a fraction of the steps)", 0.0, 1.0, high_open=True)
    o["coupling"] = validate.number(o["coupling"], "coupling", 0.0)
    o["fraction"] = validate.number(o["fraction"], "fraction", 0.0, 1.0, low_open=True, high_open=True)
    return o


def run_optimizer(o):
    """The run's optimiser: the named schedule times a linear warm-up over the first o["warmup"] of the steps."""
    opt = make_optimizer(o["optimizer"], o["lr"], o["schedule"], o["weight_decay"], o["momentum"])
    if o["warmup"] > 0:
        base, warmup = opt.schedule, o["warmup"]
        opt.schedule = lambda p: min(1.0, p / warmup) * base(p)
    return opt
