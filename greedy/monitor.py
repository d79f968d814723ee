"""Where a training run reports its progress: a log of events, and the run's clock.

``Monitor`` keeps events in memory and prints them when ``verbose``; ``greedy.runs.Run`` also
writes them to the run folder, and writes and reads its checkpoints. Methods call ``log``, and
``checkpoint`` and ``resumed`` at their safe points (a finished block or epoch), which a plain
Monitor ignores; the library estimator passes a ``Monitor`` with a ``callback``.
"""
import sys
import time


class Monitor:
    """``log(phase, layer=None, epoch=None, **fields)`` records one event (a dict) and returns it.

    ``verbose``: print one line per event to stderr. ``callback(event)``: called with each event.
    ``seconds()``: time since ``start()`` (or since the monitor was made). ``folder``: where the
    run may keep files (None: nowhere; feature caches that spill go to the temporary folder).
    """
    folder = None

    def __init__(self, verbose=False, callback=None, method=None):
        self.verbose, self.callback, self.method = verbose, callback, method
        self.events = []
        self.t0 = time.perf_counter()

    def start(self):
        self.t0 = time.perf_counter()

    def seconds(self):
        return time.perf_counter() - self.t0

    def log(self, phase, layer=None, epoch=None, **fields):
        event = {"method": self.method, "layer": layer, "epoch": epoch, "phase": phase,
                 "seconds": round(self.seconds(), 3)}
        event.update({k: plain(v) for k, v in fields.items()})
        self.record(event)
        if self.verbose:
            where = "" if layer is None else f"layer {layer} "
            when = "" if epoch is None else f"epoch {epoch}{'' if fields.get('n_epochs') is None else '/' + str(fields['n_epochs'])} "
            rest = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items()
                            if k != "n_epochs" and not isinstance(v, (list, dict)))
            print(f"[{event['seconds']:8.1f}s] {where}{when}{phase}: {rest}", file=sys.stderr, flush=True)
        if self.callback is not None:
            self.callback(event)
        return event

    def record(self, event):
        self.events.append(event)

    def checkpoint(self, make_state):
        """A safe point: ``make_state()`` would give the run's state (``greedy.checkpoint``); a plain
        Monitor keeps nothing and never calls it."""

    def resumed(self, kind):
        """The saved state (``greedy.checkpoint.LayerwiseState`` for kind "layerwise", ``EpochState``
        for "e2e") a run continues from, or None for a fresh start."""
        return None


def plain(v):
    """v with numpy scalars and arrays (also inside dicts, lists and tuples) as JSON-ready Python values."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
