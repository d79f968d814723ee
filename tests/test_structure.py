"""The typed configuration, the method registry, the one layer-wise loop, the model protocol and `compare`."""
import dataclasses
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from greedy.cli import main, train
from greedy.errors import CheckpointError, ConfigError
from greedy.methods import METHODS
from greedy.methods import config as configs
from greedy.methods.base import Method
from greedy.methods.layerwise import BlockTrainer, train_layerwise
from greedy.modelfile import TrainedModel, formats, load
from greedy.monitor import Monitor

SMALL = ["--dataset", "synthetic-grey", "--n-train", "300", "--n-test", "100", "--quiet"]


# ---------------------------------------------------------------- typed configuration

def test_every_method_has_a_config_whose_fields_all_have_defaults_and_seed_0():
    assert set(METHODS) == set(configs.CONFIGS)
    for name, cls in configs.CONFIGS.items():
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, (name, f.name)
        assert cls.__dataclass_fields__["seed"].default == 0
        for family in configs.FAMILY_DEFAULTS:
            config = configs.resolve(name, family, 10)
            assert isinstance(config, cls) and config.seed == 0


def test_train_options_are_exactly_the_config_fields_plus_the_run_options():
    ctx = click.Context(train)
    options = {p.name for p in train.get_params(ctx) if isinstance(p, click.Option) and not p.hidden and p.expose_value}
    fields = {f.name for cls in configs.CONFIGS.values() for f in dataclasses.fields(cls)
              if f.metadata.get("group")}
    run_options = {"method", "dataset", "data_dir", "n_train", "n_test", "threads", "out", "config_file", "quiet",
                   "overwrite", "resume", "sites", "scheduler", "share", "site_timeout"}
    assert options == fields | run_options


def test_family_defaults_name_only_real_fields():
    for family, methods in configs.FAMILY_DEFAULTS.items():
        for method, values in methods.items():
            names = {f.name for f in dataclasses.fields(configs.CONFIGS[method])}
            assert set(values) <= names, (family, method, set(values) - names)


@pytest.mark.parametrize("method,args,owner", [
    ("aux", ["--clusters", "64"], "patchbag"),
    ("patchbag", ["--temperature", "0.1"], "cosine"),
    ("e2e", ["--layer-budget", "2e"], "aux"),
    ("binary", ["--final-hidden", "fc16"], "aux"),
])
def test_an_option_the_method_does_not_use_is_a_one_line_error(tmp_path, method, args, owner):
    result = CliRunner().invoke(main, ["train", *SMALL, "--method", method, "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert "is not an option of method " + method in result.output and owner in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_resolve_fills_the_family_defaults_and_the_user_values_win():
    mnist = configs.resolve("patchbag", "mnist", 10)
    cifar = configs.resolve("patchbag", "cifar10", 10, {"clusters": 64, "epochs_per_layer": 3})
    assert mnist.clusters == 128 and mnist.blocks[0] == "c32k3-relu-max2"
    assert cifar.clusters == 64 and cifar.layer_budget == "3e" and cifar.blocks[0] == "c128k3-relu-max2"
    assert configs.resolve("aux", "cifar10", 10).final_classifier == "last-head"
    assert configs.resolve("aux", "mnist", 10, {"layers": 2, "width": 8}).blocks == ["c8k3-bn-relu-max2"] * 2
    assert configs.resolve("e2e", "mnist", 7).arch.endswith("-fc7")
    with pytest.raises(ConfigError, match="activation"):
        configs.resolve("patchbag", "mnist", 10, {"arch": "c8k3-relu", "activation": "tanh"})


# ---------------------------------------------------------------- the one loop, with a fake block trainer

class FakeBlock:
    def __init__(self, scale):
        self.scale, self.trained = scale, False


class FakeTrainer(BlockTrainer):
    """Blocks multiply the cache by a learnt scale; the classifier sees the cache's row means."""

    def __init__(self, config, n_classes):
        super().__init__(config, n_classes)
        self.calls = []

    def block_specs(self):
        return ["x2", "x3"]

    def budgets(self, n):
        return [(1.0, "e")] * n

    def start(self, x, x_eval, rng):
        self.calls.append("start")
        return x.astype(np.float32), None if x_eval is None else x_eval.astype(np.float32)

    def build(self, layer, spec, rng):
        self.calls.append(f"build {layer}")
        return FakeBlock(float(spec[1:]))

    def train(self, layer, block, x, y, x_eval, y_eval, budget, rng, monitor):
        self.calls.append(f"train {layer} on {float(x.min()):g}")
        block.trained = True
        return {"head_accuracy": 0.5}

    def propagate(self, layer, block, x):
        assert block.trained
        return x * block.scale

    def features(self, x, which, rng):
        self.calls.append(f"features {which}")
        return np.stack([x.mean(axis=1), -x.mean(axis=1)], axis=1)

    def classifier_options(self):
        return {"epochs": 5, "min_steps": 0}

    def assemble(self, blocks, classifier, state):
        self.calls.append(f"assemble {len(blocks)} blocks, {len(classifier)} classifier layers")
        return "model", {"classifier_accuracy": state["classifier_accuracy"]}


@pytest.mark.parametrize("with_eval", [True, False])
def test_the_loop_trains_each_block_on_the_frozen_output_of_the_ones_before(with_eval):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = np.ones((200, 4)) + y[:, None] * 0.5
    trainer = FakeTrainer(None, 2)
    monitor = Monitor()
    model, info = train_layerwise(trainer, x, y, (x[:50], y[:50]) if with_eval else None, monitor, rng)
    assert model == "model" and [layer["spec"] for layer in info["layers"]] == ["x2", "x3"]
    features = ["features train", "features eval"] if with_eval else ["features train"]
    assert trainer.calls == ["start", "build 0", "train 0 on 1", "build 1", "train 1 on 2", *features,
                             "assemble 2 blocks, 1 classifier layers"]
    assert (info["classifier_accuracy"] is None) != with_eval
    phases = [e["phase"] for e in monitor.events]
    assert phases.count("layer_done") == 2 and phases[-1] == "classifier"
    assert all(e["n_epochs"] == 5 for e in monitor.events if e["phase"] == "classifier_epoch")


def test_the_registry_holds_method_objects_with_explanations():
    for name, method in METHODS.items():
        assert isinstance(method, Method) and method.name == name
        assert len(method.summary) > 80
    result = CliRunner().invoke(main, ["methods", "patchbag"])
    assert result.exit_code == 0 and "defaults on mnist" in result.output and "clusters=128" in result.output


# ---------------------------------------------------------------- the model protocol

def test_every_model_kind_saves_loads_and_predicts_through_the_protocol(tmp_path):
    assert set(formats()) == {"greedy-sequential", "greedy-binary"}
    for method, extra in (("e2e", ["--arch", "c4k3-relu-max2-fc10", "--epochs", "1"]),
                          ("binary", ["--arch", "c16", "--patch-sample", "2000"])):
        out = tmp_path / method
        result = CliRunner().invoke(main, ["train", *SMALL, "--method", method, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        model = load(str(out / "model.npz"))
        assert isinstance(model, TrainedModel) and model.FORMAT == formats()[model.FORMAT].FORMAT
        result = CliRunner().invoke(main, ["evaluate", str(out)])
        summary = json.loads((out / "summary.json").read_text())
        assert json.loads(result.output)["test_accuracy"] == pytest.approx(summary["test_accuracy"])
        with pytest.raises(CheckpointError, match="expects samples of shape"):
            model.predict_logits(np.zeros((2, 3, 8, 8), np.uint8))


def test_the_cli_does_not_dispatch_on_model_kinds():
    source = (Path(__file__).parents[1] / "greedy" / "cli.py").read_text()
    assert not re.search(r"\bhasattr\(|isinstance\(\s*model", source)


# ---------------------------------------------------------------- compare is fair

def test_compare_gives_every_method_the_same_blocks_and_budget(tmp_path):
    result = CliRunner().invoke(main, ["compare", "--methods", "aux,patchbag,cosine", "--dataset", "synthetic-grey",
                                       "--n-train", "60", "--n-test", "20", "--quiet", "--out", str(tmp_path),
                                       "--time-budget", "1.5"])
    assert result.exit_code == 0, result.output
    options = {m: json.loads((tmp_path / m / "config.json").read_text())["options"]
               for m in ("aux", "patchbag", "cosine")}
    blocks = {m: tuple(o["blocks"]) for m, o in options.items()}
    budgets = {m: o["layer_budget"] for m, o in options.items()}
    assert len(set(blocks.values())) == 1 and len(blocks["aux"]) == 3  # patchbag's default blocks on mnist
    assert set(budgets.values()) == {"0.5s"}  # 1.5 s over 3 blocks


def test_train_compare_and_sweep_accept_their_own_defaults(tmp_path):
    for command in (["train"], ["compare"], ["sweep"]):
        result = CliRunner().invoke(main, [*command, "--dataset", "synthetic-grey", "--n-train", "60",
                                           "--n-test", "20", "--quiet", "--out", str(tmp_path / command[0])])
        assert result.exit_code == 0, (command, result.output)
