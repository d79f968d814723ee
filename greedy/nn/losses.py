"""Softmax cross-entropy, the loss of every classifier head in the project."""
import functools

import numpy as np

from greedy.errors import ConfigError


def log_softmax(logits):
    """Numerically stable log-softmax of logits (N, K) along the last axis."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def flush_subnormals(a):
    """Set the subnormal entries of the float array ``a`` (below ``finfo.tiny`` in magnitude, not zero) to
    zero, in place; returns ``a``.

    A confident softmax gives probabilities like exp(-100), which the mean's 1/N scales below the
    smallest normal float32. Those values carry nothing a float32 weight can hold, but every
    multiply that reads one is taken by the CPU's slow microcode path: a linear classifier's weight
    gradient on 256 x 6,272 features took 12 ms a step with a few hundred of them in its (256, 10)
    output gradient, 1.4 ms without.
    """
    a[np.abs(a) < np.finfo(a.dtype).tiny] = 0
    return a


def softmax_cross_entropy(logits, labels, sample_weight=None, label_smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits (N, K) float, labels (N,) int in [0, K), sample_weight (N,) or None
    (weights are normalised to sum to one). With ``label_smoothing`` e in [0, 1) the target of a sample
    is 1 - e + e / K for its label and e / K for every other class. Returns (loss: float, dlogits (N, K)),
    with subnormal gradient entries flushed to zero (``flush_subnormals``).
    """
    n, k = logits.shape
    logp = log_softmax(logits)
    if sample_weight is None:
        w = np.full(n, 1.0 / n, dtype=logits.dtype)
    else:
        w = (sample_weight / sample_weight.sum()).astype(logits.dtype)
    rows = np.arange(n)
    keep = 1.0 - label_smoothing
    loss = -keep * (w * logp[rows, labels]).sum()
    grad = np.exp(logp)
    grad[rows, labels] -= keep
    if label_smoothing:
        loss -= label_smoothing / k * (w * logp.sum(axis=1)).sum()
        grad -= grad.dtype.type(label_smoothing / k)
    grad *= w[:, None]
    return float(loss), flush_subnormals(grad)


def smoothed_cross_entropy(label_smoothing):
    """``softmax_cross_entropy`` with ``label_smoothing``, as a loss function of (logits, labels,
    sample_weight); the function itself when it is 0."""
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}")
    if not label_smoothing:
        return softmax_cross_entropy
    return functools.partial(softmax_cross_entropy, label_smoothing=float(label_smoothing))


def is_cross_entropy(loss_fn):
    """Whether ``loss_fn`` is ``softmax_cross_entropy``, smoothed or not: its outputs are logits."""
    return getattr(loss_fn, "func", loss_fn) is softmax_cross_entropy


def softmax_cross_entropy_r(logits, labels, r_logits, sample_weight=None):
    """R-operator of the gradient of ``softmax_cross_entropy``: R{dL/dlogits} along R{logits}.

    logits, r_logits (N, K) float, labels (N,) int (unused: the second derivative
    of cross-entropy does not depend on them), sample_weight (N,) or None.
    Returns (N, K): w_n (p_n * (r_n - p_n . r_n)) with p = softmax(logits), subnormal entries flushed to
    zero like the gradient's.
    """
    n = len(labels)
    p = np.exp(log_softmax(logits))
    if sample_weight is None:
        w = np.full(n, 1.0 / n, dtype=logits.dtype)
    else:
        w = (sample_weight / sample_weight.sum()).astype(logits.dtype)
    rp = p * (r_logits - (p * r_logits).sum(axis=1, keepdims=True))
    return flush_subnormals(rp * w[:, None])
