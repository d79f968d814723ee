"""The final softmax classifier of a layer-wise network, trained on the frozen blocks' features.

Features are standardised for training and the standardisation is folded into the first layer's
weights, so the returned layers apply to raw features.
"""
import numba
import numpy as np

from greedy.errors import ConfigError
from greedy.kernels import pointwise
from greedy.kernels.cast import as_float32
from greedy.nn.activations import Dropout, ReLU, Tanh
from greedy.nn.fit import accuracy, fit
from greedy.nn.layers import Dense
from greedy.nn.model import Sequential, parse_spec
from greedy.nn.optim import make_optimizer

STANDARDIZE_CHUNK_BYTES = 256 * 1024**2


def _row_chunks(x):
    rows = max(1, STANDARDIZE_CHUNK_BYTES // (4 * max(1, x[0].size)))
    for i in range(0, len(x), rows):
        yield i, as_float32(np.ascontiguousarray(x[i:i + rows]).reshape(min(rows, len(x) - i), -1))


def column_mean_std(x, parts=None):
    """Per-column mean and standard deviation (float64, (D,)) of x (N, D), float32 or float16.

    Streams float32 row chunks of at most ``STANDARDIZE_CHUNK_BYTES``. Each chunk's rows are summed
    in ``parts`` (default: Numba's thread count) consecutive ranges, each a running float64 sum
    around the first row, one range a thread (``greedy.kernels.pointwise.row_range_sums``); the
    ranges' sums are then added in order (shorter float64 chains than one running sum).
    """
    parts = parts or numba.get_num_threads()
    shift = as_float32(x[:1]).reshape(-1).astype(np.float64)
    total, total2 = np.zeros_like(shift), np.zeros_like(shift)
    for _, chunk in _row_chunks(x):
        sums, sums2 = pointwise.row_range_sums(chunk, shift, parts)
        for s, s2 in zip(sums, sums2):
            total += s
            total2 += s2
    m = total / len(x)
    return shift + m, np.sqrt(np.maximum(total2 / len(x) - m * m, 0.0))


def standardize(x, mean, std, out=None):
    """(x - mean) / std as float32 (N, D), for x (N, D) float32 or float16 and per-column mean, std (D,);
    computed in float64 (``(x - mean) * (1 / std) + 0.0``, so no -0.0), threaded over float32 row chunks
    of at most ``STANDARDIZE_CHUNK_BYTES`` (``greedy.kernels.pointwise.channel_normalise``). ``out``, a
    float32 (N, D) array or view (e.g. the leading columns of a wider array), receives it."""
    if x.ndim != 2 or x.shape[1] != len(mean) or len(std) != len(mean):
        raise ConfigError(f"standardize: features {x.shape} do not match statistics of {len(mean)} columns")
    d = len(mean)
    if out is not None and (out.shape != (len(x), d) or out.dtype != np.float32):
        raise ConfigError(f"standardize: out must be float32 {(len(x), d)}, got {out.dtype} {out.shape}")
    z = np.empty((len(x), d), np.float32) if out is None else out
    mean, inv, zero = np.asarray(mean, np.float64), 1.0 / np.asarray(std, np.float64), np.zeros(d)
    for i, chunk in _row_chunks(x):
        pointwise.channel_normalise(chunk.reshape(len(chunk), d, 1), mean, inv, zero,
                                    z[i:i + len(chunk)].reshape(len(chunk), d, 1))
    return z


def classifier_layers(hidden, n_classes):
    """Unbuilt layers of the final classifier: the ``hidden`` spec (e.g. 'fc512-relu-drop0.4'; None, ''
    or 'none' for none) followed by a linear ``fc<n_classes>``."""
    layers = parse_spec(hidden) if hidden and hidden != "none" else []
    if layers and (not isinstance(layers[0], Dense)
                   or not all(isinstance(lay, (Dense, ReLU, Tanh, Dropout)) for lay in layers)):
        raise ConfigError(f"the final classifier's hidden layers are fc<units> layers with relu, tanh or "
                          f"drop<p> between them, starting with fc (e.g. fc512-relu-drop0.4), got {hidden!r}")
    return layers + [Dense(n_classes, init="glorot")]


def train_classifier(features, y, eval_features, y_eval, n_classes, rng, *, hidden="none", epochs=10.0, lr=1e-2,
                     batch_size=256, weight_decay=5e-4, min_steps=2000, on_epoch=None, progress=False, lead=None,
                     lead_maps=None, lead_epochs=None, lead_lr=1.0):
    """Fit the final softmax classifier on features (N, D); returns (list of layers, accuracy on the
    evaluation features, None without them).

    Linear unless ``hidden`` names hidden layers (``classifier_layers``). Features are
    standardised for training and the standardisation is folded into the first layer's weights,
    so the returned layers apply to raw features. Trains with Adam and a cosine schedule for
    ``epochs`` epochs, or ``min_steps`` steps if that is more: small training sets still get
    enough steps. ``on_epoch(epoch, n_epochs, loss, train_acc)`` follows each epoch.

    ``lead``, a ``greedy.nn.basismix.BasisMix``, is trained with the classifier: it reads the
    standardised features (its ``taps``) and the basis maps ``lead_maps`` = (train (N, P*d), evaluation
    (N', P*d) or None) float32, and the classifier reads its output; its
    pooled outputs are standardised by their statistics at the start (``BasisMix.set_scale``), which
    are folded into the first returned layer as well. The returned layers then read the taps and the
    pooled map of the conv the trained mix makes. With ``lead_epochs`` the lead trains for that many
    epochs only: then its standardised outputs are computed once and the classifier trains on them for
    the rest of its schedule. ``lead_lr`` multiplies the learning rate of the lead's parameters.
    """
    layers = classifier_layers(hidden, n_classes)
    if features.ndim != 2 or (eval_features is not None and (eval_features.ndim != 2
                                                             or features.shape[1] != eval_features.shape[1])):
        raise ConfigError(f"classifier features must be (N, D) for training and evaluation alike, got "
                          f"{features.shape} and {None if eval_features is None else eval_features.shape}")
    if lead is not None and (lead.taps != features.shape[1] or lead_maps is None or len(lead_maps[0]) != len(features)
                             or (eval_features is not None and (lead_maps[1] is None
                                                                or len(lead_maps[1]) != len(eval_features)))):
        raise ConfigError(f"the lead reads {lead.taps} taps and the basis maps of every sample, got features "
                          f"{features.shape} and maps of {[None if m is None else m.shape for m in lead_maps or ()]}")
    mean, std = column_mean_std(features)
    std += 1e-6

    def model_input(x, maps):
        """The standardised features, then the lead's basis maps, in one array."""
        if lead is None:
            return standardize(x, mean, std)
        z = np.empty((len(x), x.shape[1] + maps.shape[1]), np.float32)
        standardize(x, mean, std, out=z[:, :x.shape[1]])
        z[:, x.shape[1]:] = maps
        return z

    z = model_input(features, None if lead is None else lead_maps[0])
    epochs = max(epochs, min_steps * batch_size / len(z))
    head = Sequential(([] if lead is None else [lead]) + layers).build(z.shape[1:], rng)
    if lead is not None:
        pooled = np.concatenate([lead.pooled(z[i:i + 4096]) for i in range(0, len(z), 4096)])
        lead.set_scale(pooled.mean(axis=0), pooled.std(axis=0) + 1e-6)
    opt = make_optimizer("adam", lr, "cosine", weight_decay)
    if lead is not None:
        n_lead = len(lead.params)
        opt.lr_scales = [float(lead_lr)] * n_lead + [1.0] * (len(head.parameters()) - n_lead)
    total = int(np.ceil(epochs))

    def lead_backward(dout, step):
        """The head's backward, the first layer's input gradient taken for the lead's pooled columns only."""
        for layer in reversed(layers[1:]):
            dout = layer.backward(dout)
        layers[0].backward(dout, input_grad=False)
        lead.backward_pooled(dout @ layers[0].params["w"][lead.taps:].T)

    report = None if on_epoch is None else lambda e, loss, acc: on_epoch(e, total, loss, acc)
    stop = None if lead is None or lead_epochs is None or lead_epochs >= total else int(lead_epochs)
    fit(head, z, y, opt, epochs=epochs, batch_size=batch_size, rng=rng, label="classifier", progress=progress,
        backward=None if lead is None else lead_backward, on_epoch=report, stop_epoch=stop)
    if stop is not None:
        z = np.concatenate([lead.forward(z[i:i + 4096]) for i in range(0, len(z), 4096)])
        opt.drop_leading(n_lead)
        fit(Sequential(layers), z, y, opt, epochs=epochs, batch_size=batch_size, rng=rng, label="classifier",
            progress=progress, on_epoch=report, start_epoch=stop)
    acc = None if eval_features is None else accuracy(
        head, model_input(eval_features, None if lead is None else lead_maps[1]), y_eval)
    if lead is not None:
        mean = np.concatenate([mean, lead.shift.astype(np.float64)])
        std = np.concatenate([std, lead.scale.astype(np.float64)])
    first = layers[0]
    w = first.params["w"] / std[:, None]
    first.params["b"][...] = first.params["b"] - mean @ w
    first.params["w"][...] = w
    return layers, acc
