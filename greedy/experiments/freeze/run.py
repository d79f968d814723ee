"""The freezing experiment's driver: one baseline and one run per strategy, all trained by ``fit``."""
import sys
import time

import numpy as np

from greedy.errors import ConfigError
from greedy.experiments.freeze.coupling import half_models, train_halves
from greedy.experiments.freeze.kernel_groups import hessian_groups
from greedy.experiments.freeze.masks import MaskedBackward, kernel_tensor_masks, make_mask_schedule, make_masks
from greedy.experiments.freeze.options import (BATCHES, EXPERIMENT_STRATEGIES, HALF_STRATEGIES, HESSIAN, INIT,
                                               MASKS, resolve_options, run_optimizer, stream)
from greedy.experiments.freeze.plots import plot
from greedy.experiments.freeze.record import Recorder, TrainingClock
from greedy.experiments.freeze.report import summarise
from greedy.nn.fit import fit
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import build_model
from greedy.nn.network import save_model
from greedy.runs import Run


def train_run(name, model, schedule, data, normalizer, o, subsets, run, csv_path, verbose=True):
    """Train one run for o["steps"] steps with ``fit`` under ``schedule`` (a ``MaskSchedule`` or None);
    returns its list of per-step rows (dicts, see ``Recorder``)."""
    opt = run_optimizer(o)
    recorder = Recorder(name, model, data, normalizer, o, subsets, run, csv_path, verbose)
    backward = MaskedBackward(model, opt, schedule, o["skip_frozen_grads"])
    clock = TrainingClock()

    def record(step, loss):
        recorder.record(step, loss, clock.lap(), backward.phase)
        clock.resume()

    fit(model, data.x_train, data.y_train, opt, steps=o["steps"], batch_size=o["batch_size"], prepare=normalizer,
        rng=stream(o["seed"], BATCHES), drop_last=True, backward=backward, on_step=record, label=name)
    return recorder.finish()


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


def _hessian_groups(model, data, normalizer, o, run, verbose):
    """Kernel groups of the ``hessian`` strategy on a random training batch; (groups, summary figures)."""
    rng = stream(o["seed"], HESSIAN)
    idx = rng.choice(len(data.x_train), min(o["hessian_batch"], len(data.x_train)), replace=False)
    probes = None if not o["n_probes"] else int(o["n_probes"])
    t = time.perf_counter()
    groups, inter = hessian_groups(model, normalizer(data.x_train[idx]), data.y_train[idx], o["n_groups"],
                                   probes, rng, o["include_dense"])
    seconds = time.perf_counter() - t
    n_hvp = probes if probes else int(sum(len(g) for g in groups.values()))
    np.savez(run.path("hessian_interactions.npz"), **{f"layer{k}": v for k, v in inter.items()})
    run.log("hessian_groups", seconds=seconds, hvps=n_hvp)
    if verbose:
        print(f"hessian groups from {n_hvp} HVPs on {len(idx)} images in {seconds:.1f} s", file=sys.stderr)
    return groups, {"seconds": seconds, "hvps": n_hvp, "batch": len(idx),
                    "groups": {str(k): v.tolist() for k, v in groups.items()},
                    "within_over_total": {str(k): _within_share(inter[k], groups[k]) for k in groups}}


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
        configs[name] = (fresh(), sch)
    if halves:
        configs.update({half: (model, None) for half, model in half_models(fresh(), o).items()})
    steps = {}
    for name, (model, schedule) in configs.items():
        opt = run_optimizer(o)
        backward = MaskedBackward(model, opt, schedule, o["skip_frozen_grads"])

        def step(model=model, opt=opt, backward=backward):
            out = model.forward(xb, train=True)
            backward(softmax_cross_entropy(out, yb)[1].astype(out.dtype, copy=False), 0)
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


def run_freeze_experiment(data, normalizer, strategies, out, opts, verbose=True):
    """Run the baseline and each strategy; write everything under ``out``; return the summary dict.

    data: a ``Dataset`` (uint8 NCHW); normalizer: raw batch -> float input;
    strategies: names from ``EXPERIMENT_STRATEGIES`` (``none`` is the baseline, always run);
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
        return build_model(spec, in_shape, n_classes, stream(o["seed"], INIT))

    run = Run(out, "freeze", o.get("dataset", "?"), dict(o, strategies=strategies, arch=spec), verbose=False)
    run.start()
    model = fresh()
    extra = {}
    schedules = {}
    for s in strategies:
        groups = None
        if s == "hessian":
            groups, extra["hessian"] = _hessian_groups(model, data, normalizer, o, run, verbose)
        schedules[s] = make_mask_schedule(model, s, o["fraction"], stream(o["seed"], MASKS), o["include_dense"],
                                          o["every"], groups)
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
    if not plot(results, summary, out) and verbose:
        print("no plots: matplotlib is not installed (pip install 'greedy[plot]')", file=sys.stderr)
    return summary
