"""float16 <-> float32 conversion of a propagation batch (``greedy.kernels.cast``) and the tap convolution's
channels-last copy, against NumPy doing the same in the same run (``np.copyto`` with casting, the
transposed copy). A batch is what ``propagate`` converts at a time: 24 MiB of float32."""
import numpy as np
import pytest

from conftest import best_seconds
from greedy.kernels import cast

BATCH = (192, 128, 16, 16)  # 192 CIFAR-10 maps of 128 x 16 x 16: 24 MiB in float32


@pytest.mark.parametrize("direction", ["16to32", "32to16"])
def test_cast_batch(benchmark, rng, direction):
    src_dtype, dst_dtype = (np.float16, np.float32) if direction == "16to32" else (np.float32, np.float16)
    src = rng.standard_normal(BATCH, dtype=np.float32).astype(src_dtype)
    dst = np.empty(BATCH, dst_dtype)
    cast.cast_into(dst, src)
    benchmark.pedantic(cast.cast_into, args=(dst, src), rounds=20, warmup_rounds=2)
    reference = best_seconds(lambda: np.copyto(dst, src, casting="unsafe"), 10)
    benchmark.extra_info["ns_per_element"] = round(benchmark.stats.stats.min / src.size * 1e9, 3)
    benchmark.extra_info["numpy_ns_per_element"] = round(reference / src.size * 1e9, 3)
    benchmark.extra_info["ratio_to_numpy"] = round(reference / benchmark.stats.stats.min, 2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_channels_last(benchmark, rng, dtype):
    x = rng.standard_normal(BATCH, dtype=np.float32).astype(dtype)
    out = np.empty((BATCH[0], BATCH[2], BATCH[3], BATCH[1]), np.float32)
    cast.to_channels_last(x, out)
    benchmark.pedantic(cast.to_channels_last, args=(x, out), rounds=20, warmup_rounds=2)
    reference = best_seconds(lambda: np.copyto(out, x.transpose(0, 2, 3, 1)), 10)
    benchmark.extra_info["numpy_ms"] = round(reference * 1e3, 3)
    benchmark.extra_info["ratio_to_numpy"] = round(reference / benchmark.stats.stats.min, 2)
