"""The freezing experiment of seed 004: does a subset of weights move faster when the rest is frozen?

``run_freeze_experiment`` trains a baseline (everything trainable) and one run
per strategy (``greedy.freeze``), all from the same initial weights, the same
sequence of mini-batches and the same optimiser settings, and records at every
step, for every parameter subset of every strategy (e.g. the trainable and the
frozen part, also split per layer):

- ``dist``: L2 distance of the subset from its initial value, and ``rms`` =
  dist / sqrt(size);
- ``decrease``: the subset's cumulative first-order share of the loss
  decrease, sum over steps of -g . dw restricted to the subset (g the
  mini-batch gradient at the step, dw the update the optimiser made).

The baseline tracks the subsets of every strategy, so the same subset can be
compared between "trained alone" and "trained with everything else".

The strategies ``two-halves``, ``elastic`` and ``soft-share`` remove half of the
kernels instead of freezing them: two half-width models, trained in lockstep on
the same batches, uncoupled or coupled by elastic averaging or soft weight
sharing, then fused at the classifier (``train_halves``).

Outputs under ``out``: the run contract (config.json, metrics.jsonl with one
``step`` event per step and one ``eval`` event per evaluation, plus a
``coupling`` event per step of the half-width pairs, summary.json, model.npz of
the baseline, ``<strategy>-half-a/b.npz``), one ``<run>.csv`` per run, ``<run>_weights.npz``
with the trajectories of a sample of weights (the same number from every weight tensor), and PNG plots when matplotlib
is importable.
"""
import copy
import csv
import os
import sys
import time

import numpy as np

from greedy.errors import ConfigError
from greedy.experiments.freeze_masks import (STRATEGIES, backward_skipping_frozen, hessian_groups, kernel_layers, make_mask_schedule,
                     make_masks, n_kernels, parameter_index, sub_model, trainable_kernels)
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import build_model, save_model
from greedy.nn.optim import make_optimizer
from greedy.runs import Run

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


class Tracker:
    """Distances from the initial weights and first-order loss decrease of named parameter subsets.

    subsets: {name: mask list like ``model.parameters()``}; layer_of: layer label per parameter tensor.
    """

    def __init__(self, model, subsets, layer_of):
        params = model.parameters()
        self.p0 = [p.copy() for p in params]
        self.layer_of = layer_of
        self.names = list(subsets)
        self.weights = {s: [m.astype(p.dtype).ravel() for m, p in zip(subsets[s], params)] for s in self.names}
        self.sizes = {s: np.array([m.sum() for m in subsets[s]], np.float64) for s in self.names}
        self.decrease = {s: np.zeros(len(params)) for s in self.names}
        self.dist2 = {s: np.zeros(len(params)) for s in self.names}

    def update(self, params, grads, before):
        for i, (p, g, b, p0) in enumerate(zip(params, grads, before, self.p0)):
            gd = (g * (p - b)).ravel()
            sq = np.square(p - p0).ravel()
            for s in self.names:
                w = self.weights[s][i]
                self.decrease[s][i] -= float(gd @ w)
                self.dist2[s][i] = float(sq @ w)

    def row(self):
        """Flat dict: dist, rms, decrease per subset, and dist per subset and layer."""
        out = {}
        for s in self.names:
            total = self.dist2[s].sum()
            out[f"dist:{s}"] = float(np.sqrt(total))
            out[f"rms:{s}"] = float(np.sqrt(total / max(self.sizes[s].sum(), 1)))
            out[f"decrease:{s}"] = float(self.decrease[s].sum())
            for layer in dict.fromkeys(self.layer_of):
                sel = [i for i, name in enumerate(self.layer_of) if name == layer]
                if self.sizes[s][sel].sum():
                    out[f"dist:{s}@{layer}"] = float(np.sqrt(self.dist2[s][sel].sum()))
        return out


def _layer_labels(model):
    return [f"{i}:{model.layers[i].spec()}" for i, layer in enumerate(model.layers) for _ in sorted(layer.params)]


def _batch_stream(n, batch_size, seed):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i:i + batch_size]


def _evaluate(model, x, y, normalizer, batch_size=500):
    losses, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model.forward(normalizer(x[i:i + batch_size]))
        losses += softmax_cross_entropy(out, y[i:i + batch_size])[0] * len(out)
        correct += int((out.argmax(axis=1) == y[i:i + batch_size]).sum())
    return losses / len(x), correct / len(x)


def _optimizer(o):
    """The run's optimiser: the named schedule times a linear warm-up over the first o["warmup"] of the steps."""
    opt = make_optimizer(o["optimizer"], o["lr"], o["schedule"], o["weight_decay"], o["momentum"])
    if o["warmup"] > 0:
        base, warmup = opt.schedule, o["warmup"]
        opt.schedule = lambda p: min(1.0, p / warmup) * base(p)
    return opt


def _forward_backward(model, xb, yb, keep=None):
    """Forward, mean softmax cross-entropy and backward (weight gradients of the ``keep`` kernels only, if given);
    returns the loss."""
    out = model.forward(xb, train=True)
    loss, dout = softmax_cross_entropy(out, yb)
    dout = dout.astype(out.dtype, copy=False)
    if keep:
        backward_skipping_frozen(model, dout, keep)
    else:
        model.backward(dout, input_grad=False)
    return loss


class _Trainer:
    """One run's training state and records.

    ``backward(step, idx)`` computes the gradients on the batch ``idx``,
    ``update(step)`` makes the optimiser step and records the step's row
    (returned, and kept in ``rows``), ``finish()`` writes ``csv_path`` and the
    weight trajectories and returns the rows. ``train_run`` alternates the two
    steps for one model; ``train_halves`` steps two models on the same batches
    and couples their gradients in between.
    """

    def __init__(self, name, model, schedule, data, normalizer, o, subsets, run, csv_path, verbose=True):
        self.name, self.model, self.schedule, self.data, self.normalizer = name, model, schedule, data, normalizer
        self.o, self.run, self.csv_path, self.verbose = o, run, csv_path, verbose
        self.opt = _optimizer(o)
        self.params, self.grads = model.parameters(), model.gradients()
        self.layer_of = _layer_labels(model)
        self.tracker = Tracker(model, subsets, self.layer_of)
        sample_rng = np.random.default_rng(o["seed"] + 17)
        weight_tensors = [i for i, (n, _) in enumerate(model.named_parameters()) if n.endswith("/w")]
        per_tensor = max(1, o["sample_weights"] // len(weight_tensors))
        self.picks = [(i, int(j)) for i in weight_tensors
                      for j in sample_rng.choice(self.params[i].size, per_tensor, replace=False)]
        self.trajectory = np.empty((o["steps"] + 1, len(self.picks)), np.float32)
        self.trajectory[0] = [self.params[i].flat[j] for i, j in self.picks]
        self.rows, self.seconds, self.wall0 = [], 0.0, time.perf_counter()
        self.skip = {}

    def backward(self, step, idx):
        o = self.o
        self.phase = self.schedule.apply(self.opt, step) if self.schedule is not None else 0
        if o["skip_frozen_grads"] and self.schedule is not None and self.phase not in self.skip:
            self.skip[self.phase] = trainable_kernels(self.model, self.opt.masks)
        self.opt.progress = step / o["steps"]
        xb = self.normalizer(self.data.x_train[idx])
        t0 = time.perf_counter()
        self.loss = _forward_backward(self.model, xb, self.data.y_train[idx], self.skip.get(self.phase))
        self.seconds += time.perf_counter() - t0
        if not np.isfinite(self.loss):
            raise FloatingPointError(f"{self.name}: loss became {self.loss} at step {step}; lower the learning rate")
        return self.loss

    def update(self, step):
        o, params, name, loss = self.o, self.params, self.name, self.loss
        before = [p.copy() for p in params]
        t = time.perf_counter()
        self.opt.step(params, self.grads)
        self.seconds += time.perf_counter() - t
        self.tracker.update(params, self.grads, before)
        self.trajectory[step + 1] = [params[i].flat[j] for i, j in self.picks]
        row = {"step": step + 1, "seconds": round(self.seconds, 4),
               "wall_seconds": round(time.perf_counter() - self.wall0, 3), "loss": loss, "phase": self.phase,
               "test_loss": None, "test_accuracy": None}
        row.update(self.tracker.row())
        norms = {}
        for i, layer in enumerate(self.layer_of):
            norms[layer] = norms.get(layer, 0.0) + float(np.square(params[i]).sum())
        row.update({f"norm@{k}": float(np.sqrt(v)) for k, v in norms.items()})
        if (step + 1) % o["eval_every"] == 0 or step + 1 == o["steps"]:
            row["test_loss"], row["test_accuracy"] = _evaluate(self.model, self.data.x_test, self.data.y_test,
                                                               self.normalizer)
            self.run.log("eval", run=name, step=step + 1, train_loss=loss, test_loss=row["test_loss"],
                         test_accuracy=row["test_accuracy"], train_seconds=self.seconds)
            if self.verbose:
                print(f"  {name:>16} step {step + 1:5d}: loss {loss:.4f}, test loss {row['test_loss']:.4f}, "
                      f"test accuracy {row['test_accuracy']:.4f}, {self.seconds:.1f} s", file=sys.stderr, flush=True)
        names = self.tracker.names
        self.run.log("step", run=name, step=step + 1, train_loss=loss, phase_index=self.phase,
                     train_seconds=self.seconds,
                     **{"distance": {s: row[f"dist:{s}"] for s in names},
                        "decrease": {s: row[f"decrease:{s}"] for s in names},
                        "layer_distance": {k: v for k, v in row.items() if k.startswith("dist:") and "@" in k}})
        self.rows.append(row)
        return row

    def finish(self):
        _write_csv(self.csv_path, self.rows)
        np.savez(self.csv_path[:-4] + "_weights.npz", steps=np.arange(self.o["steps"] + 1), values=self.trajectory,
                 tensor=np.array([self.model.named_parameters()[i][0] for i, _ in self.picks]),
                 param_index=np.array([i for i, _ in self.picks]), flat_index=np.array([j for _, j in self.picks]))
        return self.rows


def train_run(name, model, schedule, data, normalizer, o, subsets, run, csv_path, verbose=True):
    """Train one run for o["steps"] steps; returns its list of per-step rows (dicts)."""
    trainer = _Trainer(name, model, schedule, data, normalizer, o, subsets, run, csv_path, verbose)
    for step, idx in zip(range(o["steps"]), _batch_stream(len(data.x_train), o["batch_size"], o["seed"])):
        trainer.backward(step, idx)
        trainer.update(step)
    return trainer.finish()


def _write_csv(path, rows):
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def smoothed(values, window):
    """Trailing running mean over ``window`` values (shorter at the start)."""
    c = np.cumsum(np.concatenate([[0.0], values]))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def reach(rows, target, window):
    """(steps, train seconds) when the smoothed training loss first reaches ``target``, or (None, None)."""
    s = smoothed(np.array([r["loss"] for r in rows]), window)
    hit = np.nonzero(s <= target)[0]
    if not len(hit):
        return None, None
    return int(rows[hit[0]]["step"]), float(rows[hit[0]]["seconds"])


def resolve_options(opts):
    o = dict(DEFAULTS, **{k: v for k, v in opts.items() if v is not None})
    for key in ("steps", "batch_size", "every", "eval_every", "n_groups", "hessian_batch", "smooth"):
        if int(o[key]) < 1:
            raise ConfigError(f"{key.replace('_', '-')} must be >= 1, got {o[key]}")
    if o["n_probes"] is not None and int(o["n_probes"]) < 0:
        raise ConfigError(f"n-probes must be >= 0 (0: exact), got {o['n_probes']}")
    if not 0.0 <= float(o["warmup"]) < 1.0:
        raise ConfigError(f"warmup must be a fraction of the steps in [0, 1), got {o['warmup']}")
    if float(o["coupling"]) < 0:
        raise ConfigError(f"coupling must be >= 0, got {o['coupling']}")
    if not 0.0 < float(o["fraction"]) < 1.0:
        raise ConfigError(f"fraction must be strictly between 0 and 1, got {o['fraction']}")
    return o


def run_freeze_experiment(data, normalizer, strategies, out, opts, verbose=True):
    """Run the baseline and each strategy; write everything under ``out``; return the summary dict.

    data: a ``Dataset`` (uint8 NCHW); normalizer: raw batch -> float input;
    strategies: names from ``greedy.freeze.STRATEGIES`` (``none`` is the baseline, always run);
    opts: overrides of ``DEFAULTS``.
    """
    strategies = [s for s in dict.fromkeys(strategies) if s != "none"]
    unknown = [s for s in strategies if s not in EXPERIMENT_STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown freezing strategy {unknown[0]!r}; choose from {', '.join(EXPERIMENT_STRATEGIES)}")
    halves = [s for s in strategies if s in HALF_STRATEGIES]
    strategies = [s for s in strategies if s not in HALF_STRATEGIES]
    o = resolve_options(opts)
    n_classes = len(data.class_names)
    spec = o["arch"].format(n_classes=n_classes)
    in_shape = data.x_train.shape[1:]
    if len(data.x_train) < o["batch_size"]:
        raise ConfigError(f"batch size {o['batch_size']} exceeds the {len(data.x_train)} training images")

    def fresh():
        return build_model(spec, in_shape, n_classes, o["seed"])

    run = Run(out, "freeze", o.get("dataset", "?"), dict(o, strategies=strategies, arch=spec), verbose=False)
    run.start()
    model = fresh()
    extra = {}
    schedules = {}
    for s in strategies:
        groups = None
        if s == "hessian":
            rng = np.random.default_rng(o["seed"] + 1)
            idx = rng.choice(len(data.x_train), min(o["hessian_batch"], len(data.x_train)), replace=False)
            probes = None if not o["n_probes"] else int(o["n_probes"])
            t = time.perf_counter()
            groups, inter = hessian_groups(model, normalizer(data.x_train[idx]), data.y_train[idx], o["n_groups"],
                                           probes, rng, o["include_dense"])
            seconds = time.perf_counter() - t
            n_hvp = probes if probes else int(sum(len(g) for g in groups.values()))
            extra["hessian"] = {"seconds": seconds, "hvps": n_hvp, "batch": len(idx),
                                "groups": {str(k): v.tolist() for k, v in groups.items()},
                                "within_over_total": {str(k): _within_share(inter[k], groups[k]) for k in groups}}
            np.savez(run.path("hessian_interactions.npz"), **{f"layer{k}": v for k, v in inter.items()})
            run.log("hessian_groups", seconds=seconds, hvps=n_hvp)
            if verbose:
                print(f"hessian groups from {n_hvp} HVPs on {len(idx)} images in {seconds:.1f} s", file=sys.stderr)
        schedules[s] = make_mask_schedule(model, s, o["fraction"], np.random.default_rng(o["seed"] + 2),
                                          o["include_dense"], o["every"], groups)
    subsets = experiment_subsets(model, schedules, o["include_dense"])
    kernel = kernel_tensor_masks(model, o["include_dense"])
    second = make_masks(model, "first-half", o["fraction"], None, o["include_dense"])
    for s in halves:
        subsets[f"{s}/half-a"] = [m & k for m, k in zip(second, kernel)]
        subsets[f"{s}/half-b"] = [~m & k for m, k in zip(second, kernel)]
    time_steps(fresh, schedules, halves, data, normalizer, o, repeats=0)    # warm-up: compile and touch every path
    results = {}
    for name in ["baseline"] + strategies:
        if verbose:
            print(f"run {name}", file=sys.stderr, flush=True)
        model = fresh()
        own = subsets if name == "baseline" else {k: v for k, v in subsets.items() if k.startswith(name + "/")}
        results[name] = train_run(name, model, schedules.get(name), data, normalizer, o, own, run,
                                  run.path(f"{name}.csv"), verbose)
        if name == "baseline":
            save_model(run.path("model.npz"), model, normalizer, data.class_names, {"method": "freeze-baseline"})
    for s in halves:
        extra[s.replace("-", "_")] = train_halves(fresh, data, normalizer, o, run, results, verbose, s)
    step_costs = time_steps(fresh, schedules, halves, data, normalizer, o)
    summary = summarise(results, o, step_costs)
    summary.update(extra)
    summary.update({"arch": spec, "n_parameters": model.n_parameters(), "n_train": len(data.x_train),
                    "n_test": len(data.x_test), "test_accuracy": results["baseline"][-1]["test_accuracy"],
                    "train_seconds": results["baseline"][-1]["seconds"]})
    summary = run.finish(summary)
    plot(results, summary, out)
    return summary


def kernel_tensor_masks(model, include_dense):
    """Masks that are True on every tensor of the kernel layers (``greedy.freeze.kernel_layers``)."""
    index = parameter_index(model)
    kernel = [np.zeros(p.shape, bool) for p in model.parameters()]
    for li in kernel_layers(model, include_dense):
        for k in ("w", "b"):
            kernel[index[(li, k)]][...] = True
    return kernel


def half_models(full, o):
    """{"half-a": model, "half-b": model}: the two half-width models of ``full`` (``sub_model``).

    half-a keeps the kernels the first-half strategy trains, half-b the ones it
    freezes, each with its initial weights restricted to the kept channels.
    """
    keep_a = trainable_kernels(full, make_masks(full, "first-half", o["fraction"], None, o["include_dense"]))
    keep_b = {li: np.setdiff1d(np.arange(n_kernels(full.layers[li])), idx) for li, idx in keep_a.items()}
    return {"half-a": sub_model(full, keep_a), "half-b": sub_model(full, keep_b)}


def soft_share_gradient(a, b, rho):
    """Gradients of the penalty (rho/2) ||a - b||^2 with respect to a and to b."""
    d = rho * (a - b)
    return d, -d


def couple_soft_share(pairs, grads, rho, lr, centre):
    """Soft weight sharing: adds the gradients of (rho/2) ||theta_a - theta_b||^2 to each coupled pair."""
    for (a, b), (ga, gb) in zip(pairs, grads):
        da, db = soft_share_gradient(a, b, rho)
        ga += da
        gb += db


def couple_elastic(pairs, grads, rho, lr, centre):
    """Elastic averaging SGD (Zhang, Choromanska & LeCun 2015, synchronous form, eqs. 5-6).

    Each model's gradient gets rho (theta_i - c); the centre c moves by
    alpha sum_i (theta_i - c) with alpha = lr rho (lr: the current learning
    rate), both from the weights before the optimiser step.
    """
    alpha = lr * rho
    for (a, b), (ga, gb), c in zip(pairs, grads, centre):
        da, db = a - c, b - c
        ga += rho * da
        gb += rho * db
        c += alpha * (da + db)


# strategy -> (coupling, couples every tensor of equal shape (True) or the kernel layers' only (False))
COUPLINGS = {"two-halves": (None, False), "elastic": (couple_elastic, True), "soft-share": (couple_soft_share, False)}


def coupled_tensors(a, b, include_dense, every_tensor):
    """Indices of the parameter tensors of models a and b that have equal shapes (of the kernel layers only unless
    ``every_tensor``)."""
    kernel = [k.any() for k in kernel_tensor_masks(a, include_dense)]
    return [i for i, (p, q) in enumerate(zip(a.parameters(), b.parameters()))
            if p.shape == q.shape and (every_tensor or kernel[i])]


def _distance(xs, ys):
    return float(np.sqrt(sum(np.square(x.astype(np.float64) - y).sum() for x, y in zip(xs, ys))))


def train_halves(fresh, data, normalizer, o, run, results, verbose, strategy="two-halves"):
    """The seed's alternative to freezing half: two half-width models, trained in lockstep, then fused.

    The models are ``half_models(fresh(), o)``; both train for o["steps"] steps
    on the same batches. ``strategy`` picks the coupling between their
    parameters of equal shape (``COUPLINGS``; strength rho = o["coupling"]):
    none (``two-halves``: two independent runs), ``elastic`` (elastic averaging
    with a centre per coupled tensor, initialised to the mean of the two) or
    ``soft-share`` (the penalty (rho/2)||theta_a - theta_b||^2 on the kernel
    layers). Each step's rows also get ``halves_distance`` (L2 distance between
    the two models' kernel-layer tensors of equal shape) and, for elastic,
    ``centre_distance`` (of the model from the centre). Then a new classifier
    is trained on their concatenated features (``ensemble.fuse``, one epoch).
    Adds runs ``<strategy>-half-a/b`` to ``results``, saves the trained models as
    ``<strategy>-half-a/b.npz``; returns figures.
    """
    from greedy.experiments.ensemble import fuse
    coupling, every_tensor = COUPLINGS[strategy]
    rho = float(o["coupling"])
    models = half_models(fresh(), o)
    trainers = []
    for half, model in models.items():
        kernel = kernel_tensor_masks(model, o["include_dense"])
        own = {f"{strategy}/{half}": kernel, f"{strategy}/{half}-other": [~k for k in kernel]}
        name = f"{strategy}-{half}"
        trainers.append(_Trainer(name, model, None, data, normalizer, o, own, run, run.path(f"{name}.csv"), verbose))
    a, b = trainers
    kernels = coupled_tensors(a.model, b.model, o["include_dense"], False)
    tensors = coupled_tensors(a.model, b.model, o["include_dense"], every_tensor) if coupling else []
    pairs = [(a.params[i], b.params[i]) for i in tensors]
    grads = [(a.grads[i], b.grads[i]) for i in tensors]
    centre = [(p + q) / 2 for p, q in pairs] if coupling is couple_elastic else None
    if verbose:
        print(f"run {strategy} ({', '.join(m.spec() for m in models.values())}"
              f"{f', coupling {rho:g} on {len(tensors)} tensors' if coupling else ''})", file=sys.stderr, flush=True)
    for step, idx in zip(range(o["steps"]), _batch_stream(len(data.x_train), o["batch_size"], o["seed"])):
        for t in trainers:
            t.backward(step, idx)
        if coupling:
            t0 = time.perf_counter()
            coupling(pairs, grads, rho, a.opt.current_lr(), centre)
            share = (time.perf_counter() - t0) / 2
            for t in trainers:
                t.seconds += share
        rows = [t.update(step) for t in trainers]
        event = {"halves_distance": _distance([a.params[i] for i in kernels], [b.params[i] for i in kernels])}
        for t, row in zip(trainers, rows):
            row.update(event)
            if centre is not None:
                row["centre_distance"] = _distance([t.params[i] for i in tensors], centre)
        if centre is not None:
            event["centre_distance"] = [row["centre_distance"] for row in rows]
        run.log("coupling", run=strategy, step=step + 1, **event)
    out = {"coupling": rho if coupling else None, "coupled_tensors": len(tensors),
           "halves_distance": rows[0]["halves_distance"]}
    for half, t in zip(models, trainers):
        results[t.name] = t.finish()
        save_model(run.path(f"{t.name}.npz"), t.model, normalizer, data.class_names, {"method": f"freeze-{strategy}"})
        out[f"{half}_arch"] = t.model.spec()
        out[f"{half}_test_accuracy"] = results[t.name][-1]["test_accuracy"]
        out[f"{half}_seconds"] = results[t.name][-1]["seconds"]
    if centre is not None and len(tensors) == len(a.params):     # the centre is a whole model: evaluate it too
        centre_model = copy.deepcopy(a.model)
        for p, c in zip(centre_model.parameters(), centre):
            p[...] = c
        out["centre_test_loss"], out["centre_test_accuracy"] = _evaluate(centre_model, data.x_test, data.y_test,
                                                                         normalizer)
    t0 = time.perf_counter()
    fused = fuse([t.model for t in trainers], data.x_train, data.y_train, normalizer, epochs=1, lr=1e-2,
                 batch_size=o["batch_size"], seed=o["seed"])
    out["fused_head_seconds"] = time.perf_counter() - t0
    out["fused_test_loss"], out["fused_test_accuracy"] = _evaluate(fused, data.x_test, data.y_test, normalizer)
    run.log(f"{strategy.replace('-', '_')}_fused", test_accuracy=out["fused_test_accuracy"],
            seconds=out["fused_head_seconds"])
    return out


def experiment_subsets(model, schedules, include_dense):
    """{"<strategy>/<subset>": masks}: each schedule's subsets restricted to the kernel layers, plus
    "<strategy>/other" for the tensors of the remaining layers (always trainable); one partition per strategy."""
    kernel = kernel_tensor_masks(model, include_dense)
    out = {}
    for s, sch in schedules.items():
        for name, masks in list(sch.subsets().items()) + [("other", [~k for k in kernel])]:
            sub = [m & k for m, k in zip(masks, kernel)] if name != "other" else masks
            if any(m.any() for m in sub):
                out[f"{s}/{name}"] = sub
    if not out:
        out["all"] = [np.ones(p.shape, bool) for p in model.parameters()]
    return out


def _within_share(s, groups):
    a = np.abs(s) - np.diag(np.diag(np.abs(s)))
    total = a.sum()
    return float((a * (groups[:, None] == groups[None, :])).sum() / total) if total else None


def time_steps(fresh, schedules, halves, data, normalizer, o, repeats=10):
    """Best-of-``repeats`` wall time of one training step (forward, backward, optimiser) per run, calls interleaved
    after one untimed call each.

    Uses phase 0 of each schedule and one fixed batch; less noisy than the running
    clock of the runs when other processes share the machine. Returns {run name: seconds}.
    """
    xb = normalizer(data.x_train[:o["batch_size"]])
    yb = data.y_train[:o["batch_size"]]
    configs = {"baseline": (fresh(), None)}
    for name, sch in schedules.items():
        configs[name] = (fresh(), sch.phases[0])
    if halves:
        configs.update({half: (model, None) for half, model in half_models(fresh(), o).items()})
    steps = {}
    for name, (model, masks) in configs.items():
        opt = _optimizer(o)
        opt.masks = masks
        keep = trainable_kernels(model, masks) if masks is not None and o["skip_frozen_grads"] else {}

        def step(model=model, opt=opt, keep=keep):
            _forward_backward(model, xb, yb, keep)
            opt.step(model.parameters(), model.gradients())
        step()
        steps[name] = step
    best = {name: np.inf for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t)
    for half in ("half-a", "half-b") if halves else ():        # the uncoupled step of the half-width models
        best.update({f"{s}-{half}": best[half] for s in halves})
    return best


def summarise(results, o, step_costs=None):
    """Per run: final losses, steps and seconds to the target loss, and per subset speed against the baseline."""
    window = o["smooth"]
    base = results["baseline"]
    base_loss = smoothed(np.array([r["loss"] for r in base]), window)
    target = o["target_loss"] if o["target_loss"] is not None else float(base_loss[len(base_loss) // 2])
    runs = {}
    for name, rows in results.items():
        steps, seconds = reach(rows, target, window)
        last = rows[-1]
        entry = {"final_loss": float(smoothed(np.array([r["loss"] for r in rows]), window)[-1]),
                 "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
                 "train_seconds": last["seconds"], "seconds_per_step": last["seconds"] / len(rows),
                 "steps_to_target": steps, "seconds_to_target": seconds, "subsets": {}}
        if step_costs and name in step_costs:
            entry["best_step_seconds"] = step_costs[name]
            entry["best_seconds_to_target"] = None if steps is None else steps * step_costs[name]
        if name != "baseline":
            own = [k[4:] for k in last if k.startswith("rms:")]      # this run's subsets: a partition
            total = sum(last[f"decrease:{sub}"] for sub in own)
            complete = all(f"decrease:{sub}" in base[-1] for sub in own)
            base_total = sum(base[-1][f"decrease:{sub}"] for sub in own) if complete else None
            for sub in own:
                b = base[-1].get(f"rms:{sub}")
                bd = base[-1].get(f"decrease:{sub}")
                entry["subsets"][sub] = {
                    "rms": last[f"rms:{sub}"], "baseline_rms": b, "speed_ratio": last[f"rms:{sub}"] / b if b else None,
                    "decrease": last[f"decrease:{sub}"], "baseline_decrease": bd,
                    "share": last[f"decrease:{sub}"] / total if total else None,
                    "baseline_share": bd / base_total if bd is not None and base_total else None,
                    "layers": {k.split("@", 1)[1]: {"dist": v, "baseline_dist": base[-1].get(k),
                                                    "ratio": v / base[-1][k] if base[-1].get(k) else None}
                               for k, v in last.items() if k.startswith(f"dist:{sub}@")}}
        runs[name] = entry
    return {"target_loss": target, "runs": runs}


def plot(results, summary, out):
    """PNG plots (loss, subset speed, sampled weight trajectories, layer norms) if matplotlib is importable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in results.items():
        steps = [r["step"] for r in rows]
        ax[0].plot(steps, smoothed(np.array([r["loss"] for r in rows]), 20), label=name)
        ax[1].plot([r["seconds"] for r in rows], smoothed(np.array([r["loss"] for r in rows]), 20), label=name)
    ax[0].set_xlabel("step")
    ax[1].set_xlabel("training seconds")
    for a in ax:
        a.set_ylabel("training loss (running mean)")
        a.axhline(summary["target_loss"], color="grey", lw=0.5)
        a.legend()
    fig.savefig(os.path.join(out, "loss.png"), dpi=100)
    plt.close(fig)
    for name, rows in results.items():
        if name == "baseline":
            continue
        subs = [k[4:] for k in rows[0] if k.startswith("rms:")]
        fig, ax = plt.subplots(1, 3, figsize=(16, 4))
        for sub in subs:
            line, = ax[0].plot([r["step"] for r in rows], [r[f"rms:{sub}"] for r in rows], label=f"{sub} ({name})")
            if f"rms:{sub}" in results["baseline"][0]:
                ax[0].plot([r["step"] for r in results["baseline"]], [r[f"rms:{sub}"] for r in results["baseline"]],
                           "--", color=line.get_color(), label=f"{sub} (baseline)")
        ax[0].set_ylabel("RMS distance from initial weights")
        ax[0].legend(fontsize=7)
        values = np.load(os.path.join(out, f"{name}_weights.npz"))["values"]
        ax[1].plot(values - values[0])
        ax[1].set_ylabel("sampled weights minus initial value")
        for key in rows[0]:
            if key.startswith("norm@"):
                ax[2].plot([r[key] for r in rows], label=key[5:])
        ax[2].set_ylabel("layer weight norm")
        ax[2].legend(fontsize=7)
        for a in ax:
            a.set_xlabel("step")
        fig.savefig(os.path.join(out, f"{name}.png"), dpi=100)
        plt.close(fig)
    return True


def summary_table(summary):
    """Markdown table: per strategy, subset speed ratios and steps/seconds to the target loss."""
    runs = summary["runs"]
    base = runs["baseline"]
    lines = [f"target loss {summary['target_loss']:.4f} (running mean of the training loss)", "",
             "| run | subset | RMS move | baseline RMS move | ratio | share of decrease (baseline) "
             "| steps to target | seconds to target (steps x best s/step) | s/step | best s/step | test acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, f="{:.3g}"):
        return "-" if v is None else f.format(v)
    lines.append(f"| baseline | all | | | | | {fmt(base['steps_to_target'], '{}')} | {fmt(base['seconds_to_target'], '{:.1f}')} "
                 f"({fmt(base.get('best_seconds_to_target'), '{:.1f}')}) "
                 f"| {base['seconds_per_step']:.3f} | {fmt(base.get('best_step_seconds'), '{:.3f}')} "
                 f"| {fmt(base['test_accuracy'], '{:.4f}')} |")
    for name, r in runs.items():
        if name == "baseline":
            continue
        for sub, s in r["subsets"].items():
            lines.append(f"| {name} | {sub.split('/', 1)[1]} | {fmt(s['rms'])} | {fmt(s['baseline_rms'])} "
                         f"| {fmt(s['speed_ratio'], '{:.2f}')} | {fmt(s['share'], '{:.2f}')} ({fmt(s['baseline_share'], '{:.2f}')}) "
                         f"| {fmt(r['steps_to_target'], '{}')} | {fmt(r['seconds_to_target'], '{:.1f}')} "
                         f"({fmt(r.get('best_seconds_to_target'), '{:.1f}')}) "
                         f"| {r['seconds_per_step']:.3f} | {fmt(r.get('best_step_seconds'), '{:.3f}')} "
                         f"| {fmt(r['test_accuracy'], '{:.4f}')} |")
    return "\n".join(lines)


def write_table(summary, out):
    text = summary_table(summary)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")
    return text


def seed_table(folders):
    """Markdown table over several experiment folders (e.g. seeds): mean and range per run and subset.

    Reads each folder's summary.json. Columns: speed ratio (RMS move over the
    baseline's for the same subset), share of the first-order loss decrease
    (baseline's share), steps and best-step seconds to each folder's target loss
    relative to the baseline's, and test accuracy.
    """
    import json
    summaries = [json.load(open(os.path.join(f, "summary.json"))) for f in folders]

    def stat(values, f="{:.2f}"):
        missing = sum(v is None for v in values)
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        text = f.format(values[0]) if len(values) == 1 else \
            f"{f.format(np.mean(values))} [{f.format(min(values))}, {f.format(max(values))}]"
        return text + (f" ({missing} of {missing + len(values)} never)" if missing else "")

    def rel(run, key):
        out = []
        for s in summaries:
            r, b = s["runs"].get(run, {}), s["runs"]["baseline"]
            if r.get(key) is not None and b.get(key):
                out.append(r[key] / b[key])
            elif r and r.get(key) is None:
                out.append(None)
        return out
    lines = [f"{len(folders)} run(s); mean [min, max]; 'to target' = relative to the baseline "
             "(< 1: sooner; '-' = target not reached)", "",
             "| run | subset | RMS move / baseline's | share of loss decrease (baseline's) | steps to target "
             "| seconds to target | test accuracy |", "|---|---|---|---|---|---|---|"]
    runs = list(dict.fromkeys(r for s in summaries for r in s["runs"]))
    base_acc = stat([s["runs"]["baseline"]["test_accuracy"] for s in summaries], "{:.4f}")
    lines.append(f"| baseline | all | 1 | | 1 | 1 | {base_acc} |")
    for run in runs[1:]:
        subs = list(dict.fromkeys(k for s in summaries for k in s["runs"].get(run, {}).get("subsets", {})))
        for k, sub in enumerate(subs):
            entries = [s["runs"][run]["subsets"][sub] for s in summaries if sub in s["runs"].get(run, {}).get("subsets", {})]
            first = k == 0
            lines.append(
                f"| {run} | {sub.split('/', 1)[1]} | {stat([e['speed_ratio'] for e in entries])} "
                f"| {stat([e['share'] for e in entries])} ({stat([e['baseline_share'] for e in entries])}) "
                f"| {stat(rel(run, 'steps_to_target')) if first else ''} "
                f"| {stat(rel(run, 'best_seconds_to_target')) if first else ''} "
                f"| {stat([s['runs'][run]['test_accuracy'] for s in summaries if run in s['runs']], '{:.4f}') if first else ''} |")
    return "\n".join(lines)
