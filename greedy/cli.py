"""Command-line interface: ``python cli.py train|evaluate|methods|compare|sweep|experiment``.

A thin layer over the library: ``train`` resolves the method's typed config
(``greedy.methods.config``), calls the method object from ``greedy.methods.METHODS`` and
writes the run folder (``greedy.runs``). The ``train`` options are generated from the config
dataclasses; an option the chosen method does not have ends with a one-line error.
"""
import dataclasses
import json
import os

import click

from greedy.errors import CheckpointError, ConfigError
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.runs import default_out_dir, read_run_config, resume_hint
from greedy.training import run_training
from greedy.cli_plot import plot as plot_command
from greedy.cli_options import (GreedyGroup, GroupedCommand, _short, common_options, config_options, fail,
                                 load_data, read_config_file, set_threads, site_options, TEXT_OPTIONS)


@click.group(cls=GreedyGroup)
def main():
    """Layer-wise (greedy) training of convolutional networks in NumPy + Numba."""


@main.command(cls=GroupedCommand)
@click.option("--method", type=click.Choice(sorted(METHODS)), default=None,
              help="Training method; `python cli.py methods` explains each [e2e].")
@common_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default runs/<method>-<dataset>-<time>).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Repeat a run: read method, dataset and every option from its config.json "
                   "(options given here override them).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run that --out holds (its summary, model and checkpoint are deleted first); "
                   "without it such a folder is refused.")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the unfinished run in this folder from its last checkpoint, with the options in "
                   "its config.json (only --threads may be given too).")
@site_options
@config_options
def train(method, dataset, data_dir, seed, threads, n_train, n_test, out, config_file, quiet, overwrite, resume,
          sites, scheduler, share, site_timeout, **values):
    """Train a model with METHOD and write the run folder (config, metrics, summary, model)."""
    if sites or scheduler or share or site_timeout:
        return train_on_sites(method, sites, scheduler, share, site_timeout, dataset, data_dir, n_train, n_test,
                              config_file, resume, seed, threads, out, quiet, overwrite, values)
    if resume:
        out = resume
        summary = resume_training(click.get_current_context(), resume, threads)
        click.echo(f"{summary['method']} on {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} "
                   f"in {summary['train_seconds']:.1f} s -> {out}")
        return
    given = {k: v for k, v in values.items() if v is not None}
    if config_file:
        saved = read_config_file(config_file)
        method = method or saved["method"]
        dataset = dataset or saved.get("dataset")
        n_train, n_test = n_train or saved.get("n_train"), n_test or saved.get("n_test")
        seed = saved.get("seed") if seed is None else seed
        fields = {f.name for f in dataclasses.fields(configs.CONFIGS[method])}
        options = {k: v for k, v in saved.get("options", {}).items() if k in fields}
        if options.get("arch"):  # a saved --arch names each block's activation itself
            options.pop("activation", None)
        given = dict(options, **given)
    method, dataset, seed = method or "e2e", dataset or "cifar10", 0 if seed is None else seed
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train, n_test, quiet)
    out = out or default_out_dir(method, dataset)
    summary = run_training(method, data, dataset, dict(given, seed=seed), out, threads, data_dir,
                           verbose=not quiet, exist="replace" if overwrite else "refuse",
                           record={"quiet": quiet, "data_options": data_options()})
    click.echo(f"{method} on {dataset}: test accuracy {summary['test_accuracy']:.4f} "
               f"in {summary['train_seconds']:.1f} s -> {out}")


def train_on_sites(method, sites, scheduler, share, site_timeout, dataset, data_dir, n_train, n_test, config_file,
                   resume, seed, threads, out, quiet, overwrite, values):
    """``train --sites MANIFEST``: the run on the sites (``greedy.distributed``); the data come from the manifest."""
    if not sites:
        fail("--scheduler, --share and --site-timeout go with --sites MANIFEST")
    given = [flag for flag, v in (("--data-dir", data_dir), ("--n-train", n_train),
                                  ("--n-test", n_test), ("--config", config_file), ("--resume", resume)) if v]
    if given:
        fail(f"with --sites the data are the manifest's; {', '.join(given)} cannot be given")
    from greedy.distributed import require_dask
    from greedy.distributed.manifest import read_manifest
    from greedy.distributed.train import run_sites
    require_dask()
    sites_dataset = read_manifest(sites)["dataset"]
    if dataset and dataset != sites_dataset:
        fail(f"--dataset {dataset} is not the manifest's dataset {sites_dataset}")
    method = method or "patchbag"
    threads = set_threads(threads)
    out = out or default_out_dir(f"{method}-sites", sites_dataset)
    summary = run_sites(method, sites, dict({k: v for k, v in values.items() if v is not None},
                                            seed=0 if seed is None else seed),
                        out, threads=threads, scheduler=scheduler, share=share or "codes",
                        timeout=site_timeout or 120.0, verbose=not quiet, exist="replace" if overwrite else "refuse")
    click.echo(f"{method} on {summary['sites']} sites of {summary['dataset']}: test accuracy "
               f"{summary['test_accuracy']:.4f} in {summary['train_seconds']:.1f} s -> {out}")


def data_options():
    """The data options of this command line that ``load_data`` passes on (--max-bytes, --keep), to record."""
    ctx = click.get_current_context(silent=True)
    return {k: ctx.meta[f"greedy.data.{k}"] for k in TEXT_OPTIONS if ctx and f"greedy.data.{k}" in ctx.meta}


def resume_training(ctx, out, threads):
    """``train --resume OUT``: the run continued with its recorded method, data and options; returns its summary."""
    import numba
    from click.core import ParameterSource
    others = [p.opts[0] for p in ctx.command.params if p.name not in ("resume", "threads")
              and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)]
    if others:
        fail(f"--resume continues a run with the options in its config.json; only --threads may be given with it, "
             f"not {', '.join(others)}")
    path = os.path.join(out, "config.json")
    saved = read_run_config(path)
    if saved.get("sites"):
        fail(f"{out} was trained on the sites of {saved['sites']}; runs on sites write no checkpoint and cannot be "
             f"resumed: start it again with train --sites {saved['sites']} --out {out} --overwrite")
    if saved["method"] not in METHODS:
        raise CheckpointError(f"{path}: unknown method {saved['method']!r:.40}")
    recorded = saved.get("threads") or numba.config.NUMBA_NUM_THREADS
    threads = set_threads(threads or min(recorded, numba.config.NUMBA_NUM_THREADS))
    quiet = saved.get("quiet") is True
    if threads != recorded:
        click.echo(f"warning: resuming with {threads} threads, the run began with {recorded}; figures can differ "
                   f"in the last digits from an uninterrupted run", err=True)
    text = saved.get("data_options") or {}
    if not isinstance(text, dict) or set(text) - set(TEXT_OPTIONS):
        raise CheckpointError(f"{path}: bad data_options {text!r:.60}")
    ctx.meta.update({f"greedy.data.{k}": v for k, v in text.items()})
    data = load_data(saved["dataset"], saved.get("data_dir"), saved["seed"], saved.get("n_train"),
                     saved.get("n_test"), quiet)
    return run_training(saved["method"], data, saved["dataset"], saved.get("options", {}), out, threads,
                        saved.get("data_dir"), verbose=not quiet, exist="resume",
                        record={"quiet": quiet, "data_options": text})


def run_dataset(run_dir):
    """The run config (dataset, seed, n_train, n_test, ...) of the run folder holding a model file, or {}."""
    path = os.path.join(run_dir, "config.json")
    return read_run_config(path) if os.path.isfile(path) else {}


@main.command()
@click.argument("run_dir", type=click.Path())
@common_options
def evaluate(run_dir, dataset, data_dir, seed, threads, n_train, n_test):
    """Reload RUN_DIR/model.npz and print its test accuracy on the run's dataset and test slice (or --dataset)."""
    from greedy.modelfile import load
    from greedy.nn.fit import label_accuracy

    from greedy.runs import unfinished
    set_threads(threads)
    path = run_dir if run_dir.endswith(".npz") else os.path.join(run_dir, "model.npz")
    progress = None if run_dir.endswith(".npz") else unfinished(run_dir)
    if progress:
        fail(f"run unfinished: {progress}; {resume_hint(run_dir)}")
    model = load(path)
    run = run_dataset(os.path.dirname(path))
    recorded = run.get("dataset")
    if dataset and recorded and dataset != recorded:
        fail(f"--dataset {dataset} does not match the run's dataset {recorded}; leave --dataset out to use it")
    dataset = dataset or recorded or "cifar10"
    if dataset == recorded:  # the run's own test slice; synthetic sets are generated from its seed
        n_test, seed = n_test or run.get("n_test"), seed if seed is not None else run.get("seed")
    data = load_data(dataset, data_dir, seed or 0, n_train, n_test, quiet=True)
    if tuple(data.x_test.shape[1:]) != tuple(model.in_shape):
        fail(f"{path} expects samples of shape {tuple(model.in_shape)}, "
             f"dataset {dataset} has {tuple(data.x_test.shape[1:])}")
    acc = label_accuracy(model.predict_logits(data.x_test), data.y_test)
    click.echo(json.dumps({"model": path, "dataset": dataset, "test_accuracy": acc}))


@main.command()
@common_options
@click.option("--sites", "n_sites", type=click.IntRange(min=1), required=True, help="Number of sites.")
@click.option("--split", default="iid", show_default=True,
              help="Which samples each site holds: iid, by-class (each class on one site) or dirichlet:ALPHA "
                   "(class shares per site drawn from Dirichlet(ALPHA); small ALPHA: few classes per site).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for site-<i>/ (x.npy, y.npy), test.npz (the coordinator's) and manifest.json.")
def shard(dataset, data_dir, seed, threads, n_train, n_test, n_sites, split, out):
    """Split a dataset's training set into one folder per site and write their manifest (docs/distributed.md)."""
    from greedy.distributed.shard import parse_split, write_shards
    parse_split(split)
    dataset, seed = dataset or "cifar10", seed or 0
    data = load_data(dataset, data_dir, seed, n_train, n_test, quiet=True)
    manifest = write_shards(data, dataset, out, n_sites, split, seed)
    sizes = ", ".join(f"{s['name']}: {s['samples']}" for s in manifest["sites"])
    click.echo(f"{dataset} in {n_sites} sites ({split}): {sizes}; test {len(data.x_test)} -> "
               f"{os.path.join(out, 'manifest.json')}")


@main.command()
@click.argument("names", nargs=-1)
def methods(names):
    """Explain each method (or NAMES) and list its defaults for each dataset family."""
    for name in names or METHODS:
        if name not in METHODS:
            fail(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        method = METHODS[name]
        click.echo(f"{name}\n  {method.summary}")
        for family in configs.FAMILY_DEFAULTS:
            try:
                config = method.resolve(family, 10, {}, "flip" if family in configs.MIRROR_SYMMETRIC else "none")
            except ConfigError as e:
                click.echo(f"  not on {family}: {e}")
                continue
            shown = {k: v for k, v in configs.to_dict(config).items() if v is not None and k != "seed"}
            click.echo(f"  defaults on {family}: " + ", ".join(f"{k}={_short(v) if k != 'blocks' else '-'.join(v)}"
                                                              for k, v in shown.items()))
        click.echo("")


@main.command()
@click.option("--methods", default="e2e,aux,cosine,kl,patchbag", show_default=True,
              help="Comma-separated methods to compare.")
@common_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the runs and the tables.")
@click.option("--arch", default=None,
              help="Shared conv blocks, e.g. c32k3-bn-relu-max2-c64k3-bn-relu-max2 (default: the first "
                   "layer-wise method's default blocks).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of training per method (split evenly over the blocks for layer-wise methods).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Epochs per method (e2e: all of them; layer-wise: split evenly over the blocks).")
@click.option("--finetune-epochs", type=click.FloatRange(min=0), default=None)
@click.option("--quiet", is_flag=True)
def compare(methods, dataset, data_dir, seed, threads, n_train, n_test, out, arch, time_budget, epochs,
            finetune_epochs, quiet):
    """Train several methods with the same blocks, seed and budget; write compare.md and compare.json."""
    from greedy.experiments.compare import compare as run_compare
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        fail(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(sorted(METHODS))}")
    dataset, seed = dataset or "cifar10", seed or 0
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train, n_test, quiet)
    out = out or default_out_dir("compare", dataset)
    rows = run_compare(run_training, data, dataset, names, out, seed, threads, arch, time_budget, epochs,
                       finetune_epochs, verbose=not quiet)
    with open(os.path.join(out, "compare.md")) as f:
        click.echo(f.read())
    return rows


@main.command()
@click.option("--method", type=click.Choice(sorted(m for m in METHODS if m not in ("e2e", "binary"))),
              default="aux", show_default=True)
@common_options
@click.option("--budgets", default="0.5e;1e;2e;4e*0.5", show_default=True,
              help="Semicolon-separated per-block budgets, each in --layer-budget syntax (e.g. 2e;3e,2e,1e).")
@click.option("--finetune", default="0", show_default=True, help="Comma-separated fine-tune epochs to try, e.g. 0,1.")
@click.option("--arch", default=None, help="Conv blocks (layer-wise syntax).")
@click.option("--out", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", is_flag=True)
def sweep(method, dataset, data_dir, seed, threads, n_train, n_test, budgets, finetune, arch, out, quiet):
    """Accuracy against per-block budget (and fine-tuning): writes sweep.csv, sweep.json, sweep.png."""
    from greedy.experiments.compare import sweep as run_sweep
    from greedy.methods.blocks import parse_budget
    try:
        fts = [float(s) for s in finetune.split(",")]
    except ValueError:
        fail(f"--finetune must be comma-separated numbers, got {finetune!r}")
    budget_list = [b.strip() for b in budgets.split(";") if b.strip()]
    for b in budget_list:  # a bad budget fails before any run starts
        parse_budget(b, 1)
    dataset, seed = dataset or "cifar10", seed or 0
    threads = set_threads(threads)
    data = load_data(dataset, data_dir, seed, n_train, n_test, quiet)
    out = out or default_out_dir(f"sweep-{method}", dataset)
    rows = run_sweep(run_training, data, dataset, method, budget_list, out, seed, threads, fts, {"arch": arch},
                     verbose=not quiet)
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
    from greedy.experiments.freeze import EXPERIMENT_STRATEGIES, run_freeze_experiment, write_table
    from greedy.nn.network import Normalizer

    names = [s.strip() for item in strategies for s in item.split(",") if s.strip()]
    if "all" in names:
        names = list(EXPERIMENT_STRATEGIES)
    for s in names:
        if s not in EXPERIMENT_STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r}; choose from {', '.join(EXPERIMENT_STRATEGIES)} or all")
    threads = set_threads(threads)
    dataset, seed = dataset or "cifar10", seed or 0
    data = load_data(dataset, data_dir, seed, n_train or 10000, n_test or 2000, quiet)
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


main.add_command(plot_command)

if __name__ == "__main__":
    main()
