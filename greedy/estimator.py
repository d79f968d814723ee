"""``LayerwiseClassifier``: greedy's methods behind a scikit-learn shaped estimator.

    from greedy import LayerwiseClassifier, load
    clf = LayerwiseClassifier(method="patchbag", random_state=0).fit(X_train, y_train)
    clf.score(X_test, y_test)
    clf.save("model.npz"); load("model.npz").predict(X_test)

The constructor stores its arguments and does nothing else; ``fit`` checks the input once, picks
the method's defaults for the data (one channel: the MNIST defaults, three: the CIFAR-10 ones),
trains, and keeps the fitted state in attributes ending in ``_``. Input normalisation happens
inside the model, so ``predict`` takes raw samples like ``fit``.
"""
import numpy as np

from greedy.errors import ConfigError
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.monitor import Monitor


class LayerwiseClassifier:
    """Train a network with one of greedy's methods (``greedy.methods.METHODS``).

    Parameters
    ----------
    method : str, default "patchbag"
        "patchbag", "aux", "cosine", "kl", "binary" (layer-wise) or "e2e" (the baseline).
    random_state : int, default 0
        Seed of every random stream.
    verbose : int, default 0
        1 prints one line per training event to stderr.
    callback : callable or None
        Called with each training event (a dict: phase, layer, epoch, seconds and figures).
    **options
        Any option of the method's config (``python cli.py methods`` lists them), e.g.
        ``clusters=256``, ``layer_budget="2e"``, ``arch="c64k3-relu-max2-c128k3-relu"``.

    Attributes
    ----------
    model_ : TrainedModel
    classes_ : ndarray of shape (n_classes,)
    config_ : the resolved method config (a dataclass)
    history_ : list of dict, the training events
    """

    def __init__(self, method="patchbag", random_state=0, verbose=0, callback=None, **options):
        self.method = method
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
        self.options = options

    def get_params(self, deep=True):
        return dict({"method": self.method, "random_state": self.random_state, "verbose": self.verbose,
                     "callback": self.callback}, **self.options)

    def set_params(self, **params):
        for key, value in params.items():
            if key in ("method", "random_state", "verbose", "callback"):
                setattr(self, key, value)
            else:
                self.options[key] = value
        return self

    def fit(self, X, y, eval_set=None):
        """Train on X (N, C, H, W) or (N, H, W, C) images, uint8 or float, and labels y (N,) of any kind.

        ``eval_set`` (X_eval, y_eval), optional: the figures logged during training are measured on it.
        """
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {', '.join(sorted(METHODS))}")
        x = check_samples(X, "X")
        if self.method == "binary" and x.ndim == 4 and x.dtype != np.uint8:
            raise ConfigError("method binary thresholds uint8 images; X must be uint8 (float sequences (N, C, L) "
                              "are thermometer-coded)")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(f"y must be {len(x)} labels of shape ({len(x)},), got shape {y.shape}")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigError(f"y holds {len(self.classes_)} class; a classifier needs at least 2")
        method = METHODS[self.method]
        self.config_ = method.resolve(configs.family_of(x.shape[1:], x.dtype), len(self.classes_),
                                      dict(self.options, seed=self.random_state))
        eval_pair = None
        if eval_set is not None:
            x_eval = check_samples(eval_set[0], "eval_set X", x.shape[1:])
            eval_pair = (x_eval, self._encode(eval_set[1], len(x_eval)))
        monitor = Monitor(verbose=bool(self.verbose), callback=self.callback, method=self.method)
        self.model_, self.info_ = method.fit(x, codes.astype(np.int64), len(self.classes_), self.config_,
                                             monitor, eval_pair)
        self.model_.class_names = [str(c) for c in self.classes_]
        self.history_ = monitor.events
        return self

    def _encode(self, y, n):
        y = np.asarray(y)
        if y.shape != (n,):
            raise ConfigError(f"labels must have shape ({n},), got {y.shape}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        if not (self.classes_[idx] == y).all():
            raise ConfigError("labels hold classes that were not in the training labels")
        return idx.astype(np.int64)

    def _fitted(self):
        if not hasattr(self, "model_"):
            raise ConfigError("this LayerwiseClassifier is not fitted yet; call fit(X, y) first")
        return self.model_

    def decision_function(self, X):
        """Logits (N, n_classes) float32."""
        model = self._fitted()
        return model.predict_logits(check_samples(X, "X", model.in_shape))

    def predict_proba(self, X):
        """Class probabilities (N, n_classes) float32, columns in the order of ``classes_``."""
        z = self.decision_function(X)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X):
        """Predicted labels (N,), from ``classes_``."""
        scores = self.decision_function(X)
        return self.classes_[scores.argmax(axis=1)]

    def score(self, X, y):
        """Mean accuracy of ``predict(X)`` against y."""
        return float((self.predict(X) == np.asarray(y)).mean())

    def save(self, path):
        """Write the fitted model (with its classes and config) to ``path``; ``greedy.load`` reads it."""
        self._fitted().save(path, {"estimator": {"method": self.method, "random_state": self.random_state,
                                                 "classes": self.classes_.tolist(),
                                                 "config": configs.to_dict(self.config_)}})


def load(path):
    """A fitted ``LayerwiseClassifier`` from a file written by its ``save`` or by ``python cli.py train``."""
    from greedy.modelfile import load as load_model, read_npz
    model = load_model(path)
    info = read_npz(path)[1].get("extra", {})
    saved = info.get("estimator", {})
    clf = LayerwiseClassifier(method=saved.get("method", info.get("method", "patchbag")),
                              random_state=saved.get("random_state", 0))
    clf.model_ = model
    classes = saved.get("classes")
    clf.classes_ = np.asarray(classes) if classes is not None else np.arange(len(model.class_names))
    return clf


def check_samples(X, name, in_shape=None):
    """X as a contiguous (N, C, H, W) or (N, C, L) uint8 or float32 array; images (N, H, W, C) with C in
    1, 3, 4 are transposed.

    With ``in_shape``, the per-sample shape must match it."""
    try:
        x = np.asarray(X)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a numeric array: {e}") from None
    if x.dtype.kind not in "uif" or x.dtype == np.float16:
        raise ConfigError(f"{name} must hold uint8 or float samples, got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise ConfigError(f"{name} must be images (N, C, H, W) or (N, H, W, C), or sequences (N, C, L), "
                          f"got shape {x.shape}")
    if len(x) == 0:
        raise ConfigError(f"{name} is empty")
    channels_last = x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4)
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ConfigError(f"{name} contains NaN or infinite values")
    x = np.ascontiguousarray(x)
    if in_shape is not None and tuple(x.shape[1:]) != tuple(in_shape):
        raise ConfigError(f"{name} has samples of shape {tuple(x.shape[1:])}, the model takes {tuple(in_shape)}")
    return x
