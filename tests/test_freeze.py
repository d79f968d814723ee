"""Freezing masks, mask schedules and Hessian kernel groups."""
import numpy as np
import pytest

from greedy.errors import ConfigError
from greedy.experiments.freeze.kernel_groups import hessian_groups, kernel_interactions, partition_kernels
from greedy.experiments.freeze.masks import MaskSchedule, make_mask_schedule, make_masks
from greedy.nn.hessian import flatten, gradient
from greedy.nn.losses import softmax_cross_entropy
from greedy.nn.model import Sequential
from greedy.nn.optim import SGD, Adam
from greedy.nn.fit import fit

SPEC = "c8k3-relu-max2-c6k3-relu-fc5-relu-fc3"


def small_model(dtype=np.float64):
    return Sequential.from_spec(SPEC).build((1, 8, 8), 0, dtype)


def data(n=24, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(dtype), rng.integers(0, 3, n)


def test_first_half_freezes_the_first_filters_of_each_conv_layer_only():
    model = small_model()
    masks = make_masks(model, "first-half")
    names = [n for n, _ in model.named_parameters()]
    m = dict(zip(names, masks))
    assert not m["0/w"][:4].any() and m["0/w"][4:].all()
    assert not m["0/b"][:4].any() and m["0/b"][4:].all()
    assert not m["3/w"][:3].any() and m["3/w"][3:].all()
    assert all(m[k].all() for k in ("5/w", "5/b", "7/w", "7/b"))
    quarter = dict(zip(names, make_masks(model, "first-half", fraction=0.25)))
    assert (~quarter["0/b"]).sum() == 2 and not quarter["0/b"][:2].any()


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_random_kernels_freeze_whole_filters_in_the_right_number(fraction):
    model = small_model()
    masks = dict(zip([n for n, _ in model.named_parameters()],
                     make_masks(model, "random-kernels", fraction, rng=3, include_dense=True)))
    for li, f in ((0, 8), (3, 6), (5, 5)):
        w, b = masks[f"{li}/w"], masks[f"{li}/b"]
        per_kernel = w.reshape(f, -1) if li != 5 else w.T
        assert np.all(per_kernel.all(axis=1) | ~per_kernel.any(axis=1))     # whole kernels only
        assert np.array_equal(per_kernel[:, 0], b)
        assert (~b).sum() == round(fraction * f)
    assert masks["7/w"].all() and masks["7/b"].all()                        # classifier never frozen
    other = make_masks(model, "random-kernels", fraction, rng=4)
    assert any(not np.array_equal(a, b) for a, b in zip(other, masks.values()))


def test_random_weights_freeze_exact_fractions():
    model = small_model()
    masks = make_masks(model, "random-weights", 0.3, rng=0, include_dense=True)
    for (name, p), m in zip(model.named_parameters(), masks):
        expected = 0 if name.startswith("7/") else round(0.3 * p.size)
        assert (~m).sum() == expected, name
    assert all(m.all() for m in make_masks(model, "none"))


def test_bad_options_raise_config_errors():
    model = small_model()
    with pytest.raises(ConfigError, match="unknown freezing strategy"):
        make_masks(model, "half")
    with pytest.raises(ConfigError, match="fraction"):
        make_masks(model, "first-half", fraction=1.5)
    with pytest.raises(ConfigError, match="make_mask_schedule"):
        make_masks(model, "schedule")
    with pytest.raises(ConfigError, match="kernel groups"):
        make_mask_schedule(model, "hessian")


@pytest.mark.parametrize("make_opt", [
    lambda: SGD(0.05, momentum=0.9, weight_decay=1e-2),
    lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda: Adam(1e-2, weight_decay=1e-2),
])
@pytest.mark.parametrize("strategy", ["first-half", "random-weights"])
def test_frozen_weights_never_move_during_fit(make_opt, strategy):
    model = small_model(np.float32)
    x, y = data(dtype=np.float32)
    before = [p.copy() for p in model.parameters()]
    opt = make_opt()
    opt.masks = make_masks(model, strategy, 0.5, rng=1)
    fit(model, x, y, opt, epochs=3, batch_size=8)
    for p, p0, m in zip(model.parameters(), before, opt.masks):
        assert np.array_equal(p[~m], p0[~m])
        assert np.any(p[m] != p0[m])


@pytest.mark.parametrize("make_opt", [lambda: SGD(0.05, momentum=0.9, weight_decay=1e-2),
                                      lambda: Adam(1e-2, weight_decay=1e-2)])
def test_schedule_swaps_masks_and_frozen_entries_stop_at_once(make_opt):
    model = small_model(np.float32)
    x, y = data(dtype=np.float32)
    schedule = make_mask_schedule(model, "schedule", every=3)
    opt = make_opt()
    params, grads = model.parameters(), model.gradients()
    seen = set()
    moved = [np.zeros(p.shape, bool) for p in params]
    for step in range(12):
        seen.add(schedule.apply(opt, step))
        before = [p.copy() for p in params]
        idx = np.arange(step % 3 * 8, step % 3 * 8 + 8)
        out = model.forward(x[idx], train=True)
        model.backward(softmax_cross_entropy(out, y[idx])[1], input_grad=False)
        opt.step(params, grads)
        for p, p0, m, mv in zip(params, before, opt.masks, moved):
            assert np.array_equal(p[~m], p0[~m])        # momentum of newly frozen entries does not leak
            mv |= p != p0
    assert seen == {0, 1}
    assert all(mv.all() for mv in moved)                # every weight trained in some phase
    fresh_opt = make_opt()
    assert schedule.apply(fresh_opt, 0) == 0 and fresh_opt.masks is schedule.phases[0]


def test_schedule_subsets_partition_the_parameters():
    model = small_model()
    schedule = make_mask_schedule(model, "schedule")
    subsets = schedule.subsets()
    assert set(subsets) == {"only_second_part", "only_first_part", "always"}
    total = [sum(m[i].astype(int) for m in subsets.values()) for i in range(len(model.parameters()))]
    assert all(np.all(t == 1) for t in total)
    static = make_mask_schedule(model, "first-half").subsets()
    assert set(static) == {"trainable", "frozen"}
    with pytest.raises(ConfigError, match="steps per phase"):
        MaskSchedule(schedule.phases, every=0)


def test_partition_recovers_planted_blocks():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 4)
    perm = rng.permutation(12)
    truth = truth[perm]
    a = np.where(truth[:, None] == truth[None, :], 1.0, 0.0) + 0.3 * rng.random((12, 12))
    groups = partition_kernels(a + a.T, 3)
    assert np.bincount(groups).tolist() == [4, 4, 4]
    for g in range(3):                                  # each found group is one planted block
        assert len(set(truth[groups == g])) == 1
    odd = partition_kernels(np.ones((7, 7)), 2)
    assert sorted(np.bincount(odd).tolist()) == [3, 4]


def planted_model():
    """Conv layer whose 6 filters split into 3 pairs that never act on the same sample.

    Sample type t carries signal only in input channel t; the filters of pair t
    have positive weights on channel t and negative ones elsewhere, so each
    sample switches exactly one pair's ReLUs on: the Hessian blocks between
    filters of different pairs are zero.
    """
    rng = np.random.default_rng(1)
    model = Sequential.from_spec("c6k3-relu-gap-fc3").build((3, 4, 4), 0, np.float64)
    pair = np.array([0, 1, 2, 1, 0, 2])
    w = rng.uniform(0.5, 1.0, (6, 3, 3, 3))
    for f in range(6):
        w[f, np.arange(3) != pair[f]] *= -1
    model.layers[0].params["w"][...] = w
    n = 24
    kind = np.arange(n) % 3
    x = np.zeros((n, 3, 4, 4))
    x[np.arange(n), kind] = rng.uniform(1.0, 2.0, (n, 4, 4))
    return model, x, rng.integers(0, 3, n), pair


def kernel_block_sums_by_finite_differences(model, x, y, eps=1e-5):
    """1_i^T H 1_j from central differences of the gradient along 1_j (kernel j = b[j] and w[j])."""
    conv = model.layers[0].params
    out = np.zeros((6, 6))
    for j in range(6):
        grads = []
        for sign in (1, -1):
            conv["w"][j] += sign * eps
            conv["b"][j] += sign * eps
            grads.append(gradient(model, x, y)[1])
            conv["w"][j] -= sign * eps
            conv["b"][j] -= sign * eps
        db, dw = ((gp - gm) / (2 * eps) for gp, gm in zip(grads[0][:2], grads[1][:2]))
        out[:, j] = db + dw.reshape(6, -1).sum(axis=1)
    return out


def test_exact_interactions_equal_hessian_block_sums_and_find_planted_pairs():
    model, x, y, pair = planted_model()
    s = kernel_interactions(model, x, y, n_probes=None)[0]
    fd = kernel_block_sums_by_finite_differences(model, x, y)
    assert np.abs(s - fd).max() < 1e-6 * np.abs(fd).max()
    cross = pair[:, None] != pair[None, :]
    assert np.abs(s[cross]).max() < 1e-12 * np.abs(s).max()
    assert np.abs(s[~cross & ~np.eye(6, dtype=bool)]).min() > 1e-6 * np.abs(s).max()
    groups, _ = hessian_groups(model, x, y, n_groups=3, n_probes=None)
    for g in range(3):
        assert len(set(pair[groups[0] == g])) == 1
    schedule = make_mask_schedule(model, "hessian", groups=groups, every=5)
    assert len(schedule.phases) == 3
    kernel_trainable = np.stack([ph[0] for ph in schedule.phases])        # conv bias = one flag per kernel
    assert np.all(kernel_trainable.sum(axis=0) == 1)
    assert all(ph[2].all() for ph in schedule.phases)                      # dense stays trainable


def test_probe_estimator_is_within_its_standard_error():
    model, x, y, _ = planted_model()
    exact = kernel_interactions(model, x, y, n_probes=None)[0]
    m = 32
    estimate = kernel_interactions(model, x, y, n_probes=m, rng=0)[0]
    # per-entry variance (1/m) sum_{k != j} S[i, k]^2 before symmetrisation
    off = exact ** 2
    var = (off.sum(axis=1, keepdims=True) - off) / m
    sigma = np.sqrt(0.5 * (var + var.T))
    err = np.abs(estimate - exact)
    assert np.all(err <= 5 * sigma + 1e-12)
    assert err.max() > 0                                                   # it is an estimate


# ---------------------------------------------------------------- fused ensembles (greedy.ensemble)

def test_fused_ensemble_gradient_matches_finite_differences():
    from greedy.experiments.ensemble import FusedEnsemble, trunk
    from greedy.nn.layers import Dense
    members = [Sequential.from_spec("c2k3-tanh-max2-fc4-tanh-fc3").build((1, 6, 6), s, np.float64) for s in (0, 1)]
    head = Sequential([Dense(3)]).build((8,), 5, np.float64).layers[0]
    fused = FusedEnsemble([trunk(m) for m in members], head)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 1, 6, 6)), rng.integers(0, 3, 5)
    fused.backward(softmax_cross_entropy(fused.forward(x), y)[1])
    analytic = flatten(fused.gradients())
    params = fused.parameters()
    direction = [rng.standard_normal(p.shape) for p in params]
    losses = []
    for sign in (1, -1):
        for p, d in zip(params, direction):
            p += sign * 1e-6 * d
        losses.append(softmax_cross_entropy(fused.forward(x), y)[0])
        for p, d in zip(params, direction):
            p -= sign * 1e-6 * d
    numeric = (losses[0] - losses[1]) / 2e-6
    assert abs(numeric - analytic @ flatten(direction)) < 1e-6 * abs(numeric)
    assert len(params) == 2 * 4 + 2


def test_fuse_trains_a_new_head_on_concatenated_features():
    from greedy.experiments.ensemble import average_outputs, fuse
    from greedy.nn.optim import make_optimizer
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 5)) * 3
    y = rng.integers(0, 3, 300)
    x = (centres[y] + rng.standard_normal((300, 5))).astype(np.float32)
    members = []
    for s in (0, 1):
        m = Sequential.from_spec("fc6-relu-fc3").build((5,), s)
        fit(m, x, y, make_optimizer("adam", 1e-2, "constant"), epochs=10, batch_size=32)
        members.append(m)
    old_heads = [m.layers[-1].params["w"].copy() for m in members]
    fused = fuse(members, x, y, epochs=5, batch_size=32)
    assert fused.head.params["w"].shape == (12, 3)
    assert (fused.forward(x).argmax(axis=1) == y).mean() > 0.9
    assert (average_outputs(members, x).argmax(axis=1) == y).mean() > 0.9
    assert all(np.array_equal(h, m.layers[-1].params["w"]) for h, m in zip(old_heads, members))


# ---------------------------------------------------------------- skipping frozen kernels' gradients

@pytest.mark.parametrize("include_dense", [False, True])
def test_backward_skipping_frozen_kernels_matches_full_backward_on_live_kernels(include_dense):
    from greedy.experiments.freeze.masks import backward_skipping_frozen, trainable_kernels
    model = small_model()
    x, y = data()
    masks = make_masks(model, "random-kernels", 0.5, rng=2, include_dense=include_dense)
    keep = trainable_kernels(model, masks)
    assert sorted(keep) == ([0, 3, 5] if include_dense else [0, 3])
    dy = softmax_cross_entropy(model.forward(x, train=True), y)[1]
    model.backward(dy, input_grad=False)
    full = [g.copy() for g in model.gradients()]
    for g in model.gradients():
        g[...] = np.nan
    backward_skipping_frozen(model, dy, keep)
    for g, f, m in zip(model.gradients(), full, masks):
        assert np.allclose(g[m], f[m], rtol=1e-10, atol=1e-12)
        assert np.all(np.isnan(g[~m]))                       # frozen kernels were not computed
    assert trainable_kernels(model, make_masks(model, "random-weights", 0.5, rng=0)) == {}


# ---------------------------------------------------------------- the experiment (CLI)

def test_experiment_freeze_cli_writes_runs_with_frozen_subsets_at_rest(tmp_path):
    import csv
    import json
    from click.testing import CliRunner
    from greedy.cli import main
    out = tmp_path / "fz"
    args = ["experiment", "freeze", "--dataset", "synthetic-grey", "--strategy", "first-half,schedule",
            "--arch", "c4k3-relu-max2-c4k3-relu-max2-fc8-relu-fc10", "--steps", "6", "--every", "3",
            "--eval-every", "3", "--n-train", "96", "--n-test", "40", "--batch-size", "16", "--threads", "1",
            "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"baseline", "first-half", "schedule"}
    rows = {name: list(csv.DictReader(open(out / f"{name}.csv"))) for name in summary["runs"]}
    assert all(len(r) == 6 for r in rows.values())
    assert all(float(r["dist:first-half/frozen"]) == 0 for r in rows["first-half"])
    assert float(rows["baseline"][-1]["dist:first-half/frozen"]) > 0
    assert float(rows["first-half"][-1]["dist:first-half/trainable"]) > 0
    sched = rows["schedule"]                    # phase 0 trains the second part only, phase 1 the first part
    assert [int(r["phase"]) for r in sched] == [0, 0, 0, 1, 1, 1]
    assert float(sched[2]["dist:schedule/only_first_part"]) == 0 < float(sched[5]["dist:schedule/only_first_part"])
    frozen = summary["runs"]["first-half"]["subsets"]["first-half/frozen"]
    assert frozen["rms"] == 0 and frozen["speed_ratio"] == 0 and frozen["share"] == 0
    events = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert sum(e["phase"] == "step" for e in events) == 18
    assert (out / "table.md").read_text().count("| first-half |") == 3


def test_experiment_freeze_cli_rejects_bad_options():
    from click.testing import CliRunner
    from greedy.cli import main
    result = CliRunner().invoke(main, ["experiment", "freeze", "--dataset", "synthetic-grey", "--strategy", "halves"])
    assert result.exit_code == 2
    assert "unknown strategy 'halves'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["experiment", "freeze", "--dataset", "synthetic-grey", "--fraction", "1.5",
                                       "--n-train", "50", "--steps", "1"])
    assert result.exit_code == 2 and "fraction" in result.output


@pytest.mark.parametrize("spec,shape,keep", [
    ("c6k3-relu-max2-c4k3-tanh-fc5-relu-fc3", (2, 8, 8), {0: [1, 4, 5], 3: [0, 2], 5: [1, 2, 4]}),
    ("c6k3-relu-gap-fc3", (1, 5, 5), {0: [0, 3]}),
])
def test_sub_model_equals_the_full_model_with_the_dropped_kernels_cut_off(spec, shape, keep):
    from greedy.experiments.freeze.masks import sub_model
    model = Sequential.from_spec(spec).build(shape, 0, np.float64)
    small = sub_model(model, keep)
    assert small.n_parameters() < model.n_parameters()
    # in the full model, zero every weight that reads a dropped kernel's output
    channels = None
    for li, layer in enumerate(model.layers):
        if not layer.params:
            continue
        if channels is not None:
            w = layer.params["w"]
            if w.ndim == 4:
                w[:, np.setdiff1d(np.arange(w.shape[1]), channels)] = 0
            else:
                per = w.shape[0] // len(channels_all)
                dropped = np.setdiff1d(np.arange(len(channels_all)), channels)
                w[(dropped[:, None] * per + np.arange(per)).ravel()] = 0
        channels = np.array(keep[li]) if li in keep else None
        channels_all = np.arange(layer.params["b"].size)
    x = np.random.default_rng(1).standard_normal((4,) + shape)
    assert np.allclose(small.forward(x), model.forward(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="distinct indices"):
        sub_model(model, {0: [0, 0]})


# ---------------------------------------------------------------- coupled half-width models (elastic, soft-share)

def test_coupling_gradients_match_finite_differences_of_their_penalties():
    from gradcheck import numeric_grad, rel_error
    from greedy.experiments.freeze import couple_elastic, couple_soft_share
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((3, 2, 3, 3)) for _ in range(3))
    rho, lr = 0.7, 0.05
    for coupling, penalty in ((couple_soft_share, lambda: rho / 2 * np.sum((a - b) ** 2)),
                              (couple_elastic, lambda: rho / 2 * (np.sum((a - c) ** 2) + np.sum((b - c) ** 2)))):
        ga, gb, centre = np.zeros_like(a), np.zeros_like(b), [c.copy()]
        coupling([(a, b)], [(ga, gb)], rho, lr, centre)
        assert rel_error(ga, numeric_grad(penalty, a)) < 1e-8
        assert rel_error(gb, numeric_grad(penalty, b)) < 1e-8
    # the elastic centre moves by lr rho sum_i (theta_i - c), from the weights before the step
    assert np.allclose(centre[0], c + lr * rho * ((a - c) + (b - c)), rtol=1e-12, atol=1e-14)


def _halves_setup(tmp_path, **opts):
    from greedy.data import load_dataset
    from greedy.experiments.freeze import resolve_options
    from greedy.nn.model import build_model
    from greedy.nn.network import Normalizer
    from greedy.runs import Run
    data = load_dataset("synthetic-grey", synthetic_size=(64, 32), seed=0)
    o = resolve_options(dict({"arch": "c4k3-relu-max2-c4k3-relu-max2-fc8-relu-fc10", "batch_size": 16,
                              "steps": 12, "eval_every": 6, "lr": 0.05}, **opts))
    run = Run(str(tmp_path), "freeze", "synthetic-grey", o, verbose=False)
    return data, Normalizer().fit(data.x_train), o, run, lambda: build_model(o["arch"], (1, 28, 28), 10, 0)


@pytest.mark.parametrize("strategy", ["elastic", "soft-share"])
def test_lockstep_without_coupling_equals_two_independent_runs(tmp_path, strategy):
    from greedy.experiments.freeze import half_models, train_halves, train_run
    from greedy.nn.network import load_model
    data, normalizer, o, run, fresh = _halves_setup(tmp_path, coupling=0.0)
    results = {}
    out = train_halves(fresh, data, normalizer, o, run, results, False, strategy)
    assert out["coupled_tensors"] > 0
    for half, model in half_models(fresh(), o).items():
        rows = train_run(half, model, None, data, normalizer, o, {}, run, str(tmp_path / f"{half}.csv"), False)
        coupled = load_model(str(tmp_path / f"{strategy}-{half}.npz"))[0]
        assert all(np.array_equal(p, q) for p, q in zip(model.parameters(), coupled.parameters()))
        assert [r["loss"] for r in rows] == [r["loss"] for r in results[f"{strategy}-{half}"]]


@pytest.mark.parametrize("strategy", ["elastic", "soft-share"])
def test_strong_coupling_brings_the_halves_together(tmp_path, strategy):
    from greedy.experiments.freeze import train_halves
    distance = {}
    for rho in (0.0, 5.0):
        data, normalizer, o, run, fresh = _halves_setup(tmp_path / str(rho), coupling=rho)
        results = {}
        distance[rho] = train_halves(fresh, data, normalizer, o, run, results, False, strategy)["halves_distance"]
        first = results[f"{strategy}-half-a"][0]["halves_distance"]
    assert distance[5.0] < 0.5 * distance[0.0] and distance[5.0] < first < distance[0.0]


def test_experiment_freeze_cli_elastic_writes_coupled_halves(tmp_path):
    import csv
    import json
    from click.testing import CliRunner
    from greedy.cli import main
    out = tmp_path / "el"
    args = ["experiment", "freeze", "--dataset", "synthetic", "--strategy", "elastic", "--coupling", "0.5",
            "--arch", "c4k3-relu-max2-c4k3-relu-max2-fc8-relu-fc10", "--steps", "6", "--eval-every", "3",
            "--n-train", "64", "--n-test", "32", "--batch-size", "16", "--threads", "1", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"baseline", "elastic-half-a", "elastic-half-b"}
    el = summary["elastic"]
    assert el["coupling"] == 0.5 and el["coupled_tensors"] == 8
    for key in ("fused_test_accuracy", "half-a_test_accuracy", "half-b_test_accuracy", "centre_test_accuracy",
                "half-a_seconds", "half-b_seconds", "fused_head_seconds", "halves_distance"):
        assert el[key] is not None, key
    for half in ("half-a", "half-b"):
        rows = list(csv.DictReader(open(out / f"elastic-{half}.csv")))
        assert len(rows) == 6 and float(rows[-1]["halves_distance"]) > 0 and float(rows[-1]["centre_distance"]) > 0
        assert (out / f"elastic-{half}.npz").is_file()
    events = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert sum(e["phase"] == "coupling" for e in events) == 6
    assert "| elastic-half-a |" in (out / "table.md").read_text()


@pytest.mark.parametrize("kind", ["lockstep", "fused"])
def test_input_gradients_of_the_composite_models_match_finite_differences(kind):
    from greedy.experiments.ensemble import FusedEnsemble, trunk
    from greedy.experiments.freeze import Lockstep
    from greedy.nn.layers import Dense
    members = [Sequential.from_spec("c2k3-tanh-max2-fc4-tanh-fc3").build((1, 6, 6), s, np.float64) for s in (0, 1)]
    y = np.array([0, 2, 1, 1])
    if kind == "lockstep":
        model = Lockstep(members)
        loss_fn = model.loss()
    else:
        model = FusedEnsemble([trunk(m) for m in members], Sequential([Dense(3)]).build((8,), 5, np.float64).layers[0])
        loss_fn = softmax_cross_entropy

    def loss_of(x):
        return loss_fn(model.forward(x), y)
    x = np.random.default_rng(2).standard_normal((4, 1, 6, 6))
    dx = model.backward(loss_of(x)[1])
    direction = np.random.default_rng(3).standard_normal(x.shape)
    numeric = (loss_of(x + 1e-6 * direction)[0] - loss_of(x - 1e-6 * direction)[0]) / 2e-6
    assert dx.shape == x.shape
    assert abs(numeric - np.sum(dx * direction)) < 1e-6 * abs(numeric)
    if kind == "lockstep":
        assert len(model.losses) == 2 and np.isclose(sum(model.losses), loss_of(x)[0])
