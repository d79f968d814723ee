"""The manifest of a set of sites: which data the sites hold, and where each one keeps its shard.

A manifest is a JSON file::

    {"format": "greedy-sites", "version": 1,
     "dataset": "cifar10", "class_names": ["airplane", ...], "sample_shape": [3, 32, 32], "dtype": "uint8",
     "test": "test.npz",
     "sites": [{"name": "site-0", "resource": "site-0", "path": "/data/greedy/site-0", "samples": 25000}, ...]}

``dataset`` names the dataset the test split comes from (``evaluate`` reloads it), ``test`` is the
coordinator's test split (an npz of ``x`` and ``y``). Each site has a ``name``, the Dask worker
resource ``resource`` its workers are started with (``dask worker --resources "site-0=1"``), the
folder ``path`` on that site's machines holding ``x.npy`` and ``y.npy``, and optionally its number
of ``samples``. Relative paths are relative to the manifest's folder (for sites on this machine).
"""
import json
import os
import re

import numpy as np

from greedy import atomic
from greedy.errors import ConfigError

FORMAT = "greedy-sites"
VERSION = 1
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ManifestError(ConfigError):
    """A manifest that cannot be read or does not describe a set of sites."""


def read_manifest(path):
    """The checked manifest at ``path`` as a dict, with every path made absolute."""
    try:
        with open(path) as f:
            m = json.load(f)
    except OSError as e:
        raise ManifestError(f"cannot read the manifest {path}: {e.strerror}") from None
    except ValueError as e:
        raise ManifestError(f"{path} is not JSON: {e}") from None
    return check_manifest(m, path)


def check_manifest(m, where="manifest"):
    """``m`` checked (ManifestError naming what is wrong) with paths resolved against ``where``'s folder."""
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ManifestError(f"{where}: not a greedy sites manifest (format {FORMAT!r}, version {VERSION})")
    for key, kind in (("dataset", str), ("class_names", list), ("sample_shape", list), ("dtype", str),
                      ("test", str), ("sites", list)):
        if not isinstance(m.get(key), kind):
            raise ManifestError(f"{where}: {key!r} must be a {kind.__name__}")
    if len(m["class_names"]) < 2 or not all(isinstance(c, str) for c in m["class_names"]):
        raise ManifestError(f"{where}: class_names must list at least two names")
    if not m["sample_shape"] or not all(isinstance(s, int) and s > 0 for s in m["sample_shape"]):
        raise ManifestError(f"{where}: sample_shape must be positive integers, got {m['sample_shape']}")
    if m["dtype"] not in ("uint8", "float32"):
        raise ManifestError(f"{where}: dtype must be uint8 or float32, got {m['dtype']!r}")
    if not m["sites"]:
        raise ManifestError(f"{where}: no sites")
    base = os.path.dirname(os.path.abspath(where)) if where != "manifest" else os.getcwd()
    names, tags, sites = set(), set(), []
    for i, s in enumerate(m["sites"]):
        if not isinstance(s, dict):
            raise ManifestError(f"{where}: site {i} must be an object with name, resource and path")
        for key in ("name", "resource", "path"):
            if not isinstance(s.get(key), str) or not s[key]:
                raise ManifestError(f"{where}: site {i} needs a non-empty string {key!r}")
        if not _TAG.fullmatch(s["resource"]):
            raise ManifestError(f"{where}: site {s['name']!r}: resource {s['resource']!r} must be letters, digits, "
                                f"'_', '.' or '-'")
        if s["name"] in names or s["resource"] in tags:
            raise ManifestError(f"{where}: site {s['name']!r}: names and resources must be unique")
        if "samples" in s and not (isinstance(s["samples"], int) and s["samples"] > 0):
            raise ManifestError(f"{where}: site {s['name']!r}: samples must be a positive integer")
        names.add(s["name"])
        tags.add(s["resource"])
        sites.append(dict(s, path=os.path.join(base, s["path"])))
    return dict(m, test=os.path.join(base, m["test"]), sites=sites)


def write_manifest(path, dataset, class_names, sample_shape, dtype, test, sites):
    """Write a manifest (atomically); ``sites`` a list of dicts with name, resource, path (, samples)."""
    m = {"format": FORMAT, "version": VERSION, "dataset": dataset, "class_names": list(class_names),
         "sample_shape": [int(s) for s in sample_shape], "dtype": str(np.dtype(dtype)), "test": test,
         "sites": sites}
    check_manifest(m, path)
    atomic.write_json(path, m)
    return m


def read_test_split(manifest):
    """(x_test, y_test) of the coordinator, checked against the manifest."""
    path = manifest["test"]
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except (OSError, KeyError, ValueError) as e:
        raise ManifestError(f"cannot read the test split {path}: {e}") from None
    if tuple(x.shape[1:]) != tuple(manifest["sample_shape"]) or len(x) != len(y) or x.dtype != manifest["dtype"]:
        raise ManifestError(f"{path}: samples {x.dtype}{tuple(x.shape)} do not match the manifest's "
                            f"{manifest['dtype']}{tuple(manifest['sample_shape'])}")
    if y.min() < 0 or y.max() >= len(manifest["class_names"]):
        raise ManifestError(f"{path}: labels outside 0..{len(manifest['class_names']) - 1}")
    return x, y.astype(np.int64)
