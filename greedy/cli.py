"""Command-line interface: ``python cli.py train|evaluate|...`` or the ``greedy`` console script."""
import importlib
import json
import os
import re
import sys

import click
import numpy as np

from greedy.errors import ConfigError, GreedyError
from greedy.runs import default_out_dir

# method name -> "module:function"; each function has the signature
# f(data, normalizer, opts, run) -> (model, extra_summary_fields)
METHODS = {
    "e2e": "greedy.methods.e2e:train_e2e",
    "aux": "greedy.methods.objectives:train_aux",
    "cosine": "greedy.methods.objectives:train_cosine",
    "kl": "greedy.methods.objectives:train_kl",
    "patchbag": "greedy.methods.patchbag:train_patchbag",
    "binary": "greedy.methods.binary:train_binary",
}

DATASET_NAMES = ("cifar10", "mnist", "fashion-mnist", "synthetic", "synthetic-grey")

# Methods whose models have their own file format and predict on uint8 images: no test-time augmentation.
OWN_FORMAT_METHODS = ("binary",)

# Datasets whose classes keep their meaning in a mirror image: test-time flips by default.
MIRROR_SYMMETRIC = ("cifar10",)


def method_function(name):
    module, func = METHODS[name].split(":")
    return getattr(importlib.import_module(module), func)


def set_threads(n):
    """Use n threads in Numba kernels and BLAS (None: NUMBA_NUM_THREADS or all cores)."""
    import numba
    from threadpoolctl import threadpool_limits
    n = n or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n)
    threadpool_limits(n)
    return n


def fail(message):
    """End with a one-line error and exit code 2."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


class GreedyGroup(click.Group):
    """Turns library errors about user input into one-line errors with exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GreedyError as e:
            fail(str(e))


@click.group(cls=GreedyGroup)
def main():
    """Layer-wise (greedy) training of convolutional networks in NumPy + Numba."""


def common_options(f):
    options = [
        click.option("--dataset", type=click.Choice(DATASET_NAMES), default="cifar10", show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder holding the dataset files (else $GREEDY_DATA, datasets/, download)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Threads for Numba and BLAS (default: NUMBA_NUM_THREADS or all cores)."),
        click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use the first N training images."),
        click.option("--n-test", type=click.IntRange(min=1), default=None, help="Use the first N test images."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_data(dataset, data_dir, seed, n_train=None, n_test=None):
    from greedy.data.datasets import load_dataset
    data = load_dataset(dataset, data_dir=data_dir, seed=seed, synthetic_size=(n_train or 2000, n_test or 500))
    if n_train or n_test:
        data = data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train],
                             x_test=data.x_test[:n_test], y_test=data.y_test[:n_test])
    return data


@main.command()
@click.option("--method", type=click.Choice(sorted(METHODS)), default="e2e", show_default=True)
@common_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (default runs/<method>-<dataset>-<time>).")
@click.option("--arch", default=None, help="Architecture spec, e.g. c32k5-relu-max2-fc10 (see greedy.model).")
@click.option("--epochs", type=click.FloatRange(min=0), default=None, help="Training epochs (end to end, or the final stage).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate.")
@click.option("--optimizer", type=click.Choice(["sgd", "nesterov", "adam"]), default=None)
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine", "onecycle"]), default=None)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None)
@click.option("--augment/--no-augment", default=None, help="Random crops and flips during training.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop training after this many seconds.")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Layer-wise methods: number of conv blocks.")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Layer-wise methods: filters per block.")
@click.option("--layer-budget", default=None,
              help="Per-layer budget: 2e (epochs), 90s (seconds), 4e*0.5 (geometric), 3e,2e,1e (list).")
@click.option("--aux-depth", type=click.IntRange(min=0), default=None, help="aux: hidden conv layers in each auxiliary head.")
@click.option("--aux-pool", type=click.Choice(["gap", "quadrant", "none"]), default=None,
              help="Pooling before auxiliary heads/objectives (none: the whole feature map).")
@click.option("--final-pool", type=click.Choice(["gap", "quadrant", "none"]), default=None, help="Pooling before the final classifier.")
@click.option("--final-features", type=click.Choice(["last", "all"]), default=None,
              help="Layer-wise methods: the final classifier sees the last block's pooled map (last) or every "
                   "block's, max-pooled to the same side (all; default for patchbag on MNIST).")
@click.option("--final-hidden", default=None,
              help="Layer-wise methods: hidden layers of the final classifier, e.g. fc512-relu-drop0.4 "
                   "or none for a linear classifier (default: none; patchbag: fc512-relu-drop0.4, on MNIST fc256-relu-drop0.4).")
@click.option("--finetune-epochs", type=click.FloatRange(min=0), default=None, help="Layer-wise methods: end-to-end fine-tune epochs at the end.")
@click.option("--final-classifier", type=click.Choice(["retrain", "last-head"]), default=None,
              help="Layer-wise methods: end with a linear classifier retrained on the frozen last block "
                   "(retrain), or with the last block's own auxiliary head (last-head, aux's default).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None, help="cosine: softmax temperature.")
@click.option("--kl-variance", type=click.Choice(["full", "shared", "class"]), default=None,
              help="kl: Gaussian class models with the pooled within-class covariance (full), its diagonal "
                   "(shared) or a diagonal variance each (class).")
@click.option("--clusters", type=click.IntRange(min=1), default=None, help="patchbag: k-means centroids per layer.")
@click.option("--patch-sample", type=click.IntRange(min=1), default=None, help="patchbag: patches sampled to fit each dictionary.")
@click.option("--regions", type=click.IntRange(min=1), default=None, help="patchbag: count codes in a RxR grid of regions (1 = whole image).")
@click.option("--image-clusters", type=click.IntRange(min=0), default=None, help="patchbag: train on this many prototypes per class (0 = all images).")
@click.option("--epochs-per-layer", type=click.FloatRange(min=0, min_open=True), default=None, help="patchbag: epochs on codes per layer.")
@click.option("--activation", type=click.Choice(["tanh", "relu"]), default=None, help="patchbag: activation of the default blocks (default relu).")
@click.option("--threshold", type=click.Choice(["median", "half", "quantile"]), default=None, help="binary: feature bit threshold.")
@click.option("--colour-norm/--no-colour-norm", default=None, help="binary, patchbag (first layer): subtract each 3x3 patch's mean colour.")
@click.option("--colour-feed/--no-colour-feed", default=None, help="binary: feed the pooled image to later blocks.")
@click.option("--split-fraction", type=click.FloatRange(0, 1), default=None, help="binary: share of split filters.")
@click.option("--tta", type=click.Choice(["none", "flip"]), default=None,
              help="Test-time augmentation: average the logits of each image and its mirror image "
                   "(default flip on cifar10, none elsewhere and for binary models).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def train(method, dataset, data_dir, seed, threads, n_train, n_test, out, quiet, **opts):
    """Train a model with METHOD and write the run folder (config, metrics, summary, model)."""
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train, n_test)
    out = out or default_out_dir(method, dataset)
    summary = run_training(method, data, dataset, opts, out, seed, threads, data_dir, verbose=not quiet)
    click.echo(f"{method} on {dataset}: test accuracy {summary['test_accuracy']:.4f} "
               f"in {summary['train_seconds']:.1f} s -> {out}")


def run_training(method, data, dataset, opts, out, seed, threads, data_dir=None, verbose=True):
    """Train ``method`` on loaded ``data`` into run folder ``out``; returns the summary dict."""
    from greedy.nn.model import Normalizer, flip_average, mirror, save_model
    from greedy.runs import Run
    from greedy.nn.fit import label_accuracy, predict

    tta = opts.get("tta") or ("flip" if dataset in MIRROR_SYMMETRIC and method not in OWN_FORMAT_METHODS
                              else "none")
    if tta != "none" and method in OWN_FORMAT_METHODS:
        raise ConfigError(f"--tta {tta}: {method} models do not support test-time augmentation")
    opts = dict(opts, tta=tta)
    normalizer = Normalizer().fit(data.x_train)
    config = dict(opts, seed=seed, threads=threads, data_dir=data_dir, n_train=len(data.x_train),
                  n_test=len(data.x_test))
    run = Run(out, method, dataset, config, verbose=verbose)
    run.start()
    model, extra = method_function(method)(data, normalizer, dict(opts, seed=seed), run)
    train_seconds = run.seconds()
    logits = predict(model, data.x_test, model_input(model, normalizer))
    test_acc = label_accuracy(logits, data.y_test)
    if tta == "flip":  # one more pass, over the mirror images; the model then predicts as evaluate will
        mirrored = predict(model, data.x_test, lambda xb: mirror(normalizer(xb)))
        extra = dict(extra, test_accuracy_without_tta=test_acc)
        test_acc = label_accuracy(flip_average(logits, mirrored), data.y_test)
        model.tta = tta
    if hasattr(model, "save"):
        model.save(run.path("model.npz"), normalizer, data.class_names, {"method": method, "dataset": dataset})
    else:
        save_model(run.path("model.npz"), model, normalizer, data.class_names, {"method": method, "dataset": dataset})
    return run.finish(dict({"test_accuracy": test_acc, "train_seconds": round(train_seconds, 3),
                            "n_parameters": model.n_parameters(), "seed": seed, "threads": threads,
                            "tta": tta}, **extra))


@main.command()
@click.argument("run_dir", type=click.Path())
@common_options
def evaluate(run_dir, dataset, data_dir, seed, threads, n_train, n_test):
    """Reload RUN_DIR/model.npz and print its test accuracy on DATASET."""
    from greedy.nn.fit import accuracy

    set_threads(threads)
    path = run_dir if run_dir.endswith(".npz") else os.path.join(run_dir, "model.npz")
    model, normalizer, meta = load_any_model(path)
    config_path = os.path.join(os.path.dirname(path), "config.json")
    if dataset.startswith("synthetic") and os.path.isfile(config_path):
        with open(config_path) as f:
            seed = json.load(f).get("seed", seed)  # synthetic test sets are generated from the run's seed
    data = load_data(dataset, data_dir, seed, n_train, n_test)
    if tuple(data.x_test.shape[1:]) != tuple(meta["in_shape"]):
        fail(f"{path} expects images of shape {tuple(meta['in_shape'])}, "
             f"dataset {dataset} has {tuple(data.x_test.shape[1:])}")
    acc = accuracy(model, data.x_test, data.y_test, model_input(model, normalizer))
    click.echo(json.dumps({"model": path, "dataset": dataset, "test_accuracy": acc}))


def model_input(model, normalizer):
    """What maps raw images to the model's input: the normalizer, or None for models with their own
    file format (``save``, e.g. greedy.binary), which take uint8 images."""
    return None if hasattr(model, "save") else normalizer


def load_any_model(path):
    """(model, normalizer, meta) from a model file; a file whose meta names a greedy ``loader``
    ("module:function", e.g. binary models) is read by that function, any other by greedy.model."""
    from greedy.errors import CheckpointError
    from greedy.nn.model import load_model
    try:
        with np.load(path, allow_pickle=False) as f:
            loader = json.loads(str(f["meta"])).get("loader")
    except Exception:  # missing or unreadable: load_model says what is wrong
        loader = None
    if not loader:
        return load_model(path)
    if not isinstance(loader, str) or not re.fullmatch(r"greedy(\.\w+)+:\w+", loader):
        raise CheckpointError(f"{path}: unknown model loader {loader!r}")
    module, func = loader.split(":")
    return getattr(importlib.import_module(module), func)(path)


@main.command()
@click.option("--methods", default="e2e,aux,cosine,kl,patchbag", show_default=True,
              help="Comma-separated methods to compare.")
@common_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the runs and the tables.")
@click.option("--arch", default=None, help="Shared conv blocks, e.g. c32k3-bn-relu-max2-c64k3-bn-relu-max2.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of training per method (split evenly over layers for layer-wise methods).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Epochs per method (e2e: all of them; layer-wise: split evenly over layers).")
@click.option("--finetune-epochs", type=click.FloatRange(min=0), default=None)
@click.option("--quiet", is_flag=True)
def compare(methods, dataset, data_dir, seed, threads, n_train, n_test, out, arch, time_budget, epochs,
            finetune_epochs, quiet):
    """Train several methods with the same architecture, seed and budget; write compare.md and compare.json."""
    from greedy.experiments.compare import compare as run_compare
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        fail(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(sorted(METHODS))}")
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train, n_test)
    out = out or default_out_dir("compare", dataset)
    rows = run_compare(run_training, data, dataset, names, out, seed, threads, arch, time_budget, epochs,
                       finetune_epochs, verbose=not quiet)
    with open(os.path.join(out, "compare.md")) as f:
        click.echo(f.read())
    return rows


@main.command()
@click.option("--method", type=click.Choice(sorted(METHODS)), default="aux", show_default=True)
@common_options
@click.option("--budgets", default="0.5e,1e,2e,4e*0.5", show_default=True,
              help="Semicolon-separated per-layer budgets (each in --layer-budget syntax).")
@click.option("--finetune", default="0", show_default=True, help="Comma-separated fine-tune epochs to try, e.g. 0,1.")
@click.option("--arch", default=None, help="Conv blocks (layer-wise syntax).")
@click.option("--out", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", is_flag=True)
def sweep(method, dataset, data_dir, seed, threads, n_train, n_test, budgets, finetune, arch, out, quiet):
    """Accuracy against per-layer budget (and fine-tuning): writes sweep.csv, sweep.json, sweep.png."""
    from greedy.experiments.compare import sweep as run_sweep
    try:
        fts = [float(s) for s in finetune.split(",")]
    except ValueError:
        fail(f"--finetune must be comma-separated numbers, got {finetune!r}")
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train, n_test)
    out = out or default_out_dir(f"sweep-{method}", dataset)
    rows = run_sweep(run_training, data, dataset, method, [b.strip() for b in budgets.split(";") if b.strip()],
                     out, seed, threads, fts, {"arch": arch}, verbose=not quiet)
    for r in rows:
        click.echo(json.dumps(r))



@main.group()
def experiment():
    """Research experiments (seed 004: frozen weight subsets)."""


@experiment.command("freeze")
@click.option("--strategy", "strategies", multiple=True, default=("first-half",), show_default=True,
              help="Freezing strategy, repeatable or comma-separated: first-half, random-kernels, random-weights, "
                   "hessian, schedule, two-halves (two half-width models, then fused), elastic or soft-share "
                   "(the same two models trained in lockstep with elastic averaging or soft weight sharing), or all. "
                   "The baseline always runs.")
@common_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default runs/freeze-<dataset>-<time>).")
@click.option("--arch", default=None, help="Architecture spec (default c16k5-relu-max2-c32k5-relu-max2-fc128-relu-fc10).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps per run [200].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[64]")
@click.option("--optimizer", type=click.Choice(["sgd", "nesterov", "adam"]), default=None, help="[sgd]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="[0.01]")
@click.option("--warmup", type=float, default=None, help="Linear learning-rate warm-up, fraction of the steps [0.1].")
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), default=None, help="SGD momentum [0.9].")
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine", "onecycle"]), default=None, help="[constant]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="[0]")
@click.option("--fraction", type=float, default=None, help="Frozen fraction of each kernel layer [0.5].")
@click.option("--include-dense/--conv-only", default=None, help="Also freeze units of the hidden dense layers [conv only].")
@click.option("--every", type=int, default=None, help="schedule/hessian: steps per phase [25].")
@click.option("--eval-every", type=int, default=None, help="Steps between test evaluations [25].")
@click.option("--groups", "n_groups", type=int, default=None, help="hessian: kernel groups per layer [2].")
@click.option("--probes", "n_probes", type=int, default=None, help="hessian: Rademacher probes (HVPs); 0 = exact [32].")
@click.option("--hessian-batch", type=int, default=None, help="hessian: training images for the HVPs [256].")
@click.option("--target-loss", type=float, default=None,
              help="Loss for steps/seconds-to-target [the baseline's running-mean loss at half its steps].")
@click.option("--coupling", type=click.FloatRange(min=0), default=None,
              help="elastic/soft-share: coupling strength rho between the two half-width models [0.03].")
@click.option("--skip-frozen-grads/--compute-all-grads", default=None,
              help="Skip weight gradients of wholly frozen kernels [skip].")
@click.option("--ensemble", "n_members", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also train this many small models and compare fused head, output averaging and members.")
@click.option("--ensemble-epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress output.")
def experiment_freeze(strategies, dataset, data_dir, seed, threads, n_train, n_test, out, n_members, ensemble_epochs,
                      quiet, **opts):
    """Baseline against frozen-subset strategies from the same initial weights (defaults: 10000 training and
    2000 test images); writes metrics.jsonl, summary.json, table.md, a CSV per run and plots if matplotlib is installed."""
    from greedy.errors import ConfigError
    from greedy.experiments.freeze import EXPERIMENT_STRATEGIES, run_freeze_experiment, write_table
    from greedy.nn.model import Normalizer

    names = [s.strip() for item in strategies for s in item.split(",") if s.strip()]
    if "all" in names:
        names = list(EXPERIMENT_STRATEGIES)
    for s in names:
        if s not in EXPERIMENT_STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r}; choose from {', '.join(EXPERIMENT_STRATEGIES)} or all")
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train or 10000, n_test or 2000)
    normalizer = Normalizer().fit(data.x_train)
    out = out or default_out_dir("freeze", dataset)
    opts = dict(opts, seed=seed, dataset=dataset, threads=threads)
    summary = run_freeze_experiment(data, normalizer, names, out, opts, verbose=not quiet)
    click.echo(write_table(summary, out))
    if n_members:
        from greedy.experiments.ensemble import compare_ensemble
        result = compare_ensemble(data, normalizer, n_members, epochs=ensemble_epochs, seed=seed,
                                  log=None if quiet else lambda name, **f: click.echo(f"{name}: {f}", err=True))
        with open(os.path.join(out, "ensemble.json"), "w") as f:
            json.dump(result, f, indent=2)
        click.echo(json.dumps(result))
    click.echo(f"-> {out}")


if __name__ == "__main__":
    main()
