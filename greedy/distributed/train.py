"""``run_sites``: one method trained on the sites of a manifest into one run folder, as ``cli.py train --sites`` does.

The run folder is the usual one (``greedy.runs``): config.json (with the manifest, the scheduler
and ``share``), metrics.jsonl (with a ``traffic`` event after every phase), summary.json (with
``traffic``: bytes per phase, and ``raw_shard_bytes``: the size of every site's shard) and
model.npz, the same kind of model file as a single-machine run's. Runs on sites keep no
checkpoint: a run that stops is started again.
"""
import os
import uuid

import numpy as np

from greedy.distributed import require_dask
from greedy.distributed.accounting import Ledger
from greedy.distributed.cluster import Sites, connect, start_local_cluster
from greedy.distributed.manifest import read_manifest, read_test_split
from greedy.errors import ConfigError
from greedy.kernels.compile_time import CompileTimer
from greedy.memory import peak_rss_bytes
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.nn.fit import label_accuracy
from greedy.runs import Run

SITE_METHODS = ("patchbag", "binary")
PROTOTYPES_PER_CLASS = 100


def fit_on_sites(method_name, sites, config, n_classes, image_shape, eval_set, monitor, share="codes",
                 per_class=100, run_key=None):
    """(model, summary fields) of ``method_name`` trained on ``sites`` (a ``cluster.Sites``)."""
    run_key = run_key or uuid.uuid4().hex[:12]
    if method_name == "patchbag":
        from greedy.distributed.patchbag import SitesPatchbag
        return SitesPatchbag(sites, config, n_classes, share, per_class, run_key).fit(image_shape, eval_set, monitor)
    if method_name == "binary":
        from greedy.distributed.binary import SitesBinary
        return SitesBinary(sites, config, n_classes, share, per_class, run_key).fit(image_shape, eval_set, monitor)
    raise ConfigError(f"--sites trains {' or '.join(SITE_METHODS)}, not {method_name}")


def open_sites(manifest, scheduler=None, threads=1, timeout=120.0, processes=True, delays=None):
    """(Sites, close) for ``manifest``: a new local cluster with one worker per site, or a ``Client`` of
    the cluster at ``scheduler``; ``close()`` shuts down what was opened."""
    require_dask()
    cluster = None
    if scheduler:
        client = connect(scheduler, timeout)
    else:
        cluster, client = start_local_cluster(manifest, threads, processes, timeout)

    def close():
        client.close()
        if cluster is not None:
            cluster.close()

    try:
        return Sites(client, manifest, Ledger(client), timeout, delays), close
    except BaseException:
        close()
        raise


def raw_shard_bytes(manifest):
    """{site name: bytes of its x.npy} for sites whose folder this machine sees (else the manifest's
    samples times the sample size)."""
    item = np.dtype(manifest["dtype"]).itemsize * int(np.prod(manifest["sample_shape"]))
    out = {}
    for s in manifest["sites"]:
        path = os.path.join(s["path"], "x.npy")
        out[s["name"]] = os.path.getsize(path) if os.path.isfile(path) else s.get("samples", 0) * item
    return out


def run_sites(method_name, manifest_path, values, out, threads=1, scheduler=None, share="codes", timeout=120.0,
              verbose=True, exist="refuse", processes=True, delays=None):
    """Train ``method_name`` on the sites of the manifest at ``manifest_path`` into run folder ``out``;
    returns the summary dict. ``values`` are the method's options (a dict; None = unset); ``threads``
    those of the coordinator (each local site worker has one); ``timeout`` the seconds a site may
    have no worker; ``processes=False`` keeps the local workers in this process; ``delays`` {site
    name: seconds} slows sites down (tests, latency simulation). With ``share="prototypes"`` each
    site sends ``--image-clusters`` (default PROTOTYPES_PER_CLASS) prototypes per class."""
    require_dask()
    if method_name not in SITE_METHODS:
        raise ConfigError(f"--sites trains {' or '.join(SITE_METHODS)}, not {method_name}")
    manifest = read_manifest(manifest_path)
    x_test, y_test = read_test_split(manifest)
    n_classes = len(manifest["class_names"])
    dataset = manifest["dataset"]
    family = configs.family_of(tuple(manifest["sample_shape"]), manifest["dtype"])
    tta_default = "flip" if dataset in configs.MIRROR_SYMMETRIC else "none"
    config = METHODS[method_name].resolve(family, n_classes, values, tta_default)
    if method_name == "binary" and family in ("series", "text"):
        raise ConfigError(f"binary networks on sites train on uint8 images (N, C, H, W); {dataset} holds sequences, "
                          f"which train in one process (without --sites)")
    if values.get("code_images"):  # a family default (MNIST's) does not apply: sites encode every image
        raise ConfigError("--code-images draws from one training set; on sites every site encodes all its images "
                          "(--share prototypes sends fewer)")
    if hasattr(config, "code_images"):
        config.code_images = 0
    if values.get("mirrors"):  # likewise CIFAR-10's default
        raise ConfigError("--mirrors adds mirror images to one training set; sites propagate only their own images")
    if hasattr(config, "mirrors"):
        config.mirrors = False
    if values.get("final_mix"):  # likewise CIFAR-10's default
        raise ConfigError("--final-mix trains the last block with the classifier on every training image's maps; "
                          "on sites the maps stay where they are")
    if hasattr(config, "final_mix"):
        config.final_mix, config.final_mix_epochs = False, None
    per_class = getattr(config, "image_clusters", 0) or PROTOTYPES_PER_CLASS
    n_train = sum(s.get("samples", 0) for s in manifest["sites"]) or None
    run = Run(out, method_name, dataset, {"seed": config.seed, "threads": threads, "data_dir": None,
                                          "n_train": n_train, "n_test": len(x_test),
                                          "options": configs.to_dict(config),
                                          "sites": os.path.abspath(manifest_path), "scheduler": scheduler,
                                          "share": share, "per_class": per_class, "site_timeout": timeout},
              verbose=verbose, exist=exist)
    try:
        sites, close = open_sites(manifest, scheduler, threads, timeout, processes, delays)
        try:
            run.start()
            with CompileTimer() as compiled:
                model, extra = fit_on_sites(method_name, sites, config, n_classes, manifest["sample_shape"],
                                            (x_test, y_test), run, share, per_class)
            train_seconds = run.seconds()
            site_files = {name: sorted(set(files)) for name, files in sites.opened_files().items()}
        finally:
            close()
        model.class_names = list(manifest["class_names"])
        plain = model.predict_logits(x_test, tta="none")
        test_acc = label_accuracy(plain, y_test)
        extra = dict(extra, test_accuracy_without_tta=test_acc)
        if model.tta == "flip":
            from greedy.nn.network import flip_average, mirror
            test_acc = label_accuracy(flip_average(plain, model.predict_logits(mirror(x_test), tta="none")), y_test)
        run.log("test", test_accuracy=test_acc, test_accuracy_without_tta=extra["test_accuracy_without_tta"])
        model.save(run.path("model.npz"), {"method": method_name, "dataset": dataset})
        raw = raw_shard_bytes(manifest)
        return run.finish(dict({"test_accuracy": test_acc, "train_seconds": round(train_seconds, 3),
                                "compile_seconds": round(compiled.seconds, 3), "n_parameters": model.n_parameters(),
                                "seed": config.seed, "threads": threads, "tta": model.tta,
                                "peak_memory_mb": round(peak_rss_bytes() / 2**20, 1), "sites": len(manifest["sites"]),
                                "raw_shard_bytes": raw, "raw_bytes_total": sum(raw.values()),
                                "traffic": sites.ledger.phases, "traffic_total": sites.ledger.totals(),
                                "site_files": site_files}, **extra))
    finally:
        run.close()
