"""Checkpoints of a training run, and the checks that guard everything read back from one.

``checkpoint.npz`` in the run folder is an npz archive (read with ``allow_pickle=False``) whose
``meta`` entry is a JSON object: ``format`` ("greedy-checkpoint"), ``version``, ``kind``
("layerwise" or "e2e"), ``method``, ``seconds`` (training time so far), ``data`` (a fingerprint
of the training set), ``rng`` (the run generator's ``bit_generator.state``) and

- layer-wise: ``specs`` (every block's spec), ``blocks`` (one JSON object per finished block,
  from the trainer's ``block_state``), ``per_layer`` (the summary rows so far) and
  ``classifier`` (null, or {accuracy, rngs} once the final classifier is trained); arrays
  ``block/<k>/<name>`` and ``classifier/<name>``;
- end to end: ``epochs_done``, ``n_epochs``, ``fit_seconds``, ``model_rngs`` and ``optimizer``
  ({t, has_state}); arrays ``model/<name>`` and ``optim/<i>/<j>``.

Arrays of layers are ``param/<layer index>/<name>`` and ``buffer/<layer index>/<name>``; a
layer with its own random stream (dropout) keeps its state in the meta's ``rngs``. The file is
written atomically (``greedy.atomic``): a reader sees the last complete checkpoint or none.
Every value read back is checked (type, shape, dtype, finiteness) before it is used, and any
damage is a one-line ``CheckpointError``.
"""
import contextlib
import errno
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from greedy import atomic
from greedy.errors import CheckpointError, GreedyError
from greedy.modelfile import read_npz
from greedy.monitor import plain

FILE = "checkpoint.npz"
FORMAT = "greedy-checkpoint"
VERSION = 1


class WriteError(GreedyError):
    """A file of a run could not be written (full disk, no permission, read-only file system)."""
    exit_code = 1


def write_error(path, exc):
    """A one-line ``WriteError`` naming ``path`` and the cause of ``exc`` (an OSError)."""
    code = errno.errorcode.get(exc.errno, "") if isinstance(getattr(exc, "errno", None), int) else ""
    cause = " ".join(str(exc.strerror or exc or type(exc).__name__).split())
    return WriteError(f"cannot write {path}: {cause}{f' ({code})' if code else ''}")


@contextlib.contextmanager
def writing(path):
    """Turn an OSError raised inside the block into a ``WriteError`` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from None


def fingerprint(*arrays):
    """A short hex digest of the shapes, dtypes and bytes of ``arrays`` (e.g. the training set)."""
    h = hashlib.blake2b(digest_size=12)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------- random streams

def rng_state(rng):
    """The JSON-ready state of a Generator."""
    return rng.bit_generator.state


def set_rng_state(rng, state, where):
    """Set a Generator's state from ``rng_state`` output read from a file."""
    kind = rng.bit_generator.state["bit_generator"]
    if not isinstance(state, dict) or state.get("bit_generator") != kind:
        raise CheckpointError(f"{where}: random state is not a {kind} state")
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{where}: bad random state ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- layers and optimisers

def layer_arrays(layers, prefix=""):
    """({name: array} of the params and buffers of ``layers``, {layer index: rng state}) to save."""
    arrays, rngs = {}, {}
    for i, layer in enumerate(layers):
        for group, store in (("param", layer.params), ("buffer", getattr(layer, "buffers", {}))):
            for k, v in store.items():
                arrays[f"{prefix}{group}/{i}/{k}"] = v
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            rngs[str(i)] = rng_state(layer.rng)
    return arrays, rngs


def load_layer_arrays(layers, arrays, rngs, where, prefix=""):
    """Copy saved arrays into built ``layers`` (from ``layer_arrays``), after checking that the keys,
    shapes and float dtypes match and that every value is finite."""
    expected = set()
    for i, layer in enumerate(layers):
        for group, store in (("param", layer.params), ("buffer", getattr(layer, "buffers", {}))):
            for k, target in store.items():
                key = f"{prefix}{group}/{i}/{k}"
                expected.add(key)
                a = arrays.get(key)
                if a is None or a.shape != target.shape or a.dtype.kind != "f":
                    got = "missing" if a is None else f"{a.dtype} {a.shape}"
                    raise CheckpointError(f"{where}: array {key} is {got}, expected float {target.shape}")
                if not np.isfinite(a).all():
                    raise CheckpointError(f"{where}: array {key} holds NaN or infinite values")
                if not fits_float(a, target.dtype) or (group == "buffer" and k == "var" and (a < 0).any()):
                    raise CheckpointError(f"{where}: array {key} holds values out of range")
                target[...] = a
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            if not isinstance(rngs, dict) or str(i) not in rngs:
                raise CheckpointError(f"{where}: no random state for layer {i} ({layer.spec()})")
            set_rng_state(layer.rng, rngs[str(i)], f"{where}: layer {i}")
    extra = sorted(k for k in arrays if k.startswith(prefix) and k not in expected)
    if extra:
        raise CheckpointError(f"{where}: array {extra[0]} does not belong to the architecture")


def fits_float(a, dtype):
    """Whether float array ``a`` keeps finite values in ``dtype`` (float16/32 overflow otherwise)."""
    return a.size == 0 or float(np.abs(a).max()) <= float(np.finfo(dtype).max)


def _param_count(layer, shape):
    """An upper bound of the parameter values ``layer.build(shape)`` creates."""
    if hasattr(layer, "units"):
        return math.prod(shape) * layer.units
    if hasattr(layer, "filters") and hasattr(layer, "kernel_size"):
        return layer.filters * shape[0] * layer.kernel_size ** max(len(shape) - 1, 1)
    if hasattr(layer, "vocab"):
        return layer.vocab * layer.dim
    return 4 * shape[0] if shape else 0


def build_within(model, in_shape, rng, limit, where):
    """``model.build(in_shape, rng)`` for an architecture read from a file, refusing (CheckpointError)
    before any layer would create more than ``limit`` parameter values: a damaged spec or input
    shape must not allocate without bound. Returns the built model (use it: a spec that turns out
    to be 1-D is rebuilt as a new model)."""
    pending = getattr(model, "_pending_spec", None)
    if pending is not None and len(in_shape) == 2:  # a spec read before its input showed it was 1-D
        from greedy.nn.model import Sequential
        model = Sequential.from_spec(pending, ndim=1)
    originals = []
    for layer in model.layers:
        def guarded(shape, rng_, dtype=np.float32, layer=layer, build=layer.build):
            n = _param_count(layer, tuple(shape))
            if n > limit:
                raise CheckpointError(f"{where}: layer {layer.spec()} on input {tuple(shape)} would hold {n} "
                                      f"values, more than the {limit} the file holds")
            return build(shape, rng_, dtype)
        originals.append(layer)
        layer.build = guarded
    try:
        return model.build(in_shape, rng)
    except (MemoryError, OverflowError) as e:
        raise CheckpointError(f"{where}: the architecture does not fit in memory ({type(e).__name__})") from None
    finally:
        for layer in originals:
            del layer.build


def float_values(arrays):
    """Number of values in the float arrays of ``arrays``: the bound of a model built from them."""
    return sum(int(a.size) for a in arrays.values() if a.dtype.kind == "f") + 1024


def optimizer_arrays(opt, prefix="optim/"):
    """({name: array}, info) of an optimiser's state (moments and step count)."""
    arrays = {}
    for i, s in enumerate(opt.state or []):
        for j, a in enumerate(s if isinstance(s, tuple) else (s,)):
            arrays[f"{prefix}{i}/{j}"] = a
    return arrays, {"t": int(opt.t), "has_state": opt.state is not None}


def restore_optimizer(opt, params, arrays, info, where, prefix="optim/"):
    """Restore ``optimizer_arrays`` output into an optimiser of ``params`` (checked like layer arrays)."""
    if not isinstance(info, dict) or not _is_int(info.get("t"), 0) or not isinstance(info.get("has_state"), bool):
        raise CheckpointError(f"{where}: bad optimiser state {info!r:.80}")
    expected = set()
    if info["has_state"]:
        state = [opt._init_state(p) for p in params]
        for i, s in enumerate(state):
            for j, target in enumerate(s if isinstance(s, tuple) else (s,)):
                key = f"{prefix}{i}/{j}"
                expected.add(key)
                a = arrays.get(key)
                if a is None or a.shape != target.shape or a.dtype.kind != "f" or not np.isfinite(a).all() \
                        or not fits_float(a, target.dtype) or (j == 1 and (a < 0).any()):  # Adam's 2nd moments
                    raise CheckpointError(f"{where}: optimiser array {key} is missing, of the wrong shape or "
                                          f"dtype, or out of range")
                target[...] = a
        opt.state = state
    extra = sorted(k for k in arrays if k.startswith(prefix) and k not in expected)
    if extra:
        raise CheckpointError(f"{where}: optimiser array {extra[0]} does not fit the model")
    opt.t = info["t"]


# ---------------------------------------------------------------- the two kinds of checkpoint

def _is_int(v, low=None):
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def _need(ok, where, what):
    if not ok:
        raise CheckpointError(f"{where}: {what}")


def _split(arrays, prefix):
    return {k[len(prefix):]: a for k, a in arrays.items() if k.startswith(prefix)}


@dataclass
class LayerwiseState:
    """A layer-wise run after ``len(blocks)`` blocks: each block's (arrays, info) from the trainer's
    ``block_state``, the summary rows, the run generator's state and, once trained, the final
    classifier's (arrays, info)."""
    specs: list
    blocks: list
    per_layer: list
    rng: dict
    classifier: tuple = None
    where: str = "checkpoint"  # the file it was read from, for error messages
    kind = "layerwise"

    def progress(self):
        done = f"{len(self.blocks)} of {len(self.specs)} blocks"
        return f"{done} and the final classifier done" if self.classifier else f"{done} done"

    def to_file(self):
        arrays, infos = {}, []
        for k, (block_arrays, info) in enumerate(self.blocks):
            arrays.update({f"block/{k}/{name}": a for name, a in block_arrays.items()})
            infos.append(info)
        classifier = None
        if self.classifier is not None:
            arrays.update({f"classifier/{name}": a for name, a in self.classifier[0].items()})
            classifier = self.classifier[1]
        return arrays, {"specs": list(self.specs), "blocks": infos, "per_layer": self.per_layer, "rng": self.rng,
                        "classifier": classifier}

    @classmethod
    def from_file(cls, arrays, meta, where):
        specs, infos, rows = meta.get("specs"), meta.get("blocks"), meta.get("per_layer")
        _need(isinstance(specs, list) and specs and all(isinstance(s, str) for s in specs), where, "no block specs")
        _need(isinstance(infos, list) and len(infos) <= len(specs) and all(isinstance(i, dict) for i in infos),
              where, "the finished blocks are not a list of at most one entry per block")
        _need(isinstance(rows, list) and len(rows) == len(infos) and all(isinstance(r, dict) for r in rows),
              where, "the per-layer rows do not match the finished blocks")
        classifier = meta.get("classifier")
        _need(classifier is None or (isinstance(classifier, dict) and len(infos) == len(specs)), where,
              "a final classifier before every block is done")
        known = {f"block/{k}/" for k in range(len(infos))} | {"classifier/"}
        stray = [k for k in arrays if not any(k.startswith(p) for p in known)]
        _need(not stray, where, f"array {stray[0] if stray else ''} belongs to no finished block")
        blocks = [(_split(arrays, f"block/{k}/"), info) for k, info in enumerate(infos)]
        return cls(specs, blocks, rows, meta.get("rng"),
                   None if classifier is None else (_split(arrays, "classifier/"), classifier), where)


@dataclass
class EpochState:
    """An end-to-end run after ``epochs_done`` epochs: the model's and the optimiser's arrays and the
    random states."""
    epochs_done: int
    n_epochs: int
    model: tuple
    optimizer: tuple
    rng: dict
    fit_seconds: float = 0.0
    where: str = "checkpoint"
    kind = "e2e"

    def progress(self):
        return f"{self.epochs_done} of {self.n_epochs} epochs done"

    def to_file(self):
        arrays = {f"model/{k}": a for k, a in self.model[0].items()}
        arrays.update({f"optim/{k}": a for k, a in self.optimizer[0].items()})
        return arrays, {"epochs_done": self.epochs_done, "n_epochs": self.n_epochs, "model_rngs": self.model[1],
                        "optimizer": self.optimizer[1], "rng": self.rng, "fit_seconds": self.fit_seconds}

    @classmethod
    def from_file(cls, arrays, meta, where):
        done, total, seconds = meta.get("epochs_done"), meta.get("n_epochs"), meta.get("fit_seconds")
        _need(_is_int(total, 1) and _is_int(done, 1) and done <= total, where, "bad epoch counts")
        _need(isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
              and seconds >= 0, where, "bad training time")
        stray = [k for k in arrays if not k.startswith(("model/", "optim/"))]
        _need(not stray, where, f"array {stray[0] if stray else ''} belongs to neither the model nor the optimiser")
        return cls(done, total, (_split(arrays, "model/"), meta.get("model_rngs")),
                   (_split(arrays, "optim/"), meta.get("optimizer")), meta.get("rng"), float(seconds), where)


KINDS = {LayerwiseState.kind: LayerwiseState, EpochState.kind: EpochState}


def save(path, state, info):
    """Write ``state`` (a LayerwiseState or EpochState) with the run ``info`` (method, seconds, data)
    to ``path`` atomically; a WriteError leaves the previous file as it was."""
    arrays, meta = state.to_file()
    meta = dict(meta, format=FORMAT, version=VERSION, kind=state.kind, **info)
    with writing(path):
        atomic.save_npz(path, dict(arrays, meta=np.array(json.dumps(plain(meta)))))


def load(path):
    """(state, run info) read from a checkpoint file; CheckpointError naming ``path`` if it is damaged."""
    arrays, meta = read_npz(path, "checkpoint")
    _need(meta.get("format") == FORMAT, path, f"not a greedy checkpoint (format {meta.get('format')!r})")
    _need(meta.get("version") == VERSION, path, f"checkpoint version {meta.get('version')!r}, this greedy "
                                                f"reads version {VERSION}")
    _need(isinstance(meta.get("kind"), str) and meta["kind"] in KINDS, path,
          f"unknown checkpoint kind {meta.get('kind')!r:.40}")
    bad = [k for k, a in arrays.items() if a.dtype.kind not in "fiub"]
    _need(not bad, path, f"array {bad[0] if bad else ''} is not numeric")
    seconds = meta.get("seconds")
    _need(isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
          and seconds >= 0, path, "bad training time")
    _need(isinstance(meta.get("method"), str) and isinstance(meta.get("data"), str), path,
          "no method or data fingerprint")
    state = KINDS[meta["kind"]].from_file(arrays, meta, path)
    return state, {"method": meta["method"], "seconds": float(seconds), "data": meta["data"]}


def epoch_state(epochs_done, n_epochs, model, optimizer, rng, fit_seconds):
    """The state of an end-to-end training after ``epochs_done`` epochs (``greedy.nn.fit``)."""
    return EpochState(epochs_done, n_epochs, layer_arrays(model.layers), optimizer_arrays(optimizer, ""),
                      rng_state(rng), float(fit_seconds))


def restore_epoch_state(saved, model, optimizer, rng, n_epochs):
    """Load a saved ``EpochState`` into the freshly built ``model``, ``optimizer`` and ``rng`` of the same run."""
    if saved.n_epochs != n_epochs:
        raise CheckpointError(f"{saved.where}: a checkpoint of {saved.n_epochs} epochs, the run has {n_epochs}")
    arrays, rngs = saved.model
    load_layer_arrays(model.layers, arrays, rngs, saved.where)
    restore_optimizer(optimizer, model.parameters(), *saved.optimizer, saved.where, prefix="")
    set_rng_state(rng, saved.rng, saved.where)
