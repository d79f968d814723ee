"""Per-layer objectives on pooled features, with hand-written gradients.

Each loss is ``loss(f, y, n_classes, **params) -> (value: float, dL/df)`` for
features f (N, D) float32 or float64 and integer labels y (N,) in
[0, n_classes); the value is a mean over the batch and dL/df has f's shape and
dtype. Classes absent from a batch are ignored.

- ``cosine_loss``: cross-entropy over cosine similarities to class centroids
  (seed 000, idea 1, in a stable form).
- ``gaussian_kl_loss``: minus a bounded symmetric KL between Gaussian
  models of the class-conditional feature distributions (seed 000, idea 2).
- ``class_centroids`` and ``cosine_predict``: nearest-centroid predictions by
  cosine, to report the accuracy the cosine objective reaches.
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.nn.losses import softmax_cross_entropy


def _check_batch(f, y, n_classes):
    """Validated (f (N, D) float, y (N,) int64, one-hot (N, C) in f's dtype)."""
    if not isinstance(f, np.ndarray) or f.dtype.kind != "f":
        raise ConfigError("features must be a float32 or float64 NumPy array")
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise ConfigError(f"features must have shape (N, D) with N, D > 0, got {f.shape}")
    if not np.isfinite(f).all():
        raise ConfigError("features contain NaN or infinite values")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    y = np.asarray(y)
    if y.shape != (f.shape[0],) or y.dtype.kind not in "iu":
        raise ConfigError(f"labels must be integers of shape ({f.shape[0]},), got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ConfigError(f"labels must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    y = y.astype(np.int64)
    onehot = np.zeros((len(y), n_classes), dtype=f.dtype)
    onehot[np.arange(len(y)), y] = 1
    return f, y, onehot


def _normalise(a, eps):
    """Rows of a scaled to unit length, a / sqrt(|a|^2 + eps^2), and those norms (R, 1)."""
    norm = np.sqrt(np.einsum("ij,ij->i", a, a) + eps * eps)[:, None]
    return a / norm, norm


def _normalise_backward(a, norm, grad):
    """Gradient w.r.t. a of a scalar whose gradient w.r.t. _normalise(a) is grad."""
    proj = np.einsum("ij,ij->i", a, grad)[:, None]
    return grad / norm - a * (proj / norm ** 3)


def class_centroids(f, y, n_classes, eps=1e-6):
    """Unit-length mean directions of each class: normalise rows, average per class, normalise.

    f (N, D) float, y (N,) int. Returns (n_classes, D) in f's dtype; classes
    without samples get a zero row (``cosine_predict`` never picks them).
    """
    f, y, onehot = _check_batch(f, y, n_classes)
    u, _ = _normalise(f, eps)
    counts = onehot.sum(axis=0)
    raw = (onehot.T @ u) / np.maximum(counts, 1)[:, None]
    mu, _ = _normalise(raw, eps)
    mu[counts == 0] = 0
    return mu


def cosine_predict(f, centroids):
    """Index of the centroid with the largest cosine similarity to each row of f.

    f (N, D) float, centroids (C, D) float (zero rows are skipped). Returns (N,) int64.
    """
    f = np.asarray(f)
    centroids = np.asarray(centroids)
    if f.ndim != 2 or centroids.ndim != 2 or f.shape[1] != centroids.shape[1]:
        raise ConfigError(f"features {f.shape} and centroids {centroids.shape} must be (N, D) and (C, D)")
    norms = np.linalg.norm(centroids, axis=1)
    if not (norms > 0).any():
        raise ConfigError("all centroids are zero")
    scores = f @ (centroids / np.where(norms > 0, norms, 1)[:, None]).T
    scores[:, norms == 0] = -np.inf
    return scores.argmax(axis=1)


def cosine_loss(f, y, n_classes, temperature=0.1, eps=1e-6, centroids=None):
    """Class-centroid cosine softmax: mean cross-entropy of cos(f_i, mu_c) / temperature.

    f (N, D) float32/float64, y (N,) int; returns (loss: float, dL/df (N, D), f's dtype).

    Features are scaled to unit length, u_i = f_i / sqrt(|f_i|^2 + eps^2); the
    centroid mu_c of a class is the normalised mean of its u_i in the batch
    (each sample is part of its own centroid, so a one-sample class works), and
    the gradient includes the dependence of the centroids on f. Classes absent
    from the batch are left out of the softmax. With ``centroids`` (n_classes, D)
    given, their normalised rows are fixed targets instead (e.g. running means
    or learned prototypes; no gradient flows to them).

    Why this form is stable where "maximise the cosine difference" was not:
    the logits are cosines, bounded by 1 / temperature, so the loss and its
    gradient are bounded and cannot be won by inflating a few large
    similarities; the loss is invariant to the scale of each f_i (up to eps),
    so features cannot drift in norm to lower it, and the gradient of the unit
    vector is orthogonal to f_i; cross-entropy trades off all classes at once
    (pull towards the own centroid, push from the others weighted by softmax),
    with temperature setting how hard the nearest wrong classes are pushed.
    """
    f, y, onehot = _check_batch(f, y, n_classes)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps!r}")
    u, norm = _normalise(f, eps)
    counts = onehot.sum(axis=0)
    if centroids is None:
        raw = (onehot.T @ u) / np.maximum(counts, 1)[:, None]
    else:
        raw = np.asarray(centroids, dtype=f.dtype)
        if raw.shape != (n_classes, f.shape[1]):
            raise ConfigError(f"centroids must have shape ({n_classes}, {f.shape[1]}), got {raw.shape}")
    mu, mu_norm = _normalise(raw, eps)
    logits = (u @ mu.T) / temperature
    if centroids is None:
        logits[:, counts == 0] = -np.inf
    loss, dlogits = softmax_cross_entropy(logits, y)
    dlogits /= temperature
    du = dlogits @ mu
    if centroids is None:
        draw = _normalise_backward(raw, mu_norm, dlogits.T @ u)
        du += onehot @ (draw / np.maximum(counts, 1)[:, None])
    return float(loss), _normalise_backward(f, norm, du)


def gaussian_kl_loss(f, y, n_classes, eps=1e-3, std_eps=1e-6, variance="class"):
    """Minus the mean over class pairs of log(1 + SKL / D) between Gaussian class models.

    f (N, D) float32/float64, y (N,) int; returns (loss: float <= 0, dL/df (N, D), f's dtype).

    1. Standardise each feature over the batch, g = (f - mean) / sqrt(var + std_eps),
       and backpropagate through it. Without this, scaling f up inflates every
       KL, so the features would grow without bound instead of separating;
       with it the loss is invariant to any per-feature affine map f*a + b
       (a != 0, up to std_eps).
    2. Model each present class c as N(m_c, diag(v_c)) with the batch mean and
       (biased) variance of its g, plus eps: a one-sample class has v = eps.
    3. Symmetric KL of classes a, b, summed over the D features:
       SKL = 1/2 sum_d [v_a/v_b + v_b/v_a - 2 + (m_a - m_b)^2 (1/v_a + 1/v_b)].
    4. loss = -mean over pairs a < b of log(1 + SKL_ab / D). Dividing by D makes
       it per feature; the logarithm keeps one well-separated pair from
       dominating (pairs close together get the larger gradient) and makes the
       loss grow slowly as classes collapse onto points (v -> eps).

    ``variance`` picks the class covariances:

    - ``"class"``: each class its own diagonal variance (steps 2-3 above). A
      class can then be "separated" by shrinking its spread on a feature where
      the means agree, which a linear classifier cannot use.
    - ``"shared"``: every class uses the pooled within-class variance v (plus
      eps), so SKL_ab = sum_d (m_a - m_b)^2 / v_d: a per-feature Fisher ratio.
      Each feature is scored on its own, so copies of one discriminative
      feature all count: it rewards redundant features.
    - ``"full"``: every class uses the pooled within-class covariance matrix S
      plus eps * I, so SKL_ab = (m_a - m_b)^T (S + eps I)^-1 (m_a - m_b), the
      Mahalanobis distance of LDA. A copied feature adds nothing, so the
      features must carry different information. Costs a D x D inverse per
      batch (in float64); eps also regularises S, which has rank < N.

    Fewer than two classes in the batch give (0.0, zeros).
    """
    f, y, onehot = _check_batch(f, y, n_classes)
    if not eps > 0 or not std_eps > 0:
        raise ConfigError(f"eps and std_eps must be > 0, got {eps!r}, {std_eps!r}")
    if variance not in ("class", "shared", "full"):
        raise ConfigError(f"variance must be 'class', 'shared' or 'full', got {variance!r}")
    n, d = f.shape
    centred = f - f.mean(axis=0)
    std = np.sqrt((centred * centred).mean(axis=0) + std_eps)
    g = centred / std
    counts = onehot.sum(axis=0)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        return 0.0, np.zeros_like(f)
    onehot, counts = onehot[:, present], counts[present]
    col = np.searchsorted(present, y)
    mean = (onehot.T @ g) / counts[:, None]
    resid = g - mean[col]
    c = len(present)
    pairs = c * (c - 1) / 2
    if variance == "full":
        loss, dmean, dresid = _full_covariance_kl(mean, resid, eps, pairs)
        dg = dmean[col] / counts[col][:, None] + dresid
    else:
        loss, dg = _diagonal_kl(mean, resid, onehot, col, counts, eps, pairs, variance == "shared")
    df = (dg - dg.mean(axis=0) - g * (dg * g).mean(axis=0)) / std
    return float(loss), df.astype(f.dtype, copy=False)


def _pair_weights(skl, d, pairs):
    """Loss -sum_{a<b} log(1 + SKL_ab / d) / pairs and its derivative by SKL_ab (symmetric, zero diagonal)."""
    upper = np.triu_indices(len(skl), 1)
    loss = -np.log1p(skl[upper] / d).sum() / pairs
    weight = -1 / (pairs * (d + skl))
    np.fill_diagonal(weight, 0)
    return loss, weight


def _full_covariance_kl(mean, resid, eps, pairs):
    """Loss and its gradients by the class means (C, D) and residuals (N, D) for a shared full covariance."""
    n, d = resid.shape
    r64 = resid.astype(np.float64)
    precision = np.linalg.inv(r64.T @ r64 / n + eps * np.eye(d))
    m64 = mean.astype(np.float64)
    q = m64 @ precision @ m64.T
    sq = np.diag(q)
    skl = sq[:, None] + sq[None, :] - 2 * q
    loss, weight = _pair_weights(skl, d, pairs)
    laplacian = np.diag(weight.sum(axis=1)) - weight
    lm = laplacian @ m64
    dmean = 2 * lm @ precision
    dcov = -precision @ (m64.T @ lm) @ precision
    dresid = 2 * r64 @ dcov / n
    return loss, dmean.astype(mean.dtype), dresid.astype(resid.dtype)


def _diagonal_kl(mean, resid, onehot, col, counts, eps, pairs, shared):
    """Loss and its gradient by the standardised features for diagonal class covariances."""
    n, d = resid.shape
    if shared:
        var = np.broadcast_to((resid * resid).mean(axis=0) + eps, mean.shape).copy()
    else:
        var = (onehot.T @ (resid * resid)) / counts[:, None] + eps
    inv = 1 / var
    c = len(mean)
    skl = np.empty((c, c), dtype=mean.dtype)
    for a in range(c):
        delta = mean - mean[a]
        skl[a] = 0.5 * (var[a] * inv + var * inv[a] - 2 + delta * delta * (inv[a] + inv)).sum(axis=1)
    loss, weight = _pair_weights(skl, d, pairs)
    dmean = np.empty_like(mean)
    dvar = np.empty_like(var)
    for a in range(c):
        delta = mean[a] - mean
        w = weight[a][:, None]
        dmean[a] = (w * delta * (inv[a] + inv)).sum(axis=0)
        dvar[a] = 0.5 * (w * (inv - (var + delta * delta) * inv[a] ** 2)).sum(axis=0)
    if shared:
        return loss, dmean[col] / counts[col][:, None] + 2 * dvar.sum(axis=0) * resid / n
    return loss, (dmean[col] + 2 * dvar[col] * resid) / counts[col][:, None]
