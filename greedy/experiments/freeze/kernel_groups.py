"""Hessian kernel groups: which kernels of a layer interact through the loss's curvature.

``hessian_groups`` partitions the kernels of every kernel layer (see
``masks``) into balanced groups of strongly interacting kernels, for the
``hessian`` strategy, from Hessian-vector products (``greedy.nn.hessian.hvp``).
"""
import numpy as np

from greedy import validate
from greedy.errors import ConfigError
from greedy.experiments.freeze.masks import kernel_layers, kernel_view, n_kernels, parameter_index


def _kernel_sums(model, arrays, layers, index):
    """Per-kernel sums of a parameter-shaped list: {layer: (F,) float64} over weights and bias."""
    out = {}
    for li in layers:
        layer = model.layers[li]
        f = n_kernels(layer)
        s = np.zeros(f)
        for k in ("w", "b"):
            s += kernel_view(layer, arrays[index[(li, k)]], k).reshape(f, -1).sum(axis=1, dtype=np.float64)
        out[li] = s
    return out


def _kernel_direction(model, signs, layers, index):
    """Parameter-shaped direction equal to signs[layer][i] on every entry of kernel i, 0 elsewhere."""
    v = [np.zeros_like(p) for p in model.parameters()]
    for li, s in signs.items():
        layer = model.layers[li]
        for k in ("w", "b"):
            view = kernel_view(layer, v[index[(li, k)]], k)
            view[...] = s.reshape((-1,) + (1,) * (view.ndim - 1))
    return v


def kernel_interactions(model, x, y, n_probes=32, rng=None, include_dense=False):
    """Summed Hessian interaction between the kernels of each layer: {layer index: S (F, F) float64}.

    S[i, j] = 1_i^T H 1_j, the sum of all entries of the Hessian block between
    kernel i and kernel j of the same layer (1_i: ones on kernel i's weights and
    bias), for the mean cross-entropy on the batch x (N, ...) float, y (N,) int.

    ``n_probes=m``: Rademacher estimator. Each probe draws a sign s_k = +-1 per
    kernel of every kernel layer at once, computes u = H v for v = sum_k s_k 1_k
    (one HVP), and the kernel sums c_i = 1_i^T u = sum_k S[i, k] s_k; since
    E[s_k s_j] = [k = j], E[c_i s_j] = S[i, j]. The estimate (1/m) sum c s^T is
    unbiased with variance (1/m) sum_{k != j} S[i, k]^2 per entry (cross-layer
    pairs included); it is symmetrised. Cost: m HVPs (about 3m gradients) on the
    batch, for all layers together. ``n_probes=None``: exact, one HVP per kernel
    (v = 1_j), i.e. sum_l F_l HVPs.
    """
    from greedy.nn.hessian import hvp
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    layers = kernel_layers(model, include_dense)
    if not layers:
        raise ConfigError("the model has no layer with kernels to group")
    index = parameter_index(model)
    sizes = {li: n_kernels(model.layers[li]) for li in layers}
    out = {li: np.zeros((f, f)) for li, f in sizes.items()}
    if n_probes is None:
        for li, f in sizes.items():
            for j in range(f):
                signs = {li: (np.arange(f) == j).astype(np.float64)}
                u = hvp(model, x, y, _kernel_direction(model, signs, [li], index))
                out[li][:, j] = _kernel_sums(model, u, [li], index)[li]
    else:
        n_probes = validate.positive_int(n_probes, "n_probes (None: exact)")
        for _ in range(n_probes):
            signs = {li: rng.choice([-1.0, 1.0], f) for li, f in sizes.items()}
            c = _kernel_sums(model, hvp(model, x, y, _kernel_direction(model, signs, layers, index)), layers, index)
            for li in layers:
                out[li] += np.outer(c[li], signs[li]) / n_probes
    return {li: 0.5 * (s + s.T) for li, s in out.items()}


def partition_kernels(affinity, n_groups):
    """Split F kernels into n_groups balanced groups (sizes differ by at most 1) maximising the
    summed within-group affinity.

    affinity (F, F) symmetric, non-negative (e.g. |S|); the diagonal is ignored.
    Start: kernels ordered by the Fiedler vector of the graph Laplacian, cut into
    contiguous groups; then the best improving swap of two kernels between groups
    is applied until none improves. Returns group ids (F,) int64 in [0, n_groups).
    """
    a = np.array(affinity, np.float64)
    f = len(a)
    if a.ndim != 2 or a.shape != (f, f):
        raise ConfigError(f"affinity must be a square matrix, got shape {a.shape}")
    if not 1 <= n_groups <= f:
        raise ConfigError(f"cannot split {f} kernels into {n_groups} groups")
    np.fill_diagonal(a, 0.0)
    a = 0.5 * (a + a.T)
    lap = np.diag(a.sum(axis=1)) - a
    order = np.argsort(np.linalg.eigh(lap)[1][:, 1 if f > 1 else 0], kind="stable")
    groups = np.empty(f, np.int64)
    groups[order] = np.arange(f) * n_groups // f
    onehot = np.eye(n_groups)[groups]
    m = a @ onehot                                            # (F, g): affinity of kernel to each group
    tol = 1e-12 * max(a.sum(), 1e-300)
    for _ in range(f * f):
        own = m[np.arange(f), groups]
        to_other = m[:, groups]                               # [a, b] = affinity of a to b's group
        gain = to_other - own[:, None] + to_other.T - own[None, :] - 2 * a
        gain[groups[:, None] == groups[None, :]] = -np.inf
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[i, j] <= tol:
            break
        gi, gj = groups[i], groups[j]
        m[:, gi] += a[:, j] - a[:, i]
        m[:, gj] += a[:, i] - a[:, j]
        groups[i], groups[j] = gj, gi
    return groups


def hessian_groups(model, x, y, n_groups=2, n_probes=32, rng=None, include_dense=False):
    """Partition the kernels of each layer into n_groups by |summed Hessian interaction|.

    Returns (groups, interactions): groups maps layer index -> group id per
    kernel (F,) int64; interactions maps layer index -> S (F, F) from
    ``kernel_interactions`` (same probes and cost). Within-group affinity |S[i, j]|
    is maximised, so strongly coupled kernels are trained together.
    """
    interactions = kernel_interactions(model, x, y, n_probes, rng, include_dense)
    groups = {li: partition_kernels(np.abs(s), n_groups) for li, s in interactions.items()}
    return groups, interactions
