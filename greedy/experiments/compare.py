"""Experiments over several runs: method comparison and per-layer budget sweeps (seed 000's questions).

Each experiment trains ordinary runs (one run folder each, through the same
``run_training`` as ``cli.py train``) and writes a table as JSON plus Markdown
(``compare``) or CSV (``sweep``), and a PNG plot when matplotlib is installed (``compare.png``: test
accuracy against seconds, ``greedy.plotting``).
"""
import csv
import json
import os

from greedy.errors import ConfigError
from greedy.methods import config as configs
from greedy.methods.blocks import split_blocks
from greedy.atomic import write_text as atomic_write_text


def layerwise_arch(arch, method):
    """The blocks of a shared architecture for ``method``: e2e gets blocks + pooling + classifier."""
    if arch is None:
        return None
    if method == "e2e":
        return arch + "-gap-fc{n_classes}"
    return arch


def budget_options(method, n_layers, time_budget=None, epochs=None):
    """Options giving ``method`` a shared budget: total seconds, or total epochs (split over layers)."""
    if time_budget is not None:
        if method == "e2e":
            return {"time_budget": time_budget, "epochs": 1000.0}
        return {"layer_budget": f"{time_budget / n_layers:g}s"}
    if epochs is not None:
        if method == "e2e":
            return {"epochs": epochs}
        return {"layer_budget": f"{epochs / n_layers:g}e"}
    return {}


def summary_row(method, summary):
    layers = summary.get("layers", [])
    return {"method": method, "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"],
            "head_accuracy": [layer.get("head_accuracy") for layer in layers],
            "finetuned": summary.get("finetuned", False), "tta": summary.get("tta", "none"),
            "arch": summary.get("arch")}


def markdown_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if isinstance(v, float):
                v = f"{v:.4f}" if c.endswith("accuracy") else f"{v:.1f}"
            elif isinstance(v, list):
                v = ", ".join("-" if x is None else f"{x:.3f}" for x in v)
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def shared_blocks(methods, family):
    """The conv blocks every compared method trains when none are given: patchbag's defaults when it
    takes part (its blocks are the most constrained: a 3x3 conv, an activation, pooling), else the
    first layer-wise method's; None when only e2e takes part."""
    layerwise = [m for m in methods if m != "e2e"]
    if not layerwise:
        return None
    chosen = "patchbag" if "patchbag" in layerwise else layerwise[0]
    return "-".join(configs.resolve(chosen, family, 10).blocks)


def compare(run_training, data, dataset, methods, out_dir, seed, threads, arch=None, time_budget=None,
            epochs=None, finetune_epochs=None, verbose=True):
    """Train each method with the same blocks, seed and budget; write compare.json and compare.md.

    Every layer-wise method trains the same blocks (``arch``, or ``shared_blocks``) with the same
    per-block share of the budget; e2e trains those blocks with global pooling and a linear classifier.
    """
    if "binary" in methods:
        raise ConfigError("compare trains conv blocks under one budget; binary layers have neither, "
                          "train them with `train --method binary`")
    arch = arch or shared_blocks(methods, configs.family_of(data.x_train.shape[1:], data.x_train.dtype))
    n_layers = len(split_blocks(arch)) if arch else 1
    if time_budget is None and epochs is None:
        epochs = float(n_layers)  # one epoch per block; e2e trains the whole stack as many epochs
    rows = []
    os.makedirs(out_dir, exist_ok=True)
    for method in methods:
        opts = dict(budget_options(method, n_layers, time_budget, epochs), arch=layerwise_arch(arch, method),
                    seed=seed)
        if finetune_epochs is not None and method != "e2e":
            opts["finetune_epochs"] = finetune_epochs
        summary = run_training(method, data, dataset, opts, os.path.join(out_dir, method), threads,
                               verbose=verbose)
        rows.append(summary_row(method, summary))
    atomic_write_text(os.path.join(out_dir, "compare.json"), json.dumps(rows, indent=2))
    header = (f"Dataset {dataset}, seed {seed}, threads {threads}, "
              f"blocks {arch}, budget {'%gs' % time_budget if time_budget else '%g epochs' % epochs}\n\n")
    plotted = plot_compare(out_dir, methods, f"{dataset}: {', '.join(methods)}")
    atomic_write_text(os.path.join(out_dir, "compare.md"),
                      header + markdown_table(rows, ["method", "test_accuracy", "train_seconds", "head_accuracy",
                                                     "finetuned", "tta"]) + "\n" + plotted + "\n")
    return rows


def plot_compare(out_dir, methods, title):
    """Draw compare.png (test accuracy against seconds, one line per method's run folder; the points in
    compare-curves.json); the line for compare.md showing it, or saying how to get it."""
    from greedy import plotting
    try:
        plotting.plot(plotting.read_runs([os.path.join(out_dir, m) for m in methods]),
                      os.path.join(out_dir, "compare.png"), title=title,
                      data_out=os.path.join(out_dir, "compare-curves.json"))
    except plotting.MissingMatplotlib as e:
        return f"No compare.png: {e}."
    return "![test accuracy against seconds](compare.png)"


def sweep(run_training, data, dataset, method, budgets, out_dir, seed, threads, finetune=(0,), base_opts=None,
          verbose=True):
    """Train ``method`` for every per-layer budget x fine-tune setting; write sweep.csv/json (+ PNG)."""
    if not budgets:
        raise ConfigError("give at least one budget to sweep")
    rows = []
    os.makedirs(out_dir, exist_ok=True)
    for budget in budgets:
        for ft in finetune:
            opts = dict(base_opts or {}, layer_budget=budget, finetune_epochs=ft, seed=seed)
            name = f"{method}-{budget}-ft{ft:g}".replace("*", "x").replace(",", "_")
            summary = run_training(method, data, dataset, opts, os.path.join(out_dir, name), threads,
                                   verbose=verbose)
            rows.append({"method": method, "layer_budget": budget, "finetune_epochs": ft,
                         "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"],
                         "accuracy_before_finetune": summary.get("accuracy_before_finetune"),
                         "finetune_seconds": summary.get("finetune_seconds", 0.0)})
    atomic_write_text(os.path.join(out_dir, "sweep.json"), json.dumps(rows, indent=2))
    with open(os.path.join(out_dir, "sweep.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_sweep(rows, os.path.join(out_dir, "sweep.png"))
    return rows


def plot_sweep(rows, path):
    """Accuracy against wall time, one marker per run; skipped silently without matplotlib (optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        ax.scatter(r["train_seconds"], r["test_accuracy"], marker="o" if not r["finetune_epochs"] else "^")
        ax.annotate(f"{r['layer_budget']} ft{r['finetune_epochs']:g}", (r["train_seconds"], r["test_accuracy"]),
                    fontsize=7)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
