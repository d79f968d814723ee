"""Fused ensembles: n small models joined at the final linear + softmax layer only.

Each member is trained end to end on its own (``fit``). The fused model keeps
the members' layers up to their last hidden features ("trunks"),
concatenates those features and puts one new Dense classifier on top (fresh
initialisation, not the members' classifiers). The head is trained on the
frozen trunks' features; optionally the whole fused model is fine-tuned.
``compare_ensemble`` reports each member, the average of the members'
softmax outputs, and the fused model.
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.nn.layers import Dense
from greedy.nn.model import Model, Sequential, build_model
from greedy.nn.optim import make_optimizer
from greedy.nn.fit import accuracy, fit, predict

SMALL_CNN = "c8k5-relu-max2-c16k5-relu-max2-fc64-relu-fc{n_classes}"

# Spawn keys of the named children of np.random.SeedSequence(seed) in compare_ensemble.
MEMBERS, FUSED, FINETUNE = range(3)


def _stream(seed, *key):
    """A Generator on the descendant ``key`` of ``seed`` (int or SeedSequence): its spawned child key[0], that
    child's child key[1], and so on. ``seed``'s own spawn counter is not moved."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=ss.spawn_key + key))


class FusedEnsemble(Model):
    """Trunks (Sequentials without classifier) whose flattened outputs are concatenated into ``head`` (a Dense).

    forward(x (N, ...), train) -> logits (N, K); backward(dy, input_grad) returns the sum of the
    trunks' input gradients; parameters()/gradients() list the trunks' arrays in member order,
    then the head's, so ``fit`` and the optimisers work unchanged.
    """

    def __init__(self, trunks, head):
        self.trunks = list(trunks)
        self.head = head
        self.layers = [layer for t in self.trunks for layer in t.layers] + [head]

    def features(self, x, train=False):
        """Concatenated trunk outputs (N, sum of feature sizes)."""
        feats = [t.forward(x, train).reshape(len(x), -1) for t in self.trunks]
        self.sizes = [f.shape[1] for f in feats]
        return np.concatenate(feats, axis=1)

    def forward(self, x, train=False):
        return self.head.forward(self.features(x, train), train)

    def backward(self, dy, input_grad=True):
        dfeat = self.head.backward(dy)
        start, dx = 0, None
        for t, size in zip(self.trunks, self.sizes):
            part = dfeat[:, start:start + size]
            g = t.backward(part.reshape((len(dy),) + tuple(t.out_shape)), input_grad=input_grad)
            dx = g if dx is None else dx + g
            start += size
        return dx

    def parameters(self):
        return [p for t in self.trunks for p in t.parameters()] + [self.head.params[k] for k in sorted(self.head.params)]

    def gradients(self):
        return [g for t in self.trunks for g in t.gradients()] + [self.head.grads[k] for k in sorted(self.head.params)]


def trunk(model):
    """The model without its last (classifier) layer, sharing the layer objects."""
    if len(model.layers) < 2 or not isinstance(model.layers[-1], Dense):
        raise ConfigError(f"model {model.spec()} has no classifier on top of hidden layers to remove")
    t = Sequential(model.layers[:-1])
    t.in_shape = model.in_shape
    t.out_shape = model.layers[-1].in_shape
    return t


def average_outputs(models, x, prepare=None, batch_size=500):
    """Mean of the members' softmax probabilities (N, K) on raw inputs x."""
    probs = 0.0
    for m in models:
        z = predict(m, x, prepare, batch_size).astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs = probs + z / z.sum(axis=1, keepdims=True)
    return probs / len(models)


def fuse(models, x, y, prepare=None, epochs=5, lr=1e-2, batch_size=128, seed=0, finetune_epochs=0.0,
         finetune_lr=None):
    """Fuse trained ``models`` at the classifier: returns a ``FusedEnsemble`` with a newly trained head.

    x (N, ...) raw inputs (``prepare`` maps a batch to model input), y (N,) int labels.
    The head is a fresh Dense(K) (K = classes of the members) trained with Adam on
    the concatenated features of the frozen trunks; with ``finetune_epochs`` > 0
    everything is then trained together at ``finetune_lr`` (default lr / 100).
    ``seed`` (int or ``np.random.SeedSequence``): its spawned children give the head's
    initial weights, the head's batches and the fine-tuning batches.
    """
    if not models:
        raise ConfigError("fuse needs at least one model")
    n_classes = models[0].layers[-1].units
    if any(m.layers[-1].units != n_classes for m in models):
        raise ConfigError("the models to fuse must have the same number of classes")
    trunks = [trunk(m) for m in models]
    dtype = models[0].parameters()[0].dtype
    feats = np.concatenate([predict(t, x, prepare).reshape(len(x), -1) for t in trunks], axis=1).astype(dtype)
    init, batches, finetune = (_stream(seed, k) for k in range(3))
    head = Sequential([Dense(n_classes, init="glorot")]).build((feats.shape[1],), init, dtype)
    fit(head, feats, y, make_optimizer("adam", lr, "cosine"), epochs=epochs, batch_size=batch_size,
        rng=batches, label="fused head")
    fused = FusedEnsemble(trunks, head.layers[0])
    if finetune_epochs > 0:
        fit(fused, x, y, make_optimizer("adam", finetune_lr or lr / 100, "cosine"), epochs=finetune_epochs,
            batch_size=batch_size, prepare=prepare, rng=finetune, label="fused finetune")
    return fused


def compare_ensemble(data, normalizer, n_members=3, arch=SMALL_CNN, epochs=1.0, batch_size=128, lr=1e-3,
                     head_epochs=5.0, head_lr=1e-2, finetune_epochs=0.0, seed=0, log=None):
    """Train ``n_members`` models of ``arch``, fuse them, and compare on the test set.

    data: a ``Dataset`` (uint8 NCHW); normalizer maps raw batches to float input.
    Returns a dict: member_accuracy (list), member_seconds, average_accuracy,
    fused_accuracy, fused_head_seconds, fused_parameters (and finetuned_accuracy
    when ``finetune_epochs`` > 0). ``log(name, **fields)`` is called after each stage.
    Random streams: the named children ``MEMBERS`` (member i: its child (i, 0) for
    the initial weights, (i, 1) for the batches), ``FUSED`` and ``FINETUNE`` of
    ``np.random.SeedSequence(seed)``.
    """
    import time
    n_classes = len(data.class_names)
    spec = arch.format(n_classes=n_classes)
    members, accs, secs = [], [], []
    for i in range(n_members):
        model = build_model(spec, data.x_train.shape[1:], n_classes, _stream(seed, MEMBERS, i, 0))
        t = time.perf_counter()
        fit(model, data.x_train, data.y_train, make_optimizer("adam", lr, "cosine"), epochs=epochs,
            batch_size=batch_size, prepare=normalizer, rng=_stream(seed, MEMBERS, i, 1),
            label=f"member {i}")
        secs.append(time.perf_counter() - t)
        accs.append(accuracy(model, data.x_test, data.y_test, normalizer))
        members.append(model)
        if log:
            log("member", member=i, test_accuracy=accs[-1], seconds=secs[-1])
    avg = float((average_outputs(members, data.x_test, normalizer).argmax(axis=1) == data.y_test).mean())
    t = time.perf_counter()
    fused = fuse(members, data.x_train, data.y_train, normalizer, epochs=head_epochs, lr=head_lr,
                 batch_size=batch_size, seed=np.random.SeedSequence(seed, spawn_key=(FUSED,)))
    out = {"arch": spec, "n_members": n_members, "member_accuracy": accs, "member_seconds": secs,
           "average_accuracy": avg, "fused_accuracy": accuracy(fused, data.x_test, data.y_test, normalizer),
           "fused_head_seconds": time.perf_counter() - t, "fused_parameters": fused.n_parameters()}
    if log:
        log("fused", average_accuracy=avg, fused_accuracy=out["fused_accuracy"])
    if finetune_epochs > 0:
        fit(fused, data.x_train, data.y_train, make_optimizer("adam", lr / 10, "cosine"), epochs=finetune_epochs,
            batch_size=batch_size, prepare=normalizer, rng=_stream(seed, FINETUNE), label="fused finetune")
        out["finetuned_accuracy"] = accuracy(fused, data.x_test, data.y_test, normalizer)
        if log:
            log("finetuned", finetuned_accuracy=out["finetuned_accuracy"])
    return out
