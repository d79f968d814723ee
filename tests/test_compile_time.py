"""CompileTimer counts the seconds of Numba compilations, and nothing for a compiled or disk-cached kernel."""
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np

from greedy.kernels.compile_time import CompileTimer


def _fresh_kernel():
    # a new function object each call: never compiled, never cached (no cache=True)
    @numba.njit
    def inner(x):
        return x * 2.0

    @numba.njit
    def outer(x):
        s = 0.0
        for i in range(x.shape[0]):
            s += inner(x[i])
        return s

    return outer


def test_compilation_inside_the_timer_is_counted_once_per_kernel():
    kernel = _fresh_kernel()
    x = np.arange(4.0)
    with CompileTimer() as timer:
        assert kernel(x) == 12.0
    assert timer.seconds > 0
    # inner compiles inside outer's compilation: one outermost entry
    assert list(timer.per_kernel) == [f"{__name__}._fresh_kernel.<locals>.outer"]
    assert timer.per_kernel[f"{__name__}._fresh_kernel.<locals>.outer"] == timer.seconds
    assert timer.signatures[f"{__name__}._fresh_kernel.<locals>.outer"] == 1
    with CompileTimer() as again:
        kernel(x + 1)
        kernel(x.astype(np.float32))  # a second signature compiles
    assert again.signatures[f"{__name__}._fresh_kernel.<locals>.outer"] == 1
    assert 0 < again.seconds


def test_compiled_kernel_costs_nothing():
    kernel = _fresh_kernel()
    kernel(np.arange(3.0))
    with CompileTimer() as timer:
        assert kernel(np.arange(4.0)) == 12.0
    assert timer.seconds == 0.0 and not timer.per_kernel


def test_kernel_loaded_from_the_disk_cache_costs_nothing(tmp_path):
    (tmp_path / "cached_kernel.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef double(x):\n    return x * 2.0\n")
    script = ("import sys; from greedy.kernels.compile_time import CompileTimer; import cached_kernel\n"
              "with CompileTimer() as t:\n    cached_kernel.double(1.5)\n"
              "print(t.seconds, dict(t.signatures))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    cold, warm = (r.stdout.split(" ", 1) for r in runs)
    assert float(cold[0]) > 0 and cold[1].strip() == "{'cached_kernel.double': 1}"
    assert float(warm[0]) == 0.0 and warm[1].strip() == "{}"


def test_timer_stops_listening_after_the_block():
    with CompileTimer() as timer:
        pass
    _fresh_kernel()(np.arange(3.0))
    assert timer.seconds == 0.0
