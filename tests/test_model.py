import numpy as np
import pytest

from greedy.errors import CheckpointError, ConfigError
from greedy.nn.model import Normalizer, Sequential, build_model, load_model, parse_spec, save_model


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
    x = np.random.default_rng(2).standard_normal((6, 3, 8, 8)).astype(np.float32)
    plain = model.predict_batch(x)
    mirrored = model.predict_batch(np.ascontiguousarray(x[..., ::-1]))
    assert not np.allclose(plain, mirrored)  # the model itself is not mirror-invariant
    model.tta = "flip"
    both = model.predict_batch(x)
    np.testing.assert_allclose(both, 0.5 * (plain + mirrored), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict_batch(x[..., ::-1]), both, rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "m.npz")
    save_model(path, model, Normalizer([0.5] * 3, [0.25] * 3))
    loaded, _, meta = load_model(path)
    assert meta["tta"] == "flip" and loaded.tta == "flip"
    np.testing.assert_allclose(loaded.predict_batch(x), both, rtol=1e-6)
    with pytest.raises(ConfigError, match="test-time augmentation"):
        Sequential([], tta="rotate")
