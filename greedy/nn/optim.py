"""Optimisers and learning-rate schedules.

An optimiser updates a list of parameter arrays in place from their gradient
arrays: ``opt.step(params, grads)``, both lists of equally shaped arrays in a
fixed order. Optional per-parameter boolean masks (``masks``, same shapes, True
= trainable) keep frozen entries exactly where they are: their gradient, weight
decay and momentum are all zeroed. Optional per-parameter rate multipliers (``lr_scales``,
floats) scale the rate of each parameter.

Schedules map training progress p in [0, 1] (the fraction of the step or time
budget used, set by the training loop in ``opt.progress``) to a learning-rate
multiplier, so the same schedule serves epoch and wall-time budgets.
"""
import math

import numpy as np

from greedy.errors import ConfigError
from greedy.kernels.adam import adam_update


class Optimizer:
    def __init__(self, lr, weight_decay=0.0, schedule=None):
        if lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"weight decay must be non-negative, got {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.schedule = schedule or constant()
        self.t = 0
        self.progress = 0.0
        self.state = None
        self.masks = None
        self.lr_scales = None

    def current_lr(self):
        return self.lr * self.schedule(min(max(self.progress, 0.0), 1.0))

    def drop_leading(self, n):
        """Forget the first ``n`` parameters: later steps get the parameter list without them (their
        state, step count and schedule go on)."""
        if self.state is not None:
            self.state = self.state[n:]
        if self.masks is not None:
            self.masks = self.masks[n:]
        if self.lr_scales is not None:
            self.lr_scales = self.lr_scales[n:]

    def step(self, params, grads):
        if self.state is None:
            self.state = [self._init_state(p) for p in params]
        lr = self.current_lr()
        for i, (p, g) in enumerate(zip(params, grads)):
            mask = None if self.masks is None else self.masks[i]
            if mask is not None and not mask.any():
                continue
            if self.weight_decay:
                g = g + self.weight_decay * p
            if mask is not None:
                g = g * mask
            self._update(p, g, self.state[i], lr if self.lr_scales is None else lr * self.lr_scales[i], mask)
        self.t += 1


class SGD(Optimizer):
    """SGD with momentum (heavy ball, or Nesterov) and L2 weight decay."""

    def __init__(self, lr=0.01, momentum=0.9, nesterov=False, weight_decay=0.0, schedule=None):
        super().__init__(lr, weight_decay, schedule)
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _init_state(self, p):
        return np.zeros_like(p)

    def _update(self, p, g, v, lr, mask):
        v *= self.momentum
        v += g
        step = g + self.momentum * v if self.nesterov else v
        if mask is not None:
            step = step * mask  # momentum from before a mask change must not move frozen entries
        p -= p.dtype.type(lr) * step


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is decoupled (AdamW).

    Unmasked contiguous parameters take the one-pass kernel ``greedy.kernels.adam`` (the same
    arithmetic as the NumPy lines below, bit for bit); masked ones the NumPy lines.
    """

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, schedule=None):
        super().__init__(lr, 0.0, schedule)
        if weight_decay < 0:
            raise ConfigError(f"weight decay must be non-negative, got {weight_decay}")
        self.decoupled_decay = float(weight_decay)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def _init_state(self, p):
        return (np.zeros_like(p), np.zeros_like(p))

    def _update(self, p, g, state, lr, mask):
        m, v = state
        t = self.t + 1
        step_size = lr * math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        if mask is None and all(a.flags.c_contiguous and a.dtype == p.dtype for a in (p, g, m, v)):
            adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), self.beta1, self.beta2,
                        self.eps, step_size, lr * self.decoupled_decay)
            return
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        update = m / (np.sqrt(v) + self.eps)
        if mask is not None:
            update *= mask
        p -= p.dtype.type(step_size) * update
        if self.decoupled_decay:
            decay = p.dtype.type(lr * self.decoupled_decay) * p
            p -= decay if mask is None else decay * mask


def constant():
    """Multiplier 1 throughout."""
    return lambda p: 1.0


def step_decay(every=1 / 3, gamma=0.1):
    """Multiply the rate by ``gamma`` after each ``every`` fraction of training."""
    if not 0 < every <= 1:
        raise ConfigError(f"step fraction must be in (0, 1], got {every}")
    return lambda p: gamma ** int(p / every + 1e-9)


def cosine(warmup=0.0, final=0.0):
    """Linear warm-up over the first ``warmup`` fraction, then cosine decay to ``final``."""

    def f(p):
        if p < warmup:
            return p / warmup
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (p - warmup) / (1 - warmup)))
    return f


def one_cycle(peak=0.25, start=0.1, final=0.0):
    """Linear ramp from ``start`` to 1 until ``peak``, then linear decay to ``final`` at the end."""

    def f(p):
        if p < peak:
            return start + (1 - start) * p / peak
        return final + (1 - final) * (1 - p) / (1 - peak)
    return f


SCHEDULES = ("constant", "step", "cosine", "onecycle")


def make_schedule(name):
    """Build a schedule by name with the project's defaults."""
    if name == "constant":
        return constant()
    if name == "step":
        return step_decay(1 / 3, 0.1)
    if name == "cosine":
        return cosine(warmup=0.02)
    if name == "onecycle":
        return one_cycle()
    raise ConfigError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def make_optimizer(name, lr, schedule="onecycle", weight_decay=0.0, momentum=0.9):
    """Build ``sgd``, ``nesterov`` or ``adam`` with a named schedule."""
    sched = make_schedule(schedule)
    if name == "sgd":
        return SGD(lr, momentum=momentum, weight_decay=weight_decay, schedule=sched)
    if name == "nesterov":
        return SGD(lr, momentum=momentum, nesterov=True, weight_decay=weight_decay, schedule=sched)
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay, schedule=sched)
    raise ConfigError(f"unknown optimizer {name!r}; choose from sgd, nesterov, adam")
