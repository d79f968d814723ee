"""What the freezing experiment records at every step of a run: distances, loss decrease, samples of weights."""
import csv
import sys
import time

import numpy as np

from greedy.experiments.freeze.options import WEIGHT_SAMPLE, stream
from greedy.nn.losses import softmax_cross_entropy


class Tracker:
    """Distances from the initial weights and first-order loss decrease of named parameter subsets.

    subsets: {name: mask list like ``model.parameters()``}; layer_of: layer label per parameter tensor.
    ``update(params, grads)`` after each optimiser step adds -g . dw per subset (g the step's gradients,
    dw the change of the weights since the previous update).
    """

    def __init__(self, model, subsets, layer_of):
        params = model.parameters()
        self.p0 = [p.copy() for p in params]
        self.previous = [p.copy() for p in params]
        self.layer_of = layer_of
        self.names = list(subsets)
        self.weights = {s: [m.astype(p.dtype).ravel() for m, p in zip(subsets[s], params)] for s in self.names}
        self.sizes = {s: np.array([m.sum() for m in subsets[s]], np.float64) for s in self.names}
        self.decrease = {s: np.zeros(len(params)) for s in self.names}
        self.dist2 = {s: np.zeros(len(params)) for s in self.names}

    def update(self, params, grads):
        for i, (p, g, b, p0) in enumerate(zip(params, grads, self.previous, self.p0)):
            gd = (g * (p - b)).ravel()
            sq = np.square(p - p0).ravel()
            for s in self.names:
                w = self.weights[s][i]
                self.decrease[s][i] -= float(gd @ w)
                self.dist2[s][i] = float(sq @ w)
            b[...] = p

    def row(self):
        """Flat dict: dist, rms, decrease per subset, and dist per subset and layer."""
        out = {}
        for s in self.names:
            total = self.dist2[s].sum()
            out[f"dist:{s}"] = float(np.sqrt(total))
            out[f"rms:{s}"] = float(np.sqrt(total / max(self.sizes[s].sum(), 1)))
            out[f"decrease:{s}"] = float(self.decrease[s].sum())
            for layer in dict.fromkeys(self.layer_of):
                sel = [i for i, name in enumerate(self.layer_of) if name == layer]
                if self.sizes[s][sel].sum():
                    out[f"dist:{s}@{layer}"] = float(np.sqrt(self.dist2[s][sel].sum()))
        return out


class TrainingClock:
    """Training seconds without the time spent recording: ``lap()`` gives the seconds since ``resume()``."""

    def __init__(self):
        self.resume()

    def resume(self):
        self.t = time.perf_counter()

    def lap(self):
        return time.perf_counter() - self.t


def layer_labels(model):
    """Label "<index>:<spec>" of the layer of each tensor of ``model.parameters()``."""
    return [f"{i}:{model.layers[i].spec()}" for i, layer in enumerate(model.layers) for _ in sorted(layer.params)]


def evaluate(model, x, y, normalizer, batch_size=500):
    """(mean softmax cross-entropy, accuracy) of ``model`` on raw inputs x (N, ...) and labels y (N,)."""
    losses, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model.forward(normalizer(x[i:i + batch_size]))
        losses += softmax_cross_entropy(out, y[i:i + batch_size])[0] * len(out)
        correct += int((out.argmax(axis=1) == y[i:i + batch_size]).sum())
    return losses / len(x), correct / len(x)


class Recorder:
    """One run's records, written after each optimiser step.

    ``record(step, loss, seconds, phase)`` after step ``step`` (from 0) adds the
    step's row (returned, and kept in ``rows``): training loss and seconds,
    ``Tracker`` figures of ``subsets``, weight norms per layer, and every
    o["eval_every"] steps the test loss and accuracy; it logs ``step`` and
    ``eval`` events to ``run``. ``finish()`` writes ``csv_path`` and
    ``<run>_weights.npz`` (trajectories of o["sample_weights"] weights spread
    over the weight tensors, the same ones for every run of an experiment) and
    returns the rows.
    """

    def __init__(self, name, model, data, normalizer, o, subsets, run, csv_path, verbose=True):
        self.name, self.model, self.data, self.normalizer = name, model, data, normalizer
        self.o, self.run, self.csv_path, self.verbose = o, run, csv_path, verbose
        self.params, self.grads = model.parameters(), model.gradients()
        self.layer_of = layer_labels(model)
        self.tracker = Tracker(model, subsets, self.layer_of)
        sample_rng = stream(o["seed"], WEIGHT_SAMPLE)
        weight_tensors = [i for i, (n, _) in enumerate(model.named_parameters()) if n.endswith("/w")]
        per_tensor = max(1, o["sample_weights"] // len(weight_tensors))
        self.picks = [(i, int(j)) for i in weight_tensors
                      for j in sample_rng.choice(self.params[i].size, per_tensor, replace=False)]
        self.trajectory = np.empty((o["steps"] + 1, len(self.picks)), np.float32)
        self.trajectory[0] = [self.params[i].flat[j] for i, j in self.picks]
        self.rows, self.seconds, self.wall0 = [], 0.0, time.perf_counter()

    def record(self, step, loss, seconds, phase=0):
        o, params, name = self.o, self.params, self.name
        self.seconds += seconds
        self.tracker.update(params, self.grads)
        self.trajectory[step + 1] = [params[i].flat[j] for i, j in self.picks]
        row = {"step": step + 1, "seconds": round(self.seconds, 4),
               "wall_seconds": round(time.perf_counter() - self.wall0, 3), "loss": loss, "phase": phase,
               "test_loss": None, "test_accuracy": None}
        row.update(self.tracker.row())
        norms = {}
        for i, layer in enumerate(self.layer_of):
            norms[layer] = norms.get(layer, 0.0) + float(np.square(params[i]).sum())
        row.update({f"norm@{k}": float(np.sqrt(v)) for k, v in norms.items()})
        if (step + 1) % o["eval_every"] == 0 or step + 1 == o["steps"]:
            row["test_loss"], row["test_accuracy"] = evaluate(self.model, self.data.x_test, self.data.y_test,
                                                              self.normalizer)
            self.run.log("eval", run=name, step=step + 1, train_loss=loss, test_loss=row["test_loss"],
                         test_accuracy=row["test_accuracy"], train_seconds=self.seconds)
            if self.verbose:
                print(f"  {name:>16} step {step + 1:5d}: loss {loss:.4f}, test loss {row['test_loss']:.4f}, "
                      f"test accuracy {row['test_accuracy']:.4f}, {self.seconds:.1f} s", file=sys.stderr, flush=True)
        names = self.tracker.names
        self.run.log("step", run=name, step=step + 1, train_loss=loss, phase_index=phase,
                     train_seconds=self.seconds,
                     **{"distance": {s: row[f"dist:{s}"] for s in names},
                        "decrease": {s: row[f"decrease:{s}"] for s in names},
                        "layer_distance": {k: v for k, v in row.items() if k.startswith("dist:") and "@" in k}})
        self.rows.append(row)
        return row

    def finish(self):
        write_csv(self.csv_path, self.rows)
        np.savez(self.csv_path[:-4] + "_weights.npz", steps=np.arange(self.o["steps"] + 1), values=self.trajectory,
                 tensor=np.array([self.model.named_parameters()[i][0] for i, _ in self.picks]),
                 param_index=np.array([i for i, _ in self.picks]), flat_index=np.array([j for _, j in self.picks]))
        return self.rows


def write_csv(path, rows):
    """One row per dict, the union of their keys as columns; None as an empty cell."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
