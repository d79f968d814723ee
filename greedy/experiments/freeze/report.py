"""The freezing experiment's summary: speeds to a target loss, subset movements, and Markdown tables."""
import json
import os

import numpy as np

from greedy.atomic import write_text


def smoothed(values, window):
    """Trailing running mean over ``window`` values (shorter at the start)."""
    c = np.cumsum(np.concatenate([[0.0], values]))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def reach(rows, target, window):
    """(steps, train seconds) when the smoothed training loss first reaches ``target``, or (None, None)."""
    s = smoothed(np.array([r["loss"] for r in rows]), window)
    hit = np.nonzero(s <= target)[0]
    if not len(hit):
        return None, None
    return int(rows[hit[0]]["step"]), float(rows[hit[0]]["seconds"])


def summarise(results, o, step_costs=None):
    """Per run: final losses, steps and seconds to the target loss, and per subset speed against the baseline.

    results: {run name: per-step rows}; step_costs: {run name: best seconds per step} (``time_steps``).
    """
    window = o["smooth"]
    base = results["baseline"]
    base_loss = smoothed(np.array([r["loss"] for r in base]), window)
    target = o["target_loss"] if o["target_loss"] is not None else float(base_loss[len(base_loss) // 2])
    runs = {}
    for name, rows in results.items():
        steps, seconds = reach(rows, target, window)
        last = rows[-1]
        entry = {"final_loss": float(smoothed(np.array([r["loss"] for r in rows]), window)[-1]),
                 "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
                 "train_seconds": last["seconds"], "seconds_per_step": last["seconds"] / len(rows),
                 "steps_to_target": steps, "seconds_to_target": seconds, "subsets": {}}
        if step_costs and name in step_costs:
            entry["best_step_seconds"] = step_costs[name]
            entry["best_seconds_to_target"] = None if steps is None else steps * step_costs[name]
        if name != "baseline":
            entry["subsets"] = _subset_figures(last, base[-1])
        runs[name] = entry
    return {"target_loss": target, "runs": runs}


def _subset_figures(last, base):
    """Per subset of a run (its partition, from its last row): movement and share of the loss decrease, each
    next to the baseline's for the same subset (from the baseline's last row)."""
    own = [k[4:] for k in last if k.startswith("rms:")]
    total = sum(last[f"decrease:{sub}"] for sub in own)
    complete = all(f"decrease:{sub}" in base for sub in own)
    base_total = sum(base[f"decrease:{sub}"] for sub in own) if complete else None
    out = {}
    for sub in own:
        b = base.get(f"rms:{sub}")
        bd = base.get(f"decrease:{sub}")
        out[sub] = {
            "rms": last[f"rms:{sub}"], "baseline_rms": b, "speed_ratio": last[f"rms:{sub}"] / b if b else None,
            "decrease": last[f"decrease:{sub}"], "baseline_decrease": bd,
            "share": last[f"decrease:{sub}"] / total if total else None,
            "baseline_share": bd / base_total if bd is not None and base_total else None,
            "layers": {k.split("@", 1)[1]: {"dist": v, "baseline_dist": base.get(k),
                                            "ratio": v / base[k] if base.get(k) else None}
                       for k, v in last.items() if k.startswith(f"dist:{sub}@")}}
    return out


def _fmt(v, f="{:.3g}"):
    return "-" if v is None else f.format(v)


def summary_table(summary):
    """Markdown table: per strategy, subset speed ratios and steps/seconds to the target loss."""
    runs = summary["runs"]
    base = runs["baseline"]
    lines = [f"target loss {summary['target_loss']:.4f} (running mean of the training loss)", "",
             "| run | subset | RMS move | baseline RMS move | ratio | share of decrease (baseline) "
             "| steps to target | seconds to target (steps x best s/step) | s/step | best s/step | test acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| baseline | all | | | | | {_fmt(base['steps_to_target'], '{}')} "
                 f"| {_fmt(base['seconds_to_target'], '{:.1f}')} "
                 f"({_fmt(base.get('best_seconds_to_target'), '{:.1f}')}) "
                 f"| {base['seconds_per_step']:.3f} | {_fmt(base.get('best_step_seconds'), '{:.3f}')} "
                 f"| {_fmt(base['test_accuracy'], '{:.4f}')} |")
    for name, r in runs.items():
        if name == "baseline":
            continue
        for sub, s in r["subsets"].items():
            lines.append(f"| {name} | {sub.split('/', 1)[1]} | {_fmt(s['rms'])} | {_fmt(s['baseline_rms'])} "
                         f"| {_fmt(s['speed_ratio'], '{:.2f}')} "
                         f"| {_fmt(s['share'], '{:.2f}')} ({_fmt(s['baseline_share'], '{:.2f}')}) "
                         f"| {_fmt(r['steps_to_target'], '{}')} | {_fmt(r['seconds_to_target'], '{:.1f}')} "
                         f"({_fmt(r.get('best_seconds_to_target'), '{:.1f}')}) "
                         f"| {r['seconds_per_step']:.3f} | {_fmt(r.get('best_step_seconds'), '{:.3f}')} "
                         f"| {_fmt(r['test_accuracy'], '{:.4f}')} |")
    return "\n".join(lines)


def write_table(summary, out):
    """Write ``summary_table(summary)`` to ``out``/table.md and return it."""
    text = summary_table(summary)
    write_text(os.path.join(out, "table.md"), text + "\n")
    return text


def _stat(values, f="{:.2f}"):
    """Mean [min, max] of the values that are not None, with how many are None ("never" reached)."""
    missing = sum(v is None for v in values)
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    text = f.format(values[0]) if len(values) == 1 else \
        f"{f.format(np.mean(values))} [{f.format(min(values))}, {f.format(max(values))}]"
    return text + (f" ({missing} of {missing + len(values)} never)" if missing else "")


def seed_table(folders):
    """Markdown table over several experiment folders (e.g. seeds): mean and range per run and subset.

    Reads each folder's summary.json. Columns: speed ratio (RMS move over the
    baseline's for the same subset), share of the first-order loss decrease
    (baseline's share), steps and best-step seconds to each folder's target loss
    relative to the baseline's, and test accuracy.
    """
    summaries = []
    for folder in folders:
        with open(os.path.join(folder, "summary.json")) as f:
            summaries.append(json.load(f))

    def rel(run, key):
        out = []
        for s in summaries:
            r, b = s["runs"].get(run, {}), s["runs"]["baseline"]
            if r.get(key) is not None and b.get(key):
                out.append(r[key] / b[key])
            elif r and r.get(key) is None:
                out.append(None)
        return out
    lines = [f"{len(folders)} run(s); mean [min, max]; 'to target' = relative to the baseline "
             "(< 1: sooner; '-' = target not reached)", "",
             "| run | subset | RMS move / baseline's | share of loss decrease (baseline's) | steps to target "
             "| seconds to target | test accuracy |", "|---|---|---|---|---|---|---|"]
    runs = list(dict.fromkeys(r for s in summaries for r in s["runs"]))
    base_acc = _stat([s["runs"]["baseline"]["test_accuracy"] for s in summaries], "{:.4f}")
    lines.append(f"| baseline | all | 1 | | 1 | 1 | {base_acc} |")
    for run in runs[1:]:
        subs = list(dict.fromkeys(k for s in summaries for k in s["runs"].get(run, {}).get("subsets", {})))
        for k, sub in enumerate(subs):
            entries = [s["runs"][run]["subsets"][sub] for s in summaries
                       if sub in s["runs"].get(run, {}).get("subsets", {})]
            first = k == 0
            accuracy = _stat([s["runs"][run]["test_accuracy"] for s in summaries if run in s["runs"]], "{:.4f}")
            lines.append(
                f"| {run} | {sub.split('/', 1)[1]} | {_stat([e['speed_ratio'] for e in entries])} "
                f"| {_stat([e['share'] for e in entries])} ({_stat([e['baseline_share'] for e in entries])}) "
                f"| {_stat(rel(run, 'steps_to_target')) if first else ''} "
                f"| {_stat(rel(run, 'best_seconds_to_target')) if first else ''} "
                f"| {accuracy if first else ''} |")
    return "\n".join(lines)
