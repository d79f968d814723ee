"""The code-space layer: a conv layer with pooling and a softmax head, evaluated on patch-bag codes.

For image i with centroid frequencies ``counts_i / n_positions`` (``greedy.cluster.codes``), a
layer of F filters with activation ``act`` and regional average pooling computes

    pooled_i = (counts_i / n_positions) @ act(centroids @ W + b)

so a training step costs O(nnz x F + k x d x F), whatever the image size.
"""
import numpy as np
import scipy.sparse as sp

from greedy.errors import ConfigError
from greedy.nn.layers import glorot_uniform
from greedy.nn.model import Model

DENSE_BATCH_DENSITY = 0.02

class CodeLayer(Model):
    """A conv layer + regional average pooling + softmax head, evaluated on centroid codes.

    centroids (k, d) float32 (preprocessed patch space); parameters ``w`` (d, F), ``b`` (F,),
    ``v`` (R*F, n_classes), ``a`` (n_classes,). ``forward(codes: RegionCodes) -> logits (N, n_classes)``.
    """

    def __init__(self, centroids, filters, n_classes, n_regions=1, activation="tanh", rng=None, dtype=np.float32):
        if activation not in ("tanh", "relu"):
            raise ConfigError(f"activation must be tanh or relu, got {activation!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        d = centroids.shape[1]
        self.centroids = centroids.astype(dtype)
        self.activation = activation
        self.n_regions = n_regions
        self.params = {"w": glorot_uniform(rng, (d, filters), d, filters, dtype), "b": np.zeros(filters, dtype),
                       "v": glorot_uniform(rng, (n_regions * filters, n_classes), n_regions * filters, n_classes,
                                           dtype),
                       "a": np.zeros(n_classes, dtype)}
        self.grads = {key: np.zeros_like(p) for key, p in self.params.items()}

    def parameters(self):
        return [self.params[k] for k in ("w", "b", "v", "a")]

    def gradients(self):
        return [self.grads[k] for k in ("w", "b", "v", "a")]

    def centroid_activations(self):
        pre = self.centroids @ self.params["w"] + self.params["b"]
        return np.tanh(pre) if self.activation == "tanh" else np.maximum(pre, 0)

    def pooled(self, parts):
        """Regional average-pooled features (N, R*F) of the layer on code parts: a list of R (N, k)
        matrices, or one (N, R, k) array."""
        self.act = self.centroid_activations()
        if isinstance(parts, np.ndarray):
            n, r, k = parts.shape
            return (parts.reshape(n * r, k) @ self.act).reshape(n, -1)
        return np.hstack([np.asarray(part @ self.act) for part in parts])

    def forward(self, codes, train=False):
        if codes.array is not None:
            self.parts = np.ascontiguousarray(codes.array, dtype=self.centroids.dtype)
        else:
            # a batch denser than a few percent multiplies faster as a dense BLAS product
            self.parts = [p.toarray() if sp.issparse(p) and p.nnz > DENSE_BATCH_DENSITY * p.shape[0] * p.shape[1]
                          else p for p in codes.parts]
        self.g = self.pooled(self.parts)
        return self.g @ self.params["v"] + self.params["a"]

    def backward(self, dlogits, input_grad=False):
        f = self.act.shape[1]
        self.grads["v"][...] = self.g.T @ dlogits
        self.grads["a"][...] = dlogits.sum(axis=0)
        dg = dlogits @ self.params["v"].T
        if isinstance(self.parts, np.ndarray):
            n, r, k = self.parts.shape
            dact = self.parts.reshape(n * r, k).T @ dg.reshape(n * r, f)
        else:
            dact = sum(np.asarray(part.T @ dg[:, r * f:(r + 1) * f]) for r, part in enumerate(self.parts))
        dpre = dact * (1 - self.act * self.act) if self.activation == "tanh" else dact * (self.act > 0)
        self.grads["w"][...] = self.centroids.T @ dpre
        self.grads["b"][...] = dpre.sum(axis=0)
        return None
