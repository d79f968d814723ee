"""The float16 <-> float32 casts and copies of greedy.kernels.cast equal NumPy's, bit for bit."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.kernels import cast
from greedy.memory import disk_array


def test_every_float16_converts_exactly():
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    out = cast.cast_into(np.empty(halves.shape, np.float32), halves)
    expected = halves.astype(np.float32)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # NaN payloads and signed zeros too


def float32_probes():
    rng = np.random.default_rng(0)
    bits = np.concatenate([rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32),
                           # every exponent from below float16's smallest subnormal past its largest normal
                           np.arange(0x32800000, 0x47900000, 1023, dtype=np.uint32),
                           # ties between neighbouring float16s (the 13 dropped bits are 0x1000)
                           (np.arange(0x38800000, 0x47800000, 1 << 13, dtype=np.uint32) | 0x1000)])
    values = np.concatenate([bits.view(np.float32), np.float32([
        0.0, 65504.0, 65519.996, 65520.0, 65536.0, np.inf, np.nan, 2.0**-24, 2.0**-25, 1.5 * 2.0**-24,
        2.5 * 2.0**-24, 2.0**-14, 2.0**-14 * (1 - 2.0**-12), 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11])])
    return np.concatenate([values, -values])


def test_float32_rounds_to_the_float16_numpy_gives():
    values = float32_probes()
    out = cast.cast_into(np.empty(values.shape, np.float16), values)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16)
    nan = np.isnan(values)
    assert nan.sum() > 1000 and np.isnan(out[nan]).all()
    assert np.array_equal(out[~nan].view(np.uint16), expected[~nan].view(np.uint16))


@pytest.mark.parametrize("src_dtype,dst_dtype", [(np.float16, np.float32), (np.float32, np.float16),
                                                  (np.float32, np.float32), (np.float16, np.float16),
                                                  (np.float64, np.float32)])
def test_cast_into_fills_all_of_dst_in_any_layout(src_dtype, dst_dtype):
    rng = np.random.default_rng(1)
    src = rng.standard_normal((cast.PARALLEL_MIN_SIZE // 64 + 3, 8, 8)).astype(src_dtype)
    for s in (src, src[:, ::2], src[:5]):  # large and contiguous (the kernels), strided, small (NumPy)
        dst = np.full(s.shape, 7, dst_dtype)
        assert cast.cast_into(dst, s) is dst
        assert np.array_equal(dst, s.astype(dst_dtype))


def test_as_float32_keeps_float32_and_converts_the_rest():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert cast.as_float32(x) is x
    h = np.random.default_rng(2).standard_normal((600, 500)).astype(np.float16)
    for a in (h, h[:, ::3]):
        out = cast.as_float32(a)
        assert out.dtype == np.float32 and np.array_equal(out, a.astype(np.float32))


def test_cast_into_refuses_arrays_of_different_shapes():
    with pytest.raises(ConfigError, match=r"two arrays of one shape, got \(3, 4\) and \(4, 3\)"):
        cast.cast_into(np.empty((3, 4), np.float32), np.empty((4, 3), np.float16))
    with pytest.raises(ConfigError, match="two arrays of one shape, got .*list"):
        cast.cast_into(np.empty(3, np.float32), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 40, 5, 7), (2, 3, 17, 16), (1, 1, 1, 1)])
def test_to_channels_last_moves_and_converts_every_value(dtype, shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    out = cast.to_channels_last(x, np.full((shape[0], shape[2], shape[3], shape[1]), np.nan, np.float32))
    assert np.array_equal(out, x.transpose(0, 2, 3, 1).astype(np.float32))
    strided = x[:, ::2]
    assert np.array_equal(cast.to_channels_last(strided, np.empty(out.shape[:3] + (strided.shape[1],), np.float32)),
                          strided.transpose(0, 2, 3, 1).astype(np.float32))


def test_to_channels_last_refuses_what_it_would_write_past():
    x = np.zeros((2, 3, 4, 5), np.float16)
    with pytest.raises(ConfigError, match=r"dst must be .* shape \(2, 4, 5, 3\), got float32 of shape \(2, 4, 5, 2\)"):
        cast.to_channels_last(x, np.empty((2, 4, 5, 2), np.float32))
    with pytest.raises(ConfigError, match=r"dst must be .*got float64"):
        cast.to_channels_last(x, np.empty((2, 4, 5, 3), np.float64))
    with pytest.raises(ConfigError, match=r"src must be a float16, float32 or float64 \(N, C, H, W\) array, got int32"):
        cast.to_channels_last(np.zeros((2, 3, 4, 5), np.int32), np.empty((2, 4, 5, 3), np.float32))


def test_disk_caches_are_cast_in_place_both_ways(tmp_path):
    cache = disk_array((cast.PARALLEL_MIN_SIZE // 64 + 1, 8, 8), np.float16, str(tmp_path))
    x = np.random.default_rng(4).standard_normal(cache.shape).astype(np.float32)
    cast.cast_into(cache, x)  # a propagation batch into a cache on disk
    assert np.array_equal(np.asarray(cache), x.astype(np.float16))
    back = cast.as_float32(cache[3:])
    assert type(back) is np.ndarray and np.array_equal(back, x[3:].astype(np.float16).astype(np.float32))
