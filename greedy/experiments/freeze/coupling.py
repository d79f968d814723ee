"""Two half-width models instead of one frozen half: trained in lockstep, coupled or not, then fused.

``half_models`` cuts a model into the two halves of its kernels; ``Lockstep``
lets ``fit`` train them as one model on the same batches; ``couple_elastic``
(elastic averaging) and ``couple_soft_share`` (soft weight sharing) add a
coupling term to their gradients; ``train_halves`` runs the whole strategy.
"""
import copy
import sys
import time

import numpy as np

from greedy.experiments.freeze.masks import kernel_tensor_masks, make_masks, n_kernels, sub_model, trainable_kernels
from greedy.experiments.freeze.options import BATCHES, FUSE, run_optimizer, seed_sequence, stream
from greedy.experiments.freeze.record import Recorder, TrainingClock, evaluate
from greedy.nn.fit import fit
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import Model
from greedy.nn.network import save_model


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


def distance(xs, ys):
    """L2 distance (float64) between two lists of equally shaped arrays."""
    return float(np.sqrt(sum(np.square(x.astype(np.float64) - y).sum() for x, y in zip(xs, ys))))


class Lockstep(Model):
    """Models trained as one by ``fit``, on the same batches.

    forward(x (N, ...), train) -> the members' outputs side by side (N, K_1 + K_2 + ...);
    backward(dy, input_grad) hands each member its columns and returns the sum of
    their input gradients; parameters()/gradients() list the members' arrays in
    member order, so one optimiser steps them all as it would step each alone.
    ``loss(loss_fn)`` is the summed loss of the members, each on its own columns;
    afterwards ``losses`` holds each member's loss on the batch. ``take_seconds()``
    returns each member's forward and backward seconds since the previous call.
    """

    def __init__(self, models):
        self.models = list(models)
        self.losses = [None] * len(self.models)
        self.seconds = [0.0] * len(self.models)

    def forward(self, x, train=False):
        outs = []
        for i, m in enumerate(self.models):
            t = time.perf_counter()
            outs.append(m.forward(x, train))
            self.seconds[i] += time.perf_counter() - t
        self.widths = [o.shape[1] for o in outs]
        return np.concatenate(outs, axis=1)

    def split(self, z):
        """The members' contiguous column blocks of z (N, sum of widths), from the last forward."""
        return [np.ascontiguousarray(p) for p in np.split(z, np.cumsum(self.widths)[:-1], axis=1)]

    def backward(self, dy, input_grad=True):
        dx = None
        for i, (m, d) in enumerate(zip(self.models, self.split(dy))):
            t = time.perf_counter()
            g = m.backward(d, input_grad=input_grad)
            self.seconds[i] += time.perf_counter() - t
            dx = g if dx is None else dx + g
        return dx

    def loss(self, loss_fn=softmax_cross_entropy):
        def summed(out, y, sample_weight=None):
            parts = [loss_fn(o, y, sample_weight) for o in self.split(out)]
            self.losses = [loss for loss, _ in parts]
            return sum(self.losses), np.concatenate([d for _, d in parts], axis=1)
        return summed

    def take_seconds(self):
        seconds, self.seconds = self.seconds, [0.0] * len(self.models)
        return seconds

    def parameters(self):
        return [p for m in self.models for p in m.parameters()]

    def gradients(self):
        return [g for m in self.models for g in m.gradients()]


def train_halves(fresh, data, normalizer, o, run, results, verbose, strategy="two-halves"):
    """The seed's alternative to freezing half: two half-width models, trained in lockstep, then fused.

    The models are ``half_models(fresh(), o)``; ``fit`` trains them as one
    ``Lockstep`` model for o["steps"] steps on the batches of every other run.
    ``strategy`` picks the coupling between their parameters of equal shape
    (``COUPLINGS``; strength rho = o["coupling"]): none (``two-halves``: two
    independent runs), ``elastic`` (elastic averaging with a centre per coupled
    tensor, initialised to the mean of the two) or ``soft-share`` (the penalty
    (rho/2)||theta_a - theta_b||^2 on the kernel layers). Each step's rows also
    get ``halves_distance`` (L2 distance between the two models' kernel-layer
    tensors of equal shape) and, for elastic, ``centre_distance`` (of the model
    from the centre). A half's seconds are its own forward and backward plus
    half of the rest of the step. Then a new classifier is trained on their
    concatenated features (``ensemble.fuse``, one epoch). Adds runs
    ``<strategy>-half-a/b`` to ``results``, saves the trained models as
    ``<strategy>-half-a/b.npz``; returns figures.
    """
    from greedy.experiments.ensemble import fuse
    coupling, every_tensor = COUPLINGS[strategy]
    rho = float(o["coupling"])
    models = half_models(fresh(), o)
    recorders = []
    for half, model in models.items():
        kernel = kernel_tensor_masks(model, o["include_dense"])
        own = {f"{strategy}/{half}": kernel, f"{strategy}/{half}-other": [~k for k in kernel]}
        name = f"{strategy}-{half}"
        recorders.append(Recorder(name, model, data, normalizer, o, own, run, run.path(f"{name}.csv"), verbose))
    a, b = recorders
    kernels = coupled_tensors(a.model, b.model, o["include_dense"], False)
    tensors = coupled_tensors(a.model, b.model, o["include_dense"], every_tensor) if coupling else []
    pairs = [(a.params[i], b.params[i]) for i in tensors]
    grads = [(a.grads[i], b.grads[i]) for i in tensors]
    centre = [(p + q) / 2 for p, q in pairs] if coupling is couple_elastic else None
    if verbose:
        print(f"run {strategy} ({', '.join(m.spec() for m in models.values())}"
              f"{f', coupling {rho:g} on {len(tensors)} tensors' if coupling else ''})", file=sys.stderr, flush=True)
    pair = Lockstep(models.values())
    opt = run_optimizer(o)
    clock = TrainingClock()

    def couple(step):
        coupling(pairs, grads, rho, opt.current_lr(), centre)

    def record(step, loss):
        elapsed, own = clock.lap(), pair.take_seconds()
        shared = (elapsed - sum(own)) / len(own)
        rows = [r.record(step, part, s + shared) for r, part, s in zip(recorders, pair.losses, own)]
        event = {"halves_distance": distance([a.params[i] for i in kernels], [b.params[i] for i in kernels])}
        for r, row in zip(recorders, rows):
            row.update(event)
            if centre is not None:
                row["centre_distance"] = distance([r.params[i] for i in tensors], centre)
        if centre is not None:
            event["centre_distance"] = [row["centre_distance"] for row in rows]
        run.log("coupling", run=strategy, step=step + 1, **event)
        clock.resume()

    fit(pair, data.x_train, data.y_train, opt, steps=o["steps"], batch_size=o["batch_size"], loss_fn=pair.loss(),
        prepare=normalizer, rng=stream(o["seed"], BATCHES), drop_last=True,
        after_backward=couple if coupling else None, on_step=record, label=strategy)
    out = {"coupling": rho if coupling else None, "coupled_tensors": len(tensors),
           "halves_distance": a.rows[-1]["halves_distance"]}
    for half, r in zip(models, recorders):
        results[r.name] = r.finish()
        save_model(run.path(f"{r.name}.npz"), r.model, normalizer, data.class_names, {"method": f"freeze-{strategy}"})
        out[f"{half}_arch"] = r.model.spec()
        out[f"{half}_test_accuracy"] = results[r.name][-1]["test_accuracy"]
        out[f"{half}_seconds"] = results[r.name][-1]["seconds"]
    if centre is not None and len(tensors) == len(a.params):     # the centre is a whole model: evaluate it too
        centre_model = copy.deepcopy(a.model)
        for p, c in zip(centre_model.parameters(), centre):
            p[...] = c
        out["centre_test_loss"], out["centre_test_accuracy"] = evaluate(centre_model, data.x_test, data.y_test,
                                                                        normalizer)
    t0 = time.perf_counter()
    fused = fuse([r.model for r in recorders], data.x_train, data.y_train, normalizer, epochs=1, lr=1e-2,
                 batch_size=o["batch_size"], seed=seed_sequence(o["seed"], FUSE))
    out["fused_head_seconds"] = time.perf_counter() - t0
    out["fused_test_loss"], out["fused_test_accuracy"] = evaluate(fused, data.x_test, data.y_test, normalizer)
    run.log(f"{strategy.replace('-', '_')}_fused", test_accuracy=out["fused_test_accuracy"],
            seconds=out["fused_head_seconds"])
    return out
