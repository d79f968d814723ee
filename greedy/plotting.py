"""Time to accuracy: test accuracy against wall-clock seconds, read from run folders and drawn as a PNG.

A run's curve comes from its ``metrics.jsonl`` (``greedy.runs``), on the run's clock (``seconds``,
from the start of training, data loading excluded):

- ``{"phase": "curve", "seconds": s, "accuracy": a, "layer": i, "source": ...}``: layer-wise
  runs log one after each block (the blocks so far with that block's head), one after the final
  classifier and one per fine-tuning epoch (``greedy.methods.layerwise``);
- ``{"phase": "epoch", "seconds": s, "accuracy": a}``: end-to-end runs, one per epoch;
- ``{"phase": "test", "seconds": s, "test_accuracy_without_tta": a, "test_accuracy": b}``: the
  finished model; the curve ends there (at ``a``, or ``b`` with ``tta=True``).

A log without curve events (written before they existed) gives its blocks' points from the
``layer_done`` events' ``head_accuracy`` (measured on the test set in a run folder).

Accuracies are fractions in [0, 1]. Every point but a ``tta=True`` last one is measured without
test-time augmentation, like the reference curves. matplotlib is an optional extra, imported only
to draw; the PNG uses the Agg canvas (no display, no global backend change).
"""
import json
import math
import os
from typing import NamedTuple

from greedy import atomic
from greedy.checkpoint import writing
from greedy.errors import GreedyError

MATPLOTLIB_HINT = 'plot needs matplotlib: pip install "greedy[plot]"'

# PyTorch 2.13 on the reference 2-core machine (210 GFLOP/s fp32 matmul): an airbench-style 32-64-128 net,
# batch 512, Nesterov, label smoothing, flips and 2-px crops, 10 epochs, no test-time flips; seconds from the
# start of training. Source: issue 17 ("CIFAR-10 time to accuracy"), docs/time_to_accuracy.md.
PYTORCH_CIFAR10 = {
    "label": "PyTorch CIFAR-10, end to end (reference machine)",
    "source": "issue 17: PyTorch 2.13 CPU, airbench-style 32-64-128 net, 10 epochs, reference 2-core machine "
              "(210 GFLOP/s matmul), no test-time flips",
    "points": [[52, 0.564], [99, 0.679], [152, 0.758], [203, 0.786], [260, 0.807], [319, 0.813], [373, 0.816],
               [431, 0.833], [488, 0.840], [543, 0.850]],
}
REFERENCES = {"pytorch-cifar10": PYTORCH_CIFAR10}


class PlotError(GreedyError, ValueError):
    """A run folder without test-accuracy points, or a reference curve that cannot be read."""


class MissingMatplotlib(GreedyError, ImportError):
    """matplotlib (the ``plot`` extra) is not installed."""


class Curve(NamedTuple):
    """One line of the plot: ``points`` [(seconds, accuracy)] in time order, accuracy a fraction."""
    label: str
    points: list
    folder: str = None
    method: str = None
    dataset: str = None
    finished: bool = True
    source: str = None


def _number(v, low=0.0, high=math.inf):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def _read_json(path):
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _events(path):
    """The JSON objects of a metrics.jsonl, skipping lines that do not parse (a writer killed mid-line)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise PlotError(f"{os.path.dirname(path) or '.'}: no metrics.jsonl (is this a run folder?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlotError(f"{path}: cannot read it ({type(e).__name__})") from None
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def read_run(folder, tta=False):
    """The ``Curve`` of one run folder; PlotError if it has no metrics.jsonl or no test-accuracy point.

    ``tta``: end at the final accuracy with the run's test-time augmentation rather than without."""
    if not os.path.isdir(folder):
        raise PlotError(f"{folder}: not a run folder (no such directory)")
    points, heads, final = [], [], None
    final_key = "test_accuracy" if tta else "test_accuracy_without_tta"
    for e in _events(os.path.join(folder, "metrics.jsonl")):
        phase, s = e.get("phase"), e.get("seconds")
        if not _number(s):
            continue
        if phase == "layer_done" and _number(e.get("head_accuracy"), 0.0, 1.0):
            heads.append((float(s), float(e["head_accuracy"])))
        a = e.get("accuracy") if phase in ("curve", "epoch") else e.get(final_key) if phase == "test" else None
        if _number(a, 0.0, 1.0):
            if phase == "test":
                final = (float(s), float(a))
            else:
                points.append((float(s), float(a)))
    if not points:  # a log written before curve events: its blocks' head accuracies on the test set
        points = heads
    summary = _read_json(os.path.join(folder, "summary.json"))
    if final is None and summary is not None:  # a finished run whose log has no test event
        a = summary.get(final_key, summary.get("test_accuracy"))
        if _number(summary.get("train_seconds")) and _number(a, 0.0, 1.0):
            final = (float(summary["train_seconds"]), float(a))
    if final is not None:
        points.append(final)
    if not points:
        raise PlotError(f"{os.path.join(folder, 'metrics.jsonl')}: no test-accuracy points (no curve, epoch "
                        f"or test record)")
    config = _read_json(os.path.join(folder, "config.json")) or {}
    method, dataset = config.get("method"), config.get("dataset")
    name = os.path.basename(os.path.normpath(folder))
    label = f"{method}/{dataset}" if isinstance(method, str) and isinstance(dataset, str) else name
    finished = final is not None
    return Curve(label if finished else f"{label} (unfinished)", sorted(points), folder, method, dataset, finished)


def read_runs(folders, tta=False):
    """``read_run`` of every folder; labels that would repeat get the folder's name."""
    curves = [read_run(f, tta) for f in folders]
    labels = [c.label for c in curves]
    return [c._replace(label=f"{c.label} ({os.path.basename(os.path.normpath(c.folder))})")
            if labels.count(c.label) > 1 else c for c in curves]


def reference(name):
    """A reference ``Curve``: a name in ``REFERENCES`` or a JSON file {"label", "points": [[seconds,
    accuracy], ...], "source" (optional)} with accuracies as fractions in [0, 1]; PlotError otherwise."""
    data = REFERENCES.get(name)
    if data is None:
        if not os.path.isfile(name):
            raise PlotError(f"--reference {name}: neither a built-in reference ({', '.join(REFERENCES)}) nor a file")
        data = _read_json(name)
        if data is None:
            raise PlotError(f"--reference {name}: not a JSON object")
    points = data.get("points")
    if not (isinstance(points, list) and points and all(
            isinstance(p, list) and len(p) == 2 and _number(p[0]) and _number(p[1], 0.0, 1.0) for p in points)):
        raise PlotError(f"--reference {name}: \"points\" must be a non-empty list of [seconds, accuracy] pairs "
                        f"with accuracy in [0, 1]")
    label = data.get("label") if isinstance(data.get("label"), str) else os.path.basename(name)
    source = data.get("source") if isinstance(data.get("source"), str) else None
    return Curve(label, sorted((float(s), float(a)) for s, a in points), source=source)


def _figure_class():
    try:
        import matplotlib  # noqa: F401  (first, so that a missing package fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(MATPLOTLIB_HINT) from None
    return Figure, FigureCanvasAgg


def curves_json(curves, references=()):
    """The JSON-ready dict of the plotted curves (what ``plot`` writes next to the PNG)."""
    def one(c):
        d = {"label": c.label, "points": [[round(s, 3), round(a, 6)] for s, a in c.points]}
        d.update({k: v for k, v in (("folder", c.folder), ("method", c.method), ("dataset", c.dataset),
                                    ("source", c.source)) if v is not None})
        if c.folder is not None:
            d["finished"] = c.finished
        return d
    return {"x": "seconds since the start of training", "y": "test accuracy (fraction)",
            "curves": [one(c) for c in curves], "references": [one(c) for c in references]}


def plot(curves, out, references=(), title=None, data_out=None):
    """Draw test accuracy (%) against seconds, one line per ``Curve`` (runs solid, references dashed);
    write the PNG ``out`` and its points (``curves_json``) to ``data_out`` (default: ``out`` with .json
    instead of .png), each atomically. Returns the JSON path. MissingMatplotlib without matplotlib
    (nothing is written then)."""
    Figure, Canvas = _figure_class()
    fig = Figure(figsize=(7, 4.5))
    Canvas(fig)
    ax = fig.add_subplot()
    for c in curves:
        ax.plot([s for s, _ in c.points], [100 * a for _, a in c.points], marker="o", markersize=4, label=c.label)
    for c in references:
        ax.plot([s for s, _ in c.points], [100 * a for _, a in c.points], linestyle="--", marker="s",
                markersize=3, color="0.35", label=c.label)
    ax.set_xlabel("wall-clock seconds since the start of training")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with writing(out), atomic.atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    data_path = data_out or os.path.splitext(out)[0] + ".json"
    with writing(data_path):
        atomic.write_json(data_path, curves_json(curves, references))
    return data_path
