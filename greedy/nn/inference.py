"""Fused inference over a list of layers: conv, batch norm, activation and max pool in one pass.

A run of ``Conv2d`` [``BatchNorm2d``] [``ReLU`` | ``Tanh``] [``MaxPool2d``] is computed as
one convolution whose weights carry the batch norm (folded with its running
statistics), with the ReLU and the max pool applied to each chunk's GEMM output
as it is written (``greedy.kernels.conv.conv2d_forward(..., relu, pool)``; 3x3,
stride-1 convs with no pool or a 2x2 one by Winograd F(4x4, 3x3) or F(2x2, 3x3) instead,
``greedy.kernels.winograd``; a conv whose weights were set from a low-rank factorisation
(``Conv2d.set_low_rank``) as its basis conv and a 1x1 mix, ``greedy.kernels.lowrank``). Tanh is
increasing, so it commutes with the max and is applied to the pooled map,
a quarter of the values for a 2x2 pool. Every other layer runs its own
``forward``. The result equals ``Sequential.forward(x, train=False)`` up to
float rounding, without the full-size conv, batch-norm and activation maps.

Sequences (N, C, L) take the same path: a run of ``Conv1d`` [``BatchNorm2d``]
[``ReLU`` | ``Tanh``] [``MaxPool1d`` with stride equal to its size] is one
``greedy.kernels.conv1d.conv1d_forward(..., relu, pool)`` call.

This is what applying frozen blocks costs in the layer-wise loop; it keeps
nothing for a backward pass.
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import conv1d as k1
from greedy.kernels import lowrank
from greedy.kernels import winograd
from greedy.nn.activations import ReLU, Tanh
from greedy.nn.batchnorm import BatchNorm2d
from greedy.nn.layers import Conv2d
from greedy.nn.layers1d import Conv1d, MaxPool1d
from greedy.nn.pooling import MaxPool2d


def fold_batchnorm(conv, bn):
    """Weights (F, C, K, K) or (F, C, K) and bias (F,) of ``conv`` followed by ``bn`` in inference mode,
    in conv's dtype."""
    w, b = conv.params["w"], conv.params["b"]
    scale = bn.params["gamma"].astype(np.float64) / np.sqrt(bn.buffers["var"].astype(np.float64) + bn.eps)
    shift = bn.params["beta"] - bn.buffers["mean"] * scale
    return (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype), (b * scale + shift).astype(b.dtype)


def _fusable_pool(conv, layer):
    """Max pools (not their subclasses, the average pools) with stride equal to their size."""
    if isinstance(conv, Conv1d):
        return type(layer) is MaxPool1d and layer.stride == layer.size
    return type(layer) is MaxPool2d


def _conv_group(layers, i):
    """(weights, bias, conv, activation or None, pool size, index after the group) for the run at layers[i]."""
    conv = layers[i]
    j = i + 1
    w, b = conv.params["w"], conv.params["b"]
    if j < len(layers) and isinstance(layers[j], BatchNorm2d):
        w, b = fold_batchnorm(conv, layers[j])
        j += 1
    act = None
    if j < len(layers) and isinstance(layers[j], (ReLU, Tanh)):
        act = "relu" if isinstance(layers[j], ReLU) else "tanh"
        j += 1
    pool = 1
    if j < len(layers) and _fusable_pool(conv, layers[j]):
        pool = layers[j].size
        j += 1
    return w, b, conv, act, pool, j


def forward(layers, x, out=None):
    """Inference output of ``layers`` applied in order to x (N, C, H, W) or (N, C, L), with conv runs fused.

    ``out`` (an array of the output's shape and dtype) receives the output: written by the last conv
    run itself when it ends ``layers`` with a ReLU or no activation, copied into otherwise."""
    i, written = 0, False
    while i < len(layers):
        if not isinstance(layers[i], (Conv2d, Conv1d)):
            x = layers[i].forward(x, train=False)
            i += 1
            continue
        w, b, conv, act, pool, i = _conv_group(layers, i)
        target = out if i == len(layers) and act != "tanh" and not isinstance(conv, Conv1d) else None
        if isinstance(conv, Conv1d):
            x = k1.conv1d_forward(x, w, b, conv.stride, conv.padding, conv.dilation, relu=act == "relu", pool=pool)
        elif w is conv.params["w"] and (factors := conv.low_rank(w.dtype)) is not None and x.dtype == w.dtype:
            x = lowrank.conv_forward(x, *factors, conv.padding, relu=act == "relu", pool=pool, out=target)
            written = target is not None
        else:
            x = winograd.convolve(x, w, b, conv.stride, conv.padding, relu=act == "relu", pool=pool, out=target)
            written = target is not None
        if act == "tanh":
            np.tanh(x, out=x)
    if out is None:
        return x
    if not written:
        if x.shape != out.shape:
            raise ConfigError(f"out has shape {out.shape} but the layers' output has {x.shape}")
        np.copyto(out, x)
    return out
