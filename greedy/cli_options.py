"""The pieces every CLI command shares: option decorators, help layout, data loading, one-line errors.

``config_options`` generates one click option per method option from the config dataclasses
(``greedy.methods.config``); ``common_options`` adds the data and run options; ``GroupedCommand``
lists them under their groups in ``--help``.
"""
import dataclasses
import sys

import click

from greedy.errors import ConfigError, GreedyError
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.runs import RunInterrupted, read_run_config

DATASET_HELP = ("cifar10, mnist, fashion-mnist, synthetic (32x32 RGB) or synthetic-grey (28x28), "
                "the last two generated from the seed; sequences: ucr:<Name> (a set of the UCR archive), "
                "loghub:system, loghub:event, lines:<PATH> (a folder of train.tsv and test.tsv, label<TAB>text)")

# the options of train that are not method options; each goes into a help group
RUN_GROUPS = {"method": "data", "dataset": "data", "data_dir": "data", "n_train": "data", "n_test": "data",
              "seed": "output", "threads": "output", "out": "output", "quiet": "output", "config_file": "output",
              "overwrite": "output", "resume": "output"}


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
    """Turns library errors into one-line errors: exit code 2 for bad input, 1 for a file that cannot be
    written (``WriteError``), 130 or 143 for a run stopped by SIGINT or SIGTERM."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GreedyError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(getattr(e, "exit_code", 2))
        except RunInterrupted as e:
            click.echo(str(e), err=True)
            sys.exit(e.exit_code)


class GroupedCommand(click.Command):
    """A command whose --help lists its options under the group headings of ``configs.GROUPS``."""

    def format_options(self, ctx, formatter):
        rows = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                group = getattr(param, "group", None) or RUN_GROUPS.get(param.name, "output")
                rows.setdefault(group, []).append(record)
        for group in list(configs.GROUPS) + sorted(set(rows) - set(configs.GROUPS)):
            if rows.get(group):
                with formatter.section(f"Options: {group}"):
                    formatter.write_dl(rows[group])


def _short(v):
    if isinstance(v, list):
        return ",".join(v) if len(v) < 3 else f"{len(v)} blocks"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def default_text(name):
    """The defaults of option ``name`` per method and dataset family, e.g. 'aux, cosine: 2e-3; e2e: 1e-3'."""
    by_value = {}
    for method in configs.methods_with(name):
        for family in configs.FAMILY_DEFAULTS:
            cls = configs.CONFIGS[method]
            f = cls.__dataclass_fields__[name]
            value = configs.FAMILY_DEFAULTS[family].get(method, {}).get(
                name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            by_value.setdefault(_short(value), {}).setdefault(method, []).append(family)
    parts = []
    n_families = len(configs.FAMILY_DEFAULTS)
    for value, owners in by_value.items():
        names = [m if len(fams) == n_families else f"{m} on {'/'.join(fams)}" for m, fams in owners.items()]
        parts.append(f"{', '.join(names)}: {value}")
    return "; ".join(parts)


def config_options(f):
    """Add one click option per method option (``greedy.methods.config``), all defaulting to None (unset)."""
    for name, fld in reversed(list(configs.cli_fields().items())):
        if name == "seed":
            continue
        meta, flag = fld.metadata, name.replace("_", "-")
        decl = [f"--{flag}/--no-{flag}"] if meta["type"] is bool else [f"--{flag}"]
        kwargs = {} if meta["type"] is bool else {"type": meta["type"]}
        option = click.option(*decl, name, default=None, help=f"{meta['help']} [{default_text(name)}]", **kwargs)
        f = option(f)
        f.__click_params__[-1].group = meta["group"]
    return f


def _dataset_name(ctx, param, value):
    """--dataset in canonical form; an unknown name is a one-line error (``greedy.data.dataset_key``)."""
    from greedy.data import dataset_key
    return None if value is None else dataset_key(value)


def _data_option(ctx, param, value):
    """Keep a text option (--max-bytes, --keep) for ``load_data`` without adding it to every command."""
    if value is not None:
        ctx.meta[f"greedy.data.{param.name}"] = value


TEXT_OPTIONS = ("max_bytes", "keep")


def common_options(f):
    from greedy.data import KEEP, MAX_BYTES
    options = [
        click.option("--dataset", default=None, callback=_dataset_name,
                     help=f"Dataset: {DATASET_HELP} [cifar10; evaluate: the run's]."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Existing folder holding the dataset files (else $GREEDY_DATA, datasets/, download)."),
        click.option("--seed", type=int, default=None, help="Seed of every random stream of the run [0]."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Threads for Numba and BLAS (default: NUMBA_NUM_THREADS or all cores)."),
        click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use the first N training samples."),
        click.option("--n-test", type=click.IntRange(min=1), default=None, help="Use the first N test samples."),
        click.option("--max-bytes", type=click.IntRange(min=1), default=None, expose_value=False,
                     callback=_data_option, help=f"Text datasets: bytes kept of each text; shorter texts are "
                                                 f"zero-padded [{MAX_BYTES}]."),
        click.option("--keep", type=click.Choice(KEEP), default=None, expose_value=False, callback=_data_option,
                     help="Text datasets: keep the first (head) or the last (tail) bytes of a longer text [head]."),
    ]
    for option in reversed(options):
        f = option(f)
        f.__click_params__[-1].group = "data"
    return f


def site_options(f):
    """The options of training on sites (``greedy.distributed``)."""
    options = [
        click.option("--sites", type=click.Path(dir_okay=False), default=None,
                     help="Train on the sites of this manifest (written by `cli.py shard`); the data stay on the "
                          "sites. Needs pip install \"greedy[distributed]\"."),
        click.option("--scheduler", default=None,
                     help="With --sites: the Dask scheduler (tcp://HOST:PORT) of workers started per site "
                          "[a local cluster with one worker per site]."),
        click.option("--share", type=click.Choice(["codes", "prototypes"]), default=None,
                     help="With --sites: what leaves a site, each image's codes and pooled features (codes) or "
                          "per class weighted prototypes of them (prototypes) [codes]."),
        click.option("--site-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="With --sites: seconds a site may have no worker before the run ends [120]."),
    ]
    for option in reversed(options):
        f = option(f)
        f.__click_params__[-1].group = "sites"
    return f


def load_data(dataset, data_dir, seed, n_train=None, n_test=None, quiet=False):
    """The dataset, cut to the first n_train and n_test samples; --max-bytes and --keep, when the command
    line gave them, go to ``load_dataset`` (text datasets only)."""
    from greedy.data import dataset_key, load_dataset
    ctx = click.get_current_context(silent=True)
    text = {k: ctx.meta[f"greedy.data.{k}"] for k in TEXT_OPTIONS if ctx and f"greedy.data.{k}" in ctx.meta}
    if text and dataset_key(dataset).partition(":")[0] not in ("loghub", "lines"):
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in text)
        verb = "apply" if len(text) > 1 else "applies"
        raise ConfigError(f"{flags} {verb} to text datasets (loghub:<task>, lines:<PATH>), not {dataset}")
    data = load_dataset(dataset, data_dir=data_dir, seed=seed, synthetic_size=(n_train or 2000, n_test or 500),
                        progress=not quiet, quiet=quiet, **text)
    if n_train or n_test:
        data = data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train],
                             x_test=data.x_test[:n_test], y_test=data.y_test[:n_test])
    return data


def read_config_file(path):
    """The options of a run's config.json: {name: value} for train."""
    try:
        saved = read_run_config(path)
    except GreedyError as e:
        raise ConfigError(f"--config {e}") from None
    if saved["method"] not in METHODS:
        raise ConfigError(f"--config {path}: not a greedy run config (no known method)")
    return saved
