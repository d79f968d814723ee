"""LayerwiseClassifier: scikit-learn shaped, input checked once at the edge, same seed same model."""
import numpy as np
import pytest

import greedy
from greedy.cli import set_threads
from greedy.data import load_dataset
from greedy.errors import ConfigError

SMALL = {"patchbag": dict(layer_budget="1e", clusters=32, patch_sample=5000, arch="c16k3-relu-max2-c16k3-relu"),
         "aux": dict(layer_budget="3e", arch="c8k3-bn-relu-max2-c8k3-bn-relu", batch_size=32),
         "binary": dict(arch="c32-or2-c32", patch_sample=3000),
         "e2e": dict(arch="c8k3-relu-max2-c16k3-relu-max2-fc3", epochs=4, batch_size=32, lr=5e-3)}


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", synthetic_size=(2000, 600))
    keep = d.y_train < 3, d.y_test < 3  # three classes, named by strings
    names = np.array(["cat", "dog", "owl"])
    return d.x_train[keep[0]], names[d.y_train[keep[0]]], d.x_test[keep[1]], names[d.y_test[keep[1]]]


@pytest.mark.parametrize("method", sorted(SMALL))
def test_fit_predict_score_save_and_load(data, tmp_path, method):
    x, y, x_test, y_test = data
    events = []
    clf = greedy.LayerwiseClassifier(method=method, random_state=0, callback=events.append, **SMALL[method])
    assert clf.fit(x, y) is clf
    assert list(clf.classes_) == ["cat", "dog", "owl"] and clf.history_ == events and events
    proba = clf.predict_proba(x_test)
    assert proba.shape == (len(x_test), 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert set(clf.predict(x_test)) <= {"cat", "dog", "owl"}
    assert clf.score(x_test, y_test) > 0.45  # chance is 1/3
    clf.save(str(tmp_path / "m.npz"))
    again = greedy.load(str(tmp_path / "m.npz"))
    assert (again.predict(x_test) == clf.predict(x_test)).all()
    channels_last = np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))
    assert (clf.predict(channels_last) == clf.predict(x_test)).all()


def test_params_round_trip_and_options_reach_the_config(data):
    x, y, _, _ = data
    clf = greedy.LayerwiseClassifier(method="aux", random_state=3, **SMALL["aux"])
    assert clf.get_params()["layer_budget"] == "3e" and clf.get_params()["random_state"] == 3
    clf.set_params(random_state=4, aux_depth=1)
    clf.fit(x, y)
    assert clf.config_.seed == 4 and clf.config_.aux_depth == 1 and clf.config_.blocks == ["c8k3-bn-relu-max2",
                                                                                          "c8k3-bn-relu"]


@pytest.mark.parametrize("X,message", [
    (np.zeros((10, 3, 8, 8), np.uint8), "binary"),  # float images: binary thresholds uint8 images
    (np.zeros((10, 3, 8, 8, 2), np.uint8), "shape"),
    (np.zeros((0, 3, 8, 8), np.uint8), "empty"),
    (np.array([["a"]]), "dtype"),
    (np.full((4, 3, 8, 8), np.nan, np.float32), "NaN"),
])
def test_bad_input_is_refused_with_a_clear_message(X, message):
    method = "binary" if message == "binary" else "patchbag"
    X = X.astype(np.float32) if message == "binary" else X
    with pytest.raises(ConfigError, match=message):
        greedy.LayerwiseClassifier(method=method).fit(X, np.arange(len(X)) % 2)


def test_unknown_methods_options_and_unfitted_use_are_refused(data):
    x, y, _, _ = data
    with pytest.raises(ConfigError, match="unknown method"):
        greedy.LayerwiseClassifier(method="magic").fit(x, y)
    with pytest.raises(ConfigError, match="not an option of method aux"):
        greedy.LayerwiseClassifier(method="aux", clusters=3).fit(x, y)
    with pytest.raises(ConfigError, match="not fitted"):
        greedy.LayerwiseClassifier().predict(x)
    with pytest.raises(ConfigError, match="at least 2"):
        greedy.LayerwiseClassifier().fit(x, np.zeros(len(x)))


@pytest.mark.parametrize("method", ["patchbag", "aux"])
def test_same_seed_same_model_whatever_the_thread_count(data, method):
    x, y, x_test, _ = data
    logits = []
    for threads in (1, 2, 2):
        set_threads(threads)
        clf = greedy.LayerwiseClassifier(method=method, random_state=0, **SMALL[method]).fit(x, y)
        logits.append(clf.decision_function(x_test))
    set_threads(None)
    np.testing.assert_array_equal(logits[1], logits[2])  # the same threads: the same bits, always
    # greedy's own kernels split by fixed chunks; only the BLAS's last bits may differ (docs/architecture.md)
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-2 * np.abs(logits[1]).max())
    assert (logits[0].argmax(axis=1) == logits[1].argmax(axis=1)).mean() > 0.98
