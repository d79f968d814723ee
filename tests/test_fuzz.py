"""Fuzzing every file format greedy reads: seeded random mutations of valid files end in a valid load or in
greedy's own error (a GreedyError subclass), never in another exception or a crash.

Formats: gzipped IDX images and labels; the CIFAR-10 tar.gz and its pickled batches; the sequence
sets' text files (a UCR .tsv, a loghub structured CSV, a lines: train.tsv/test.tsv pair); model files of
both kinds (greedy-sequential, greedy-binary); checkpoints of both kinds (layer-wise, end to end); a
run's config.json. Mutations: truncation, flipped bytes, changed header integers, swapped arrays, and changed
values in the JSON meta. A file that loads is used as the next step would use it (a model predicts, a
checkpoint is restored into its trainer and the run goes on), so no damaged value reaches a kernel unseen.
"""
import collections
import gzip
import io
import json
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import greedy.runs as runs
from greedy import checkpoint
from greedy.cli import main
from greedy.data import load_dataset
from greedy.data.images import load_cifar10, load_idx_pair, read_cifar_batch
from greedy.data.loghub import read_loghub
from greedy.data.text import load_lines
from greedy.data.ucr import read_ucr_file
from greedy.errors import CheckpointError, ConfigError, GreedyError
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.methods.layerwise import train_layerwise
from greedy.modelfile import load as load_model
from greedy.monitor import Monitor

SEED = 20261130
SMALL = ["--dataset", "synthetic-grey", "--n-train", "120", "--n-test", "40", "--threads", "2", "--quiet"]
RUNS = {"aux": ["--method", "aux", "--arch", "c4k3-bn-relu-max2-c4k3-bn-relu-drop0.2", "--final-min-steps", "20",
                "--final-hidden", "fc8-relu-drop0.3"],
        "binary": ["--method", "binary", "--arch", "c8-or2-c8", "--patch-sample", "1000", "--final-min-steps", "20"],
        "e2e": ["--method", "e2e", "--arch", "c4k3-relu-max2-fc8-relu-drop0.3-fc10", "--epochs", "2"]}


# ---------------------------------------------------------------- mutations

def truncate(data, rng):
    return data[:int(rng.integers(0, len(data)))]


def flip(data, rng):
    b = bytearray(data)
    for i in rng.integers(0, len(b), int(rng.integers(1, 9))):
        b[i] ^= int(rng.integers(1, 256))
    return bytes(b)


ODD_INTS = (0, 1, -1, 2, 3, 255, 2**31 - 1, 2**32 - 1, 2**63, -2**40, 10**12)


def odd_value(v, rng):
    """A value of another kind or size than ``v``, for a JSON leaf."""
    choices = [None, "x", [], {}, True, 1.5e300, float("nan")] + list(ODD_INTS)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        choices += [v + 1, v - 1, -v, v * 1000]
    if isinstance(v, str):
        choices += [v + "-fc99999999", v[:len(v) // 2], v.upper()]
    if isinstance(v, list) and v:
        choices += [v[:-1], v + v[-1:], list(reversed(v))]
    return choices[int(rng.integers(len(choices)))]


def mutate_json(obj, rng):
    """obj with one leaf (or container) somewhere inside replaced by ``odd_value``."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = list(obj)[int(rng.integers(len(obj)))]
        return dict(obj, **{key: mutate_json(obj[key], rng)})
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = int(rng.integers(len(obj)))
        return obj[:i] + [mutate_json(obj[i], rng)] + obj[i + 1:]
    return odd_value(obj, rng)


def npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def mutate_npz(data, rng):
    """Raw byte damage, or a well-formed archive whose arrays or JSON meta were changed."""
    kind = int(rng.integers(6))
    if kind == 0:
        return truncate(data, rng)
    if kind == 1:
        return flip(data, rng)
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    names = sorted(k for k in arrays if k != "meta")
    if kind == 2 and len(names) > 1:  # swapped arrays
        a, b = rng.choice(names, 2, replace=False)
        arrays[a], arrays[b] = arrays[b], arrays[a]
    elif kind == 3:  # one array dropped, reshaped, retyped, poisoned or emptied
        name = names[int(rng.integers(len(names)))]
        a, how = arrays[name], int(rng.integers(5))
        arrays[name] = [lambda: None, lambda: a.reshape(-1), lambda: a.astype(np.int64),
                        lambda: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a) if a.dtype.kind == "f"
                        else a[:0], lambda: np.zeros((3,) * max(a.ndim, 1), a.dtype)][how]()
        if arrays[name] is None:
            del arrays[name]
    else:  # changed header integers and values of the meta
        meta = json.loads(str(arrays["meta"]))
        arrays["meta"] = np.array(json.dumps(mutate_json(meta, rng)))
    return npz_bytes(arrays)


def idx_raw(arr):
    head = (0x800 + arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def mutate_idx(raw, rng):
    """Damage an uncompressed IDX file (header integers, bytes, length) or its gzip stream."""
    kind = int(rng.integers(5))
    if kind == 0:  # a header integer: the magic or a dimension
        b = bytearray(raw)
        ndim = raw[3]
        field = int(rng.integers(0, 1 + min(ndim, 3)))
        b[4 * field:4 * field + 4] = (int(rng.choice(ODD_INTS[:8])) % 2**32).to_bytes(4, "big")
        return gzip.compress(bytes(b))
    if kind == 1:
        return gzip.compress(truncate(raw, rng))
    if kind == 2:
        return gzip.compress(flip(raw[:16], rng) + raw[16:])
    data = gzip.compress(raw)
    return truncate(data, rng) if kind == 3 else flip(data, rng)


def cifar_pickle(x, y):
    return pickle.dumps({b"batch_label": b"batch", b"labels": [int(v) for v in y], b"data": x.reshape(len(x), -1),
                         b"filenames": [b"f.png"] * len(x)}, protocol=2)


def cifar_tar(batches):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def mutate_cifar(batches, rng):
    """A damaged CIFAR archive: its tar.gz bytes, its tar headers, or one pickled batch inside it."""
    kind = int(rng.integers(4))
    if kind == 0:
        return truncate(cifar_tar(batches), rng)
    if kind == 1:
        return flip(cifar_tar(batches), rng)
    if kind == 2:  # the uncompressed tar: header fields (names, sizes, checksums) and contents
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in batches.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        raw = bytearray(buf.getvalue())
        block = 512 * int(rng.integers(0, len(raw) // 512))
        raw[block + int(rng.integers(0, 512))] ^= int(rng.integers(1, 256))
        return gzip.compress(bytes(raw))
    name = list(batches)[int(rng.integers(len(batches)))]
    return cifar_tar(dict(batches, **{name: mutate_pickle(batches[name], rng)}))


def mutate_pickle(data, rng):
    kind = int(rng.integers(3))
    if kind == 0:
        return truncate(data, rng)
    if kind == 1:
        return flip(data, rng)
    batch = pickle.loads(data, encoding="bytes")
    key = [b"data", b"labels"][int(rng.integers(2))]
    value = batch[key]
    a = np.asarray(value)
    batch[key] = [value[:-1], value[:0], a.astype(np.float64), "labels", None, a[..., :5],
                  (a.ravel()[:len(a)] + 10).tolist(), a.astype(np.int16)][int(rng.integers(8))]
    return pickle.dumps(batch, protocol=2)


def mutate_text(data, rng):
    """A damaged text table: cut short, flipped bytes, a line dropped or doubled, a field or separator changed."""
    kind = int(rng.integers(5))
    if kind == 0:
        return truncate(data, rng)
    if kind == 1:
        return flip(data, rng)
    lines = data.split(b"\n")
    i = int(rng.integers(len(lines)))
    if kind == 2:
        return b"\n".join(lines[:i] + lines[i + 1:] if rng.random() < 0.5 else lines[:i + 1] + lines[i:])
    sep = b"\t" if b"\t" in lines[i] else b","
    fields = lines[i].split(sep)
    j = int(rng.integers(len(fields)))
    fields[j] = [b"", b"nan", b"1e999", b"-", b"x\ty", b'"', b"\xff\xfe", fields[j] * 50][int(rng.integers(8))]
    lines[i] = (b";" if kind == 4 else sep).join(fields)
    return b"\n".join(lines)


# ---------------------------------------------------------------- the valid files

class Resuming(Monitor):
    """A monitor that hands a loop a saved state, as a resumed run's folder does."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def resumed(self, kind):
        if self.state.kind != kind:
            raise CheckpointError(f"a {self.state.kind} checkpoint for a {kind} run")
        return self.state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files of every format: run folders (models, checkpoints, config.json), IDX and CIFAR files."""
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name, args in RUNS.items():
        assert CliRunner().invoke(main, ["train", *SMALL, *args, "--out", str(root / name)]).exit_code == 0
        out[f"model-{name}"] = (root / name / "model.npz").read_bytes()
        stop = {"aux": 3, "binary": 2, "e2e": 1}[name]
        original, calls = runs.Run.checkpoint, []

        def checkpoint_then_stop(self, make_state, stop=stop, original=original, calls=calls):
            calls.append(1)
            if len(calls) == stop:
                self.stop_signal = 15
            return original(self, make_state)
        runs.Run.checkpoint = checkpoint_then_stop
        try:
            cut = root / f"{name}-cut"
            assert CliRunner().invoke(main, ["train", *SMALL, *args, "--out", str(cut)]).exit_code == 143
        finally:
            runs.Run.checkpoint = original
        out[f"checkpoint-{name}"] = (cut / "checkpoint.npz").read_bytes()
        out[f"config-{name}"] = json.loads((cut / "config.json").read_text())
    mnist = load_dataset("mnist", quiet=True)
    out["idx"] = (idx_raw(mnist.x_train[:64, 0]), idx_raw(mnist.y_train[:64].astype(np.uint8)))
    rng = np.random.default_rng(0)
    out["cifar"] = {n: cifar_pickle(rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 8))
                    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    data_root = Path(os.environ.get("GREEDY_DATA") or Path(__file__).parents[2] / "shared" / "data")
    with open(data_root / "ucr" / "UCRArchive_2018" / "FordA" / "FordA_TRAIN.tsv", "rb") as f:
        out["ucr"] = b"".join(f.readline() for _ in range(12))
    with open(data_root / "loghub" / "Apache" / "Apache_2k.log_structured.csv", "rb") as f:
        out["loghub"] = b"".join(f.readline() for _ in range(60))
    out["lines"] = b"".join(b"%d\tline %d says %s\n" % (i % 3, i, b"ab" * (i % 7)) for i in range(40))
    out["data"] = load_dataset("synthetic-grey", synthetic_size=(120, 40), seed=0)
    return root, out


def read_text_table(fmt, blob, folder):
    """Write a mutated text table where its reader looks and read it."""
    if fmt == "ucr":
        (folder / "x.tsv").write_bytes(blob)
        return read_ucr_file(folder / "x.tsv")
    if fmt == "loghub":
        (folder / "Apache").mkdir(exist_ok=True)
        (folder / "Apache" / "Apache_2k.log_structured.csv").write_bytes(blob)
        return read_loghub(folder)
    (folder / "train.tsv").write_bytes(blob)
    (folder / "test.tsv").write_bytes(blob[:len(blob) // 2])
    return load_lines(folder, max_bytes=64)


# ---------------------------------------------------------------- what a reader does with each file

def read_model(path, data):
    model = load_model(str(path))
    model.predict_logits(data.x_test[:4])


def read_checkpoint(path, data, config):
    state, info = checkpoint.load(str(path))
    method = METHODS[config["method"]]
    family = configs.family_of(data.x_train.shape[1:], data.x_train.dtype)
    resolved = runs.resolve_recorded(method, family, 10, config["options"], "none", "config.json")
    if state.kind == "e2e":
        method.fit(data.x_train, data.y_train, 10, resolved, Resuming(state), None)
        return
    trainer = method.trainer_class(resolved, 10)
    rng = np.random.default_rng(0)
    model, _ = train_layerwise(trainer, data.x_train, data.y_train, None, Resuming(state), rng)
    model.predict_logits(data.x_test[:4])


def read_config(path, data):
    saved = runs.read_run_config(str(path))
    if saved["method"] not in METHODS:
        raise ConfigError("unknown method")
    family = configs.family_of(data.x_train.shape[1:], data.x_train.dtype)
    runs.resolve_recorded(METHODS[saved["method"]], family, 10, saved.get("options", {}), "none", str(path))


def test_random_mutations_of_every_format_load_or_fail_with_a_greedy_error(files, tmp_path, capsys):
    root, valid = files
    data = valid["data"]
    rng = np.random.default_rng(SEED)
    counts = collections.defaultdict(collections.Counter)
    plan = ([("idx", 110), ("cifar", 90), ("ucr", 40), ("loghub", 40), ("lines", 40)] + [(f"model-{m}", 45) for m in ("aux", "binary", "e2e")]
            + [(f"checkpoint-{m}", 40) for m in ("aux", "binary", "e2e")] + [("config", 60)])
    t0 = time.perf_counter()
    for fmt, n in plan:
        for i in range(n):
            path = tmp_path / f"{fmt}-{i}"
            if fmt == "idx":
                images, labels = valid["idx"]
                which = int(rng.integers(2))
                (tmp_path / "x.gz").write_bytes(mutate_idx(images, rng) if which == 0 else gzip.compress(images))
                (tmp_path / "y.gz").write_bytes(mutate_idx(labels, rng) if which == 1 else gzip.compress(labels))
                read = lambda: load_idx_pair(tmp_path / "x.gz", tmp_path / "y.gz")  # noqa: E731
            elif fmt == "cifar":
                if rng.random() < 0.3:  # one pickled batch on its own
                    blob = mutate_pickle(valid["cifar"]["data_batch_1"], rng)
                    read = lambda blob=blob: read_cifar_batch(blob, "data_batch_1")  # noqa: E731
                else:
                    path.write_bytes(mutate_cifar(valid["cifar"], rng))
                    read = lambda path=path: load_cifar10(path)  # noqa: E731
            elif fmt in ("ucr", "loghub", "lines"):
                folder = tmp_path / f"{fmt}-{i}"
                folder.mkdir()
                blob = mutate_text(valid[fmt], rng)
                read = lambda fmt=fmt, blob=blob, folder=folder: read_text_table(fmt, blob, folder)  # noqa: E731
            elif fmt == "config":
                name = ("aux", "binary", "e2e")[i % 3]
                text = json.dumps(valid[f"config-{name}"], indent=2)
                path.write_text(json.dumps(mutate_json(json.loads(text), rng)) if i % 2 else
                                (truncate(text.encode(), rng) if rng.random() < 0.5 else flip(text.encode(), rng))
                                .decode("latin-1"))
                read = lambda path=path: read_config(path, data)  # noqa: E731
            else:
                path.write_bytes(mutate_npz(valid[fmt], rng))
                name = fmt.split("-")[1]
                read = ((lambda path=path: read_model(path, data)) if fmt.startswith("model") else
                        (lambda path=path, name=name: read_checkpoint(path, data, valid[f"config-{name}"])))
            try:
                read()
                counts[fmt]["valid load"] += 1
            except GreedyError as e:
                assert len(str(e).splitlines()) == 1, str(e)
                counts[fmt][type(e).__name__] += 1
    seconds = time.perf_counter() - t0
    total = sum(sum(c.values()) for c in counts.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} mutations in {seconds:.1f} s")
        for fmt, c in counts.items():
            print(f"  {fmt:18s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    assert total >= 500 and seconds < 60
    for fmt, c in counts.items():
        assert sum(v for k, v in c.items() if k != "valid load") > 0, fmt  # every format met real damage
