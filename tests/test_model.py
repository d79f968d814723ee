import numpy as np
import pytest

from greedy.errors import CheckpointError, ConfigError
from greedy.modelfile import load
from greedy.nn.model import Sequential, build_model, parse_spec
from greedy.nn.network import Network, Normalizer, load_model, save_model


def test_spec_round_trips():
    spec = "c32k5-relu-max2-c64k3s2p0-bn-tanh-avg2-gap-fc1024-relu-drop0.4-fc10"
    assert Sequential.from_spec(spec).spec() == spec
    assert Sequential.from_spec("c8k3-d10").spec() == "c8k3-fc10"


@pytest.mark.parametrize("spec,message", [
    ("c0k3-fc10", "zero width"), ("c8k3-foo-fc10", "unknown architecture token"), ("", "empty"),
    ("fc0", "zero width"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec)


def test_build_checks_classes_and_sizes():
    with pytest.raises(ConfigError, match="10 classes"):
        build_model("c8k3-fc5", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="does not fit"):
        build_model("max2-max2-max2-max2-fc10", (1, 8, 8), 10)
    model = build_model("c8k3-max2-fc10", (3, 32, 32), 10)
    assert model.out_shape == (10,)
    assert model.n_parameters() == 8 * 27 + 8 + 8 * 16 * 16 * 10 + 10


@pytest.mark.parametrize("spec,shape", [("c4k3-bn-relu-max2-fc10", (3, 8, 8)), ("c4k3-bn-relu-gap-fc10", (2, 12))])
def test_init_gain_scales_the_weights_of_convs_and_dense_layers_only(spec, shape):
    plain = build_model(spec, shape, 10, seed=3)
    scaled = build_model(spec, shape, 10, seed=3, init_gain=0.25)
    for a, b in zip(plain.layers, scaled.layers):
        for key in a.params:
            factor = 0.25 if key == "w" and a.spec()[0] in "cf" else 1.0
            assert a.params[key].dtype == b.params[key].dtype == np.float32
            assert np.allclose(b.params[key], factor * a.params[key], rtol=1e-6, atol=0)
    assert any(not np.array_equal(a.params["w"], b.params["w"]) for a, b in zip(plain.layers, scaled.layers)
               if "w" in a.params)
    with pytest.raises(ConfigError, match="init_gain must be positive, got 0"):
        build_model(spec, shape, 10, init_gain=0)


@pytest.mark.parametrize("spec,shape", [("c4k3-bn-relu-c6k3-c2k5-fc10", (3, 8, 8)), ("c4k3-bn-relu-c2k5-gap-fc10", (2, 12))])
def test_identity_init_makes_the_first_filters_of_every_conv_copy_their_channel(spec, shape):
    plain = build_model(spec, shape, 10, seed=3, init_gain=0.5)
    model = build_model(spec, shape, 10, seed=3, init_gain=0.5, identity_init=True)
    convs = [(a, b) for a, b in zip(plain.layers, model.layers) if a.spec()[0] == "c"]
    assert len(convs) == len(spec.split("-c")) - (0 if spec[0] == "c" else 1)
    for a, b in convs:
        w, w0 = b.params["w"], a.params["w"]
        n = min(w.shape[:2])
        assert np.array_equal(w[n:], w0[n:]) and w.dtype == np.float32   # the other filters untouched
        centre = tuple(side // 2 for side in w.shape[2:])
        for i in range(n):
            expected = np.zeros(w.shape[1:], np.float32)
            expected[(i,) + centre] = 1
            assert np.array_equal(w[i], expected)
    assert np.array_equal(plain.layers[-1].params["w"], model.layers[-1].params["w"])
    # a "same" conv of identity filters and zero bias passes its input through
    conv = build_model("c3k3-fc10", (3, 5, 5), 10, seed=1, identity_init=True).layers[0]
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    assert np.array_equal(conv.forward(x), x)


def test_identity_init_needs_odd_kernels():
    with pytest.raises(ConfigError, match="odd kernels, conv c4k2 has 2 taps"):
        build_model("c4k2-fc10", (3, 8, 8), 10, identity_init=True)


def test_identity_init_leaves_a_first_layer_set_elsewhere():
    spec = "c12k2p0-relu-c16k3-bn-relu-fc10"  # the first conv as --whiten-first wants it: even kernels
    plain = build_model(spec, (3, 8, 8), 10, seed=2)
    model = build_model(spec, (3, 8, 8), 10, seed=2, identity_init=True, first_set_elsewhere=True)
    assert np.array_equal(model.layers[0].params["w"], plain.layers[0].params["w"])
    w = model.layers[2].params["w"]
    identity = np.zeros((12, 12, 3, 3), np.float32)
    identity[np.arange(12), np.arange(12), 1, 1] = 1
    assert np.array_equal(w[:12], identity)
    assert np.array_equal(w[12:], plain.layers[2].params["w"][12:])


def test_save_and_load_restore_outputs(tmp_path):
    model = build_model("c4k3-bn-relu-max2-fc10", (3, 8, 8), 10, seed=3)
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8)).astype(np.uint8)
    norm = Normalizer().fit(x)
    model.forward(norm(x), train=True)  # moves the batch-norm running statistics
    path = tmp_path / "model.npz"
    save_model(str(path), model, norm, [str(i) for i in range(10)])
    loaded, norm2, meta = load_model(str(path))
    assert np.array_equal(loaded.forward(norm2(x)), model.forward(norm(x)))
    assert meta["class_names"][3] == "3"
    assert not list(tmp_path.glob("*.tmp"))
    with np.load(path, allow_pickle=False) as f:
        assert "meta" in f.files


def test_missing_or_corrupt_model_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(str(bad))
    model = build_model("c4k3-fc10", (1, 8, 8), 10)
    good = tmp_path / "m.npz"
    save_model(str(good), model, Normalizer([0.5], [0.25]))
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/0/w"] = arrays["param/0/w"][:2]
    np.savez(tmp_path / "wrong.npz", **arrays)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(str(tmp_path / "wrong.npz"))
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/0/w"] = arrays["param/0/w"].astype(np.float16)
    np.savez(tmp_path / "half.npz", **arrays)
    with pytest.raises(CheckpointError, match="wrong shape or dtype"):
        load_model(str(tmp_path / "half.npz"))


def test_normalizer_standardises_channels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 3, 4, 4)).astype(np.uint8)
    x[:, 1] //= 4
    z = Normalizer().fit(x)(x)
    assert z.dtype == np.float32
    assert np.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert np.allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_flip_tta_averages_the_mirror_image_and_survives_save_and_load(tmp_path):
    model = build_model("c4k3-bn-relu-max2-fc10", (3, 8, 8), 10, seed=1)
    x = np.random.default_rng(2).integers(0, 256, (6, 3, 8, 8)).astype(np.uint8)
    network = Network(model, Normalizer([0.5] * 3, [0.25] * 3))
    plain = network.predict_logits(x)
    mirrored = network.predict_logits(np.ascontiguousarray(x[..., ::-1]))
    assert not np.allclose(plain, mirrored)  # the model itself is not mirror-invariant
    network.tta = "flip"
    both = network.predict_logits(x)
    np.testing.assert_allclose(both, 0.5 * (plain + mirrored), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(network.predict_logits(x[..., ::-1]), both, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(network.predict_logits(x, tta="none"), plain)
    path = str(tmp_path / "m.npz")
    network.save(path)
    loaded = load(path)
    assert isinstance(loaded, Network) and loaded.tta == "flip"
    np.testing.assert_allclose(loaded.predict_logits(x), both, rtol=1e-6)
    with pytest.raises(CheckpointError, match="test-time augmentation"):
        Network(model, Normalizer([0.5] * 3, [0.25] * 3), tta="rotate")


def test_damaged_network_files_are_one_line_checkpoint_errors(tmp_path):
    model = build_model("c4k3-bn-relu-max2-fc10", (3, 8, 8), 10, seed=1)
    path = tmp_path / "m.npz"
    Network(model, Normalizer([0.5] * 3, [0.25] * 3)).save(str(path))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    cases = {"nan": dict(arrays, **{"param/0/w": np.full_like(arrays["param/0/w"], np.nan)}),
             "missing": {k: v for k, v in arrays.items() if k != "param/0/b"},
             "dtype": dict(arrays, **{"param/0/w": arrays["param/0/w"].astype(np.int32)})}
    for name, damaged in cases.items():
        np.savez(tmp_path / f"{name}.npz", **damaged)
        with pytest.raises(CheckpointError, match=f"{name}.npz"):
            load(str(tmp_path / f"{name}.npz"))
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable"):
        load(str(tmp_path / "cut.npz"))


def test_files_written_before_formats_were_named_still_load(tmp_path):
    model = build_model("c4k3-relu-max2-fc10", (1, 8, 8), 10, seed=1)
    network = Network(model, Normalizer([0.5], [0.25]))
    arrays, meta = network.arrays()
    np.savez(tmp_path / "old.npz", meta=np.array(__import__("json").dumps(meta)), **arrays)  # no "format" key
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8)).astype(np.uint8)
    np.testing.assert_allclose(load(str(tmp_path / "old.npz")).predict_logits(x), network.predict_logits(x))
    np.savez(tmp_path / "future.npz", meta=np.array('{"format": "greedy-quantum"}'))
    with pytest.raises(CheckpointError, match="unknown model format 'greedy-quantum'"):
        load(str(tmp_path / "future.npz"))
