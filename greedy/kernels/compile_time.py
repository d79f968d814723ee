"""Seconds spent compiling Numba kernels, measured with Numba's event API.

Numba broadcasts a ``"numba:compile"`` event around every compilation of a
dispatcher (``numba.core.event``). A kernel loaded from the on-disk cache
(``cache=True``) fires no such event, so a warm run records about 0 s.
Compilations hold Numba's global compiler lock, so the events of different
threads never overlap; a kernel that compiles the kernels it calls nests their
events inside its own, and only the outermost one is counted.

    with CompileTimer() as timer:
        train(...)
    summary["compile_seconds"] = timer.seconds
    timer.per_kernel  # {"greedy.kernels.conv._im2colt_kernel": 1.9, ...}
"""
import threading
import time
from collections import defaultdict

from numba.core import event


class CompileTimer(event.Listener):
    """Context manager that adds up the wall time of Numba compilations while it is active.

    ``seconds`` (float) is the total; ``per_kernel`` maps "module.qualname" of each
    outermost compiled function to its seconds, summed over its type signatures;
    ``signatures`` maps the same name to the number of signatures compiled.
    Both read correctly during the run and after it.
    """

    def __init__(self):
        self.seconds = 0.0
        self.per_kernel = defaultdict(float)
        self.signatures = defaultdict(int)
        self._depth = 0
        self._start = 0.0
        self._name = ""
        self._lock = threading.Lock()

    def __enter__(self):
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc):
        event.unregister("numba:compile", self)
        return False

    def on_start(self, ev):
        with self._lock:
            if self._depth == 0:
                self._start = time.perf_counter()
                self._name = _kernel_name(ev.data["dispatcher"])
            self._depth += 1

    def on_end(self, ev):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                dt = time.perf_counter() - self._start
                self.seconds += dt
                self.per_kernel[self._name] += dt
                self.signatures[self._name] += 1


def _kernel_name(dispatcher):
    func = getattr(dispatcher, "py_func", None)
    if func is None:
        return repr(dispatcher)
    return f"{func.__module__}.{func.__qualname__}"
