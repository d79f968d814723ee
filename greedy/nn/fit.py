"""The mini-batch training loop shared by every gradient-trained part of the project.

``fit`` trains any model with ``forward``/``backward``/``parameters``/``gradients``
(a ``Sequential``, or a small wrapper; ``backward(dy, input_grad)``) on arrays in memory, with any loss of the
form ``loss_fn(outputs, labels, sample_weight) -> (loss, d_outputs)``. End-to-end
training, auxiliary heads, cosine and KL objectives, the final classifiers and
the freezing experiment (through the hooks ``backward``, ``after_backward`` and
``on_step``) all go through it.
"""
import time

import numpy as np

from greedy import validate
from greedy.errors import ConfigError
from greedy.nn.losses import is_cross_entropy, softmax_cross_entropy
from greedy.progress import Progress


def batches(n, batch_size, rng=None, drop_last=False):
    """Yield index arrays covering range(n) in mini-batches, shuffled when rng is given.

    With ``drop_last`` every batch is full: the last n % batch_size indices of the order are left out.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - batch_size + 1 if drop_last else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def predict(model, x, prepare=None, batch_size=500):
    """Model outputs for all of x, computed in batches; ``prepare`` maps a raw batch to model input.

    Models with a ``predict_batch`` (Sequential, layer-wise stacks) use it: the fused inference pass.
    """
    run = getattr(model, "predict_batch", None) or (lambda xb: model.forward(xb, train=False))
    outs = []
    for idx in batches(len(x), batch_size):
        xb = x[idx[0]:idx[-1] + 1]
        outs.append(run(prepare(xb) if prepare else xb))
    return np.concatenate(outs)


def label_accuracy(outputs, y):
    """Fraction of rows of outputs (N, K) whose arg-max equals y (N,); NaN when N is 0."""
    if len(y) == 0:
        return float("nan")
    return float((outputs.argmax(axis=1) == y).mean())


def accuracy(model, x, y, prepare=None, batch_size=500):
    """Fraction of x whose arg-max output equals y."""
    if len(x) == 0:
        return float("nan")
    return label_accuracy(predict(model, x, prepare, batch_size), y)


def fit(model, x, y, optimizer, *, epochs=None, steps=None, batch_size=128, loss_fn=softmax_cross_entropy,
        prepare=None, augment=None, sample_weight=None, rng=None, time_budget=None, drop_last=False,
        backward=None, after_backward=None, on_step=None, on_epoch=None, progress=False, label="train",
        start_epoch=0, elapsed=0.0, stop_epoch=None):
    """Train ``model`` in place with mini-batch gradient descent.

    x (N, ...) raw inputs (uint8 images or float features); y (N,) int labels.
    ``prepare(xb)`` turns a raw batch into float model input (e.g. normalisation);
    ``augment(xb, rng, idx, epoch)`` randomises it during training (idx the batch's sample indices, epoch
    its epoch, counted from 1). Give ``epochs`` (may be
    fractional) or ``steps`` (optimiser steps). Each epoch visits the samples in
    the order ``rng.permutation(N)``, so two calls with equally seeded ``rng``
    see the same batches; ``drop_last`` keeps full batches only.
    ``time_budget`` (seconds) stops training early at a batch boundary; the
    optimiser's schedule follows whichever of steps or time runs out first.

    Hooks, each given ``step``, the index of the step in progress (from 0):
    ``backward(d_outputs, step)`` replaces ``model.backward(d_outputs, input_grad=False)``
    (e.g. to compute only some gradients); ``after_backward(step)`` may change the
    gradients before the optimiser step (``optimizer.progress`` is already set);
    ``on_step(step, loss)`` is called after the optimiser step.
    ``on_epoch(epoch, train_loss, train_acc)`` is called after each epoch.
    ``progress``: a line on stderr (``greedy.progress``) with the epoch against its total,
    or against the seconds of ``time_budget`` when one is given, the batch and the running loss.
    ``start_epoch``, ``elapsed``: continue a training that stopped after ``start_epoch`` whole
    epochs and ``elapsed`` seconds (its model, optimiser and ``rng`` restored to their state at that
    point): the schedule, the time budget and the epoch numbers go on from there. ``stop_epoch``: stop
    after that many epochs, the schedule still that of the whole training (a later call with
    ``start_epoch=stop_epoch`` goes on).
    Returns a list of per-epoch dicts (epoch, train_loss, train_accuracy, seconds).
    """
    if (epochs is None) == (steps is None):
        raise ConfigError("give either epochs or steps")
    epochs = validate.number(epochs, "epochs", 0.0, allow_none=True)
    steps = validate.integer(steps, "steps", 0, allow_none=True)
    batch_size = validate.positive_int(batch_size, "batch size")
    rng = rng if rng is not None else np.random.default_rng(0)
    n = len(x)
    total_steps = steps if steps is not None else int(np.ceil(epochs * n / batch_size))
    steps_per_epoch = n // batch_size if drop_last else int(np.ceil(n / batch_size))
    n_epochs = int(np.ceil(total_steps / steps_per_epoch)) if steps_per_epoch else 0
    bar = Progress(enabled=progress)
    params, grads = model.parameters(), model.gradients()
    history, t0 = [], time.perf_counter() - elapsed
    epoch = validate.integer(start_epoch, "start epoch", 0)
    step = min(epoch * steps_per_epoch, total_steps)
    while step < total_steps and (stop_epoch is None or epoch < stop_epoch):
        epoch += 1
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in batches(n, batch_size, rng, drop_last):
            if step >= total_steps or (time_budget is not None and time.perf_counter() - t0 > time_budget):
                break
            xb = x[idx]
            if prepare is not None:
                xb = prepare(xb)
            if augment is not None:
                xb = augment(xb, rng, idx, epoch)
            out = model.forward(xb, train=True)
            loss, dout = loss_fn(out, y[idx], None if sample_weight is None else sample_weight[idx])
            if not np.isfinite(loss):
                raise FloatingPointError(f"{label}: loss became {loss} at step {step}; lower the learning rate")
            dout = dout.astype(out.dtype, copy=False)
            if backward is None:
                model.backward(dout, input_grad=False)
            else:
                backward(dout, step)
            elapsed = time.perf_counter() - t0
            optimizer.progress = max(step / total_steps, elapsed / time_budget if time_budget else 0.0)
            if after_backward is not None:
                after_backward(step)
            optimizer.step(params, grads)
            if on_step is not None:
                on_step(step, loss)
            step += 1
            loss_sum += loss * len(idx)
            seen += len(idx)
            if out.ndim == 2 and out.shape[1] > 1 and is_cross_entropy(loss_fn):
                correct += int((out.argmax(axis=1) == y[idx]).sum())
            if bar.due():
                total = f"/{n_epochs}" if time_budget is None else f", {elapsed:.0f}/{time_budget:g} s"
                bar.show(f"{label} epoch {epoch}{total}: {step - (epoch - 1) * steps_per_epoch}/{steps_per_epoch} "
                         f"batches, loss {loss_sum / seen:.4f}")
        bar.end()
        if seen == 0:
            break
        record = {"epoch": epoch, "train_loss": loss_sum / seen,
                  "train_accuracy": correct / seen if correct else None,
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record["train_loss"], record["train_accuracy"])
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
    return history
