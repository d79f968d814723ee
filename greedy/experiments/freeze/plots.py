"""PNG plots of a freezing experiment, drawn with matplotlib when it is installed (extra ``greedy[plot]``)."""
import os

import numpy as np

from greedy.experiments.freeze.report import smoothed


def plot(results, summary, out):
    """Write loss.png and <run>.png (subset speed, sampled weight trajectories, layer norms) under ``out``.

    results: {run name: per-step rows}; summary: from ``summarise``. Returns False, drawing nothing,
    when matplotlib is not importable.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in results.items():
        steps = [r["step"] for r in rows]
        ax[0].plot(steps, smoothed(np.array([r["loss"] for r in rows]), 20), label=name)
        ax[1].plot([r["seconds"] for r in rows], smoothed(np.array([r["loss"] for r in rows]), 20), label=name)
    ax[0].set_xlabel("step")
    ax[1].set_xlabel("training seconds")
    for a in ax:
        a.set_ylabel("training loss (running mean)")
        a.axhline(summary["target_loss"], color="grey", lw=0.5)
        a.legend()
    fig.savefig(os.path.join(out, "loss.png"), dpi=100)
    plt.close(fig)
    for name, rows in results.items():
        if name != "baseline":
            _plot_run(plt, name, rows, results["baseline"], out)
    return True


def _plot_run(plt, name, rows, base, out):
    subs = [k[4:] for k in rows[0] if k.startswith("rms:")]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4))
    for sub in subs:
        line, = ax[0].plot([r["step"] for r in rows], [r[f"rms:{sub}"] for r in rows], label=f"{sub} ({name})")
        if f"rms:{sub}" in base[0]:
            ax[0].plot([r["step"] for r in base], [r[f"rms:{sub}"] for r in base],
                       "--", color=line.get_color(), label=f"{sub} (baseline)")
    ax[0].set_ylabel("RMS distance from initial weights")
    ax[0].legend(fontsize=7)
    values = np.load(os.path.join(out, f"{name}_weights.npz"))["values"]
    ax[1].plot(values - values[0])
    ax[1].set_ylabel("sampled weights minus initial value")
    for key in rows[0]:
        if key.startswith("norm@"):
            ax[2].plot([r[key] for r in rows], label=key[5:])
    ax[2].set_ylabel("layer weight norm")
    ax[2].legend(fontsize=7)
    for a in ax:
        a.set_xlabel("step")
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=100)
    plt.close(fig)
