"""Dense layer and one end-to-end training step of the MNIST CNN, against equal-work matrix multiplies."""
import numpy as np

from conftest import record
from greedy.nn.layers import Dense
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import build_model
from greedy.nn.optim import Adam

MNIST_CNN = "c32k5-relu-max2-c64k5-relu-max2-fc1024-relu-drop0.4-fc10"


def test_dense_forward_backward(benchmark, rng):
    n, d, units = 128, 3136, 1024
    layer = Dense(units)
    layer.build((d,), rng)
    x = rng.standard_normal((n, d), dtype=np.float32)
    dy = rng.standard_normal((n, units), dtype=np.float32)

    def step():
        layer.forward(x, train=True)
        return layer.backward(dy)

    step()
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    record(benchmark, 3 * 2 * n * d * units, n, d, units * 3)


def mnist_step_flops(n):
    conv1 = 2 * 28 * 28 * 32 * 25
    conv2 = 2 * 14 * 14 * 64 * 32 * 25
    dense = 2 * 7 * 7 * 64 * 1024 + 2 * 1024 * 10
    # forward, plus backward (weights and inputs) everywhere but conv1's input
    return n * (3 * (conv1 + conv2 + dense) - conv1)


def test_mnist_cnn_training_step(benchmark, rng):
    n = 128
    model = build_model(MNIST_CNN, (1, 28, 28), 10, seed=0)
    opt = Adam(1e-3)
    params, grads = model.parameters(), model.gradients()
    x = rng.standard_normal((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n)

    def step():
        out = model.forward(x, train=True)
        _, d = softmax_cross_entropy(out, y)
        model.backward(d, input_grad=False)
        opt.step(params, grads)

    # Every round starts from the initial weights. The backward of a conv, ReLU and pool visits only the
    # windows whose maximum passed the ReLU (greedy.kernels.pooledgrad), so its cost follows the data:
    # here 71 % of the second conv's windows, where steps on these random images and labels would leave
    # 3 % after ten (the ReLUs die), and steps on MNIST leave about 10 % after fifty.
    initial = [p.copy() for p in params]

    def restart():
        for p, p0 in zip(params, initial):
            p[...] = p0

    step()
    benchmark.pedantic(step, setup=restart, rounds=5, warmup_rounds=1)
    flops = mnist_step_flops(n)
    record(benchmark, flops, n * 196, 800, 64 * 3)
    benchmark.extra_info["images_per_second"] = round(n / benchmark.stats.stats.min, 1)
