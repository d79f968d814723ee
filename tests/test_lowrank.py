"""A rank-d convolution applied as its basis conv and a 1x1 mix: against float64 NumPy, through inference,
and kept across a checkpoint of a patch-bag block."""
import numpy as np
import pytest

from greedy.errors import CheckpointError, ConfigError
from greedy.kernels import lowrank
from greedy.methods.config import resolve
from greedy.methods.patchbag import LOW_RANK_ARRAYS, PatchbagTrainer
from greedy.nn import inference
from greedy.nn.layers import Conv2d
from greedy.nn.model import Sequential


def direct(x, w, b, pad):
    """The cross-correlation in float64 with NumPy alone (3x3 filters)."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - 2, wd + 2 * pad - 2
    y = np.zeros((n, w.shape[0], ho, wo)) + b[:, None, None]
    for a in range(3):
        for c2 in range(3):
            y += np.einsum("nchw,fc->nfhw", xp[:, :, a:a + ho, c2:c2 + wo], w[:, :, a, c2])
    return y


def relu_pool(y, relu, pool):
    y = np.maximum(y, 0) if relu else y
    n, f, h, w = y.shape
    h, w = h // pool, w // pool
    return y[:, :, :h * pool, :w * pool].reshape(n, f, h, pool, w, pool).max(axis=(3, 5))


def factors(rng, d, c, f, dtype=np.float32):
    return (rng.standard_normal((d, c, 3, 3)).astype(dtype), rng.standard_normal(d).astype(dtype),
            rng.standard_normal((f, d)).astype(dtype), rng.standard_normal(f).astype(dtype))


# 16x16 and 8x8 basis maps take Winograd F(4x4, 3x3), 7x9 F(2x2, 3x3), 3 channels the im2col conv
@pytest.mark.parametrize("shape,pad", [((3, 32, 16, 16), 1), ((2, 40, 8, 8), 1), ((2, 32, 7, 9), 1),
                                       ((2, 3, 6, 5), 0), ((40, 32, 4, 4), 1)])
@pytest.mark.parametrize("relu,pool", [(False, 1), (True, 1), (True, 2), (False, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_two_convs_equal_the_composed_one_in_float64(shape, pad, relu, pool, dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    basis, basis_bias, mix, mix_bias = factors(rng, 4, shape[1], 6, dtype)
    w, b = lowrank.compose(basis, basis_bias, mix, mix_bias)
    ref = relu_pool(direct(x, w, b, pad), relu, pool)
    got = lowrank.conv_forward(x, basis, basis_bias, mix, mix_bias, pad, relu, pool)
    assert got.dtype == dtype and got.shape == ref.shape
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    out = np.full(ref.shape, np.nan, dtype)
    assert lowrank.conv_forward(x, basis, basis_bias, mix, mix_bias, pad, relu, pool, out=out) is out
    assert np.array_equal(out, got)


def test_compose_is_the_product_of_the_factors():
    rng = np.random.default_rng(1)
    basis, basis_bias, mix, mix_bias = factors(rng, 3, 2, 5, np.float64)
    w, b = lowrank.compose(basis, basis_bias, mix, mix_bias)
    assert np.allclose(w, np.einsum("fd,dchw->fchw", mix, basis), rtol=1e-13, atol=0)
    assert np.allclose(b, mix @ basis_bias + mix_bias, rtol=1e-13, atol=0)
    with pytest.raises(ConfigError, match=r"rank-3 factorisation takes .* \(F, 3\)"):
        lowrank.compose(basis, basis_bias, mix[:, :2], mix_bias)


@pytest.mark.parametrize("bad,match", [
    (dict(basis_bias=np.zeros(3, np.float32)), r"rank-4 conv takes basis_bias \(4,\)"),
    (dict(mix=np.zeros((6, 5), np.float32)), r"rank-4 conv takes .* mix \(F, 4\)"),
    (dict(bias=np.zeros(5, np.float32)), r"bias \(F,\), got .* \(5,\)"),
    (dict(mix=np.zeros((6, 4))), "dtype"),
    (dict(pool=9), "pool 9 does not fit"),
])
def test_mismatched_factors_are_refused_before_the_kernels_run(bad, match):
    rng = np.random.default_rng(2)
    basis, basis_bias, mix, bias = factors(rng, 4, 3, 6)
    args = dict(basis_bias=basis_bias, mix=mix, bias=bias, pool=1)
    args.update(bad)
    with pytest.raises(ConfigError, match=match):
        lowrank.conv_forward(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), basis, **args)


def test_cheaper_takes_the_wide_deep_layers_only():
    assert lowrank.cheaper(128, 3, 32, 256) and lowrank.cheaper(256, 3, 32, 256)
    assert not lowrank.cheaper(3, 3, 24, 128) and not lowrank.cheaper(32, 3, 32, 64)


def low_rank_block(rng, c=64, f=256, d=8):
    block = Sequential.from_spec(f"c{f}k3-relu-max2").build((c, 8, 8), rng)
    conv = block.layers[0]
    conv.set_low_rank(*factors(rng, d, c, f))
    return block, conv


def test_inference_applies_a_low_rank_conv_as_the_two_while_its_weights_are_the_ones_it_made(monkeypatch):
    rng = np.random.default_rng(3)
    block, conv = low_rank_block(rng)
    x = rng.standard_normal((5, 64, 8, 8)).astype(np.float32)
    calls = []
    original = lowrank.conv_forward
    monkeypatch.setattr(lowrank, "conv_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    ref = relu_pool(direct(x, conv.params["w"].astype(np.float64), conv.params["b"].astype(np.float64), 1), True, 2)
    got = inference.forward(block.layers, x)
    assert calls and np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    conv.params["w"][0, 0, 0, 0] += 1  # weights changed after the factorisation: the factors no longer apply
    assert conv.low_rank() is None
    calls.clear()
    ref = relu_pool(direct(x, conv.params["w"].astype(np.float64), conv.params["b"].astype(np.float64), 1), True, 2)
    got = inference.forward(block.layers, x)
    assert not calls and np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_a_factorisation_of_other_weights_is_refused():
    conv = Conv2d(6, 3)
    Sequential([conv]).build((4, 8, 8), 0)
    with pytest.raises(ConfigError, match=r"factorisation of weights \(6, 5, 3, 3\) for weights \(6, 4, 3, 3\)"):
        conv.set_low_rank(*factors(np.random.default_rng(0), 2, 5, 6))


def trainer_and_state(rng):
    config = resolve("patchbag", "cifar10", 10)
    trainer = PatchbagTrainer(config, n_classes=10)
    trainer.shape = (64, 8, 8)
    block, conv = low_rank_block(rng)
    arrays, info = trainer.block_state(0, block, None)
    return trainer, block, conv, arrays, info


def test_a_patchbag_checkpoint_keeps_the_factors_and_the_restored_conv_applies_them_bit_for_bit():
    rng = np.random.default_rng(4)
    trainer, block, conv, arrays, info = trainer_and_state(rng)
    assert set(LOW_RANK_ARRAYS) <= set(arrays)
    restored, _ = trainer.restore_block(0, block.spec(), arrays, info, None, np.random.default_rng(9), "x")
    assert restored.layers[0].low_rank() is not None
    x = rng.standard_normal((4, 64, 8, 8)).astype(np.float32)
    assert np.array_equal(inference.forward(restored.layers, x), inference.forward(block.layers, x))


@pytest.mark.parametrize("change,match", [
    (lambda a: a.pop("lowrank/mix"), "low-rank factors are incomplete"),
    (lambda a: a.__setitem__("lowrank/mix", a["lowrank/mix"] * 2), "do not make the saved conv weights"),
    (lambda a: a.__setitem__("lowrank/mix", a["lowrank/mix"][:, :3]), "bad low-rank factors"),
])
def test_a_checkpoint_whose_factors_do_not_fit_its_conv_is_refused(change, match):
    trainer, block, conv, arrays, info = trainer_and_state(np.random.default_rng(5))
    change(arrays)
    with pytest.raises(CheckpointError, match=match):
        trainer.restore_block(0, block.spec(), arrays, info, None, np.random.default_rng(9), "x")
