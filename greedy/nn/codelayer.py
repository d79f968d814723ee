"""The code-space layer: a conv layer with pooling and a softmax head, evaluated on patch-bag codes.

For image i with centroid frequencies ``counts_i / n_positions`` (``greedy.cluster.codes``), a
layer of F filters with activation ``act`` and regional average pooling computes

    pooled_i = (counts_i / n_positions) @ act(centroids @ W + b)

and its head ``pooled_i @ V + a``. Pooling and head are both linear, so the layer computes
``codes_i @ (act(centroids @ W + b) @ V_r)`` instead: each region r's (k, n_classes) product is made
once a batch, and the codes meet n_classes columns rather than F. A training step costs
O(nnz x n_classes + k x (d + R x n_classes) x F), whatever the image size and, per image, whatever F.
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

    def _heads_side_by_side(self):
        """V (R*F, n_classes) as (F, R*n_classes): the regions' heads side by side."""
        v = self.params["v"]
        return v.reshape(self.n_regions, -1, v.shape[1]).transpose(1, 0, 2).reshape(-1, self.n_regions * v.shape[1])

    def forward(self, codes, train=False):
        if codes.array is not None:
            n, r, k = codes.array.shape
            self.codes = np.ascontiguousarray(codes.array, dtype=self.centroids.dtype).reshape(n, r * k)
        else:
            s = codes.stacked
            # a batch denser than a few percent multiplies faster as a dense BLAS product
            self.codes = s.toarray() if s.nnz > DENSE_BATCH_DENSITY * s.shape[0] * s.shape[1] else s
        self.act = self.centroid_activations()
        self.heads = self._heads_side_by_side()
        q = (self.act @ self.heads).reshape(len(self.act), self.n_regions, -1)
        # (R*k, n_classes): each centroid's vote in each region, the regions one after another as in the codes
        q = np.ascontiguousarray(q.transpose(1, 0, 2)).reshape(-1, q.shape[2])
        if q.shape[0] != self.codes.shape[1]:
            raise ConfigError(f"codes of {self.codes.shape[1]} columns for a code layer of {self.n_regions} regions "
                              f"of {len(self.act)} centroids")
        return np.asarray(self.codes @ q) + self.params["a"]

    def backward(self, dlogits, input_grad=False):
        k, r = len(self.act), self.n_regions
        dq = np.asarray(self.codes.T @ dlogits).reshape(r, k, -1)
        c = dq.shape[2]
        dq = dq.transpose(1, 0, 2).reshape(k, r * c)  # the regions' columns side by side, as the heads
        self.grads["v"][...] = (self.act.T @ dq).reshape(-1, r, c).transpose(1, 0, 2).reshape(-1, c)
        self.grads["a"][...] = dlogits.sum(axis=0)
        dact = dq @ self.heads.T
        dpre = dact * (1 - self.act * self.act) if self.activation == "tanh" else dact * (self.act > 0)
        self.grads["w"][...] = self.centroids.T @ dpre
        self.grads["b"][...] = dpre.sum(axis=0)
        return None
